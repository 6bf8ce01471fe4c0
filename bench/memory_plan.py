"""Calibration of the memory plan's activation formula (hessian_lora/hessian/memory_plan.py), measured.

Each shape runs in its own subprocess: a random Llama with LoRA r=8 on all seven projections (B ~ N(0, 0.01²)),
one batch of B random sequences of S tokens, and one double-backward product; the peak RSS above the RSS just
before the product (sampled every 2 ms) is that product's activation memory. A least-squares fit over the four
terms of the formula gives its constants; the table compares measurement and fit for every shape.

    .venv/bin/python bench/memory_plan.py            # the 13 shapes below, ~1 min
    .venv/bin/python bench/memory_plan.py --check    # measured vs the constants in memory_plan.py (no fit)

Measured 2026-12-02 (the same subprocess per shape as here, before this file was written; CPU, torch 2.13, 1 thread,
machine shared; memory does not depend on load): fit 77 / 17.4 / 1.4 / 8.9 floats per token·layer·hidden /
token·layer·intermediate / attention score / token·vocabulary; fit ÷ measured 0.85–1.05 over the 13 shapes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

# hidden, layers, heads, kv_heads, intermediate, vocab, batch, length
SHAPES = [
    (256, 4, 4, 2, 512, 2000, 2, 64),
    (256, 4, 4, 2, 512, 2000, 2, 256),
    (256, 4, 4, 2, 512, 2000, 8, 64),
    (256, 4, 4, 2, 512, 32000, 2, 64),
    (512, 4, 8, 4, 1536, 2000, 2, 64),
    (256, 8, 4, 2, 512, 2000, 2, 64),
    (256, 4, 4, 2, 2048, 2000, 2, 64),
    (512, 4, 4, 2, 512, 2000, 2, 64),
    (256, 4, 4, 2, 512, 2000, 4, 128),
    (256, 2, 4, 2, 512, 2000, 2, 64),
    (256, 4, 4, 2, 512, 8000, 4, 64),
    (384, 4, 6, 2, 1024, 4000, 4, 96),
    (256, 4, 4, 2, 2048, 2000, 4, 128),
]

_ONE = r"""
import json, sys, threading, time, gc
import torch, psutil
torch.set_num_threads(1)
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, get_peft_model
from hessian_lora.hessian import HessianOperator, WholeAdapter
from hessian_lora.inputs.tasks import TokenBatch
h, L, heads, kv, inter, V, B, S = map(int, sys.argv[1:9])
cfg = LlamaConfig(vocab_size=V, hidden_size=h, intermediate_size=inter, num_hidden_layers=L,
                  num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=True,
                  attn_implementation="sdpa")
torch.manual_seed(0)
model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=8, lora_alpha=8, target_modules=[
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
for n, p in model.named_parameters():
    if "lora_B" in n:
        p.data.normal_(0, 0.01)
ids = torch.randint(0, V, (B, S))
op = HessianOperator(model, [TokenBatch(ids, torch.ones_like(ids), ids.clone())], WholeAdapter().blocks(model)[0],
                     reuse=False)
v = torch.randn(op.size)
gc.collect()
proc = psutil.Process()
base = proc.memory_info().rss
peak, stop = [base], [False]
def sample():
    while not stop[0]:
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.002)
t = threading.Thread(target=sample)
t.start()
op.matvec(v)
stop[0] = True
t.join()
print(json.dumps({"delta": peak[0] - base}))
"""


def features(shape: tuple[int, ...]) -> list[float]:
    h, layers, heads, _, i, vocab, batch, length = shape
    tokens = batch * length
    return [
        tokens * layers * h,
        tokens * layers * i,
        layers * batch * heads * length * length,
        tokens * vocab,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="compare with the shipped constants, no fit")
    args = parser.parse_args()
    import numpy as np

    from hessian_lora.hessian.memory_plan import ACTIVATION_FLOATS

    measured = []
    for shape in SHAPES:
        done = subprocess.run(
            [sys.executable, "-c", _ONE, *map(str, shape)], capture_output=True, text=True, check=True
        )
        measured.append(json.loads(done.stdout.strip().splitlines()[-1])["delta"])
    x = np.array([features(shape) for shape in SHAPES], dtype=float)
    y = np.array(measured, dtype=float) / 4
    shipped = np.array(
        [
            ACTIVATION_FLOATS[key]
            for key in ("token_layer_hidden", "token_layer_intermediate", "attention_score", "token_vocab")
        ]
    )
    coefficients = shipped if args.check else np.linalg.lstsq(x, y, rcond=None)[0]
    print(
        ("shipped" if args.check else "fitted")
        + " floats per unit: "
        + ", ".join(f"{c:.3g}" for c in coefficients)
    )
    print(f"{'shape (h L heads kv i V B S)':<36} {'measured MB':>11} {'formula MB':>10} {'ratio':>6}")
    ratios = []
    for shape, delta, row in zip(SHAPES, measured, x):
        estimate = 4 * float(row @ coefficients)
        ratios.append(estimate / delta)
        print(
            f"{' '.join(map(str, shape)):<36} {delta / 1e6:11.1f} {estimate / 1e6:10.1f} {estimate / delta:6.2f}"
        )
    print(f"formula / measured: {min(ratios):.2f} – {max(ratios):.2f} (the plan adds a 25 % margin)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
