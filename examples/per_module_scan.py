"""The paper's per-layer view: λ_max of each q_proj block at LoRA initialisation, for two methods side by side.

    python examples/per_module_scan.py                                   # SmolLM2-135M, layers 0, 14, 29
    python examples/per_module_scan.py --model tiny-llama --layers 0,1   # seconds

The same as ``hessian-lora eigen --method METHOD --model MODEL --blocks per-module --modules q_proj --layers …``.
"""

from __future__ import annotations

import argparse

import torch

import hessian_lora as h


def main() -> None:
    """Parse the command line and run the example."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", default="0,14,29")
    parser.add_argument("--methods", default="lora,pissa")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    per_method = {}
    for method in args.methods.split(","):
        report = h.eigen(
            method=method,
            model=args.model,
            rank=8,
            blocks="per-module",
            modules="q_proj",
            layers=args.layers,
            samples=args.samples,
            batch_size=4,
            smallest=False,
            progress=False,
        )
        per_method[method] = {block.name: block for block in report.blocks}
    methods = list(per_method)
    print("| block | " + " | ".join(f"{m} λ_max" for m in methods) + " | ratio to " + methods[0] + " |")
    print("|---|" + "---|" * (len(methods) + 1))
    for name, first in per_method[methods[0]].items():
        values = [per_method[m][name] for m in methods]
        cells = [f"{b.lambda_max:.4g}{'' if b.converged else ' (not certified)'}" for b in values]
        ratios = ", ".join(f"{b.lambda_max / first.lambda_max:.3g}×" for b in values[1:])
        print(f"| {name} | " + " | ".join(cells) + f" | {ratios} |")


if __name__ == "__main__":
    main()
