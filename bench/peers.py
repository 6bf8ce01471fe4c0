"""Time to a correct λ_max of one module block at LoRA initialisation, three tools side by side in one process
(issue 19, items (c) and (d)).

On each q_proj block of ``--layers`` (SmolLM2-135M, LoRA r = 8 on all seven projections, ``--samples`` examples):

- **reference**: our block Lanczos with a block of r start vectors at tol 1e-6 (the top of a cluster of about r
  nearly equal eigenvalues: a single start vector can settle on a lower member of it);
- **ours**: ``lanczos`` at tol 1e-3 with its explicit residual certificate, as ``eigen`` runs it (a fresh
  ``HessianOperator`` each time, so building the first-order graph is timed), with one start vector (the
  default) and with a block of r; run first and again last, so that machine noise hits both orders;
- **hessian-eigenthings 1.0.0a5** ``lanczos(k=1, which="LA", tol=1e-3)``: it has no early stop, the user picks the
  Krylov budget, so it runs at each of ``--budgets`` from the same seed until its value is within ``--target`` of
  the reference. Its time at that budget (what a user who knew the budget would pay) and the whole ladder's
  time are both printed, with its ``converged`` flag at every budget (a flag that is set on a wrong value is a
  certificate that lies). Not a dependency: install it beside the bench only,
  ``.venv/bin/pip install --no-deps --target .bench-deps hessian-eigenthings==1.0.0a5`` and run with
  ``PYTHONPATH=.bench-deps``;
- **the authors' algorithm** (bench/_authors.py): ``autograd.functional.vhp`` products, full
  re-orthogonalisation, stop when the top Ritz value moves by less than 5e-3 absolute after 5 steps.

Every loss is the same token-weighted mean over the batches, so all four see the same Hessian.

    PYTHONPATH=.bench-deps .venv/bin/python bench/peers.py                  # layer 15 (~15 min on one thread)
    PYTHONPATH=.bench-deps .venv/bin/python bench/peers.py --layers 0,15,29
    .venv/bin/python bench/peers.py --quick                                 # tiny-llama, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from hessian_lora.hessian import HessianOperator, PerModule, lanczos
from hessian_lora.hessian.loss import loss_sum
from hessian_lora.inputs.models import load_model
from hessian_lora.inputs.tasks import TokenBatch, load_task, make_batches
from hessian_lora.training.adapters import AdapterConfig, build_adapter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _authors import PAPER_TOL, VhpOperator, paper_lanczos  # bench/ is not a package: its folder on the path

try:
    import hessian_eigenthings
except ImportError:  # the peer is optional: the bench says how to install it and measures the rest
    hessian_eigenthings = None


def timed(run: Callable[[], Any]) -> tuple[Any, float]:
    began = time.perf_counter()
    result = run()
    return result, time.perf_counter() - began


def ours(model: Any, batches: list[TokenBatch], block: Any, *, block_size: int | None) -> dict[str, Any]:
    def run() -> Any:
        return lanczos(HessianOperator(model, batches, block), tol=1e-3, max_iter=300, block_size=block_size)

    result, seconds = timed(run)
    return {
        "lambda_max": result.lambda_max,
        "hvps": result.hvps,
        "seconds": seconds,
        "converged": result.converged,
    }


def eigenthings_ladder(
    model: Any, batches: list[TokenBatch], block: Any, truth: float, args: argparse.Namespace
) -> list[dict[str, Any]]:
    assert hessian_eigenthings is not None
    tokens = sum(b.loss_tokens for b in batches)
    names = set(block.names)

    def loss_fn(module: Any, batch: TokenBatch) -> torch.Tensor:
        # eigenthings averages its batches' losses with equal weights; scaled so that the average is our
        # token-weighted mean over all batches (the same Hessian)
        return loss_sum(module, batch) * (len(batches) / tokens)

    operator = hessian_eigenthings.HessianOperator(
        model, batches, loss_fn, param_filter=lambda name, _: name in names
    )
    rows = []
    for budget in args.budgets:
        result, seconds = timed(
            lambda b=budget: hessian_eigenthings.lanczos(
                operator, k=1, max_iter=b, tol=1e-3, which="LA", seed=0
            )
        )
        value = float(result.eigenvalues[0])
        error = abs(value - truth) / abs(truth)
        rows.append(
            {
                "budget": budget,
                "lambda_max": value,
                "error": error,
                "seconds": seconds,
                "converged": bool(result.converged[0]),
            }
        )
        print(
            f"  eigenthings budget {budget:3d}: λ_max {value:.6g} error {error:.1e} {seconds:6.1f} s "
            f"converged={rows[-1]['converged']}",
            flush=True,
        )
        if error <= args.target:
            break
    return rows


def measure_block(
    model: Any, batches: list[TokenBatch], layer: int, args: argparse.Namespace
) -> dict[str, Any]:
    block = PerModule(modules=("q_proj",), layers=(layer,)).blocks(model)[0]
    reference = lanczos(HessianOperator(model, batches, block), tol=1e-6, max_iter=400, block_size=args.rank)
    truth = reference.lambda_max
    print(
        f"\n## {block.name} ({block.numel:,} parameters): reference λ_max {truth:.8g} (block of {args.rank}, tol "
        f"1e-6, {reference.hvps} products, converged {reference.converged})",
        flush=True,
    )
    row: dict[str, Any] = {
        "block": block.name,
        "reference": truth,
        "reference_converged": reference.converged,
    }
    row["ours_first"] = ours(model, batches, block, block_size=None)
    row["ours_rank_first"] = ours(model, batches, block, block_size=args.rank)
    if hessian_eigenthings is not None:
        row["eigenthings"] = eigenthings_ladder(model, batches, block, truth, args)
    paper, seconds = timed(lambda: paper_lanczos(VhpOperator(model, batches, block)))
    row["authors"] = {"lambda_max": paper["value"], "hvps": paper["hvps"], "seconds": seconds}
    row["ours_last"] = ours(model, batches, block, block_size=None)
    row["ours_rank_last"] = ours(model, batches, block, block_size=args.rank)
    for key in ("ours_first", "ours_rank_first", "authors", "ours_last", "ours_rank_last"):
        row[key]["error"] = abs(row[key]["lambda_max"] - truth) / abs(truth)
    report(row, args)
    return row


def report(row: dict[str, Any], args: argparse.Namespace) -> None:
    ours_s = min(row["ours_first"]["seconds"], row["ours_last"]["seconds"])
    ours_max = max(row["ours_first"]["seconds"], row["ours_last"]["seconds"])
    print(f"{'tool':<44} {'λ_max':>12} {'rel err':>8} {'products':>8} {'seconds':>8} {'certified':>9}")
    lines = [
        ("ours, one start vector (first)", row["ours_first"]),
        ("ours, block of r (first)", row["ours_rank_first"]),
        (f"authors: vhp Lanczos, |Δλ| < {PAPER_TOL:g} abs", {**row["authors"], "converged": None}),
        ("ours, one start vector (last)", row["ours_last"]),
        ("ours, block of r (last)", row["ours_rank_last"]),
    ]
    for name, entry in lines:
        flag = "-" if entry.get("converged") is None else ("yes" if entry["converged"] else "no")
        print(
            f"{name:<44} {entry['lambda_max']:12.7g} {entry['error']:8.1e} {entry['hvps']:8d} "
            f"{entry['seconds']:8.1f} {flag:>9}",
            flush=True,
        )
    print(
        f"authors' time / ours: {row['authors']['seconds'] / ours_max:.2f}-"
        f"{row['authors']['seconds'] / ours_s:.2f}x; their error {row['authors']['error']:.1e} (no certificate)"
    )
    for line in ladder_lines(row.get("eigenthings"), args.target, [ours_s, ours_max]):
        print(line)


def ladder_lines(ladder: list[dict[str, Any]] | None, target: float, ours_seconds: list[float]) -> list[str]:
    """What eigenthings' budget ladder says: the budget it needs, its time there against ours (the range over
    ``ours_seconds``), and any budget at which it reported converged on a wrong value."""
    if not ladder:
        return [
            "hessian-eigenthings not installed: see the docstring for the one-line install beside the bench"
        ]
    last = ladder[-1]
    lying = [r["budget"] for r in ladder if r["converged"] and r["error"] > target]
    if last["error"] <= target:
        lines = [
            f"eigenthings needs budget {last['budget']} to be within {target:g}: {last['seconds']:.1f} s at "
            f"that budget, {sum(r['seconds'] for r in ladder):.1f} s for the ladder; eigenthings / ours "
            f"{last['seconds'] / max(ours_seconds):.2f}-{last['seconds'] / min(ours_seconds):.2f}x at its budget"
        ]
    else:
        lines = [f"eigenthings never within {target:g} up to budget {last['budget']}"]
    if lying:
        lines.append(f"eigenthings reported converged on a wrong value at budget(s) {lying}")
    return lines


def model_arguments(
    parser: argparse.ArgumentParser, *, rank: int = 8, samples: int = 8, batch_size: int = 8
) -> None:
    """The options every SmolLM2 LoRA bench shares: the model, the rank, the examples and their batch size."""
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rank", type=int, default=rank)
    parser.add_argument("--samples", type=int, default=samples)
    parser.add_argument("--batch-size", type=int, default=batch_size)


def ladder_arguments(parser: argparse.ArgumentParser) -> None:
    """eigenthings' Krylov-budget ladder, the error that counts as correct, threads, the JSON and ``--quick``."""
    parser.add_argument("--budgets", type=int, nargs="+", default=[8, 12, 16, 20, 24, 32])
    parser.add_argument("--target", type=float, default=1e-3, help="relative error that counts as correct")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="tiny-llama, seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    model_arguments(parser)
    parser.add_argument("--layers", default="15")
    ladder_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.model, args.rank, args.layers, args.samples, args.batch_size = "tiny-llama", 2, "0", 4, 2
        args.budgets = [4, 8, 16]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} | torch {torch.__version__} | {platform.processor() or 'cpu'} | "
        f"load {os.getloadavg()[0]:.2f} | eigenthings "
        f"{getattr(hessian_eigenthings, '__version__', 'not installed')} | {' '.join(sys.argv[1:])}",
        flush=True,
    )
    loaded = load_model(args.model, device="cpu")
    model = build_adapter(loaded.model, AdapterConfig("lora", rank=args.rank))
    batches = make_batches(
        loaded.tokenizer, load_task("arith", n_train=args.samples, n_eval=0).train, args.batch_size
    )
    print(
        f"{args.model}, LoRA r={args.rank}, {args.samples} examples in {len(batches)} batch(es), "
        f"{sum(b.loss_tokens for b in batches)} loss tokens, {torch.get_num_threads()} thread(s)",
        flush=True,
    )
    rows = [measure_block(model, batches, int(layer), args) for layer in args.layers.split(",")]
    print(f"# load at the end {os.getloadavg()[0]:.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1, default=float)


if __name__ == "__main__":
    main()
