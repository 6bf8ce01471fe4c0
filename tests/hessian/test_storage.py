"""Krylov memory: pages placed by a budget, products dropped before the basis, a full basis stops Lanczos."""

from __future__ import annotations

import math

import pytest
import torch

from hessian_lora.hessian import DiagonalOperator, KrylovMemory, MemoryTier, lanczos
from hessian_lora.hessian.storage import VectorStore

CPU = torch.device("cpu")


def test_a_store_grows_by_pages_and_matches_dense_algebra() -> None:
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(7, 33, generator=generator, dtype=torch.float64)
    store = VectorStore(33, torch.float64, CPU, KrylovMemory.unlimited(CPU), page_rows=3)
    assert store.append(rows[:2]) and store.append(rows[2:7])
    assert len(store) == 7 and len(store.pages()) == 2  # 2 rows, then 1 more in the first page of 3; one of 4
    assert torch.equal(store.stacked(), rows)
    vector = torch.randn(33, generator=generator, dtype=torch.float64)
    assert torch.allclose(store.inner(vector), rows @ vector, rtol=1e-14)
    block = torch.randn(2, 33, generator=generator, dtype=torch.float64)
    assert torch.allclose(store.inner(block), rows @ block.T, rtol=1e-14)
    weights = torch.randn(7, generator=generator, dtype=torch.float64)
    assert torch.allclose(store.combine(weights), weights @ rows, rtol=1e-14)
    assert torch.allclose(store.combine(weights.reshape(7, 1)), (weights @ rows).reshape(1, 33), rtol=1e-14)
    assert torch.equal(store.row(5), rows[5])


def test_pages_fill_the_first_tier_then_the_next_and_a_full_budget_refuses() -> None:
    row_bytes = 10 * 4
    first, second = MemoryTier(CPU, 2 * row_bytes), MemoryTier(CPU, 3 * row_bytes)
    memory = KrylovMemory([first, second])
    store = VectorStore(10, torch.float32, CPU, memory, page_rows=1)
    for _ in range(5):
        assert store.append(torch.ones(1, 10))
    assert first.bytes_left == 0 and second.bytes_left == 0 and first.used == 2 * row_bytes
    assert not store.append(torch.ones(1, 10))  # nothing appended, nothing allocated
    assert len(store) == 5
    store.drop()
    assert store.dropped and first.bytes_left + second.bytes_left == 5 * row_bytes


def _diagonal(size: int, top: tuple[float, ...], dtype: torch.dtype = torch.float32) -> DiagonalOperator:
    generator = torch.Generator().manual_seed(3)
    diagonal = (torch.rand(size, generator=generator, dtype=torch.float64) * 2 - 1).to(dtype)
    diagonal[: len(top)] = torch.tensor(top, dtype=dtype)
    return DiagonalOperator(diagonal)


def test_products_are_dropped_before_the_basis_and_the_check_then_costs_a_product() -> None:
    operator = _diagonal(4000, (30.0, 29.0, 27.0), torch.float64)
    free = lanczos(operator, which="largest", tol=1e-6, max_iter=200)
    vector_bytes = 4000 * 8
    # Room for the basis the run needs, not for its products as well.
    tight = lanczos(
        operator,
        which="largest",
        tol=1e-6,
        max_iter=200,
        memory=KrylovMemory.within(CPU, (free.details["krylov_dim"] + 8) * vector_bytes),
    )
    assert free.converged and tight.converged
    assert free.details["kept_products"] == 1.0 and tight.details["kept_products"] == 0.0
    assert tight.lambda_max == pytest.approx(30.0, rel=1e-9)
    assert tight.hvps >= free.hvps + 1  # the explicit check made its own product
    assert tight.details["krylov_vectors_cpu"] == tight.details["krylov_dim"]  # the products' pages are gone


def test_a_basis_that_cannot_grow_stops_lanczos_and_says_so() -> None:
    operator = _diagonal(4000, (30.0, 29.9, 29.8), torch.float64)
    result = lanczos(
        operator, which="largest", tol=1e-10, max_iter=200, memory=KrylovMemory.within(CPU, 8 * 4000 * 8)
    )
    assert not result.converged and result.stop_reason == "memory"
    assert result.details["krylov_dim"] == 8 and result.details["kept_products"] == 0.0
    assert math.isfinite(result.lambda_max) and result.lambda_max <= 30.0 + 1e-9  # a Rayleigh quotient
