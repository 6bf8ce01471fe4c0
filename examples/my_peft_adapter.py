"""λ_max of your own peft LoRA adapter on your own prompt/response pairs.

    python examples/my_peft_adapter.py                      # SmolLM2-135M (embedded), a few minutes on a CPU
    python examples/my_peft_adapter.py --model tiny-llama   # a tiny random Llama, seconds

It makes what a user already has — a peft adapter saved with ``save_pretrained`` and a JSONL file of pairs — and
measures it exactly as ``hessian-lora eigen ADAPTER_DIR --data pairs.jsonl --model MODEL --out eigen.json`` does.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

import hessian_lora as h

PAIRS = [
    ("What is 12 + 30?", "42"),
    ("What is 7 + 8?", "15"),
    ("What is 21 + 4?", "25"),
    ("What is 9 + 9?", "18"),
    ("What is 33 + 14?", "47"),
    ("What is 5 + 61?", "66"),
    ("What is 40 + 2?", "42"),
    ("What is 16 + 16?", "32"),
]


def main() -> None:
    """Parse the command line and run the example."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="hessian-lora-example-"))

    # 1. what you already have: a LoRA adapter saved by peft, and your data as {"prompt", "response"} lines
    base = h.load_model(args.model, device="cpu")
    peft_model = get_peft_model(
        base.model, LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    peft_model.save_pretrained(work / "my-lora")
    (work / "pairs.jsonl").write_text(
        "".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in PAIRS)
    )

    # 2. its sharpness: the whole adapter's λ_max and λ_min, each with its residual certificate
    # the adapter as a typed target: a plain peft directory on its base (h.eigen(work / "my-lora", model=...) is the
    # same; h.as_target tells a peft directory from a hessian-lora checkpoint by its files)
    adapter = h.PeftAdapter(work / "my-lora", base=args.model)
    report = h.eigen(
        adapter,
        task=str(work / "pairs.jsonl"),
        samples=len(PAIRS),
        batch_size=4,
        prompt_template="raw",
        progress=False,
    )  # raw: the pairs as trained, no chat template
    block = report.blocks[0]
    print(f"measured on: {report.source['data']}")
    print(
        f"λ_max = {block.lambda_max:.6g} (converged {block.converged}, residual {block.residual:.2e}, "
        f"{block.hvps} Hessian-vector products), λ_min = {block.lambda_min:.6g}"
    )
    print(f"gradient descent would be stable below η = 2/λ_max = {2 / block.lambda_max:.3g}")


if __name__ == "__main__":
    main()
