"""Per-method summary of a sweep (η*, peak, sharpness at init and at the end) and the relation across methods.

For each method: η* and its spread over seeds (:mod:`.curves`); the peak metric and its gap to the best method;
λ_max of the loss Hessian w.r.t. the adapter at initialisation and at the end of the η* run, for the whole
adapter and as the median over per-module blocks; the Adam-preconditioned sharpness at the end against Adam's
edge-of-stability threshold (2+2β₁)/((1−β₁)η). Across methods: :mod:`.relation`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np

from hessian_lora.analysis.censoring import (
    MIN_INTERIOR,
    bound_text,
    censored_summary,
    censoring,
    extension_advice,
)
from hessian_lora.analysis.claims import PEAK_TOLERANCE_POINTS
from hessian_lora.analysis.curves import (
    HIGHER_IS_BETTER,
    MethodCurve,
    Metric,
    PeakKind,
    choose_metric,
    fit_peak,
    method_curves,
)
from hessian_lora.analysis.power import ALPHA, estimate_power, paired_table
from hessian_lora.analysis.relation import (
    FIT_KINDS,
    FitKind,
    bootstrap_slope,
    fit_inverse_constant,
    fit_power_law,
    leave_one_method_out,
    spearman_exact,
)
from hessian_lora.analysis.runs import RunDirectory, RunRecord, read_run_directory
from hessian_lora.analysis.uncertainty import (
    NO_INTERVAL,
    Draws,
    bootstrap_optima,
    gap_interval,
    gap_verdict,
    percentile_interval,
    relation_draws,
)
from hessian_lora.core.errors import UserError
from hessian_lora.core.metrics import SCORE_METRICS
from hessian_lora.core.rundir import Status
from hessian_lora.hessian.thresholds import adam_thresholds
from hessian_lora.methods.registry import method_sort_key
from hessian_lora.settings.training import DEFAULT_BETAS

LambdaSource = Literal["auto", "whole", "module_median"]
LAMBDA_SOURCES: tuple[LambdaSource, ...] = ("auto", "whole", "module_median")
DEFAULT_BETA1 = DEFAULT_BETAS[0]


def adam_beta1(config: Mapping[str, Any]) -> float:
    """β₁ of the sweep's AdamW: the first of the ``betas`` its config.yaml records (every version of the sweep
    writes that key), else the recipe's default."""
    betas = config.get("betas")
    try:
        return float(betas[0]) if isinstance(betas, (list, tuple)) and betas else DEFAULT_BETA1
    except (TypeError, ValueError):
        return DEFAULT_BETA1


def is_adaptive(config: Mapping[str, Any]) -> bool:
    """Whether the sweep's config.yaml asks for the adaptive search (``search: adaptive`` or a mapping with
    ``mode: adaptive``) rather than the whole ``lr`` grid."""
    search = config.get("search")
    if isinstance(search, Mapping):
        return search.get("mode") == "adaptive"
    return search == "adaptive"


