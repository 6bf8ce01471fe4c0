"""Products and seconds to a certified λ_max at LoRA initialisation from each start (issue 32), side by side in
one process, with hessian-eigenthings and the authors' algorithm on one block in both orders.

SmolLM2-135M, LoRA r = 8 on all seven projections at initialisation (B = 0), ``--samples`` examples of arith:

- per q_proj block of ``--layers`` and for the whole LoRA and DoRA adapters (``--whole``): Lanczos at tol 1e-3
  (the explicit residual certificate, ``which="largest"``) from each start of ``--starts`` (hessian/starts.py;
  ``random`` is today's default), each with a fresh ``HessianOperator`` so building the start's first-order
  pass and the graphs is timed; products counted by the solver, seconds end to end (start included);
- the reference: the largest certified value of a Lanczos run at tol 1e-6 (``--reference-block`` start vectors,
  random) and of every run above (each is a Rayleigh quotient, so a lower bound on λ_max; the reference is their
  maximum); each tol-1e-3 value's error against it;
- on the ``--peer-layer`` q_proj block (default 15): ours from ``--peer-start`` first, then hessian-eigenthings
  1.0.0a5 up the Krylov-budget ladder of bench/peers.py until it is within 1e-3 of the reference, the authors'
  algorithm (bench/_authors.py), then ours again: eigenthings' time at the budget it needs ÷ ours, both orders;
- on the ``--span-layer`` block: H inside the structured span (r products), how far the start's combination
  c = A v₁ is from the span's best c*, and the products from z(c*): the floor a single combination could reach.
  eigenthings is not a dependency: ``.venv/bin/pip install --no-deps --target .bench-deps
  hessian-eigenthings==1.0.0a5`` and run with ``PYTHONPATH=.bench-deps:.``.

    PYTHONPATH=.bench-deps:. .venv/bin/python bench/start_vectors.py --json bench/results/start_vectors.json
    PYTHONPATH=. .venv/bin/python bench/start_vectors.py --quick          # tiny-llama, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch

from hessian_lora.hessian import HessianOperator, PerModule, WholeAdapter, lanczos
from hessian_lora.hessian.starts import lora_factors, start_vectors, top_singular_pairs, with_random
from hessian_lora.inputs.models import load_model
from hessian_lora.inputs.tasks import TokenBatch, load_task, make_batches
from hessian_lora.training.adapters import AdapterConfig, build_adapter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _authors import VhpOperator, paper_lanczos  # bench/ is not a package: its folder on the path
from peers import (  # the peers' machinery, shared
    eigenthings_ladder,
    hessian_eigenthings,
    ladder_arguments,
    ladder_lines,
    model_arguments,
    timed,
)


def solve(
    model: Any,
    batches: list[TokenBatch],
    block: Any,
    start: str,
    *,
    tol: float = 1e-3,
    block_size: int | None = None,
    max_iter: int = 300,
) -> dict[str, Any]:
    """Lanczos from ``start`` on a fresh operator, timed end to end (the start's first-order pass included)."""

    def run() -> Any:
        operator = HessianOperator(model, batches, block)
        vectors = start_vectors(operator, start, seed=0)
        return lanczos(
            operator, which="largest", tol=tol, max_iter=max_iter, block_size=block_size, start=vectors.rows
        ), vectors

    (result, vectors), seconds = timed(run)
    return {
        "start": start,
        "lambda_max": result.lambda_max,
        "hvps": result.hvps,
        "seconds": seconds,
        "converged": result.converged,
        "bound": result.largest_bounds[0] if result.largest_bounds else None,
        "first_order_passes": vectors.passes,
        "random_share": vectors.random_share,
        "history": [round(record.values[0], 7) for record in result.history],
    }


def measure_block(
    name: str, model: Any, batches: list[TokenBatch], block: Any, args: argparse.Namespace
) -> dict[str, Any]:
    print(f"\n## {name} ({block.numel:,} parameters)", flush=True)
    runs = []
    for start in args.starts:
        entry = solve(model, batches, block, start)
        runs.append(entry)
        print(
            f"  {start:<11} {entry['hvps']:4d} products {entry['seconds']:7.1f} s  λ {entry['lambda_max']:.7g} "
            f"certified={entry['converged']}  Ritz values {entry['history']}",
            flush=True,
        )
    reference = solve(model, batches, block, args.reference_start, tol=1e-6, block_size=args.reference_block)
    certified = [run["lambda_max"] for run in runs if run["converged"]] + (
        [reference["lambda_max"]] if reference["converged"] else []
    )
    truth = max(certified) if certified else reference["lambda_max"]
    print(
        f"  reference (tol 1e-6, {args.reference_start} start, block {args.reference_block}): "
        f"λ {reference['lambda_max']:.8g} "
        f"({reference['hvps']} products, certified={reference['converged']}); λ_max taken as {truth:.8g}",
        flush=True,
    )
    for run in runs:
        run["error"] = abs(run["lambda_max"] - truth) / abs(truth)
    print(f"  {'start':<11} {'products':>8} {'seconds':>8} {'rel err':>8} {'certified':>9}")
    for run in runs:
        print(
            f"  {run['start']:<11} {run['hvps']:8d} {run['seconds']:8.1f} {run['error']:8.1e} "
            f"{'yes' if run['converged'] else 'no':>9}",
            flush=True,
        )
    return {
        "block": name,
        "parameters": block.numel,
        "reference": reference,
        "lambda_max": truth,
        "runs": runs,
    }


def peers(
    model: Any, batches: list[TokenBatch], layer: int, truth: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Ours (``--peer-start``) first and last around eigenthings' ladder and the authors' algorithm."""
    block = PerModule(modules=("q_proj",), layers=(layer,)).blocks(model)[0]
    print(f"\n## peers on {block.name}: λ_max {truth:.8g}", flush=True)
    row: dict[str, Any] = {"block": block.name, "reference": truth}
    row["ours_first"] = solve(model, batches, block, args.peer_start)
    if hessian_eigenthings is not None:
        row["eigenthings"] = eigenthings_ladder(model, batches, block, truth, args)
    paper, seconds = timed(lambda: paper_lanczos(VhpOperator(model, batches, block)))
    row["authors"] = {"lambda_max": paper["value"], "hvps": paper["hvps"], "seconds": seconds}
    row["ours_last"] = solve(model, batches, block, args.peer_start)
    for key in ("ours_first", "authors", "ours_last"):
        row[key]["error"] = abs(row[key]["lambda_max"] - truth) / abs(truth)
    first, last = row["ours_first"]["seconds"], row["ours_last"]["seconds"]
    print(
        f"ours ({args.peer_start}) first: {row['ours_first']['hvps']} products {first:.1f} s, error "
        f"{row['ours_first']['error']:.1e}; last: {row['ours_last']['hvps']} products {last:.1f} s, error "
        f"{row['ours_last']['error']:.1e}"
    )
    print(
        f"authors: {paper['hvps']} products {seconds:.1f} s, error {row['authors']['error']:.1e} (no "
        f"certificate); authors / ours {seconds / max(first, last):.2f}-{seconds / min(first, last):.2f}x"
    )
    ladder = row.get("eigenthings")
    for line in ladder_lines(ladder, args.target, [first, last]):
        print(line)
    if ladder and ladder[-1]["error"] <= args.target:
        print(
            f"eigenthings / ours: {ladder[-1]['seconds'] / first:.2f}x (ours first), "
            f"{ladder[-1]['seconds'] / last:.2f}x (ours last)",
            flush=True,
        )
    return row


def span(model: Any, batches: list[TokenBatch], layer: int, truth: float) -> dict[str, Any]:
    """Inside the structured span of one q_proj block: the Ritz values of H on span{(e_j v₁ᵀ, u₁ e_jᵀ)/√2} (r
    products), the overlap of the start's combination c = A v₁ with the best one c* (the span's top Ritz vector),
    and the products from z(c*) with its random half: what a single combination could reach if c* were free."""
    block = PerModule(modules=("q_proj",), layers=(layer,)).blocks(model)[0]
    operator = HessianOperator(model, batches, block)
    factor = lora_factors(model, operator.names)[0]
    ((u, _, v),), _ = top_singular_pairs(operator, [factor])
    a = operator.params[factor.a_index].detach().double()
    rank = a.shape[0]

    def direction(combination: torch.Tensor) -> torch.Tensor:
        pieces = [torch.zeros(p.shape, dtype=torch.float64) for p in operator.params]
        pieces[factor.a_index] = torch.outer(combination, v) / math.sqrt(2)
        pieces[factor.b_index] = torch.outer(u, combination) / math.sqrt(2)
        return torch.cat([piece.reshape(-1) for piece in pieces]).to(operator.dtype)

    basis = torch.stack([direction(torch.eye(rank, dtype=torch.float64)[j]) for j in range(rank)])
    projected = basis.double() @ operator.matmat(basis.T).double()
    values, vectors = torch.linalg.eigh((projected + projected.T) / 2)
    best = vectors[:, -1]
    combination = a @ v
    overlap = float((best @ combination).abs() / combination.norm())
    start = with_random(
        direction(best).unsqueeze(0), size=operator.size, dtype=operator.dtype, device=operator.device, seed=0
    )
    result = lanczos(operator, which="largest", tol=1e-3, max_iter=300, start=start)
    row = {
        "block": block.name,
        "span_ritz_values": values.tolist(),
        "overlap_Av1_with_best": overlap,
        "best_combination_products": result.hvps,
        "best_combination_lambda": result.lambda_max,
        "best_combination_error": abs(result.lambda_max - truth) / abs(truth),
        "converged": result.converged,
    }
    print(
        f"\n## inside the structured span of {block.name} ({rank} products): Ritz values "
        f"{[round(x, 6) for x in values.tolist()]} (λ_max {truth:.7g}); |<c*, A v1>| = {overlap:.3f}; from z(c*) "
        f"with its random half: {result.hvps} products, error {row['best_combination_error']:.1e}, "
        f"certified={result.converged}",
        flush=True,
    )
    return row


def summary(blocks: list[dict[str, Any]], starts: list[str]) -> dict[str, Any]:
    """Median products of the q_proj blocks and products of the whole adapters per start."""
    table: dict[str, Any] = {}
    modules = [b for b in blocks if b["block"].startswith("q_proj")]
    for start in starts:
        per = [next(run for run in b["runs"] if run["start"] == start) for b in modules]
        table[start] = {
            "q_proj_median_products": statistics.median(run["hvps"] for run in per) if per else None,
            "q_proj_all_within_1e-3": all(run["converged"] and run["error"] <= 1e-3 for run in per),
            "whole": {
                b["block"]: next(run["hvps"] for run in b["runs"] if run["start"] == start)
                for b in blocks
                if b["block"].startswith("whole")
            },
        }
        print(
            f"{start:<11} median products over q_proj blocks {table[start]['q_proj_median_products']}, all "
            f"certified within 1e-3: {table[start]['q_proj_all_within_1e-3']}; whole adapters "
            f"{table[start]['whole']}",
            flush=True,
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    model_arguments(parser)
    parser.add_argument("--layers", default="0,14,15,29")
    parser.add_argument(
        "--whole", default="lora,dora", help="methods whose whole adapter is measured ('' none)"
    )
    parser.add_argument("--starts", nargs="+", default=["random", "structured", "gradient"])
    parser.add_argument(
        "--reference-block", type=int, default=1, help="start vectors of the tol-1e-6 reference"
    )
    parser.add_argument("--reference-start", default="random", help="the start of the tol-1e-6 reference")
    parser.add_argument("--peer-layer", type=int, default=15, help="-1: no peers")
    parser.add_argument("--peer-start", default="structured")
    parser.add_argument(
        "--span-layer", type=int, default=15, help="the structured span's Ritz values (-1: no)"
    )
    ladder_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.model, args.rank, args.layers, args.samples, args.batch_size = "tiny-llama", 2, "0", 4, 2
        args.budgets, args.peer_layer, args.span_layer = [4, 8, 16], 0, 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M %Z')} | torch {torch.__version__} | {platform.processor() or 'cpu'} | "
        f"load {os.getloadavg()[0]:.2f} | eigenthings {getattr(hessian_eigenthings, '__version__', 'not installed')}"
        f" | {' '.join(sys.argv[1:])}",
        flush=True,
    )
    loaded = load_model(args.model, device="cpu")
    batches = make_batches(
        loaded.tokenizer, load_task("arith", n_train=args.samples, n_eval=0).train, args.batch_size
    )
    model = build_adapter(loaded.model, AdapterConfig("lora", rank=args.rank))
    print(
        f"{args.model}, LoRA r={args.rank} at initialisation, {args.samples} examples in {len(batches)} batch(es), "
        f"{sum(b.loss_tokens for b in batches)} loss tokens, {torch.get_num_threads()} thread(s)",
        flush=True,
    )
    layers = [int(layer) for layer in args.layers.split(",") if layer.strip()]
    blocks: list[dict[str, Any]] = []
    results: dict[str, Any] = {"blocks": blocks, "peers": None, "span": None, "argv": sys.argv[1:]}
    for layer in layers:
        blocks.append(
            measure_block(
                f"q_proj layer {layer}",
                model,
                batches,
                PerModule(modules=("q_proj",), layers=(layer,)).blocks(model)[0],
                args,
            )
        )
        save(args, results)
    if args.peer_layer >= 0:
        truth = next((b["lambda_max"] for b, layer in zip(blocks, layers) if layer == args.peer_layer), None)
        if truth is None:
            block = PerModule(modules=("q_proj",), layers=(args.peer_layer,)).blocks(model)[0]
            truth = solve(model, batches, block, "random", tol=1e-6, block_size=args.reference_block)[
                "lambda_max"
            ]
        results["peers"] = peers(model, batches, args.peer_layer, truth, args)
        save(args, results)
    for method in [m for m in args.whole.split(",") if m.strip()]:
        fresh = load_model(args.model, device="cpu")
        adapted = build_adapter(fresh.model, AdapterConfig(method, rank=args.rank))
        blocks.append(
            measure_block(f"whole {method}", adapted, batches, WholeAdapter().blocks(adapted)[0], args)
        )
        del adapted, fresh
        save(args, results)
    print("\n## summary", flush=True)
    results["summary"] = summary(blocks, args.starts)
    save(args, results)
    if args.span_layer >= 0:
        truth = next((b["lambda_max"] for b, layer in zip(blocks, layers) if layer == args.span_layer), None)
        if truth is not None:
            results["span"] = span(model, batches, args.span_layer, truth)
            save(args, results)
    print(f"# load at the end {os.getloadavg()[0]:.2f}", flush=True)


def save(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The results so far (after every section: a run cut short keeps what it measured)."""
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1, default=float)


if __name__ == "__main__":
    main()
