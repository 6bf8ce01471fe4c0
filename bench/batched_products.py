"""Many directions per pass, measured side by side in one process (issue 19).

Part ``products``: the time of k Hessian-vector products for k = 1, 4, 8, 16 on one module block, three ways
on the same operator and vectors, in rotating order: k single products (each its own forward, first and second
backward: ``reuse`` off), one ``matmat`` whose second backwards loop over one first-order graph per batch
(``batching="loop"``), and one ``matmat`` with a batched second backward (``batching="vmap"``,
``torch.autograd.grad(..., is_grads_batched=True)``). Prints each time, the ratios and the largest relative
difference from the single products.

Part ``scan``: a per-module scan at LoRA initialisation (``eigen`` on the same batches, the same tolerance),
the blocks solved one after another against side by side on shared passes (``together``), with ``reuse`` as
the settings give (``--reuse auto``: first-order graphs kept; ``off``: the paper's regime of many batches, where
no graph is kept). Prints the seconds, the products, each block's certificate and the largest relative
difference of λ_max.

Part ``block-size``: products and seconds to a certified λ_max of one q_proj block at LoRA initialisation with
one start vector against a block of r (``block_size="rank"``), and what changes.

    .venv/bin/python bench/batched_products.py                       # SmolLM2-135M, all parts (~40 min)
    .venv/bin/python bench/batched_products.py --parts products      # ~8 min
    .venv/bin/python bench/batched_products.py --quick               # tiny-llama, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import torch

import hessian_lora
from hessian_lora.hessian import HessianOperator, PerModule
from hessian_lora.inputs.models import load_model
from hessian_lora.inputs.tasks import load_task, make_batches
from hessian_lora.training.adapters import AdapterConfig, build_adapter


def part_products(args: argparse.Namespace) -> dict[str, Any]:
    loaded = load_model(args.model, device=args.device)
    model = build_adapter(loaded.model, AdapterConfig("lora", rank=args.rank))
    batches = make_batches(
        loaded.tokenizer, load_task("arith", n_train=args.samples, n_eval=0).train, args.batch_size
    )
    block = PerModule(modules=("q_proj",), layers=(args.layer,)).blocks(model)[0]
    operators = {
        "single": HessianOperator(model, batches, block, reuse=False),
        "loop": HessianOperator(model, batches, block, reuse=False, batching="loop"),
        "vmap": HessianOperator(model, batches, block, reuse=False, batching="vmap", directions_per_pass=16),
    }
    size = operators["single"].size
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    print(
        f"products: {args.model}, LoRA r={args.rank}, {block.name} ({size:,} parameters), {len(batches)} "
        f"batch(es), {tokens} tokens, {torch.get_num_threads()} thread(s)",
        flush=True,
    )
    operators["loop"].matmat(torch.randn(size, 1))  # warm-up
    operators["vmap"].matmat(torch.randn(size, 2))
    rows = []
    for k in args.ks:
        matrix = torch.randn(size, k, generator=torch.Generator().manual_seed(k)).to(
            operators["single"].device
        )
        seconds: dict[str, float] = {}
        answers: dict[str, torch.Tensor] = {}
        order = ["single", "loop", "vmap"]
        order = order[k % 3 :] + order[: k % 3]  # rotate, so machine noise does not favour one way
        for way in order:
            _synchronize(args.device)
            began = time.perf_counter()
            if way == "single":
                answers[way] = torch.stack([operators[way].matvec(column) for column in matrix.T], dim=1)
            else:
                answers[way] = operators[way].matmat(matrix)
            _synchronize(args.device)
            seconds[way] = time.perf_counter() - began
        errors = {
            way: float((answers[way] - answers["single"]).norm() / answers["single"].norm())
            for way in ("loop", "vmap")
        }
        row = {
            "k": k,
            **{f"{way}_s": round(value, 2) for way, value in seconds.items()},
            "single/loop": round(seconds["single"] / seconds["loop"], 2),
            "single/vmap": round(seconds["single"] / seconds["vmap"], 2),
            "loop/vmap": round(seconds["loop"] / seconds["vmap"], 2),
            "max_rel_diff": max(errors.values()),
        }
        rows.append(row)
        print(
            f"  k={k:2d}: single {seconds['single']:7.2f} s | loop {seconds['loop']:7.2f} s | vmap "
            f"{seconds['vmap']:7.2f} s | single/loop {row['single/loop']:.2f}x, single/vmap "
            f"{row['single/vmap']:.2f}x | max rel. diff {row['max_rel_diff']:.1e}",
            flush=True,
        )
    return {"block": block.name, "size": size, "tokens": tokens, "rows": rows}


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def part_scan(args: argparse.Namespace, reuse: str) -> dict[str, Any]:
    common = {
        "model": args.model,
        "method": "lora",
        "rank": args.rank,
        "samples": args.samples,
        "device": args.device,
        "batch_size": args.batch_size,
        "blocks": "per-module",
        "modules": "q_proj,v_proj",
        "layers": args.layers,
        "tol": 1e-3,
        "progress": False,
        "reuse": "auto" if reuse == "auto" else False,
    }
    results = {}
    order = [False, True] if reuse == "auto" else [True, False]
    for together in order:
        began = time.perf_counter()
        report = hessian_lora.eigen(**common, together=together)
        results[together] = (time.perf_counter() - began, report)
    (alone_s, alone), (together_s, joint) = results[False], results[True]
    worst = max(
        abs(a.lambda_max - b.lambda_max) / abs(b.lambda_max) for a, b in zip(joint.blocks, alone.blocks)
    )
    row = {
        "reuse": reuse,
        "blocks": len(alone.blocks),
        "one_at_a_time_s": round(alone_s, 1),
        "together_s": round(together_s, 1),
        "speed-up": round(alone_s / together_s, 2),
        "hvps_one_at_a_time": sum(b.hvps for b in alone.blocks),
        "hvps_together": sum(b.hvps for b in joint.blocks),
        "certified": [sum(b.converged for b in alone.blocks), sum(b.converged for b in joint.blocks)],
        "max_rel_diff_lambda_max": worst,
    }
    print(
        f"scan (reuse {reuse}): {row['blocks']} blocks (q_proj, v_proj of layers {args.layers}); one at a time "
        f"{alone_s:.1f} s, {row['hvps_one_at_a_time']} products, {row['certified'][0]} certified | together "
        f"{together_s:.1f} s, {row['hvps_together']} products, {row['certified'][1]} certified | "
        f"speed-up {row['speed-up']:.2f}x | max rel. diff of λ_max {worst:.1e}",
        flush=True,
    )
    return row


def part_block_size(args: argparse.Namespace) -> dict[str, Any]:
    common = {
        "model": args.model,
        "method": "lora",
        "rank": args.rank,
        "samples": args.samples,
        "device": args.device,
        "batch_size": args.batch_size,
        "blocks": "per-module",
        "modules": "q_proj",
        "layers": str(args.layer),
        "tol": 1e-3,
        "smallest": False,
        "progress": False,
    }
    rows = {}
    for block_size in (None, "rank"):
        began = time.perf_counter()
        report = hessian_lora.eigen(**common, block_size=block_size)
        block = report.blocks[0]
        rows[str(block_size)] = {
            "seconds": round(time.perf_counter() - began, 1),
            "hvps": block.hvps,
            "lambda_max": block.lambda_max,
            "converged": block.converged,
        }
    tight = hessian_lora.eigen(**{**common, "tol": 1e-6, "max_iter": 300}, block_size="rank").blocks[0]
    for row in rows.values():
        row["error_vs_tight"] = abs(row["lambda_max"] - tight.lambda_max) / abs(tight.lambda_max)
    print(
        f"block size ({common['modules']}@{args.layer}, r={args.rank}, tol 1e-3, λ_max only): one start vector "
        f"{rows['None']['hvps']} products {rows['None']['seconds']} s error {rows['None']['error_vs_tight']:.1e} | "
        f"block of r {rows['rank']['hvps']} products {rows['rank']['seconds']} s error "
        f"{rows['rank']['error_vs_tight']:.1e} (reference: block of r at tol 1e-6, {tight.hvps} products, "
        f"converged {tight.converged})",
        flush=True,
    )
    return {**rows, "reference_lambda_max": tight.lambda_max}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--layers", default="0,3,6,9,12,15,18,21,24,27")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--parts", nargs="+", default=["products", "scan", "block-size"])
    parser.add_argument("--scan-reuse", nargs="+", default=["auto", "off"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="tiny-llama, seconds")
    args = parser.parse_args()
    if args.quick:
        args.model, args.rank, args.layer, args.layers, args.ks, args.samples = (
            "tiny-llama",
            2,
            0,
            "0:2",
            [1, 4],
            4,
        )
        args.batch_size = 2
    torch.set_num_threads(args.threads)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} | torch {torch.__version__} | {platform.processor() or 'cpu'} | "
        f"load {os.getloadavg()[0]:.2f} | {' '.join(sys.argv[1:])}",
        flush=True,
    )
    results: dict[str, Any] = {}
    if "products" in args.parts:
        results["products"] = part_products(args)
    if "scan" in args.parts:
        results["scan"] = [part_scan(args, reuse) for reuse in args.scan_reuse]
    if "block-size" in args.parts:
        results["block_size"] = part_block_size(args)
    print(f"# load at the end {os.getloadavg()[0]:.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