@dataclass(frozen=True)
class MethodSummary:
    """One method's row of the analysis (one rank and batch size; λ values are geometric means over seeds)."""

    method: str
    n_seeds: int
    lrs: tuple[float, ...]
    metric_mean: tuple[float, ...]
    metric_std: tuple[float, ...]
    diverged_lrs: tuple[float, ...]
    eta_star: float
    eta_grid: float
    fit_kind: PeakKind
    eta_star_per_seed: Mapping[int, float]
    eta_spread_factor: float | None  # geometric standard deviation 10**std(log10 η*_seed); None with one seed
    peak_metric: float
    peak_metric_std: float
    peak_metric_fit: float
    gap_to_best: float = 0.0  # how much worse than the best method's peak (>= 0, in metric units)
    lambda_init_whole: float | None = None
    lambda_init_module_median: float | None = None
    lambda_init_per_seed: Mapping[int, float] = field(default_factory=dict)  # the relation's λ source
    # Worst relative residual of a λ_max at init the solver did not certify (None: all certified), per source.
    lambda_init_whole_uncertified: float | None = None
    lambda_init_module_uncertified: float | None = None
    # What the per-module median stands on, e.g. "q_proj of 30 layers, seed 1, 8 examples" (None without modules).
    lambda_init_module_basis: str | None = None
    # Each measured module's λ_max at init (block name → geometric mean over seeds): the paper's per-layer ratios
    # to LoRA pair these by name, so a method's sharp layer is compared with LoRA's same layer.
    lambda_init_modules: Mapping[str, float] = field(default_factory=dict)
    lambda_final_whole: float | None = None
    lambda_final_module_median: float | None = None
    precond_lambda_final: float | None = None
    eta_lambda_over_2: float | None = None  # η*·λ_init/2: η* as a fraction of gradient descent's bound 2/λ
    final_lambda_eta_over_2: float | None = None  # λ_final·η/2 at the η* run's LR (edge of stability ≈ 1)
    precond_over_adam_threshold: float | None = None  # λ̃_final / ((2+2β₁)/((1−β₁)η)) at the η* run's LR
    censored: str | None = (
        None  # "high" (η* ≥ the largest LR), "low" (≤ the smallest), "single"; None: interior
    )
    eta_ci: tuple[float, float] | None = None  # bootstrap interval of η* (seeds and evaluation examples)
    peak_ci: tuple[float, float] | None = None  # bootstrap interval of the peak metric
    gap_ci: tuple[float, float] | None = None  # interval of (peak − best method's peak), paired per draw
    gap_verdict: str | None = None  # "best", "within noise", "below the best beyond noise", "no interval"
    uncertainty_basis: str = ""  # what the bootstrap resampled, or why there is no interval
    eta_seed_range_factor: float | None = (
        None  # max/min of the per-seed η* (the range, not a standard deviation)
    )
    # The seed-mean optimum with one seed left out (seed → η*), and the seeds whose removal moves the best grid LR:
    # an optimum that one seed's run (a collapse) decides.
    eta_star_without_seed: Mapping[int, float] = field(default_factory=dict)
    seeds_moving_optimum: tuple[int, ...] = ()
    gap_ci_equivalence: tuple[float, float] | None = (
        None  # the gap's 1 − 2α interval (two one-sided tests at α)
    )
    power: Mapping[str, Any] | None = None  # :class:`~.power.PowerEstimate` of the gap to the best (to_dict)


@dataclass(frozen=True)
class Relation:
    """The λ_max–η* relation across methods (see :mod:`hessian_lora.analysis.relation`)."""

    lambda_source: Literal["whole", "module_median"]
    n_methods: int
    spearman_rho: float | None
    spearman_p: float | None
    slope: float | None
    intercept: float | None
    r2: float | None
    slope_ci95: tuple[float, float] | None
    bootstrap_valid: int
    c: float | None
    c_spread_factor: float | None
    lomo: Mapping[FitKind, list[dict[str, Any]]]  # fit -> LomoPrediction fields, ratio and within_2x
    lomo_within_2x: Mapping[FitKind, int]
    preferred_fit: FitKind | None
    n_total: int = 0  # methods with a λ_max, censored or not
    censored: Mapping[str, str] = field(
        default_factory=dict
    )  # method -> its bound ("≥ 0.1"), left out of the fit
    note: str | None = None  # why there is no relation (too few interior optima), said instead of numbers
    extend: str = ""  # the grid extension that would turn censored optima into values
    spearman_rho_ci: tuple[float, float] | None = None  # ρ over η* bootstrap draws
    # The same fit with each kind of λ at init every interior method has ("whole", "module_median"): slope, its
    # interval, R², ρ and whether the slope's interval holds −1 (η* ∝ 1/λ), so no verdict hides which λ it used.
    by_source: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Analysis:
    """Everything ``hessian-lora analyze`` reports; :meth:`to_dict` is analysis.json.

    Attributes:
        run_dir: the run directory analysed.
        metric: the metric that decides η*.
        higher_is_better: whether a larger metric is better.
        beta1: Adam's β₁ of the runs (for the stability bounds).
        rank: the rank analysed (None: the run has one).
        batch_size: the batch size analysed (None: the run has one).
        methods: each method's summary (η*, peak, intervals).
        best_method: the method with the best peak.
        relation: the λ_max–η* relation (fits, slope, Spearman's ρ).
        created: when the analysis was made (ISO time).
        n_runs: the runs analysed.
        level: the confidence level of every interval.
        n_eval_examples: evaluation problems behind the per-example bootstrap (None: none stored).
        setup: the run's model, task, steps and optimizer (from config.yaml).
        pooled_gap: every non-best method's gap to the best, averaged per draw (None without intervals).
    """

    run_dir: str
    metric: Metric
    higher_is_better: bool
    beta1: float
    rank: int | None
    batch_size: int | None
    methods: Mapping[str, MethodSummary]
    best_method: str
    relation: Relation
    created: str
    n_runs: int
    level: float = 0.95  # the confidence level of every interval
    n_eval_examples: int | None = (
        None  # evaluation problems behind the per-example bootstrap (None: none stored)
    )
    setup: Mapping[str, Any] = field(default_factory=dict)  # model, task, steps, optimizer (from config.yaml)
    # Every non-best method's gap to the best, averaged per draw: one test of "the methods peak alike" across
    # methods, with its intervals and power estimate (None without intervals).
    pooled_gap: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-able data."""
        return jsonable(asdict(self))


def jsonable(value: Any) -> Any:
    """JSON-ready copy: string keys, lists for tuples, None for NaN/inf (JSON has neither), no numpy scalars."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return jsonable(value.item())
    return value


