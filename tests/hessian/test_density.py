from __future__ import annotations

import pytest
import torch
from tinylora import operator_for

from hessian_lora.core.errors import UserError
from hessian_lora.hessian import DenseOperator, DensityResult, spectral_density


def test_each_run_is_a_gauss_quadrature_of_its_start_vector(generic_problem) -> None:
    operator = operator_for(generic_problem.model, generic_problem.batches, generic_problem.block)
    generator = torch.Generator().manual_seed(3)
    starts = [torch.randint(0, 2, (operator.size,), generator=generator).double() * 2 - 1 for _ in range(2)]
    steps = 6
    result = spectral_density(operator, steps=steps, runs=2, starts=starts)
    dense = generic_problem.dense
    for run, start in enumerate(starts):
        unit = start / start.norm()
        assert sum(result.weights[run]) == pytest.approx(1.0, abs=1e-12)
        nodes = torch.tensor(result.nodes[run], dtype=torch.float64)
        weights = torch.tensor(result.weights[run], dtype=torch.float64)
        power = unit.clone()
        for p in range(2 * steps):  # exact for degree ≤ 2m − 1
            expected = float(unit @ power)
            assert float((weights * nodes**p).sum()) == pytest.approx(expected, rel=1e-9, abs=1e-13), p
            power = dense @ power
    assert result.hvps == 2 * steps


def test_density_integrates_to_one_and_its_moments_estimate_the_spectrum(generic_problem) -> None:
    operator = operator_for(generic_problem.model, generic_problem.batches, generic_problem.block)
    result = spectral_density(operator, steps=20, runs=6, seed=0)
    exact = generic_problem.eigenvalues
    assert result.moment(0) == pytest.approx(1.0, abs=1e-12)
    spread = float(exact.max() - exact.min())
    grid = torch.linspace(float(exact.min()) - spread, float(exact.max()) + spread, 4001, dtype=torch.float64)
    curve = result.smoothed(grid, sigma=0.05 * spread)
    assert float(torch.trapezoid(curve, grid)) == pytest.approx(1.0, abs=1e-6)
    # Moments of the averaged measure estimate tr(H^p)/n without bias; for a normalised Rademacher v,
    # Var(vᵀMv) = 2(‖M‖_F² − Σ M_ii²)/n², so 4 standard errors over the runs bound the deviation.
    n = operator.size
    for p in (1, 2):
        power = torch.linalg.matrix_power(generic_problem.dense, p)
        variance = 2 * (float((power**2).sum()) - float((power.diagonal() ** 2).sum())) / n**2
        bound = 4 * (variance / 6) ** 0.5
        assert abs(result.moment(p) - float((exact**p).mean())) <= bound
    # The extreme nodes converge to the extreme eigenvalues.
    assert max(max(nodes) for nodes in result.nodes) == pytest.approx(float(exact.max()), rel=1e-6)
    assert min(min(nodes) for nodes in result.nodes) == pytest.approx(float(exact.min()), rel=1e-6)


def test_an_early_invariant_subspace_ends_the_run() -> None:
    operator = DenseOperator(torch.diag(torch.tensor([1.0, 1.0, 2.0, 2.0], dtype=torch.float64)))
    result = spectral_density(operator, steps=4, runs=1)
    assert result.nodes[0] == pytest.approx((1.0, 2.0), abs=1e-12)
    assert result.weights[0] == pytest.approx((0.5, 0.5), abs=1e-12)


def test_serialisation_round_trip_and_bad_arguments() -> None:
    result = spectral_density(
        DenseOperator(torch.diag(torch.arange(5.0, dtype=torch.float64))), steps=3, runs=2
    )
    assert DensityResult.from_dict(result.to_dict()) == result
    with pytest.raises(UserError):
        spectral_density(DenseOperator(torch.eye(2)), steps=0)
