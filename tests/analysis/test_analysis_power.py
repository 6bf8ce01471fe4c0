"""The power calculation (hessian_lora/analysis/power.py): variance components against exact and simulated
references, the seeds and problems an equivalence test needs against the closed form, and the shipped run's
per-method estimates in analysis.json."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from hessian_lora.analysis.power import (
    estimate_power,
    paired_table,
    problems_to_decide,
    seeds_to_decide,
    variance_components,
)


def test_an_additive_table_gives_the_sample_variances_of_its_effects_exactly() -> None:
    rng = np.random.default_rng(0)
    seed_effects, problem_effects = rng.normal(size=4), rng.normal(size=50)
    components = variance_components(seed_effects[:, None] + problem_effects[None, :])
    assert components.seed == pytest.approx(np.var(seed_effects, ddof=1), rel=1e-12)
    assert components.problem == pytest.approx(np.var(problem_effects, ddof=1), rel=1e-12)
    assert components.residual == pytest.approx(0.0, abs=1e-24)


def test_simulated_components_are_recovered_and_the_standard_error_matches_the_spread_of_means() -> None:
    rng = np.random.default_rng(1)
    truth = {"seed": 0.04, "problem": 0.09, "residual": 0.25}
    seeds, problems = 30, 400
    estimates, means = [], []
    for _ in range(200):
        table = (
            rng.normal(0, math.sqrt(truth["seed"]), (seeds, 1))
            + rng.normal(0, math.sqrt(truth["problem"]), (1, problems))
            + rng.normal(0, math.sqrt(truth["residual"]), (seeds, problems))
        )
        estimates.append(variance_components(table))
        means.append(table.mean())
    for name, value in truth.items():
        assert np.mean([getattr(e, name) for e in estimates]) == pytest.approx(value, rel=0.1), name
    formula = math.sqrt(
        truth["seed"] / seeds + truth["problem"] / problems + truth["residual"] / (seeds * problems)
    )
    assert estimates[0].standard_error() == pytest.approx(formula, rel=0.35)
    assert np.std(means, ddof=1) == pytest.approx(formula, rel=0.15)


def test_seeds_to_decide_is_the_closed_form_and_none_when_problems_dominate() -> None:
    components = variance_components(
        np.array([[0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    )
    components = type(components)(seed=0.004, problem=0.002, residual=0.16, n_seeds=3, n_problems=256)
    gap, margin = -0.035, 0.02
    z = stats.norm.ppf(0.95) + stats.norm.ppf(0.8)
    target = abs(gap + margin) / z
    needed = seeds_to_decide(components, gap, margin)
    expected = (0.004 + 0.16 / 256) / (target**2 - 0.002 / 256)
    assert needed == math.ceil(expected)
    # The SE at the answer meets the target, one seed fewer does not.
    assert components.standard_error(needed) <= target < components.standard_error(needed - 1)
    # A gap close to the margin needs a smaller SE than the problems' term allows at 256 problems.
    assert seeds_to_decide(components, -0.024, margin) is None
    assert seeds_to_decide(components, -0.024, margin, problems=100_000) is not None
    # Inflating the variance (the bootstrap's re-picked LR) asks for more seeds.
    assert seeds_to_decide(components, gap, margin, inflation=1.5) > needed
    problems = problems_to_decide(components, gap, margin, seeds=500)
    assert components.standard_error(500, problems) <= target < components.standard_error(500, problems - 1)
    assert problems_to_decide(components, gap, margin, seeds=50) is None  # the seeds' term alone is too large


def test_estimate_power_reads_the_gap_and_scales_by_the_bootstrap() -> None:
    rng = np.random.default_rng(2)
    table = (rng.random((3, 256)) < 0.45).astype(float) - (rng.random((3, 256)) < 0.48).astype(float)
    plain = estimate_power(table, 0.02)
    assert plain.gap == pytest.approx(table.mean()) and plain.inflation == 1.0
    wide = estimate_power(
        table, 0.02, bootstrap_draws=rng.normal(0, 3 * plain.components.standard_error(), 2000)
    )
    assert wide.inflation == pytest.approx(3.0, rel=0.1)
    assert wide.to_dict()["components"]["n_problems"] == 256


def test_paired_table_needs_two_shared_seeds() -> None:
    ours, best = {1: (1.0, 0.0), 2: (0.5, 1.0), 4: (1.0, 1.0)}, {1: (1.0, 1.0), 2: (0.0, 1.0), 3: (1.0, 0.0)}
    assert paired_table(ours, best).tolist() == [[0.0, -1.0], [0.5, 0.0]]
    assert paired_table({1: (1.0, 0.0)}, best) is None
