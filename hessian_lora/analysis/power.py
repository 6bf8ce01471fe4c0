"""How many seeds (and evaluation problems) would decide the paper's peaks claim: variance components of a tuned
peak's gap to the best method, split into seeds and problems, and the sample sizes an equivalence test needs.

The gap of a method to the best one, at each method's tuned (grid-best) learning rate, is the mean over seeds s
and problems p of the paired difference d[s, p] = score_method[s, p] − score_best[s, p] (both methods share their
seeds and are scored on the same problems). A two-way crossed random-effects model without replication,

    d[s, p] = μ + a_s + b_p + e_sp,   Var a = σ²_seed, Var b = σ²_problem, Var e = σ²_residual,

estimated by the method of moments (the balanced two-way ANOVA's mean squares; a negative estimate clipped to 0),
gives the variance of the mean gap with S seeds and P problems:

    Var(d̄) = σ²_seed / S + σ²_problem / P + σ²_residual / (S·P).

That formula holds the learning rate fixed at the tuned one; the bootstrap of :mod:`.uncertainty` re-picks it
in every draw, which adds variance. The ratio of the bootstrap's standard deviation to the formula's at the run's
own S and P (``inflation``, at least 1) scales every projection, so the projection is of the analysis as run.

The paper's claim "every method peaks within 2 points of the best" is tested as an equivalence (two one-sided
tests at level α each, i.e. the 1 − 2α interval): *supported* when the interval lies inside (−margin, +margin),
*contradicted* when it lies below −margin. :func:`seeds_to_decide` is the smallest S at which a true gap equal to
the observed one would reach either verdict with probability ``power`` (normal approximation):
|gap − (−margin)| ≥ (z_{1−α} + z_{power}) · SE(S, P). When the problems' term alone exceeds that SE, no number of
seeds decides it at P problems, and the answer is None (more problems are needed: :func:`problems_to_decide`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

ALPHA = 0.05  # each one-sided test of the equivalence (a 90 % interval)
POWER = 0.8  # the probability of reaching a verdict when the true gap is the observed one
MAX_SEEDS = 10_000  # a search bound, far past anything runnable


@dataclass(frozen=True)
class VarianceComponents:
    """σ² of the seed, problem and residual effects of a (seeds × problems) table of paired differences."""

    seed: float
    problem: float
    residual: float
    n_seeds: int
    n_problems: int

    def standard_error(self, seeds: int | None = None, problems: int | None = None) -> float:
        """Standard error of the table's grand mean with ``seeds`` seeds and ``problems`` problems (default: the
        table's own)."""
        s, p = seeds or self.n_seeds, problems or self.n_problems
        return math.sqrt(self.seed / s + self.problem / p + self.residual / (s * p))

    def to_dict(self) -> dict[str, float | int]:
        """The components as JSON-ready numbers."""
        return asdict(self)


def variance_components(table: np.ndarray) -> VarianceComponents:
    """Method-of-moments variance components of a balanced (seeds × problems) table (ValueError below 2 × 2).

    With no residual (d = a_s + b_p exactly) the estimates are the sample variances of a and b, exactly."""
    data = np.asarray(table, dtype=float)
    if data.ndim != 2 or min(data.shape) < 2 or not np.all(np.isfinite(data)):
        raise ValueError("variance_components needs a finite table of at least 2 seeds × 2 problems")
    seeds, problems = data.shape
    grand = data.mean()
    seed_means, problem_means = data.mean(axis=1), data.mean(axis=0)
    ms_seed = problems * float(np.sum((seed_means - grand) ** 2)) / (seeds - 1)
    ms_problem = seeds * float(np.sum((problem_means - grand) ** 2)) / (problems - 1)
    residuals = data - seed_means[:, None] - problem_means[None, :] + grand
    ms_residual = float(np.sum(residuals**2)) / ((seeds - 1) * (problems - 1))
    return VarianceComponents(
        seed=max(0.0, (ms_seed - ms_residual) / problems),
        problem=max(0.0, (ms_problem - ms_residual) / seeds),
        residual=ms_residual,
        n_seeds=seeds,
        n_problems=problems,
    )


def _z_sum(alpha: float, power: float) -> float:
    return float(stats.norm.ppf(1 - alpha) + stats.norm.ppf(power))


