"""Packed token-budget batches and the chunked LM head against the paper's streamed batches of 5, on the CPU.

Each configuration runs in its own child process (so one's peak RSS cannot inflate another's), on the same
data and the same block: the q_proj block of one layer of SmolLM2-135M with LoRA r = 8 (q_proj, v_proj) at
initialisation, fp32, one thread. A child builds the batches, times products (one warm-up, then ``--products``
timed single products), then runs Lanczos to a certified λ_max (tol 1e-3) and reports the kernel's high-water
mark of its resident set (``ru_maxrss``: the whole run, model load included). Configurations:

- ``streamed``: ``--samples`` examples in batches of 5 in data order (the paper's 100 × 5 at 500 samples),
  the plain LM head;
- ``packed``: the same examples length-sorted into batches of at most ``--pack-tokens`` token slots, plain head;
- ``packed+chunked``: packed, and the LM head over ``--head-chunk`` loss tokens at a time.

It prints seconds per product and peak RSS for each, the ratios streamed/packed (time) and plain/chunked
(memory), and each λ_max with its certificate; ``--out`` writes the JSON.

    flock /work/heavy.lock .venv/bin/python bench/packing.py --samples 128 --out bench/results/packing.json
    .venv/bin/python bench/packing.py --tiny                     # the same pipeline on tiny-llama, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

CONFIGS = ("streamed", "packed", "packed+chunked")


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from hessian_lora.hessian import HessianOperator, PerModule, lanczos
    from hessian_lora.hessian.loss import ChunkedHeadLoss, loss_sum
    from hessian_lora.inputs.models import load_model
    from hessian_lora.inputs.tasks import load_task, make_batches, pack_batches, packing_of
    from hessian_lora.training.adapters import AdapterConfig, build_adapter

    torch.set_num_threads(1)
    loaded = load_model("tiny-llama" if args.tiny else "smollm2-135m", device="cpu")
    model = build_adapter(loaded.model, AdapterConfig("lora", rank=args.rank, targets=("q_proj", "v_proj")))
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    examples = load_task(args.task, n_train=args.samples, n_eval=0).train
    batches = make_batches(loaded.tokenizer, examples, 5, max_length=args.max_length, prompt_template="plain")
    budget = None
    if args.config != "streamed":
        budget = args.pack_tokens
        batches = pack_batches(batches, budget)
    packing = packing_of(batches, budget)
    loss = ChunkedHeadLoss(args.head_chunk) if args.config == "packed+chunked" else loss_sum
    (block,) = PerModule(modules=("q_proj",), layers=(args.layer,)).blocks(model)
    operator = HessianOperator(model, batches, block, loss_fn=loss, reuse=False)
    vector = torch.randn(operator.size, generator=torch.Generator().manual_seed(0))
    operator.matvec(vector)  # warm-up
    times = []
    for _ in range(args.products):
        start = time.perf_counter()
        operator.matvec(vector)
        times.append(time.perf_counter() - start)
    result = lanczos(operator, which="largest", tol=args.tol, max_iter=args.max_iter, seed=0)
    return {
        "config": args.config,
        "packing": packing.to_dict(),
        "loss_tokens": operator.total_tokens,
        "block": block.name,
        "parameters": operator.size,
        "seconds_per_product": statistics.median(times),
        "product_times": times,
        "lambda_max": result.lambda_max,
        "converged": result.converged,
        "residual": result.residual,
        "lanczos_hvps": result.hvps,
        "lanczos_seconds": result.seconds,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_after_load_bytes": rss_loaded,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny-llama instead of SmolLM2 (a dry run)")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument(
        "--task",
        default="arith:chain_sum,min_terms=2,max_terms=12,max_digits=4",
        help="sums of 2-12 terms: lengths that vary, as MetaMath's do",
    )
    parser.add_argument("--pack-tokens", type=int, default=1024, help="token slots a packed batch may hold")
    parser.add_argument("--head-chunk", type=int, default=256, help="loss tokens a chunk of the chunked head")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--products", type=int, default=2, help="timed single products after one warm-up")
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--max-iter", type=int, default=60)
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--config", choices=CONFIGS, help=argparse.SUPPRESS)  # a child's own configuration
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.tiny:
        args.layer = min(args.layer, 1)
    if args.config is not None:
        print(json.dumps(child(args)), flush=True)
        return 0
    header = (
        f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC | {platform.machine()} | load "
        f"{os.getloadavg()[0]:.2f} | {'tiny-llama' if args.tiny else 'SmolLM2-135M'}, {args.samples} samples "
        f"of {args.task} up to {args.max_length} tokens, LoRA r={args.rank} (q,v), q_proj of layer "
        f"{args.layer}, pack {args.pack_tokens} slots, head chunk {args.head_chunk}, one thread per child"
    )
    print(header, flush=True)
    results: dict[str, dict[str, Any]] = {}
    forwarded = _drop_option(sys.argv[1:], "--configs")
    for config in args.configs:
        done = subprocess.run(
            [sys.executable, __file__, *forwarded, "--config", config],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(f"{config}: failed (rc={done.returncode})\n{done.stderr[-2000:]}", flush=True)
            return 1
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results[config] = result
        packing = result["packing"]
        print(
            f"{config:>15}: {packing['batches']:4d} batches, {packing['tokens']:,} tokens in "
            f"{packing['padded_tokens']:,} slots ({100 * packing['padding_fraction']:.1f} % padding) | "
            f"{result['seconds_per_product']:.2f} s a product | peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB "
            f"(after load {result['rss_after_load_bytes'] / 2**30:.2f}) | λ_max {result['lambda_max']:.6g} "
            f"{'certified' if result['converged'] else 'NOT certified'} (residual {result['residual']:.2e}, "
            f"{result['lanczos_hvps']} products, {result['lanczos_seconds']:.0f} s)",
            flush=True,
        )
    lines = []
    if "streamed" in results and "packed" in results:
        lines.append(
            f"time a product, streamed / packed: "
            f"{results['streamed']['seconds_per_product'] / results['packed']['seconds_per_product']:.2f}x"
        )
    if "streamed" in results and "packed+chunked" in results:
        lines.append(
            "time a product, streamed / packed+chunked: "
            f"{results['streamed']['seconds_per_product'] / results['packed+chunked']['seconds_per_product']:.2f}x"
        )
    if "packed" in results and "packed+chunked" in results:
        lines.append(
            f"peak RSS, plain head / chunked head (both packed): "
            f"{results['packed']['peak_rss_bytes'] / results['packed+chunked']['peak_rss_bytes']:.2f}x"
        )
    values = [r["lambda_max"] for r in results.values()]
    if values:
        spread = (max(values) - min(values)) / abs(max(values, key=abs))
        lines.append(
            f"λ_max relative spread across configurations: {spread:.1e} (tol {args.tol}); all certified: "
            f"{all(r['converged'] for r in results.values())}"
        )
    lines.append(f"# load at the end {os.getloadavg()[0]:.2f}")
    print("\n".join(lines), flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(
                {"header": header, "args": vars(args), "results": results, "summary": lines}, handle, indent=1
            )
    return 0 if all(r["converged"] for r in results.values()) else 3


def _drop_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option`` and the values that follow it."""
    kept, skipping = [], False
    for arg in argv:
        if arg == option:
            skipping = True
            continue
        if skipping and not arg.startswith("--"):
            continue
        skipping = False
        kept.append(arg)
    return kept


if __name__ == "__main__":
    sys.exit(main())
