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
    common = {
        "block_parameters": 10_000,
        "dtype": torch.float32,
        "device": torch.device("cpu"),
        "max_iter": 50,
        "free_bytes": free,
    }
    auto = memory_plan.plan_memory(model, batches, reuse="auto", **common)
    left = free - memory_plan.WORK_VECTORS * auto.vector_bytes - (auto.activation_bytes or 0)
    assert auto.reuse_bytes == pytest.approx(memory_plan.REUSE_SHARE * left)
    assert auto.reuse_bytes + auto.budget_bytes <= 0.7 * left + 1  # 30 % slack
    off = memory_plan.plan_memory(model, batches, reuse=False, **common)
    assert off.reuse_bytes == 0.0 and off.budget_bytes == pytest.approx(memory_plan.KRYLOV_SHARE * left)


_CUDA = torch.device("cuda")


def test_batching_choice_is_vmap_on_cuda_only_when_the_batched_pass_fits() -> None:
    gib = 2**30
    cpu = memory_plan.choose_batching(
        torch.device("cpu"), free_bytes=100 * gib, loop_bytes=gib, batched_bytes=2 * gib, directions=8
    )
    assert cpu[0] == "loop" and "lost" in cpu[1]
    fits = memory_plan.choose_batching(
        _CUDA, free_bytes=10 * gib, loop_bytes=gib, batched_bytes=4 * gib, krylov_bytes=6 * gib, directions=8
    )
    assert fits[0] == "vmap" and "8 directions" in fits[1]
    tight = memory_plan.choose_batching(
        _CUDA,
        free_bytes=10 * gib,
        loop_bytes=gib,
        batched_bytes=4 * gib,
        krylov_bytes=6 * gib + 1,
        directions=8,
    )
    assert tight[0] == "loop" and "more than" in tight[1]
    assert (
        memory_plan.choose_batching(
            _CUDA, free_bytes=10 * gib, loop_bytes=None, batched_bytes=None, directions=8
        )[0]
        == "loop"
    )
    assert (
        memory_plan.choose_batching(
            _CUDA, free_bytes=10 * gib, loop_bytes=gib, batched_bytes=gib, directions=1
        )[0]
        == "loop"
    )


def test_the_plan_charges_a_batched_pass_its_directions_and_prints_its_choice() -> None:
    model, batches = tiny_lora(seed=0), synthetic_batches(seed=0)
    common = {
        "block_parameters": 10_000,
        "dtype": torch.float32,
        "device": _CUDA,
        "max_iter": 50,
        "host_free_bytes": 0,
        "directions_per_pass": 8,
    }
    looping = memory_plan.plan_memory(model, batches, batching="loop", free_bytes=2**30, **common)
    loop_bytes = looping.activation_bytes
    batched = memory_plan.activation_bytes(model, *looping.largest_batch, directions=8)
    assert loop_bytes is not None and batched == pytest.approx(
        loop_bytes * (1 + 7 * memory_plan.VMAP_DIRECTION_SHARE), rel=1e-6
    )
    roomy = memory_plan.plan_memory(model, batches, free_bytes=8 * 2**30, **common)
    assert roomy.batching == "vmap" and roomy.activation_bytes == batched
    assert any(line.startswith("  batching: vmap (8 directions") for line in roomy.lines())
    # free memory for the loop's pass and the Krylov vectors, not for eight directions at once
    krylov = 50 * 2 * 10_000 * 4
    work = memory_plan.WORK_VECTORS * 10_000 * 4
    tight = memory_plan.plan_memory(model, batches, free_bytes=work + krylov + loop_bytes + 1000, **common)
    assert tight.batching == "loop" and tight.activation_bytes == loop_bytes
    cpu = memory_plan.plan_memory(
        model, batches, free_bytes=8 * 2**30, **{**common, "device": torch.device("cpu")}
    )
    assert cpu.batching == "loop"


def test_an_operator_follows_the_plans_batching_unless_told_otherwise() -> None:
    from hessian_lora.hessian import HessianOperator, WholeAdapter

    model, batches = tiny_lora(seed=0), synthetic_batches(seed=0)
    block = WholeAdapter().blocks(model)[0]
    plan = memory_plan.plan_memory(
        model,
        batches,
        block_parameters=block.numel,
        dtype=torch.float32,
        device=_CUDA,
        max_iter=10,
        free_bytes=8 * 2**30,
        host_free_bytes=0,
        directions_per_pass=8,
    )
    auto = HessianOperator(model, batches, block)
    assert auto.batching == "loop"  # on the CPU
    auto.follow_plan(plan)
    assert auto.batching == plan.batching == "vmap"
    asked = HessianOperator(model, batches, block, batching="loop")
    asked.follow_plan(plan)
    assert asked.batching == "loop"


def test_the_chunked_head_charges_one_chunk_of_logits_and_packs_more_tokens() -> None:
    model = tiny_lora(seed=0)
    vocab = model.config.vocab_size
    plain = memory_plan.activation_bytes(model, 8, 128)
    chunked = memory_plan.activation_bytes(model, 8, 128, head_chunk=100)
    assert plain is not None and chunked is not None
    saved = (
        4
        * memory_plan.ACTIVATION_FLOATS["token_vocab"]
        * (8 * 128 - 100)
        * vocab
        * memory_plan.ACTIVATION_MARGIN
    )
    assert plain - chunked == pytest.approx(saved, rel=1e-6)
    free = 2**30
    for head_chunk in (None, 100):
        tokens = memory_plan.packing_tokens(model, 128, free_bytes=free, head_chunk=head_chunk)
        sequences = tokens // 128
        within = memory_plan.activation_bytes(model, sequences, 128, head_chunk=head_chunk)
        beyond = memory_plan.activation_bytes(model, sequences + 1, 128, head_chunk=head_chunk)
        assert within is not None and beyond is not None
        assert within <= memory_plan.PACKING_SHARE * free < beyond
    assert memory_plan.packing_tokens(
        model, 128, free_bytes=free, head_chunk=100
    ) > memory_plan.packing_tokens(model, 128, free_bytes=free)
    assert memory_plan.packing_tokens(model, 128, free_bytes=1) == 128  # at least one sequence
