"""A learning rate for a LoRA variant before any sweep: one λ_max probe at initialisation and the shipped calibration.

    python examples/recommend_lr.py --method pissa                         # SmolLM2-135M, as calibrated
    python examples/recommend_lr.py --method pissa --model tiny-llama --rank 4   # seconds (the calibration warns)

The same as ``hessian-lora recommend --method METHOD --model MODEL``. The calibration (η* against λ_max over a
sweep's methods) ships with the package and was measured on SmolLM2-135M; ``--calibration RUN_DIR`` uses your
own sweep instead.
"""

from __future__ import annotations

import argparse

import torch

from hessian_lora.sweep.recommend import recommend


def main() -> None:
    """Parse the command line and run the example."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="pissa")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rank", type=int, default=None, help="default: the calibration's (64)")
    parser.add_argument("--calibration", default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    advice = recommend(
        args.method, model=args.model, rank=args.rank, calibration=args.calibration, progress=False
    )
    for warning in advice.warnings:
        print(f"note: {warning}")
    print(
        f"{advice.method}: λ_max at initialisation {advice.lambda_max:.4g} → predicted η* {advice.eta:.3g} "
        f"({advice.fit} fit); sweep these: {', '.join(f'{lr:.3g}' for lr in advice.grid)}"
    )


if __name__ == "__main__":
    main()
