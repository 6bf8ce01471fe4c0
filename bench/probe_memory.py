"""What several λ probes cost in one process: resident memory and the memory plan's free reading, probe after probe.

    PYTHONPATH=. python bench/probe_memory.py --probes 4 --samples 8 --threads 1

Each probe loads SmolLM2-135M and builds LoRA at initialisation on it (as the sweep does per run), measures λ_max of
the whole adapter on ``--samples`` training examples, and is dropped. Before each probe the bench prints the process's
RSS, the host's available memory (what the plan calls free, read after ``release_freed_memory``) and the RSS that
``release_freed_memory`` gave back. A growth of RSS across probes that ``release_freed_memory`` does not return is
what a later probe's plan loses; on a shared machine the host's available memory moves with other jobs, so the RSS
column is the one to compare.
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import sys
import time

import psutil
import torch

from hessian_lora.hessian.memory_plan import release_freed_memory
from hessian_lora.inputs.tasks import load_task, make_batches
from hessian_lora.measurement.measure import measure
from hessian_lora.measurement.targets import AdaptedModule
from hessian_lora.settings import AdapterConfig, MeasureSettings
from hessian_lora.training.adapters import adapter_at_initialisation

GIB = 2**30
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def rss() -> float:
    return psutil.Process().memory_info().rss / GIB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--mmap-threshold-mib",
        type=float,
        default=None,
        help="fix glibc's mmap threshold (mallopt M_MMAP_THRESHOLD) before anything is allocated: "
        "tensors above it are mapped and unmapped, never kept in the heap",
    )
    args = parser.parse_args()
    if args.mmap_threshold_mib is not None:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, int(args.mmap_threshold_mib * 2**20))
    torch.set_num_threads(args.threads)
    task = load_task("arith", seed=0, n_train=args.samples, n_eval=1)
    settings = MeasureSettings(
        samples=args.samples, batch_size=4, max_length=256, max_iter=args.max_iter, smallest=False, tol=1e-3
    )
    print(
        "probe  rss_before  rss_after_release  host_available  seconds  lambda_max   (GiB; peak RSS at the end)"
    )
    for probe in range(args.probes):
        before = rss()
        release_freed_memory()
        after_release = rss()
        available = psutil.virtual_memory().available / GIB
        start = time.perf_counter()
        config = AdapterConfig(method="lora", rank=args.rank, targets=("q_proj", "v_proj"), seed=probe)
        model, tokenizer, _ = adapter_at_initialisation("smollm2-135m", config)
        batches = make_batches(tokenizer, task.train[: args.samples], 4, max_length=256)
        report = measure(AdaptedModule(model), settings, batches=batches, progress=False)
        seconds = time.perf_counter() - start
        del model, tokenizer, batches
        print(
            f"{probe:5d}  {before:10.2f}  {after_release:17.2f}  {available:14.2f}  {seconds:7.1f}  "
            f"{report.blocks[0].lambda_max:.5g}"
        )
    release_freed_memory()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"end    {rss():10.2f} after release; peak RSS {peak:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