def _target_standard_error(gap: float, margin: float, alpha: float, power: float) -> float:
    """The standard error at which a true gap ``gap`` is decided against ±``margin`` with probability ``power``:
    below −margin, the distance to −margin; above it, the nearer of −margin and +margin."""
    distance = abs(gap + margin) if gap <= -margin else min(gap + margin, margin - gap)
    return max(distance, 0.0) / _z_sum(alpha, power)


def seeds_to_decide(
    components: VarianceComponents,
    gap: float,
    margin: float,
    *,
    problems: int | None = None,
    inflation: float = 1.0,
    alpha: float = ALPHA,
    power: float = POWER,
) -> int | None:
    """The fewest seeds (at ``problems`` problems, default the table's) whose equivalence test decides a true gap
    of ``gap`` with probability ``power``; None when no number of seeds does (the problems' term is too large)."""
    p = problems or components.n_problems
    target = _target_standard_error(gap, margin, alpha, power) / max(inflation, 1.0)
    room = target**2 - components.problem / p
    if room <= 0:
        return None
    needed = (components.seed + components.residual / p) / room
    seeds = max(2, math.ceil(needed - 1e-12))
    return seeds if seeds <= MAX_SEEDS else None


def problems_to_decide(
    components: VarianceComponents,
    gap: float,
    margin: float,
    *,
    seeds: int | None = None,
    inflation: float = 1.0,
    alpha: float = ALPHA,
    power: float = POWER,
) -> int | None:
    """The fewest problems (at ``seeds`` seeds, default the table's) that decide, as :func:`seeds_to_decide`."""
    s = seeds or components.n_seeds
    target = _target_standard_error(gap, margin, alpha, power) / max(inflation, 1.0)
    room = target**2 - components.seed / s
    if room <= 0:
        return None
    return max(2, math.ceil((components.problem + components.residual / s) / room - 1e-12))


@dataclass(frozen=True)
class PowerEstimate:
    """One gap's variance components and the seeds (and problems) an equivalence test would need to decide it."""

    gap: float  # the observed gap to the best, in score units (negative: below the best)
    components: VarianceComponents
    bootstrap_sd: float | None  # the paired bootstrap's standard deviation of the gap (LR re-picked per draw)
    inflation: float  # bootstrap_sd / the formula's SE at the run's own seeds and problems, at least 1
    seeds_needed: int | None  # at the run's problems; None: no number of seeds decides it
    seeds_needed_4x_problems: int | None  # with four times the problems
    problems_needed: int | None  # at the run's seeds; None: no number of problems decides it

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the components flattened)."""
        data = asdict(self)
        data["components"] = self.components.to_dict()
        return data


def estimate_power(
    table: np.ndarray,
    margin: float,
    *,
    bootstrap_draws: np.ndarray | None = None,
    alpha: float = ALPHA,
    power: float = POWER,
) -> PowerEstimate:
    """:class:`PowerEstimate` of a (seeds × problems) table of paired differences against ±``margin``."""
    components = variance_components(table)
    gap = float(np.mean(table))
    formula = components.standard_error()
    finite = bootstrap_draws[np.isfinite(bootstrap_draws)] if bootstrap_draws is not None else np.array([])
    bootstrap_sd = float(np.std(finite, ddof=1)) if finite.size > 1 else None
    inflation = max(1.0, bootstrap_sd / formula) if bootstrap_sd and formula > 0 else 1.0
    options = {"inflation": inflation, "alpha": alpha, "power": power}
    return PowerEstimate(
        gap=gap,
        components=components,
        bootstrap_sd=bootstrap_sd,
        inflation=inflation,
        seeds_needed=seeds_to_decide(components, gap, margin, **options),
        seeds_needed_4x_problems=seeds_to_decide(
            components, gap, margin, problems=4 * components.n_problems, **options
        ),
        problems_needed=problems_to_decide(components, gap, margin, **options),
    )


def paired_table(
    ours: Mapping[int, Sequence[float]], best: Mapping[int, Sequence[float]]
) -> np.ndarray | None:
    """(seeds × problems) differences of two methods' per-problem scores at their tuned LRs, over the seeds both
    have (None with fewer than two such seeds or problems of different counts)."""
    seeds = sorted(set(ours) & set(best))
    rows = [
        np.asarray(ours[seed], dtype=float) - np.asarray(best[seed], dtype=float)
        for seed in seeds
        if len(ours[seed]) == len(best[seed])
    ]
    if len(rows) < 2 or len(rows) != len(seeds) or rows[0].size < 2:
        return None
    return np.vstack(rows)
