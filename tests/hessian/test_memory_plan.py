"""``hessian/memory_plan.py``: free-memory readings that count what this process has freed as free."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from tinylora import synthetic_batches, tiny_lora

from hessian_lora.hessian import memory_plan

_FREED_HEAP = """
import psutil, torch
from hessian_lora.hessian.memory_plan import release_freed_memory
process = psutil.Process()
chunks = [torch.ones(2048) for _ in range(40000)]  # 8 KiB each: heap allocations, 312 MiB in all
keep = torch.ones(2048)  # allocated last, so the heap's top stays in use and free() alone cannot shrink it
del chunks
before = process.memory_info().rss
release_freed_memory()
print(before - process.memory_info().rss)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_freed_heap_memory_goes_back_to_the_system() -> None:
    """Without the release, 312 MiB of freed tensors stay in the process's RSS (glibc keeps them)."""
    result = subprocess.run([sys.executable, "-c", _FREED_HEAP], capture_output=True, text=True, check=True)
    returned = int(result.stdout.strip().splitlines()[-1])
    assert returned > 200 * 2**20


def test_free_memory_releases_before_it_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(memory_plan, "release_freed_memory", lambda device=None: calls.append(device))
    assert memory_plan.free_memory(torch.device("cpu")) > 0
    assert calls == [torch.device("cpu")]


def test_kept_graphs_and_krylov_vectors_share_what_the_plan_leaves() -> None:
    """With reuse the plan splits what is left after the work vectors and one product's activations between the
    Krylov vectors and the kept graphs, with slack; without reuse the graphs get nothing. (Before, the operator
    took half the free memory on its own, beside the Krylov budget: a LoRA-GA probe was OOM-killed.)"""
    model, batches = tiny_lora(seed=0), synthetic_batches(seed=0)
    free = 8 * 2**30
    common = {"block_parameters": 10_000, "dtype": torch.float32, "device": torch.device("cpu"), "max_iter": 50,
              "free_bytes": free}
    auto = memory_plan.plan_memory(model, batches, reuse="auto", **common)
    left = free - memory_plan.WORK_VECTORS * auto.vector_bytes - (auto.activation_bytes or 0)
    assert auto.reuse_bytes == pytest.approx(memory_plan.REUSE_SHARE * left)
    assert auto.reuse_bytes + auto.budget_bytes <= 0.7 * left + 1  # 30 % slack
    off = memory_plan.plan_memory(model, batches, reuse=False, **common)
    assert off.reuse_bytes == 0.0 and off.budget_bytes == pytest.approx(memory_plan.KRYLOV_SHARE * left)
