"""The λ_max–η* relation across methods: power law and c/λ fits, bootstrap slope interval, exact Spearman ρ,
and the leave-one-method-out error of the λ-based learning-rate prediction."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from hessian_lora.core.errors import UserError

FitKind = Literal["power", "inverse"]
FIT_KINDS: tuple[FitKind, ...] = ("power", "inverse")


@dataclass(frozen=True)
class PowerLaw:
    """log10 η* = intercept + slope · log10 λ_max (least squares)."""

    slope: float
    intercept: float
    r2: float | None
    n: int

    def predict(self, lambda_max: float) -> float:
        """The fitted η* at ``lambda_max``: 10^(intercept + slope·log10 λ)."""
        return float(10 ** (self.intercept + self.slope * math.log10(lambda_max)))


def fit_power_law(lambdas: Sequence[float], etas: Sequence[float]) -> PowerLaw:
    """Least-squares line of log10 η* on log10 λ_max (ValueError with fewer than two distinct λ)."""
    x = np.log10(np.asarray(lambdas, dtype=float))
    y = np.log10(np.asarray(etas, dtype=float))
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError("a power law needs at least two distinct λ_max values")
    x_mean, y_mean = x.mean(), y.mean()
    slope = float(np.sum((x - x_mean) * (y - y_mean)) / np.sum((x - x_mean) ** 2))
    intercept = float(y_mean - slope * x_mean)
    residual = y - (intercept + slope * x)
    total = float(np.sum((y - y_mean) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if total > 0 else None
    return PowerLaw(slope, intercept, r2, int(x.size))


def fit_inverse_constant(lambdas: Sequence[float], etas: Sequence[float]) -> tuple[float, float]:
    """c of η* ≈ c/λ_max by least squares in log space (the geometric mean of η*·λ), and the geometric standard
    deviation factor of η*·λ around it."""
    products = np.log10(np.asarray(etas, dtype=float) * np.asarray(lambdas, dtype=float))
    if products.size == 0:
        raise ValueError("fit_inverse_constant needs at least one point")
    spread = float(10 ** np.std(products, ddof=1)) if products.size > 1 else 1.0
    return float(10 ** products.mean()), spread


def bootstrap_slope(
    points: Mapping[str, Sequence[tuple[float, float]]],
    *,
    samples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, int]:
    """Percentile interval for the slope of log η* on log λ_max: resample methods with replacement, then for each
    drawn method one of its per-seed (λ_max, η*) points. Resamples with a single distinct λ are skipped.

    Returns (low, high, number of valid resamples).
    """
    names = [name for name, pts in points.items() if pts]
    if len(names) < 2:
        raise ValueError("bootstrap_slope needs at least two methods")
    logs = {name: np.log10(np.asarray(points[name], dtype=float)) for name in names}
    rng = np.random.default_rng(seed)
    slopes = []
    for _ in range(samples):
        drawn = rng.integers(len(names), size=len(names))
        xy = np.array([logs[names[i]][rng.integers(len(logs[names[i]]))] for i in drawn])
        x, y = xy[:, 0], xy[:, 1]
        if np.ptp(x) == 0:
            continue
        x_centred = x - x.mean()
        slopes.append(float(np.sum(x_centred * (y - y.mean())) / np.sum(x_centred**2)))
    if not slopes:
        raise ValueError("every bootstrap resample had a single distinct λ_max")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(slopes, [tail, 100 - tail])
    return float(low), float(high), len(slopes)


@dataclass(frozen=True)
class LomoPrediction:
    """A held-out method's η* as predicted from its λ_max by a calibration on the other methods."""

    method: str
    lambda_max: float
    actual: float
    predicted: float
    fit: FitKind  # the calibration used: "power" or "inverse" (power needs two distinct λ among the others)

    @property
    def ratio(self) -> float:
        """Predicted over actual η*."""
        return self.predicted / self.actual

    @property
    def within_2x(self) -> bool:
        """Whether the prediction is within a factor of 2 of the actual η*."""
        return abs(math.log2(self.ratio)) <= 1.0 + 1e-12


def predict_eta(
    lambdas: Sequence[float], etas: Sequence[float], lambda_max: float, fit: FitKind | str
) -> tuple[float, FitKind]:
    """η* predicted at ``lambda_max`` from calibration points by a power law (``fit="power"``, falling back to
    c/λ when the points hold fewer than two distinct λ) or by c/λ (``fit="inverse"``)."""
    if fit not in FIT_KINDS:
        raise UserError(f"unknown fit {fit!r}: use {' or '.join(FIT_KINDS)}.")
    if fit == "power" and len(set(lambdas)) >= 2:
        return fit_power_law(lambdas, etas).predict(lambda_max), "power"
    constant, _ = fit_inverse_constant(lambdas, etas)
    return constant / lambda_max, "inverse"


def leave_one_method_out(points: Mapping[str, tuple[float, float]], fit: FitKind) -> list[LomoPrediction]:
    """For each method, predict its η* from its λ_max with a calibration fitted on the other methods only."""
    predictions = []
    for method, (lambda_max, eta) in points.items():
        others = [(lam, et) for name, (lam, et) in points.items() if name != method]
        if not others:
            continue
        predicted, used = predict_eta([lam for lam, _ in others], [et for _, et in others], lambda_max, fit)
        predictions.append(LomoPrediction(method, lambda_max, eta, predicted, used))
    return predictions


def spearman_exact(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's ρ with a two-sided p-value; exact over all orderings for n <= 8.

    scipy's default p comes from a t approximation that is meaningless for a handful of methods (it gives 1e-24
    for a perfect ρ over 5 points, where the exact value is 2/5! = 0.017).
    """
    result = stats.spearmanr(x, y)
    rho = float(result.statistic)
    if len(x) > 8:
        return rho, float(result.pvalue)
    exact = stats.permutation_test(
        (list(x),),
        lambda a: stats.spearmanr(a, y).statistic,
        permutation_type="pairings",
        alternative="two-sided",
        n_resamples=math.inf,
    )
    return rho, float(exact.pvalue)
