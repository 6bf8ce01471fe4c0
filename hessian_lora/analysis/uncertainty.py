"""How sure each η* and peak is: a bootstrap over seeds and over evaluation examples, paired across methods.

Why paired: every method is scored on the same evaluation problems, so a hard draw of problems lowers every
method's accuracy together. Resampling the example indices once per bootstrap draw and applying them to every
method and learning rate keeps that shared component out of the *differences* between methods (the question
"is PiSSA's tuned peak really below LoRA's?"), which independent resampling would inflate. Seeds are resampled
the same way (one draw of seed indices for every method when they share their seeds). Each draw re-runs the
whole η* estimate (:func:`~hessian_lora.analysis.curves.fit_peak` on the drawn seed-mean curve), so the interval
includes the grid's discreteness and the parabola refinement, not just the noise of one grid point.

Where per-example scores are missing (older run directories, or a loss metric) the bootstrap is over seeds only;
with one seed and no per-example scores there is nothing to resample, and the summary says so instead of
printing an interval of zero width.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from hessian_lora.analysis.curves import Metric, fit_peak, metric_value
from hessian_lora.analysis.runs import RunRecord
from hessian_lora.core.rundir import Status

NO_INTERVAL = "no interval (1 seed, no per-example scores)"


@dataclass(frozen=True)
class _MethodData:
    """One method's observations as arrays: seeds × LRs (× examples where every run stored its scores)."""

    seeds: tuple[int, ...]
    lrs: tuple[float, ...]
    scalars: np.ndarray  # (seeds, lrs), NaN where a seed lacks that LR
    scores: np.ndarray | None  # (seeds, lrs, examples) or None


@dataclass(frozen=True)
class Draws:
    """Bootstrap draws per method (aligned by draw index), and what was resampled."""

    eta: Mapping[str, np.ndarray]
    peak: Mapping[str, np.ndarray]
    basis: Mapping[
        str, str
    ]  # "seeds and evaluation examples" | "seeds" | "evaluation examples" | NO_INTERVAL
    n_examples: int | None


def _method_data(runs: Sequence[RunRecord], metric: Metric) -> _MethodData | None:
    usable = [run for run in runs if run.is_usable]
    seeds = tuple(sorted({run.seed for run in usable}))
    lrs = tuple(sorted({run.lr for run in usable if metric_value(run, metric) is not None}))
    if not seeds or not lrs:
        return None
    scalars = np.full((len(seeds), len(lrs)), np.nan)
    lengths = {len(run.eval_scores) for run in usable if run.eval_scores}
    per_example = metric == "accuracy" and len(lengths) == 1
    n = lengths.pop() if per_example else 0
    scores = np.full((len(seeds), len(lrs), n), np.nan) if per_example else None
    for run in usable:
        value = metric_value(run, metric)
        if value is None or run.lr not in lrs:
            continue
        i, j = seeds.index(run.seed), lrs.index(run.lr)
        scalars[i, j] = value
        if scores is not None:
            if run.eval_scores is not None:
                scores[i, j] = run.eval_scores
            elif run.status == Status.DIVERGED:
                scores[i, j] = 0.0  # a diverged run answers nothing right (as metric_value scores it)
            else:
                scores = None  # a finished run without scores: fall back to seeds only for this method
    return _MethodData(seeds, lrs, scalars, scores)