def _geometric_mean(values: Iterable[float | None]) -> float | None:
    """Geometric mean of the positive finite values; None if there are none (λ values span decades)."""
    kept = [value for value in values if value is not None and value > 0 and math.isfinite(value)]
    return float(10 ** np.mean(np.log10(kept))) if kept else None


def _select_configuration(
    runs: Sequence[RunRecord], rank: int | None, batch_size: int | None
) -> list[RunRecord]:
    """The runs of one rank and batch size: η* moves with both, so mixing them would blur every curve."""
    selected = [
        run
        for run in runs
        if (rank is None or run.rank == rank) and (batch_size is None or run.batch_size == batch_size)
    ]
    if not selected:
        raise UserError(
            f"no run with rank={rank} batch_size={batch_size}: check `hessian-lora results RUN_DIR`."
        )
    for attribute, flag in (("rank", "--rank"), ("batch_size", "--batch-size")):
        values = sorted({getattr(run, attribute) for run in selected if getattr(run, attribute) is not None})
        if len(values) > 1:
            raise UserError(f"the runs hold several {attribute} values {values}: pick one with {flag}.")
    return selected


def analyze(
    run_dir: str | os.PathLike[str],
    *,
    metric: Metric | Literal["auto"] = "auto",
    lambda_source: LambdaSource = "auto",
    rank: int | None = None,
    batch_size: int | None = None,
    bootstrap_samples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Analysis:
    """Analyse a sweep run directory (see the module docstring).

    Args:
        run_dir: a directory written by ``hessian-lora sweep`` (or :func:`run_sweep`); only read.
        metric: which metric defines the optimum (``auto``: :func:`choose_metric`).
        lambda_source: which λ_max at initialisation the relation uses (``auto``: the whole adapter's when every
            method has it, else the module median).
        rank: the rank to analyse when the sweep holds several.
        batch_size: the batch size to analyse when the sweep holds several.
        bootstrap_samples: resamples behind every interval (η*, peak, gap to the best, slope, ρ).
        seed: the resampling's seed.
        level: the intervals' confidence.

    Returns:
        The :class:`Analysis`: one :class:`MethodSummary` per method, the λ_max–η* relation and the metric used;
        ``write_analysis`` turns it into analysis.json/analysis.md with the paper's claims.

    Raises:
        UserError: the directory holds no runs, no finished run has the metric, a setting is unknown, no run
            has the rank or batch size asked for, or several are present and none was chosen.
    """
    if lambda_source not in LAMBDA_SOURCES:
        raise UserError(f"unknown λ source {lambda_source!r}: use {', '.join(LAMBDA_SOURCES)}.")
    directory = read_run_directory(run_dir)
    if not directory.runs:
        raise UserError(f"{run_dir} holds no runs yet: run the sweep first.")
    runs = _select_configuration(directory.runs, rank, batch_size)
    chosen = choose_metric(runs, metric)
    higher = HIGHER_IS_BETTER[chosen]
    curves = method_curves(runs, chosen)
    if not curves:
        raise UserError(f"no finished run has a {chosen}: let the sweep finish or pick another --metric.")
    beta1 = adam_beta1(directory.config)
    chosen_rank = next((run.rank for run in runs if run.rank is not None), None)
    chosen_batch = next((run.batch_size for run in runs if run.batch_size is not None), None)

    summaries = {
        method: _summarise_method(curve, runs, directory, chosen, beta1)
        for method, curve in sorted(curves.items(), key=lambda item: method_sort_key(item[0]))
    }
    source = _resolve_lambda_source(summaries, lambda_source)
    summaries = {
        method: _with_relation_lambda(summary, runs, directory, source)
        for method, summary in summaries.items()
    }
    peaks = {method: summary.peak_metric for method, summary in summaries.items()}
    best_method = (max if higher else min)(peaks, key=lambda name: peaks[name])
    draws = bootstrap_optima(
        runs, list(summaries), chosen, higher_is_better=higher, samples=bootstrap_samples, seed=seed
    )
    summaries = {
        method: _with_uncertainty(
            replace(summary, gap_to_best=abs(peaks[best_method] - summary.peak_metric)),
            draws,
            best_method,
            higher,
            level,
        )
        for method, summary in summaries.items()
    }
    summaries, pooled = _with_power(dict(summaries), runs, draws, best_method, chosen, level)
    relation = _relation(
        summaries,
        source,
        bootstrap_samples,
        seed,
        draws=draws,
        level=level,
        run_dir=str(run_dir),
        adaptive=is_adaptive(directory.config),
    )
    relation = replace(relation, by_source=_fits_by_source(summaries, draws, level, seed))
    return Analysis(
        run_dir=str(run_dir),
        metric=chosen,
        higher_is_better=higher,
        beta1=beta1,
        rank=chosen_rank,
        batch_size=chosen_batch,
        methods=summaries,
        best_method=best_method,
        relation=relation,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        n_runs=len(runs),
        level=level,
        n_eval_examples=draws.n_examples,
        setup=run_setup(directory.config, chosen_rank),
        pooled_gap=pooled,
    )


def run_setup(config: Mapping[str, Any], rank: int | None) -> dict[str, Any]:
    """What the run trained, from its config.yaml, for the claims table's header: model, task, rank, steps and
    the optimizer (the recipe's AdamW)."""
    keys = ("model", "task", "steps", "epochs", "n_eval")
    return {
        "rank": rank,
        "optimizer": "AdamW",
        **{key: config.get(key) for key in keys if config.get(key) is not None},
    }


def _with_uncertainty(
    summary: MethodSummary, draws: Draws, best: str, higher: bool, level: float
) -> MethodSummary:
    """The bootstrap intervals of η*, the peak and the gap to the best method (see :mod:`.uncertainty`)."""
    name = summary.method
    basis = draws.basis.get(name, NO_INTERVAL)
    if basis == NO_INTERVAL:
        return replace(
            summary, uncertainty_basis=basis, gap_verdict="best" if name == best else "no interval"
        )
    gap = gap_interval(draws, name, best, level) if name != best else None
    equivalence = gap_interval(draws, name, best, 1 - 2 * ALPHA) if name != best else None
    return replace(
        summary,
        uncertainty_basis=basis,
        eta_ci=percentile_interval(draws.eta[name], level, log=True),
        peak_ci=percentile_interval(draws.peak[name], level),
        gap_ci=gap,
        gap_ci_equivalence=equivalence,
        gap_verdict=gap_verdict(gap, higher, name == best),
    )


def tuned_scores(runs: Sequence[RunRecord], method: str, lr: float) -> dict[int, tuple[float, ...]]:
    """Per seed, the per-problem scores of ``method``'s run at ``lr`` (a diverged run scores 0 on every problem,
    as the bootstrap scores it); seeds whose run stored no scores are left out."""
    found = {run.seed: run for run in runs if run.method == method and run.lr == lr and run.is_usable}
    lengths = {len(run.eval_scores) for run in found.values() if run.eval_scores}
    size = lengths.pop() if len(lengths) == 1 else 0
    scores: dict[int, tuple[float, ...]] = {}
    for seed, run in found.items():
        if run.eval_scores:
            scores[seed] = tuple(run.eval_scores)
        elif run.status == Status.DIVERGED and size:
            scores[seed] = (0.0,) * size
    return scores


def _with_power(
    summaries: dict[str, MethodSummary],
    runs: Sequence[RunRecord],
    draws: Draws,
    best: str,
    metric: Metric,
    level: float,
) -> tuple[dict[str, MethodSummary], dict[str, Any] | None]:
    """Each non-best method's power estimate of its gap to the best (:mod:`.power`), and the pooled gap: every
    non-best method's gap averaged per bootstrap draw and per (seed, problem), with its intervals and power. Score
    metrics with per-problem scores only (a loss has no per-problem table)."""
    if metric not in SCORE_METRICS or best not in summaries:
        return summaries, None
    margin = PEAK_TOLERANCE_POINTS / 100
    reference = tuned_scores(runs, best, summaries[best].eta_grid)
    tables: dict[str, np.ndarray] = {}
    for name, summary in summaries.items():
        if name == best or summary.censored:
            continue
        table = paired_table(tuned_scores(runs, name, summary.eta_grid), reference)
        if table is None:
            continue
        tables[name] = table
        gap_draws = draws.peak[name] - draws.peak[best] if name in draws.peak and best in draws.peak else None
        estimate = estimate_power(table, margin, bootstrap_draws=gap_draws)
        summaries[name] = replace(summary, power=estimate.to_dict())
    shapes = {table.shape for table in tables.values()}
    if len(tables) < 2 or len(shapes) != 1:
        return summaries, None
    names = sorted(tables, key=method_sort_key)
    pooled_draws = (
        np.mean([draws.peak[name] - draws.peak[best] for name in names], axis=0)
        if all(name in draws.peak for name in [*names, best])
        else None
    )
    pooled_table = np.mean([tables[name] for name in names], axis=0)
    estimate = estimate_power(pooled_table, margin, bootstrap_draws=pooled_draws)
    pooled: dict[str, Any] = {
        "methods": names,
        "gap": float(np.mean([-summaries[name].gap_to_best for name in names])),
        "gap_ci": percentile_interval(pooled_draws, level) if pooled_draws is not None else None,
        "gap_ci_equivalence": percentile_interval(pooled_draws, 1 - 2 * ALPHA)
        if pooled_draws is not None
        else None,
        "power": estimate.to_dict(),
    }
    return summaries, pooled


def _summarise_method(
    curve: MethodCurve, runs: Sequence[RunRecord], directory: RunDirectory, metric: Metric, beta1: float
) -> MethodSummary:
    """η*, peak and sharpness of one method; the relation's λ comes later (:func:`_with_relation_lambda`)."""
    higher = HIGHER_IS_BETTER[metric]
    peak = fit_peak(curve.lrs, curve.mean, higher_is_better=higher)
    per_seed: dict[int, float] = {}
    for seed, points in curve.per_seed.items():
        lrs = [lr for lr, _ in points]
        if len(set(lrs)) == len(lrs):
            per_seed[seed] = fit_peak(lrs, [value for _, value in points], higher_is_better=higher).eta_star
    spread = float(10 ** np.std(np.log10(list(per_seed.values())), ddof=1)) if len(per_seed) > 1 else None
    seed_range = max(per_seed.values()) / min(per_seed.values()) if len(per_seed) > 1 else None
    without, moving = leave_one_seed_out(curve, higher_is_better=higher)
    peak_index = curve.lrs.index(peak.eta_grid)
    method_runs = [run for run in runs if run.method == curve.method]

    init_whole: list[float | None] = []
    init_median: list[float | None] = []
    whole_uncertified: list[float] = []
    module_uncertified: list[float] = []
    module_kinds: set[str] = set()
    module_layers: set[int] = set()
    module_seeds: set[int] = set()
    module_samples: set[int] = set()
    per_module: dict[str, list[float]] = {}
    for seed in sorted({run.seed for run in method_runs}):
        report = directory.init_report(curve.method, seed, method_runs[0].rank)
        if report is not None:
            init_whole.append(report.whole.lambda_max if report.whole else None)
            init_median.append(report.module_median)
            for block in report.modules:
                per_module.setdefault(block.name, []).append(block.lambda_max)
                module_kinds.add(block.module)
                module_seeds.add(seed)
                if block.layer is not None:
                    module_layers.add(block.layer)
                if (count := report.samples_of(block)) is not None:
                    module_samples.add(count)
            if report.whole and report.whole.uncertified_residual is not None:
                whole_uncertified.append(report.whole.uncertified_residual)
            module_uncertified += [
                block.uncertified_residual
                for block in report.modules
                if block.uncertified_residual is not None
            ]

    # End-of-training sharpness of the runs at the best grid LR (one per seed).
    best_runs = [run for run in method_runs if run.lr == peak.eta_grid and run.status == Status.DONE]
    final_whole: list[float | None] = []
    final_median: list[float | None] = []
    precond: list[float | None] = []
    for run in best_runs:
        report = directory.final_reports.get(run.run_id)
        whole = report.whole.lambda_max if report and report.whole else None
        final_whole.append(whole if whole is not None else run.lambda_final)
        final_median.append(report.module_median if report else None)
        precond.append(
            run.precond_lambda_final
            if run.precond_lambda_final is not None
            else (report.precond_sharpness if report else None)
        )
    lambda_final = _geometric_mean(final_whole)
    precond_final = _geometric_mean(precond)
    _, adam_threshold = adam_thresholds(peak.eta_grid, beta1)
    return MethodSummary(
        method=curve.method,
        censored=censoring(peak.kind, peak.eta_grid, curve.lrs),
        n_seeds=len(curve.per_seed),
        lrs=curve.lrs,
        metric_mean=curve.mean,
        metric_std=curve.std,
        diverged_lrs=tuple(lr for lr, _ in curve.diverged),
        eta_star=peak.eta_star,
        eta_grid=peak.eta_grid,
        fit_kind=peak.kind,
        eta_star_per_seed=per_seed,
        eta_spread_factor=spread,
        eta_seed_range_factor=seed_range,
        eta_star_without_seed=without,
        seeds_moving_optimum=moving,
        peak_metric=peak.peak_metric,
        peak_metric_std=curve.std[peak_index],
        peak_metric_fit=peak.peak_metric_fit,
        lambda_init_whole=_geometric_mean(init_whole),
        lambda_init_module_median=_geometric_mean(init_median),
        lambda_init_whole_uncertified=max(whole_uncertified, default=None),
        lambda_init_module_uncertified=max(module_uncertified, default=None),
        lambda_init_module_basis=_module_basis(module_kinds, module_layers, module_seeds, module_samples),
        lambda_init_modules={
            name: value
            for name, values in per_module.items()
            if (value := _geometric_mean(values)) is not None
        },
        lambda_final_whole=lambda_final,
        lambda_final_module_median=_geometric_mean(final_median),
        precond_lambda_final=precond_final,
        final_lambda_eta_over_2=lambda_final * peak.eta_grid / 2 if lambda_final else None,
        precond_over_adam_threshold=precond_final / adam_threshold
        if precond_final and adam_threshold
        else None,
    )


def leave_one_seed_out(
    curve: MethodCurve, *, higher_is_better: bool
) -> tuple[dict[int, float], tuple[int, ...]]:
    """The seed-mean optimum with each seed left out (seed → η*), and the seeds whose removal moves η* by more than
    half the LR lattice's step (×√step: past the midpoint to the next LR searched, e.g. ×1.33 on a quarter-decade
    lattice): an optimum that one seed's runs (a collapse at one LR) decide. Needs three or more seeds."""
    if len(curve.per_seed) < 3 or len(curve.lrs) < 2:
        return {}, ()
    full = fit_peak(curve.lrs, curve.mean, higher_is_better=higher_is_better).eta_star
    half_step = math.sqrt(min(high / low for low, high in zip(curve.lrs, curve.lrs[1:])))
    without: dict[int, float] = {}
    moving: list[int] = []
    for left_out in curve.per_seed:
        by_lr: dict[float, list[float]] = {}
        for seed, points in curve.per_seed.items():
            if seed != left_out:
                for lr, value in points:
                    by_lr.setdefault(lr, []).append(value)
        lrs = sorted(by_lr)
        eta = fit_peak(
            lrs, [float(np.mean(by_lr[lr])) for lr in lrs], higher_is_better=higher_is_better
        ).eta_star
        without[left_out] = eta
        if max(eta / full, full / eta) > half_step * (1 + 1e-9):
            moving.append(left_out)
    return without, tuple(moving)


def _resolve_lambda_source(
    summaries: Mapping[str, MethodSummary], requested: LambdaSource
) -> Literal["whole", "module_median"]:
    """``auto``: the whole adapter's λ when every method has it, else the module median when every method has
    that, else the whole adapter's (from the ``lambda_init`` column where there are no reports)."""
    if requested != "auto":
        return requested
    if summaries and all(s.lambda_init_whole is not None for s in summaries.values()):
        return "whole"
    if summaries and all(s.lambda_init_module_median is not None for s in summaries.values()):
        return "module_median"
    return "whole"


def _with_relation_lambda(
    summary: MethodSummary,
    runs: Sequence[RunRecord],
    directory: RunDirectory,
    source: Literal["whole", "module_median"],
) -> MethodSummary:
    """Per-seed λ_max at init from the chosen source: the eigen reports, else the ``lambda_init`` column (the
    sweep's own measurement, assumed to be of the whole adapter)."""
    method_runs = [run for run in runs if run.method == summary.method]
    per_seed: dict[int, float] = {}
    for seed in sorted({run.seed for run in method_runs}):
        report = directory.init_report(summary.method, seed, method_runs[0].rank)
        value = None
        if report is not None:
            value = (
                report.whole.lambda_max
                if source == "whole" and report.whole
                else (report.module_median if source == "module_median" else None)
            )
        if value is None and source == "whole":
            column = [
                run.lambda_init for run in method_runs if run.seed == seed and run.lambda_init is not None
            ]
            value = float(np.median(column)) if column else None
        if value is not None and value > 0:
            per_seed[seed] = value
    whole = summary.lambda_init_whole
    if whole is None and source == "whole" and per_seed:
        whole = _geometric_mean(per_seed.values())
    relation_lambda = _geometric_mean(per_seed.values())
    return replace(
        summary,
        lambda_init_per_seed=per_seed,
        lambda_init_whole=whole,
        eta_lambda_over_2=summary.eta_star * relation_lambda / 2 if relation_lambda else None,
    )


def _module_basis(kinds: set[str], layers: set[int], seeds: set[int], samples: set[int]) -> str | None:
    """``q_proj of 30 layers, seed 1, 8 examples``: what a per-module median was measured on."""
    if not kinds:
        return None
    text = "/".join(sorted(kinds)) + (
        f" of {len(layers)} layer{'s' if len(layers) != 1 else ''}" if layers else ""
    )
    text += f", seed{'s' if len(seeds) != 1 else ''} {', '.join(str(seed) for seed in sorted(seeds))}"
    if samples:
        low, high = min(samples), max(samples)
        text += f", {low} examples" if low == high else f", {low}–{high} examples"
    return text


def relation_lambda(summary: MethodSummary) -> float | None:
    """The λ_max at initialisation that the relation uses for this method (geometric mean over seeds)."""
    return _geometric_mean(summary.lambda_init_per_seed.values())


def _fits_by_source(
    summaries: Mapping[str, MethodSummary], draws: Draws, level: float, seed: int
) -> dict[str, dict[str, Any]]:
    """The relation's power-law fit with each kind of λ at init that every interior method has: the whole
    adapter's and the module median's (the paper measured modules). Per source: the methods, slope and R², the
    slope's and ρ's intervals over η* draws, exact ρ, and whether the slope's interval holds −1 (η* ∝ 1/λ)."""
    interior = {name: s for name, s in summaries.items() if not s.censored}
    fits: dict[str, dict[str, Any]] = {}
    for source, attribute in (("whole", "lambda_init_whole"), ("module_median", "lambda_init_module_median")):
        lambdas = {name: getattr(s, attribute) for name, s in interior.items()}
        if (
            len(lambdas) < MIN_INTERIOR
            or any(not value for value in lambdas.values())
            or len(set(lambdas.values())) < 2
        ):
            continue
        etas = {name: interior[name].eta_star for name in lambdas}
        power = fit_power_law(list(lambdas.values()), list(etas.values()))
        rho, p_value = spearman_exact(list(lambdas.values()), list(etas.values()))
        with_draws = {
            name: draws.eta[name]
            for name in lambdas
            if name in draws.eta and draws.basis.get(name) != NO_INTERVAL
        }
        slope_ci, rho_ci, _ = (
            relation_draws(lambdas, with_draws, etas, level=level, seed=seed)
            if with_draws
            else (None, None, 0)
        )
        fits[source] = {
            "methods": list(lambdas),
            "slope": power.slope,
            "intercept": power.intercept,
            "r2": power.r2,
            "slope_ci95": slope_ci,
            "spearman_rho": rho,
            "spearman_p": p_value,
            "spearman_rho_ci": rho_ci,
            "inverse_in_ci": None if slope_ci is None else bool(slope_ci[0] <= -1.0 <= slope_ci[1]),
        }
    return fits


def _relation(
    summaries: Mapping[str, MethodSummary],
    source: Literal["whole", "module_median"],
    samples: int,
    seed: int,
    *,
    draws: Draws | None = None,
    level: float = 0.95,
    run_dir: str = "RUN_DIR",
    adaptive: bool = False,
) -> Relation:
    """Spearman ρ, power-law slope with its bootstrap interval, c of c/λ and the leave-one-method-out errors,
    over the methods with an interior optimum only (a censored η* is a bound: :mod:`.censoring`); with fewer
    than :data:`MIN_INTERIOR` of them, no numbers and a note saying why."""
    with_lambda = {name: s for name, s in summaries.items() if relation_lambda(s)}
    censored = {name: s.censored for name, s in with_lambda.items() if s.censored}
    bounds = {name: bound_text(side, with_lambda[name].eta_star) for name, side in censored.items()}
    extend = extension_advice(
        censored, {name: s.lrs for name, s in summaries.items()}, run_dir, adaptive=adaptive
    )
    points: dict[str, tuple[float, float]] = {
        name: (relation_lambda(s), s.eta_star)  # type: ignore[misc]  # with_lambda: λ not None
        for name, s in with_lambda.items()
        if name not in censored
    }
    if len(points) < MIN_INTERIOR:
        summary = censored_summary(
            censored, {n: s.eta_star for n, s in with_lambda.items()}, len(with_lambda)
        )
        note = (
            f"not enough interior optima ({summary}; a relation needs {MIN_INTERIOR} interior optima, "
            f"{len(points)} here)"
        )
        return Relation(
            lambda_source=source,
            n_methods=len(points),
            spearman_rho=None,
            spearman_p=None,
            slope=None,
            intercept=None,
            r2=None,
            slope_ci95=None,
            bootstrap_valid=0,
            c=None,
            c_spread_factor=None,
            lomo={},
            lomo_within_2x={},
            preferred_fit=None,
            n_total=len(with_lambda),
            censored=bounds,
            note=note,
            extend=extend,
        )
    lambdas = [lam for lam, _ in points.values()]
    etas = [eta for _, eta in points.values()]
    rho = p_value = None
    if len(points) >= 3 and len(set(lambdas)) > 1 and len(set(etas)) > 1:
        rho, p_value = spearman_exact(lambdas, etas)
    power = fit_power_law(lambdas, etas) if len(set(lambdas)) >= 2 else None
    interval, valid, rho_interval = None, 0, None
    if draws is not None and power is not None and any(draws.basis.get(n) != NO_INTERVAL for n in points):
        # The interval carries η*'s own uncertainty: each draw uses that bootstrap draw's η* per method.
        interval, rho_interval, valid = relation_draws(
            {name: lam for name, (lam, _) in points.items()},
            {
                name: draws.eta[name]
                for name in points
                if name in draws.eta and draws.basis.get(name) != NO_INTERVAL
            },
            {name: eta for name, (_, eta) in points.items()},
            level=level,
            seed=seed,
        )
    elif power is not None and len(points) >= 3:
        seed_points: dict[str, list[tuple[float, float]]] = {}
        for name, summary in summaries.items():
            if name not in points:
                continue
            pairs = [
                (summary.lambda_init_per_seed[s], summary.eta_star_per_seed[s])
                for s in summary.lambda_init_per_seed
                if s in summary.eta_star_per_seed
            ]
            seed_points[name] = pairs or [points[name]]
        try:
            low, high, valid = bootstrap_slope(seed_points, samples=samples, seed=seed)
            interval = (low, high)
        except ValueError:
            interval = None
    c = spread = None
    if points:
        c, spread = fit_inverse_constant(lambdas, etas)
    lomo: dict[FitKind, list[dict[str, Any]]] = {}
    within: dict[FitKind, int] = {}
    if len(points) >= 2:
        for fit in FIT_KINDS:
            predictions = leave_one_method_out(points, fit)
            lomo[fit] = [dict(asdict(p), ratio=p.ratio, within_2x=p.within_2x) for p in predictions]
            within[fit] = sum(p.within_2x for p in predictions)
    preferred: FitKind | None = None
    if lomo:
        # The fit whose held-out predictions are closer in log space; ties go to the simpler c/λ.
        errors = {fit: float(np.mean([abs(math.log10(item["ratio"])) for item in lomo[fit]])) for fit in lomo}
        preferred = min(FIT_KINDS[::-1], key=lambda fit: errors.get(fit, math.inf))
    return Relation(
        lambda_source=source,
        n_methods=len(points),
        spearman_rho=rho,
        spearman_p=p_value,
        slope=power.slope if power else None,
        intercept=power.intercept if power else None,
        r2=power.r2 if power else None,
        slope_ci95=interval,
        bootstrap_valid=valid,
        c=c,
        c_spread_factor=spread,
        lomo=lomo,
        lomo_within_2x=within,
        preferred_fit=preferred,
        n_total=len(with_lambda),
        censored=bounds,
        extend=extend,
        spearman_rho_ci=rho_interval,
    )
