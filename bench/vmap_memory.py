"""Peak memory of a batched (vmap) second backward against the loop and a single product, each in a child
process of its own (the kernel's high-water mark of the resident set, above the model): the measurement behind
the memory plan's ``VMAP_DIRECTION_SHARE``. A random Llama (hidden 256, 4 layers, intermediate 768, vocabulary
2048), LoRA r = 8 on q_proj and v_proj, layer 2's q_proj block, one batch of 4 × 256 tokens, one thread.

    .venv/bin/python bench/vmap_memory.py --directions 8
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys


def child(mode: str, directions: int) -> float:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from hessian_lora.hessian import HessianOperator, PerModule
    from hessian_lora.inputs.tasks import TokenBatch

    torch.set_num_threads(1)
    config = LlamaConfig(
        hidden_size=256,
        num_hidden_layers=4,
        intermediate_size=768,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=2048,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = get_peft_model(
        LlamaForCausalLM(config), LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    ids = torch.randint(0, 2048, (4, 256))
    (block,) = PerModule(modules=("q_proj",), layers=(2,)).blocks(model)
    operator = HessianOperator(
        model,
        [TokenBatch(ids, torch.ones_like(ids), ids.clone())],
        block,
        reuse=False,
        batching="vmap" if mode == "vmap" else "loop",
        directions_per_pass=directions,
    )
    matrix = torch.randn(operator.size, directions)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    operator.matvec(matrix[:, 0]) if mode == "single" else operator.matmat(matrix)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # MiB


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--directions", type=int, default=8)
    parser.add_argument("--mode", choices=("single", "loop", "vmap"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(child(args.mode, args.directions))
        return 0
    peaks = {}
    for mode in ("single", "loop", "vmap"):
        done = subprocess.run(
            [sys.executable, __file__, "--directions", str(args.directions), "--mode", mode],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[mode] = float(done.stdout.strip().splitlines()[-1])
        print(f"{mode:>6}: peak {peaks[mode]:.0f} MiB above the model", flush=True)
    share = (peaks["vmap"] - peaks["single"]) / ((args.directions - 1) * peaks["single"])
    print(
        f"each direction beyond the first of a vmap pass: {share:.2f} of a single product's peak "
        f"(the plan assumes VMAP_DIRECTION_SHARE)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
