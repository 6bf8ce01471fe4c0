from __future__ import annotations

import pytest
import torch
from tinylora import operator_for

from hessian_lora.core.errors import UserError
from hessian_lora.hessian import DenseOperator, hutchinson, hutchplusplus


def test_hutchinson_is_exact_on_a_diagonal_operator() -> None:
    # z_i² = 1 for Rademacher z, so zᵀDz = tr D for every probe.
    diagonal = torch.tensor([3.0, -1.0, 0.5, 2.0, -4.0], dtype=torch.float64)
    result = hutchinson(DenseOperator(torch.diag(diagonal)), samples=4)
    assert result.trace == pytest.approx(float(diagonal.sum()), abs=1e-12)
    assert result.std_error == pytest.approx(0.0, abs=1e-12)
    assert result.hvps == 4 and len(result.history) == 4


def test_hutchplusplus_is_exact_when_its_sketch_spans_the_space() -> None:
    matrix = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    matrix = matrix + matrix.T
    result = hutchplusplus(DenseOperator(matrix), hvps=18)
    assert result.trace == pytest.approx(float(matrix.trace()), abs=1e-10)
    assert result.hvps == 12  # sketch and projection only: nothing left to estimate


def test_estimates_match_the_dense_trace_of_a_tiny_lora_hessian(generic_problem) -> None:
    exact = float(generic_problem.dense.trace())
    operator = operator_for(generic_problem.model, generic_problem.batches, generic_problem.block)
    plain = hutchinson(operator, samples=60, seed=1)
    assert abs(plain.trace - exact) <= 4 * plain.std_error
    boosted = hutchplusplus(operator, hvps=60, seed=1)
    assert boosted.hvps == 60
    assert abs(boosted.trace - exact) <= 4 * boosted.std_error
    # The deflated remainder varies less than the whole: Hutch++'s point.
    assert boosted.std_error < plain.std_error


def test_hutchinson_stops_early_at_the_requested_precision() -> None:
    matrix = torch.diag(torch.linspace(1.0, 2.0, 50, dtype=torch.float64))
    matrix[0, 1] = matrix[1, 0] = 0.01
    result = hutchinson(DenseOperator(matrix), samples=100, tol=1e-3)
    assert result.hvps < 100 and result.std_error <= 1e-3 * abs(result.trace)


def test_bad_budgets() -> None:
    operator = DenseOperator(torch.eye(2, dtype=torch.float64))
    with pytest.raises(UserError):
        hutchinson(operator, samples=0)
    with pytest.raises(UserError):
        hutchplusplus(operator, hvps=2)


def test_hutchinson_is_exact_on_a_20m_float32_diagonal() -> None:
    # zᵀDz = tr D for every Rademacher z: only the reduction's own error remains (float32 accumulation: ~1e-4).
    from hessian_lora.hessian import DiagonalOperator

    diagonal = torch.rand(20_000_000, generator=torch.Generator().manual_seed(0))
    result = hutchinson(DiagonalOperator(diagonal), samples=1)
    exact = float(diagonal.double().sum())
    assert result.trace == pytest.approx(exact, rel=1e-9)