def bootstrap_optima(
    runs: Sequence[RunRecord],
    methods: Sequence[str],
    metric: Metric,
    *,
    higher_is_better: bool,
    samples: int = 2000,
    seed: int = 0,
) -> Draws:
    """``samples`` draws of (η*, peak metric) per method, seeds and evaluation examples resampled once per draw
    for all methods (see the module docstring). A method with nothing to resample gets no draws."""
    data = {name: _method_data([run for run in runs if run.method == name], metric) for name in methods}
    data = {name: item for name, item in data.items() if item is not None}
    lengths = {item.scores.shape[2] for item in data.values() if item.scores is not None}
    n_examples = lengths.pop() if len(lengths) == 1 else None
    shared_seeds = len({item.seeds for item in data.values()}) == 1
    basis: dict[str, str] = {}
    for name, item in data.items():
        parts = (["seeds"] if len(item.seeds) > 1 else []) + (
            ["evaluation examples"] if item.scores is not None and item.scores.shape[2] == n_examples else []
        )
        basis[name] = " and ".join(parts) if parts else NO_INTERVAL
    rng = np.random.default_rng(seed)
    eta = {name: np.full(samples, np.nan) for name in data}
    peak = {name: np.full(samples, np.nan) for name in data}
    for draw in range(samples):
        example_index = rng.integers(n_examples, size=n_examples) if n_examples else None
        common = (
            rng.integers(len(next(iter(data.values())).seeds), size=len(next(iter(data.values())).seeds))
            if data and shared_seeds
            else None
        )
        for name, item in data.items():
            if basis[name] == NO_INTERVAL:
                continue
            seed_index = common if common is not None else rng.integers(len(item.seeds), size=len(item.seeds))
            if item.scores is not None and example_index is not None and item.scores.shape[2] == n_examples:
                table = item.scores[seed_index][:, :, example_index].mean(axis=2)
            else:
                table = item.scalars[seed_index]
            with np.errstate(invalid="ignore"), _quiet():
                curve = np.nanmean(table, axis=0)
            keep = np.isfinite(curve)
            if not keep.any():
                continue
            fit = fit_peak(np.asarray(item.lrs)[keep], curve[keep], higher_is_better=higher_is_better)
            eta[name][draw], peak[name][draw] = fit.eta_star, fit.peak_metric
    return Draws(eta, peak, basis, n_examples)


class _quiet:
    """Silence numpy's "mean of empty slice" warning (a seed draw without an LR leaves NaN, handled above)."""

    def __enter__(self) -> None:
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._catch.__exit__(*exc)


def percentile_interval(values: np.ndarray, level: float, *, log: bool = False) -> tuple[float, float] | None:
    """The central ``level`` percentile interval of the finite values (in log10 for η*); None without two."""
    finite = values[np.isfinite(values)]
    if finite.size < 2:
        return None
    tail = (1 - level) / 2 * 100
    data = np.log10(finite) if log else finite
    low, high = np.percentile(data, [tail, 100 - tail])
    return (float(10**low), float(10**high)) if log else (float(low), float(high))


def gap_interval(draws: Draws, method: str, best: str, level: float) -> tuple[float, float] | None:
    """Interval of (method's peak − best method's peak), paired draw by draw."""
    if method not in draws.peak or best not in draws.peak:
        return None
    return percentile_interval(draws.peak[method] - draws.peak[best], level)


def gap_verdict(interval: tuple[float, float] | None, higher_is_better: bool, is_best: bool) -> str:
    """Whether a method's tuned peak is worse than the best method's beyond the bootstrap noise."""
    if is_best:
        return "best"
    if interval is None:
        return "no interval"
    low, high = interval
    worse = high < 0 if higher_is_better else low > 0
    return ("below" if higher_is_better else "above") + " the best beyond noise" if worse else "within noise"


def relation_draws(
    lambdas: Mapping[str, float],
    eta_draws: Mapping[str, np.ndarray],
    etas: Mapping[str, float],
    *,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[tuple[float, float] | None, tuple[float, float] | None, int]:
    """Slope and Spearman ρ intervals that carry η*'s uncertainty: per draw, the methods are resampled with
    replacement (slope only: ρ needs distinct methods) and each uses that draw's η* (its point value where it has
    no draws). Returns (slope interval, ρ interval, valid slope draws)."""
    names = list(lambdas)
    samples = max((len(values) for values in eta_draws.values()), default=0) or 2000
    rng = np.random.default_rng(seed)
    x_all = np.log10(np.array([lambdas[name] for name in names]))
    slopes, rhos = [], []
    for draw in range(samples):
        y_all = np.array(
            [
                eta_draws[name][draw]
                if name in eta_draws and np.isfinite(eta_draws[name][draw])
                else etas[name]
                for name in names
            ]
        )
        y_all = np.log10(y_all)
        if np.ptp(y_all) > 0:
            rhos.append(float(stats.spearmanr(x_all, y_all).statistic))
        pick = rng.integers(len(names), size=len(names))
        x, y = x_all[pick], y_all[pick]
        if np.ptp(x) == 0:
            continue
        centred = x - x.mean()
        slopes.append(float(np.sum(centred * (y - y.mean())) / np.sum(centred**2)))
    slope_ci = percentile_interval(np.array(slopes), level)
    rho_ci = percentile_interval(np.array(rhos), level)
    return slope_ci, rho_ci, len(slopes)
