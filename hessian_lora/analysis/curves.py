"""A method's metric as a function of the learning rate, and its optimum η*.

η* is the best eval metric on the seed-mean curve, refined between grid points by the vertex of the parabola
through the peak and its two neighbours in log10(LR); each seed's own η* gives the spread.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from hessian_lora.analysis.runs import RunRecord
from hessian_lora.core.errors import UserError
from hessian_lora.core.metrics import HIGHER_IS_BETTER, SCORE_METRICS, Metric
from hessian_lora.core.rundir import Status

PeakKind = Literal["quadratic", "edge", "flat", "single"]


@dataclass(frozen=True)
class PeakFit:
    """The optimum of one metric-vs-LR curve.

    ``kind``: ``quadratic`` (vertex of the parabola through the best grid point and its neighbours in log10 LR),
    ``edge`` (best at the first or last grid point: the optimum may lie outside the grid), ``flat`` (three or
    more tied best points: the centre of the plateau), ``single`` (one grid point).
    """

    eta_star: float
    eta_grid: float
    kind: PeakKind
    peak_metric: float  # observed metric at eta_grid
    peak_metric_fit: float  # the parabola's value at the vertex (= peak_metric unless kind == "quadratic")

    @property
    def at_edge(self) -> bool:
        """Whether the optimum sits at a grid edge (a bound, not an estimate)."""
        return self.kind == "edge"


def parabola_vertex(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Vertex (x, y) and curvature a of the parabola y = a x² + ... through three points (any spacing)."""
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    slope01 = (y1 - y0) / (x1 - x0)
    slope12 = (y2 - y1) / (x2 - x1)
    curvature = (slope12 - slope01) / (x2 - x0)
    if curvature == 0:
        return x1, y1, 0.0
    vertex_x = 0.5 * (x0 + x1) - slope01 / (2 * curvature)
    vertex_y = y0 + slope01 * (vertex_x - x0) + curvature * (vertex_x - x0) * (vertex_x - x1)
    return vertex_x, vertex_y, curvature


def fit_peak(lrs: Sequence[float], metric: Sequence[float], *, higher_is_better: bool = True) -> PeakFit:
    """η* of one curve: best grid point, refined by a parabola in log10(LR) through it and its neighbours."""
    order = np.argsort(np.asarray(lrs, dtype=float))
    lr_sorted = np.asarray(lrs, dtype=float)[order]
    values = np.asarray(metric, dtype=float)[order]
    if lr_sorted.size == 0:
        raise ValueError("fit_peak needs at least one point")
    if np.any(lr_sorted <= 0) or np.any(~np.isfinite(values)):
        raise ValueError("fit_peak needs positive learning rates and finite metrics")
    if np.unique(lr_sorted).size != lr_sorted.size:
        raise ValueError("fit_peak needs distinct learning rates (average seeds first)")
    score = values if higher_is_better else -values
    best = int(np.argmax(score))
    tied = np.flatnonzero(score == score[best])
    if lr_sorted.size == 1:
        return PeakFit(float(lr_sorted[0]), float(lr_sorted[0]), "single", float(values[0]), float(values[0]))
    if tied.size >= 3 or (tied.size == 2 and tied[1] - tied[0] > 1):
        # A plateau (e.g. accuracy 1.0 at several LRs): the centre of the tied points in log-LR.
        centre = float(10 ** np.mean(np.log10(lr_sorted[tied])))
        nearest = int(tied[np.argmin(np.abs(np.log10(lr_sorted[tied]) - math.log10(centre)))])
        return PeakFit(centre, float(lr_sorted[nearest]), "flat", float(values[best]), float(values[best]))
    if best == 0 or best == lr_sorted.size - 1:
        if tied.size == 2:  # two tied neighbours at the edge: fall through to the interior one's parabola
            best = int(tied[1] if best == 0 else tied[0])
        if best == 0 or best == lr_sorted.size - 1:
            return PeakFit(
                float(lr_sorted[best]),
                float(lr_sorted[best]),
                "edge",
                float(values[best]),
                float(values[best]),
            )
    window = slice(best - 1, best + 2)
    log_lrs = np.log10(lr_sorted[window])
    vertex_x, vertex_score, curvature = parabola_vertex(log_lrs, score[window])
    if curvature >= 0:
        return PeakFit(
            float(lr_sorted[best]), float(lr_sorted[best]), "flat", float(values[best]), float(values[best])
        )
    vertex_x = float(np.clip(vertex_x, log_lrs[0], log_lrs[2]))
    peak_fit = vertex_score if higher_is_better else -vertex_score
    return PeakFit(
        float(10**vertex_x), float(lr_sorted[best]), "quadratic", float(values[best]), float(peak_fit)
    )


