"""Certificates that never lie on the operators peers test with: rank-deficient, rank-1, signed low-rank,
invariant starts, deflation, and requests a solver cannot meet (issue 18)."""

from __future__ import annotations

import math

import pytest
import torch

from hessian_lora.core.errors import UserError
from hessian_lora.hessian import DenseOperator, hutchinson, lanczos, power_iteration


def _low_rank(n: int, values: list[float], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(n, len(values), generator=generator, dtype=torch.float64))[0]
    matrix = (basis * torch.tensor(values, dtype=torch.float64)) @ basis.T
    return (matrix + matrix.T) / 2


def _assert_honest(result, exact: torch.Tensor) -> None:
    values = list(result.largest) + list(result.smallest)
    assert all(math.isfinite(v) for v in values), values
    if result.converged:
        truth = list(exact.flip(0)[: len(result.largest)]) + list(exact[: len(result.smallest)])
        for value, bound, true in zip(
            values, list(result.largest_bounds) + list(result.smallest_bounds), truth
        ):
            assert abs(value - float(true)) <= bound, (value, float(true), bound)


def test_block_lanczos_on_a_rank_1_outer_product_finds_the_top_and_the_zero() -> None:
    # u·uᵀ, n = 60, k = 2: the in-block Gram–Schmidt once kept a round-off column and returned (0.066, 0.073),
    # "converged", for the true (44.18, 0).
    u = torch.randn(60, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    matrix = torch.outer(u, u)
    result = lanczos(DenseOperator(matrix), k=2, which="largest", tol=1e-8, max_iter=60)
    exact = torch.linalg.eigvalsh(matrix)
    _assert_honest(result, exact)
    assert result.converged
    assert result.largest[0] == pytest.approx(float(u @ u), rel=1e-10) and abs(result.largest[1]) < 1e-8


@pytest.mark.parametrize(
    "n, values, k, which",
    [
        (40, [5.0, 3.0, -2.0, -4.0, 1.0], 4, "both"),  # a signed rank-5 operator, both ends
        (
            2000,
            [9.0, 4.0, 1.0],
            4,
            "largest",
        ),  # a rank-3 outer product wider than its rank: used to end in NaN
        (30, [2.0, 2.0, 2.0], 3, "largest"),  # a repeated top as wide as the rank
    ],
)
def test_low_rank_operators_give_the_right_values_or_say_they_did_not(
    n: int, values: list[float], k: int, which: str
) -> None:
    matrix = _low_rank(n, values, seed=n)
    result = lanczos(DenseOperator(matrix), k=k, which=which, tol=1e-8, max_iter=200)
    _assert_honest(result, torch.linalg.eigvalsh(matrix))
    assert result.converged


def test_a_seeded_sample_of_low_rank_cases_never_certifies_a_wrong_value() -> None:
    # The note's search ran 1,200 such cases; this is a seeded sample of it.
    for seed in range(60):
        generator = torch.Generator().manual_seed(seed)
        n = int(torch.randint(5, 80, (1,), generator=generator))
        rank = int(torch.randint(1, min(6, n) + 1, (1,), generator=generator))
        kind = seed % 3
        if kind == 0:  # one repeated value: rank-r "outer products"
            values = [float(torch.rand(1, generator=generator)) * 50 + 0.5] * rank
        elif kind == 1:
            values = (torch.rand(rank, generator=generator, dtype=torch.float64) * 10 + 0.1).tolist()
        else:  # signed
            values = ((torch.rand(rank, generator=generator, dtype=torch.float64) * 2 - 1) * 10).tolist()
        matrix = _low_rank(n, values, seed)
        k = int(torch.randint(1, min(5, n) + 1, (1,), generator=generator))
        which = ("largest", "smallest", "both")[seed % 3]
        if which == "both" and 2 * k > n:
            which = "largest"
        result = lanczos(DenseOperator(matrix), k=k, which=which, tol=1e-6, max_iter=200, seed=seed)
        _assert_honest(result, torch.linalg.eigvalsh(matrix))


def test_a_start_on_an_eigenvector_is_not_a_converged_top() -> None:
    # The Krylov space of an eigenvector is invariant after one product: its value (−2) is not λ_max (4).
    matrix = torch.diag(torch.tensor([4.0, 1.0, -2.0, 0.5], dtype=torch.float64))
    start = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    result = lanczos(DenseOperator(matrix), which="largest", tol=1e-10, start=start)
    assert result.converged and result.lambda_max == pytest.approx(4.0, rel=1e-12)
    assert result.details["restarts"] >= 1


def test_the_zero_operator_is_still_certified_zero() -> None:
    result = lanczos(DenseOperator(torch.zeros(6, 6, dtype=torch.float64)), which="largest", tol=1e-6)
    assert result.converged and result.lambda_max == 0.0


def test_the_krylov_dimension_reaches_what_max_iter_allows_with_a_partial_last_block() -> None:
    matrix = _low_rank(5, [3.0, 1.0, -1.0, 2.0, -2.5], seed=1)
    exact = torch.linalg.eigvalsh(matrix)
    result = lanczos(DenseOperator(matrix), k=2, which="both", tol=1e-10, max_iter=100)
    assert result.details["krylov_dim"] == 5 and result.stop_reason in ("converged", "exhausted")
    assert result.converged
    assert list(result.largest) == pytest.approx(exact.flip(0)[:2].tolist(), abs=1e-10)
    assert list(result.smallest) == pytest.approx(exact[:2].tolist(), abs=1e-10)
    ten = _low_rank(10, [float(i) - 4.5 for i in range(10)], seed=2)
    capped = lanczos(DenseOperator(ten), k=3, which="largest", tol=1e-14, max_iter=7)
    assert capped.details["krylov_dim"] == 7 and capped.hvps == 7  # 3 + 3 + a partial block of 1
    assert capped.stop_reason in ("converged", "max_iter", "verification_failed")


def test_requests_that_cannot_be_met_are_one_line_errors() -> None:
    operator = DenseOperator(torch.eye(4, dtype=torch.float64))
    with pytest.raises(UserError, match="block_size=1 is below k=2"):
        lanczos(operator, k=2, block_size=1)
    with pytest.raises(UserError, match="only 4"):
        lanczos(operator, k=5)


def test_power_iteration_reports_the_true_residual_deflated_or_not() -> None:
    matrix = _low_rank(50, [10.0, 9.0, 8.5, -3.0, 2.0], seed=4) + 0.01 * torch.eye(50, dtype=torch.float64)
    for k, max_iter in ((1, 300), (3, 300), (3, 7)):  # the last stops at max_iter
        result = power_iteration(DenseOperator(matrix), k=k, tol=1e-8, max_iter=max_iter)
        for value, residual, vector in zip(result.largest, result.largest_residuals, result.largest_vectors):
            assert float(vector @ matrix @ vector) == pytest.approx(value, rel=1e-12, abs=1e-12)
            explicit = float((matrix @ vector - value * vector).norm())
            assert residual == pytest.approx(explicit, rel=1e-9, abs=1e-12)
        if result.converged:
            _assert_honest(result, torch.linalg.eigvalsh(matrix))


def test_hutchinson_seeds_draw_independent_probes() -> None:
    # Probes s, s+1, ... made seeds 1000 and 1001 share all but one of their probes.
    diagonal = torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    matrix = torch.diag(diagonal) + _low_rank(64, [1.0, -1.0], seed=3)
    a = [record.values[0] for record in hutchinson(DenseOperator(matrix), samples=20, seed=1000).history]
    b = [record.values[0] for record in hutchinson(DenseOperator(matrix), samples=20, seed=1001).history]
    terms_a = [a[0]] + [(i + 1) * a[i] - i * a[i - 1] for i in range(1, 20)]
    terms_b = [b[0]] + [(i + 1) * b[i] - i * b[i - 1] for i in range(1, 20)]
    shared = sum(any(abs(x - y) < 1e-9 for y in terms_b) for x in terms_a)
    assert shared <= 1


def test_a_dense_operator_must_be_symmetric() -> None:
    with pytest.raises(UserError, match="not symmetric"):
        DenseOperator(torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64))
    DenseOperator(torch.tensor([[1.0, 2.0], [2.0, 1.0]]))  # symmetric: fine
