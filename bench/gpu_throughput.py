"""The paper's Hessian on one GPU within a time limit: the whole adapter certified at the paper's data size, then
as many per-module blocks as the time left allows, with the speed-ups measured side by side in the same run.

The model is a random Llama with Qwen3-0.6B's shapes and LoRA r = 128 on all seven projections at
initialisation (80,740,352 adapter parameters; bench/rehearsal.py builds it), and the data 500 random sequences
of 128 tokens (the paper's 500 samples; its 100 batches of 5 are the streamed layout). In order:

1. The memory plan: packed batches within a token budget sized from the free memory (the chunked LM head and
   the Krylov vectors at the iteration cap counted; ``--pack-tokens`` overrides), and the batching choice.
2. Ratios on the first ``--ratio-samples`` samples: one product streamed (batches of 5, plain head) against
   packed (plain head) and packed with the chunked head; then ``--directions`` products of one module's block
   on the first packed batch, loop against vmap, with the peak memory of each (CUDA), the measurement that
   calibrates the plan's ``VMAP_DIRECTION_SHARE``.
3. Lanczos on the whole adapter, packed + chunked head, to a certified λ_max (tol 1e-3), unless time runs out.
4. Per-module blocks scanned ``--scan-layers`` layers at a time (hessian/scan.py, batched tangents under
   vmap) while the time left exceeds the last group's duration; blocks per minute and products per block.

    python bench/gpu_throughput.py --minutes 7               # on the GPU (bench/gpu_check.sh runs it)
    python bench/gpu_throughput.py --tiny                    # the same pipeline on tiny shapes on the CPU

Exit status 0 when the whole adapter's λ_max was certified, 3 otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rehearsal import SHAPES, build  # one home for the Qwen3-0.6B-shaped model

from hessian_lora.hessian import HessianOperator, PerModule, WholeAdapter, lanczos
from hessian_lora.hessian.loss import ChunkedHeadLoss, loss_sum
from hessian_lora.hessian.memory_plan import (
    WORK_VECTORS,
    free_memory,
    packing_tokens,
    plan_memory,
)
from hessian_lora.hessian.scan import scan_blocks
from hessian_lora.inputs.models import default_device
from hessian_lora.inputs.tasks import TokenBatch, pack_batches, packing_of


class OutOfTime(Exception):
    """The time limit came before the certificate."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny shapes, 40 samples of 32 tokens (a CPU dry run)"
    )
    parser.add_argument("--minutes", type=float, default=7.0, help="time limit of the whole run")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument(
        "--pack-tokens", type=int, default=None, help="token slots a packed batch (default: plan)"
    )
    parser.add_argument("--head-chunk", type=int, default=1024, help="loss tokens a chunk of the LM head")
    parser.add_argument(
        "--certify-share",
        type=float,
        default=0.6,
        help="share of the time left after the ratios that the whole adapter's Lanczos may take",
    )
    parser.add_argument("--ratio-samples", type=int, default=100)
    parser.add_argument("--directions", type=int, default=8, help="directions of the loop/vmap comparison")
    parser.add_argument("--max-iter", type=int, default=40)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--scan-layers", type=int, default=4, help="layers whose blocks are scanned together")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.tiny:
        args.samples, args.length, args.rank = min(args.samples, 20), 32, 4
        args.head_chunk, args.ratio_samples = 64, min(args.ratio_samples, 10)
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    deadline = began + 60 * args.minutes
    device = default_device()
    size = "tiny" if args.tiny else "qwen3-0.6b"
    model = build(size, args.rank, True, device)
    whole = WholeAdapter().blocks(model)[0]
    generator = torch.Generator().manual_seed(2)
    vocab = SHAPES[size]["vocab_size"]
    ids = torch.randint(0, vocab, (args.samples, args.length), generator=generator)
    streamed = [
        TokenBatch(ids[i : i + 5], torch.ones_like(ids[i : i + 5]), ids[i : i + 5].clone())
        for i in range(0, args.samples, 5)
    ]
    print(
        f"model: random Llama with {size} shapes, {sum(p.numel() for p in model.parameters()) / 1e9:.3f} B "
        f"parameters; LoRA r={args.rank} on 7 projections at initialisation: {whole.numel:,} adapter parameters; "
        f"{args.samples} samples × {args.length} tokens; {device}, torch {torch.__version__}; built in "
        f"{time.perf_counter() - began:.0f} s",
        flush=True,
    )

    # 1. the plan: the packing budget leaves room for the Krylov vectors at the cap and the work vectors
    vector_bytes = whole.numel * 4
    krylov = 2 * args.max_iter * vector_bytes
    free = free_memory(device) if device.type == "cuda" else 2**34  # the CPU dry run: a nominal 16 GiB
    budget = args.pack_tokens or packing_tokens(
        model,
        args.length,
        head_chunk=args.head_chunk,
        share=0.8,
        free_bytes=max(free - krylov - WORK_VECTORS * vector_bytes, 0),
    )
    packed = pack_batches(streamed, budget)
    head = ChunkedHeadLoss(args.head_chunk)
    print(f"packing: {packing_of(streamed).line()}\n         {packing_of(packed, budget).line()}", flush=True)
    plan = plan_memory(
        model,
        packed,
        block_parameters=whole.numel,
        dtype=torch.float32,
        device=device,
        max_iter=args.max_iter,
        reuse=False,
        head_chunk=args.head_chunk,
        directions_per_pass=args.directions,
        free_bytes=free if device.type != "cuda" else None,
    )
    print("\n".join(plan.lines()), flush=True)

    # 2. ratios on the first samples, side by side
    first = args.ratio_samples // 5
    few_streamed, few_packed = streamed[:first], pack_batches(streamed[:first], budget)
    vector = torch.randn(whole.numel, generator=torch.Generator().manual_seed(3)).to(device)
    layouts = {
        "streamed, plain head": (few_streamed, loss_sum),
        "packed, plain head": (few_packed, loss_sum),
        "packed, chunked head": (few_packed, head),
    }
    seconds: dict[str, float] = {}
    products: dict[str, torch.Tensor] = {}
    HessianOperator(model, few_packed, whole, loss_fn=head, reuse=False).matvec(vector)  # one warm-up for all
    for name, (batches, loss) in layouts.items():
        operator = HessianOperator(model, batches, whole, loss_fn=loss, reuse=False)
        products[name], seconds[name] = _timed(
            device, lambda operator=operator: operator.matvec(vector), warmup=False
        )
        print(
            f"  one product, {name}: {seconds[name]:.2f} s ({len(batches)} batch(es), "
            f"{args.ratio_samples} samples){_peak(device)}",
            flush=True,
        )
    reference = products["streamed, plain head"]
    drift = max(float((p - reference).norm() / reference.norm()) for p in products.values())
    print(
        f"packed/streamed: {seconds['streamed, plain head'] / seconds['packed, plain head']:.2f}x faster (plain "
        f"head), {seconds['streamed, plain head'] / seconds['packed, chunked head']:.2f}x (chunked head); products "
        f"agree to {drift:.1e} (relative)",
        flush=True,
    )
    (module,) = PerModule(modules=("q_proj",), layers=(0,)).blocks(model)
    matrix = torch.randn(module.numel, args.directions, generator=torch.Generator().manual_seed(4)).to(device)
    batched: dict[str, float] = {}
    answers = {}
    for batching in ("loop", "vmap"):
        operator = HessianOperator(
            model,
            few_packed[:1],
            module,
            loss_fn=head,
            reuse=False,
            batching=batching,
            directions_per_pass=args.directions,
        )
        answers[batching], batched[batching] = _timed(
            device, lambda operator=operator: operator.matmat(matrix)
        )
        print(
            f"  {args.directions} directions on one packed batch, {batching}: {batched[batching]:.2f} s"
            f"{_peak(device)}",
            flush=True,
        )
    difference = float((answers["vmap"] - answers["loop"]).norm() / answers["loop"].norm())
    print(
        f"vmap/loop: vmap {batched['loop'] / batched['vmap']:.2f}x faster ({args.directions} directions, "
        f"{few_packed[0].input_ids.numel():,} token slots; relative difference {difference:.1e})",
        flush=True,
    )

    # 3. the whole adapter, certified at the paper's data size
    operator = HessianOperator(model, packed, whole, loss_fn=head, reuse=False)
    operator.follow_plan(plan)

    # the whole adapter gets a share of the time left, so that the scan is measured too
    certify_by = time.perf_counter() + args.certify_share * max(deadline - time.perf_counter(), 0.0)
    # one product over every packed batch, estimated from the ratio measurement (the first samples)
    per_product = seconds["packed, chunked head"] * args.samples / max(args.ratio_samples, 1)

    def progress(record: Any) -> None:
        residual = record.residuals[0] if record.residuals else float("nan")
        print(
            f"  step {record.iteration:3d}  products {record.hvps:3d}  θ {record.values[0]:.6g}  estimate "
            f"{residual:.2e}  {time.perf_counter() - began:6.0f} s",
            flush=True,
        )
        if time.perf_counter() + per_product > certify_by:
            raise OutOfTime

    certified = False
    try:
        result = lanczos(
            operator,
            which="largest",
            tol=args.tol,
            max_iter=args.max_iter,
            callback=progress,
            memory=plan.krylov_memory(),
        )
        certified = result.converged
        per_product = result.seconds / max(result.hvps, 1)
        print(
            f"whole adapter ({whole.numel:,} parameters): λ_max {result.lambda_max:.6g}, certified "
            f"{result.converged} ({result.stop_reason}), residual {result.residual:.3g}, {result.hvps} products in "
            f"{result.seconds:.0f} s ({per_product:.1f} s a product){_peak(device)}",
            flush=True,
        )
    except OutOfTime:
        print(
            f"whole adapter: not certified within its share of the time ({args.certify_share:.0%} of what was "
            "left after the ratios); the steps above say how far it got",
            flush=True,
        )
    del operator

    # 4. per-module blocks, a few layers at a time, while the time left allows another group
    layers = SHAPES[size]["num_hidden_layers"]
    done = blocks_certified = scan_products = 0
    # a group's first estimate: twenty shared passes, each about one product over the data
    scan_seconds, last = 0.0, 20 * per_product
    for start in range(0, layers, args.scan_layers):
        if time.perf_counter() + last > deadline:
            break
        group = PerModule(layers=tuple(range(start, min(start + args.scan_layers, layers)))).blocks(model)
        union = [(name, param) for block in group for name, param in zip(block.names, block.parameters)]
        scan_operator = HessianOperator(
            model, packed, union, loss_fn=head, reuse=False, directions_per_pass=args.directions
        )
        group_plan = plan_memory(
            model,
            packed,
            block_parameters=max(b.numel for b in group),
            dtype=torch.float32,
            device=device,
            max_iter=args.max_iter,
            reuse=False,
            head_chunk=args.head_chunk,
            directions_per_pass=args.directions,
            free_bytes=free if device.type != "cuda" else None,
        )
        scan_operator.follow_plan(group_plan)
        t0 = time.perf_counter()
        results = scan_blocks(
            scan_operator,
            group,
            lambda index, view: lanczos(view, which="largest", tol=args.tol, max_iter=args.max_iter),
        )
        _sync(device)
        last = time.perf_counter() - t0
        scan_seconds += last
        done += len(group)
        blocks_certified += sum(r.converged for r in results)
        scan_products += sum(r.hvps for r in results)
        print(
            f"  layers {start}–{min(start + args.scan_layers, layers) - 1}: {len(group)} blocks in {last:.0f} s "
            f"({scan_operator.batching}), certified {sum(r.converged for r in results)}, λ_max "
            f"{min(r.lambda_max for r in results):.4g}…{max(r.lambda_max for r in results):.4g}",
            flush=True,
        )
    if done:
        print(
            f"scan: {done} of {layers * 7} blocks in {scan_seconds:.0f} s: {60 * done / scan_seconds:.1f} blocks "
            f"per minute, {scan_products / done:.1f} products per block, {blocks_certified} certified; all "
            f"{layers * 7} at this rate: {layers * 7 * scan_seconds / done / 60:.1f} minutes",
            flush=True,
        )
    else:
        print("scan: no time left for a group of blocks", flush=True)
    print(f"total {time.perf_counter() - began:.0f} s", flush=True)
    return 0 if certified else 3


def _timed(
    device: torch.device, call: Any, repeats: int = 1, warmup: bool = True
) -> tuple[torch.Tensor, float]:
    """The answer of ``call`` and the median seconds of ``repeats`` runs (after one warm-up run)."""
    answer = call() if warmup else None
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        answer = call()
        _sync(device)
        times.append(time.perf_counter() - start)
    return answer, statistics.median(times)


def _peak(device: torch.device) -> str:
    if device.type != "cuda":
        return ""
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return f", peak {peak:.1f} GiB"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
