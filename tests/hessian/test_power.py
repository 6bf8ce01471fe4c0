from __future__ import annotations

import pytest
import torch
from tinylora import operator_for, spectrum_operator

from hessian_lora.core.errors import UserError
from hessian_lora.hessian import DenseOperator, lanczos, power_iteration


def test_lora_block_at_initialisation_has_pm_pairs_and_both_solvers_find_lambda_max(init_problem) -> None:
    exact = init_problem.eigenvalues
    lambda_max, lambda_min = float(exact[-1]), float(exact[0])
    # The premise: B = 0 puts the spectrum in ± pairs, so |λ_min| ties with λ_max.
    assert abs(lambda_min + lambda_max) < 0.01 * lambda_max
    operator = operator_for(init_problem.model, init_problem.batches, init_problem.block)
    power = power_iteration(operator, tol=1e-6, max_iter=400)
    assert power.converged and power.stop_reason == "converged"
    assert abs(power.lambda_max - lambda_max) < 1e-6 * lambda_max
    assert power.largest_residuals[0] <= 1e-6 * lambda_max
    assert power.details["shift"] > 0
    krylov = lanczos(operator, tol=1e-8, max_iter=64)
    assert krylov.converged and abs(krylov.lambda_max - lambda_max) < 1e-8 * lambda_max
    assert krylov.hvps < power.hvps / 3


def test_unshifted_power_iteration_fails_honestly_on_pm_pairs(init_problem) -> None:
    operator = operator_for(init_problem.model, init_problem.batches, init_problem.block)
    plain = power_iteration(operator, tol=1e-6, max_iter=60, shift=None)
    assert not plain.converged and plain.stop_reason == "max_iter"
    assert plain.hvps == 60 and len(plain.history) == 60


def test_closed_form_spectrum_dominated_by_a_negative_eigenvalue() -> None:
    operator = spectrum_operator([-5.0, -1.0, 0.2, 0.7, 1.5, 2.0])
    result = power_iteration(operator, tol=1e-10, max_iter=500)
    assert result.converged and result.lambda_max == pytest.approx(2.0, abs=1e-9)
    assert result.details["shift"] >= 2.5  # the shift had to outweigh λ_min = -5
    classic = power_iteration(operator, tol=1e-10, max_iter=500, shift=None)
    assert classic.converged and classic.lambda_max == pytest.approx(-5.0, abs=1e-9)  # the largest |λ|
    assert classic.solver == "power_unshifted"


def test_positive_dominant_spectrum_and_deflation_for_top_k() -> None:
    operator = spectrum_operator([4.0, 2.0, 1.0, 0.5, 0.25, -0.5, -1.0], seed=3)
    result = power_iteration(operator, k=3, tol=1e-9, max_iter=1000)
    assert result.converged
    assert result.largest == pytest.approx((4.0, 2.0, 1.0), abs=1e-8)
    assert result.largest_vectors.shape == (3, 7)
    gram = result.largest_vectors @ result.largest_vectors.T
    assert torch.allclose(gram, torch.eye(3, dtype=torch.float64), atol=1e-8)


def test_the_cap_is_reported() -> None:
    operator = spectrum_operator([1.0, 0.999, 0.5, -0.3], seed=1)
    result = power_iteration(operator, tol=1e-12, max_iter=5)
    assert not result.converged and result.stop_reason == "max_iter" and result.hvps == 5


def test_bad_arguments() -> None:
    operator = DenseOperator(torch.eye(2, dtype=torch.float64))
    with pytest.raises(UserError, match="shift"):
        power_iteration(operator, shift="big")
    with pytest.raises(UserError, match="k "):
        power_iteration(operator, k=0)


def test_a_zero_operator_gives_zero_certified() -> None:
    operator = DenseOperator(torch.zeros(5, 5, dtype=torch.float64))
    for shift in ("auto", None):
        result = power_iteration(operator, k=2, shift=shift)
        assert result.converged and result.stop_reason == "converged"
        assert result.largest == (0.0, 0.0) and result.largest_residuals == (0.0, 0.0)
        assert result.hvps == 2


def test_power_iteration_certifies_lambda_max_of_a_20m_float32_operator_at_tol_1e_4() -> None:
    from hessian_lora.hessian import DiagonalOperator

    size = 20_000_000
    generator = torch.Generator().manual_seed(0)
    diagonal = torch.rand(size, generator=generator) * 2 - 1
    diagonal[:2] = torch.tensor([30.0, 20.0])  # a gap power iteration crosses in a few dozen products
    result = power_iteration(DiagonalOperator(diagonal), tol=1e-4, max_iter=120)
    assert result.converged
    assert abs(result.lambda_max - 30.0) <= result.residual <= 1e-4 * 30.0