def is_reasoning_gym(task: str | None) -> bool:
    """Whether a sweep's ``task`` is scored by reasoning-gym (``arith`` and ``arith:<generator>,...``)."""
    return bool(task) and (task == "arith" or str(task).startswith("arith:"))


def metric_name(metric: str, task: str | None = None) -> str:
    """What a metric measures, in words for axes and tables. ``accuracy`` is the mean over problems of the task's
    scorer: on a reasoning-gym task that is ``score_answer``, which gives partial credit (0.5, 0.67, ...), so it is
    a mean score, not an exact-match rate; on a file's answers it is a numeric exact match."""
    if metric == "accuracy":
        return (
            "mean score per problem (reasoning-gym's score_answer, partial credit)"
            if is_reasoning_gym(task)
            else "accuracy (the task's scorer)"
        )
    return {"eval_loss": "held-out loss", "train_loss": "final training loss"}.get(metric, metric)


@dataclass(frozen=True)
class MethodCurve:
    """A method's metric per learning rate, averaged over seeds; diverged runs kept in ``diverged``."""

    method: str
    lrs: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: tuple[int, ...]
    per_seed: Mapping[int, tuple[tuple[float, float], ...]]  # seed -> ((lr, metric), ...)
    diverged: tuple[tuple[float, int], ...]  # (lr, diverged runs at that lr)


def metric_value(run: RunRecord, metric: Metric) -> float | None:
    """The run's metric; a diverged run without one scores 0 accuracy (it answers nothing right) and is left
    out of loss curves (its loss is not a number to average)."""
    value = run.metric(metric)
    if value is None and run.status == Status.DIVERGED and metric in SCORE_METRICS:
        return 0.0
    return value


def method_curves(runs: Iterable[RunRecord], metric: Metric) -> dict[str, MethodCurve]:
    """Per method, the seed-mean ``metric`` at each learning rate of its done and diverged runs."""
    by_method: dict[str, list[RunRecord]] = {}
    for run in runs:
        if run.is_usable:
            by_method.setdefault(run.method, []).append(run)
    curves = {}
    for method, method_runs in by_method.items():
        by_lr: dict[float, list[float]] = {}
        per_seed: dict[int, list[tuple[float, float]]] = {}
        diverged: dict[float, int] = {}
        for run in method_runs:
            if run.status == Status.DIVERGED:
                diverged[run.lr] = diverged.get(run.lr, 0) + 1
            value = metric_value(run, metric)
            if value is None:
                continue
            by_lr.setdefault(run.lr, []).append(value)
            per_seed.setdefault(run.seed, []).append((run.lr, value))
        if not by_lr:
            continue
        lrs = sorted(by_lr)
        curves[method] = MethodCurve(
            method=method,
            lrs=tuple(lrs),
            mean=tuple(float(np.mean(by_lr[lr])) for lr in lrs),
            std=tuple(float(np.std(by_lr[lr], ddof=1)) if len(by_lr[lr]) > 1 else 0.0 for lr in lrs),
            count=tuple(len(by_lr[lr]) for lr in lrs),
            per_seed={seed: tuple(sorted(points)) for seed, points in sorted(per_seed.items())},
            diverged=tuple(sorted(diverged.items())),
        )
    return curves


def choose_metric(runs: Sequence[RunRecord], requested: Metric | Literal["auto"] | str = "auto") -> Metric:
    """``auto``: accuracy when it can locate an optimum for every method (each method has finished runs with
    some non-zero and unequal accuracies); otherwise held-out loss, then training loss."""
    if requested != "auto":
        if requested not in HIGHER_IS_BETTER:
            raise UserError(f"unknown metric {requested!r}: use auto, {', '.join(HIGHER_IS_BETTER)}.")
        return requested  # checked against HIGHER_IS_BETTER
    done = [run for run in runs if run.status == Status.DONE]
    by_method: dict[str, list[float | None]] = {}
    for run in done:
        by_method.setdefault(run.method, []).append(run.accuracy)
    if by_method and all(
        None not in values and max(values) > 0 and len(set(values)) > 1 for values in by_method.values()
    ):
        return "accuracy"
    if any(run.eval_loss is not None for run in done):
        return "eval_loss"
    if any(run.train_loss is not None for run in done):
        return "train_loss"
    raise UserError("no finished run has accuracy, eval_loss or train_loss: let the sweep finish some runs.")
