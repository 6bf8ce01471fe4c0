"""Figures of a sweep run directory, PNG and PDF, drawn with matplotlib's Agg canvas (no display needed).

(a) metric vs learning rate per method, peaks annotated; (b) λ_max vs η* on log-log axes with the fit, the
gradient-descent bound 2/λ and Adam's edge-of-stability line; (c) per-module λ_max at init relative to vanilla
LoRA across layers, with medians; (d) Lanczos/power-iteration convergence; (e) the spectral density; (f) training
loss curves per learning rate; (g) sharpness along training against the stability limits (hessian.during). Every
figure colours a method the same way (:data:`METHOD_COLORS`).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from hessian_lora.analysis.curves import SCORE_METRICS, metric_name, metric_value
from hessian_lora.analysis.figures._style import (
    ARROW_FACTOR,
    LR_AXIS_LABEL,
    bound_arrow,
    finish_method_panel,
    format_lr,
    method_panels,
    method_style,
    metric_axis_label,
    metric_scale,
    new_figure,
    shades,
)
from hessian_lora.analysis.figures.spectrum import (
    figure_convergence,
    figure_density,
    figure_layer_heatmap,
    figure_module_ratios,
)
from hessian_lora.analysis.runs import RunDirectory, RunRecord, read_run_directory
from hessian_lora.analysis.stability import largest_stable_lr, stability_curves
from hessian_lora.analysis.summary import Analysis, MethodSummary, analyze, relation_lambda
from hessian_lora.core.atomic import write_bytes_atomic
from hessian_lora.core.rundir import RunLayout, Status
from hessian_lora.hessian.thresholds import adam_thresholds
from hessian_lora.methods.registry import (  # noqa: F401
    METHOD_COLORS,
    METHOD_LABELS,
    method_color,
    method_label,
    method_sort_key,
)
from hessian_lora.training.memory import model_shape

FIGURE_NAMES: dict[str, str] = {
    "a": "a_metric_vs_lr",
    "b": "b_sharpness_vs_lr",
    "c": "c_module_ratios",
    "d": "d_convergence",
    "e": "e_spectral_density",
    "f": "f_loss_curves",
    "g": "g_edge_of_stability",
    "k": "k_layer_heatmap",
}


def figure_metric_vs_lr(analysis: Analysis) -> Figure:
    """(a) Below, the observed seed-mean metric per LR (markers at the LRs that ran, the band ±1 std over seeds),
    each method's best observed run ringed in black with the peak's bootstrap interval *at that LR*. Above, in a
    panel of its own that shares only the LR axis, the fitted η* of each method on its own row with its interval
    along the LR axis: η* is a position on the LR axis, not a measured score, so it has no place on the score axis
    (the parabola's vertex lies above every observed point)."""
    figure = new_figure(8.5, 6.6)
    names = list(analysis.methods)
    strip, axes = figure.subplots(2, 1, sharex=True, height_ratios=[0.35 + 0.16 * len(names), 4.0])
    scale = metric_scale(analysis.metric)
    axis_label = metric_axis_label(analysis.metric, (analysis.setup or {}).get("task"))
    for row, (name, summary) in enumerate(analysis.methods.items()):
        style = method_style(name)
        color = style["color"]
        lrs = np.asarray(summary.lrs)
        mean = np.asarray(summary.metric_mean) * scale
        std = np.asarray(summary.metric_std) * scale
        best = summary.peak_metric * scale
        best_text = f"{best:.1f}%" if analysis.metric in SCORE_METRICS else f"{best:.4g}"
        kind = {"edge": " (a bound: grid edge)", "flat": " (flat: no optimum)", "single": " (one LR)"}.get(
            summary.fit_kind, ""
        )
        bound = {"high": "≥ ", "low": "≤ "}.get(summary.censored or "", "")
        fitted = " (fit)" if summary.fit_kind == "quadratic" else ""
        label = (
            f"{method_label(name)}: η* {bound or '= '}{format_lr(summary.eta_star)}{fitted}{kind}; best run "
            f"{best_text} at {format_lr(summary.eta_grid)}"
        )
        axes.plot(lrs, mean, label=label, **style)
        if summary.n_seeds > 1:
            axes.fill_between(lrs, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
        # The best observed run: ringed, with the peak's interval at the LR where it was observed.
        yerr = (
            [[max(best - summary.peak_ci[0] * scale, 0)], [max(summary.peak_ci[1] * scale - best, 0)]]
            if summary.peak_ci
            else None
        )
        axes.errorbar(
            [summary.eta_grid],
            [best],
            yerr=yerr,
            fmt="none",
            ecolor=color,
            capsize=4,
            linewidth=1.4,
            zorder=6,
        )
        axes.plot(
            [summary.eta_grid],
            [best],
            linestyle="none",
            marker=style["marker"],
            markersize=11,
            color=color,
            markerfacecolor=color,
            markeredgecolor="black",
            markeredgewidth=1.6,
            zorder=7,
        )
        # The fitted η* on the method's row of the strip: a tick for an interior fit, ≥/≤ for a bound at the edge.
        marker = {"high": r"$\geq$", "low": r"$\leq$"}.get(summary.censored or "", "|")
        if summary.eta_ci and not summary.censored:
            strip.plot(list(summary.eta_ci), [row, row], color=color, linewidth=2.4, solid_capstyle="butt")
        strip.plot(
            [summary.eta_star],
            [row],
            marker=marker,
            color=color,
            markeredgecolor=color,
            markeredgewidth=2.5 if marker == "|" else 0.8,
            markersize=12,
            linestyle="none",
        )
        if summary.diverged_lrs:
            axes.plot(
                summary.diverged_lrs,
                [0.02] * len(summary.diverged_lrs),
                "x",
                color=color,
                markersize=7,
                transform=axes.get_xaxis_transform(),
                clip_on=False,
            )
    strip.set_yticks(range(len(names)), [method_label(name) for name in names], fontsize=7.5)
    strip.set_ylim(len(names) - 0.5, -0.5)
    strip.set_title(
        f"fitted η*, a position on the LR axis (not a score); bar: its {analysis.level:.0%} bootstrap CI; "
        "≥/≤: a bound\n(the vertex of a parabola in log η through the best run and its neighbours)",
        fontsize=8,
    )
    strip.grid(True, axis="x", which="major", alpha=0.3)
    axes.set_xscale("log")
    axes.set_xlabel(LR_AXIS_LABEL)
    axes.set_ylabel(axis_label)
    seeds = max((summary.n_seeds for summary in analysis.methods.values()), default=1)
    band = f" (band: ±1 std over {seeds} seeds)" if seeds > 1 else ""
    bars = (
        f"; bar: its peak's {analysis.level:.0%} bootstrap CI"
        if any(summary.peak_ci for summary in analysis.methods.values())
        else ""
    )
    name = metric_name(analysis.metric, (analysis.setup or {}).get("task"))
    axes.set_title(
        f"markers: the LRs run{band}; ringed: each method's best run{bars}; × = diverged", fontsize=8
    )
    figure.suptitle(f"{name[0].upper()}{name[1:]} vs learning rate", fontsize=10)
    axes.grid(True, which="major", alpha=0.3)
    figure.legend(loc="outside lower center", fontsize=7.5, ncol=2, framealpha=0.9)
    return figure


# ----------------------------------------------------------------------------------------------------------
# (b) λ_max vs η*


def uncertified_lambda(summary: MethodSummary, source: str) -> float | None:
    """The worst relative residual of the λ_max at init behind the relation that its solver did not certify
    (None: certified, or not known to be uncertified)."""
    return (
        summary.lambda_init_whole_uncertified if source == "whole" else summary.lambda_init_module_uncertified
    )


def figure_sharpness_vs_lr(analysis: Analysis) -> Figure | None:
    """(b) η* against λ_max at init per method (hollow: λ not certified), the fit, the gradient-descent bound
    2/λ and (with λ̃ measured) Adam's limit. The y range is the data's (η* and its intervals): a bound line far
    above the optima leaves the frame instead of squeezing them, and the legend says how far above it runs (η* as
    a fraction of 2/λ). Horizontal bars: λ's range over the seeds."""
    points = {name: relation_lambda(summary) for name, summary in analysis.methods.items()}
    points = {name: value for name, value in points.items() if value}
    precond = {name: s.precond_lambda_final for name, s in analysis.methods.items() if s.precond_lambda_final}
    if not points and not precond:
        return None
    relation = analysis.relation
    figure = new_figure(10.5, 6.2)
    axes = figure.add_subplot()
    xs_all: list[float] = []
    ys_all: list[float] = []
    uncertified_any = False
    widest_seed_spread: float | None = None
    for name, lam in points.items():
        summary = analysis.methods[name]
        style = method_style(name, line=False)
        # The bar is η*'s bootstrap interval (along the η* axis); a censored η* is a bound: a triangle pointing
        # where the optimum may lie, left out of the fit.
        interval = summary.eta_ci if not summary.censored else None
        yerr = [[summary.eta_star - interval[0]], [interval[1] - summary.eta_star]] if interval else None
        # The horizontal bar is λ's range over the seeds (the point is their geometric mean).
        seeds_lambda = [value for value in summary.lambda_init_per_seed.values() if value]
        xerr = None
        spread = max(seeds_lambda) / min(seeds_lambda) - 1 if len(seeds_lambda) > 1 else 0.0
        # A seed-independent initialisation (PiSSA, MiLoRA, OLoRA: an SVD or QR of the weights fixes the adapter) gives
        # every seed the same λ, and their geometric mean can round a few ulps outside that "range": no bar then.
        if spread > 1e-9:
            xerr = [[max(0.0, lam - min(seeds_lambda))], [max(0.0, max(seeds_lambda) - lam)]]
            widest_seed_spread = spread if widest_seed_spread is None else max(widest_seed_spread, spread)
        if (
            summary.censored
        ):  # a bound: an arrow towards where the optimum may lie (the marker stays the method's)
            bound_arrow(axes, lam, summary.eta_star, summary.censored, method_color(name))
            ys_all.append(
                summary.eta_star * (ARROW_FACTOR if summary.censored == "high" else 1 / ARROW_FACTOR)
            )
        bound = {"high": "≥ ", "low": "≤ "}.get(summary.censored or "", "= ")
        residual = uncertified_lambda(summary, relation.lambda_source)
        uncertified = f", NOT certified (res. {residual:.1e})" if residual is not None else ""
        uncertified_any |= residual is not None
        style.update(markersize=10, markeredgewidth=0.7)
        if residual is not None:  # hollow: the value is a lower bound on λ_max, not certified to tol
            style.update(markerfacecolor="white", markeredgecolor=method_color(name), markeredgewidth=2.0)
        axes.errorbar(
            [lam],
            [summary.eta_star],
            yerr=yerr,
            xerr=xerr,
            capsize=3,
            ecolor=method_color(name),
            label=rf"{method_label(name)}: $\lambda_{{\max}}$ = {lam:.3g}{uncertified}, $\eta^*$ {bound}"
            rf"{format_lr(summary.eta_star)}, $\eta^*\lambda/2$ {bound}{summary.eta_star * lam / 2:.2g}"
            rf"{' (censored)' if summary.censored else ''}",
            **style,
        )
        xs_all.append(lam)
        ys_all += [summary.eta_star, *(interval or ())]
    _, adam_at_unit_lr = adam_thresholds(1.0, analysis.beta1)
    for name, value in precond.items():
        summary = analysis.methods[name]
        faint = method_style(name, line=False)  # a small, faint copy of the method's own marker
        faint.update(alpha=0.55, markersize=6, markeredgewidth=0.3)
        axes.plot([value], [summary.eta_grid], **faint)
        xs_all.append(value)
        ys_all.append(summary.eta_grid)
    low_x, high_x = min(xs_all) / 3, max(xs_all) * 3
    x_line = np.logspace(math.log10(low_x), math.log10(high_x), 200)
    if relation.slope is not None and relation.intercept is not None:
        interval = ""
        if relation.slope_ci95:
            interval = f", 95% CI [{relation.slope_ci95[0]:.2f}, {relation.slope_ci95[1]:.2f}]"
        axes.plot(
            x_line,
            10**relation.intercept * x_line**relation.slope,
            "-",
            color="black",
            linewidth=1.4,
            label=rf"fit: $\eta^* \propto \lambda_{{\max}}^{{{relation.slope:.2f}}}${interval}",
        )
    low_y, high_y = min(ys_all) / 2, max(ys_all) * 2
    fractions = [
        analysis.methods[name].eta_star * lam / 2
        for name, lam in points.items()
        if not analysis.methods[name].censored
    ]
    where = f": η* is {min(fractions):.2g}–{max(fractions):.2g} of it" if fractions else ""
    if fractions and 2 / low_x > high_y:  # the line leaves the frame at the top rather than squeeze the data
        where += " (above the frame where it is not drawn)"
    axes.plot(
        x_line,
        2 / x_line,
        "--",
        color="0.35",
        linewidth=1.2,
        label=rf"gradient descent bound $\eta = 2/\lambda_{{\max}}${where}",
    )
    if precond:  # Adam's line bounds the preconditioned sharpness: drawn only when that was measured
        axes.plot(
            x_line,
            [adam_at_unit_lr / x for x in x_line],
            ":",
            color="0.2",
            linewidth=1.6,
            label=rf"Adam edge of stability $\eta = (2+2\beta_1)/((1-\beta_1)\tilde\lambda)$, "
            rf"$\beta_1$ = {analysis.beta1:g}",
        )
        axes.plot(
            [],
            [],
            "o",
            color="0.4",
            alpha=0.55,
            markersize=6,
            label=r"small faint markers: Adam-preconditioned $\tilde\lambda$ at the end, vs that run's LR",
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(low_x, high_x)
    axes.set_ylim(low_y, high_y)
    source = "whole adapter" if relation.lambda_source == "whole" else "median over modules"
    notes = (
        [f"bars: {analysis.level:.0%} bootstrap CI of η*"]
        if any(s.eta_ci for s in analysis.methods.values())
        else []
    )
    if widest_seed_spread is not None:  # said, since a spread of a few per cent is narrower than the marker
        notes.append(f"horizontal bars: λ's range over seeds (at most {widest_seed_spread:.1%} here)")
    if any(analysis.methods[name].censored for name in points):  # the arrow explained, with or without bars
        notes.append("arrow: censored η* (a bound, not in the fit)")
    if notes:
        axes.plot([], [], " ", label="; ".join(notes))
    precond_text = r"; small faint: preconditioned $\tilde\lambda$ at end" if precond else ""
    axes.set_xlabel(
        rf"sharpness $\lambda_{{\max}}$ at init ({source}; the loss Hessian's top eigenvalue, nats/token "
        rf"per parameter$^2$){precond_text}"
    )
    axes.set_ylabel(r"optimal learning rate $\eta^*$")
    rho = (
        f"Spearman ρ = {relation.spearman_rho:.2f}"
        if relation.spearman_rho is not None
        else "no relation: too few interior optima"
        if relation.note
        else "ρ: too few methods"
    )
    flagged = "; hollow: λ_max not certified (a lower bound)" if uncertified_any else ""
    axes.set_title(f"Sharpness vs optimal learning rate ({rho}){flagged}", fontsize=10)
    axes.grid(True, which="major", alpha=0.3)
    figure.legend(loc="outside lower center", fontsize=7.5, ncol=2, framealpha=0.9)
    return figure


# ----------------------------------------------------------------------------------------------------------
# (f) loss curves and (g) the edge of stability, one panel per method


def figure_loss_curves(directory: RunDirectory, analysis: Analysis) -> Figure | None:
    """Figure (f): training-loss curves at each method's best learning rate (None without histories)."""
    methods = [
        name for name in analysis.methods if any(run.method == name and run.history for run in directory.runs)
    ]
    if not methods:
        return None
    figure, panels = method_panels(methods, row_height=3.6)
    all_losses: list[float] = []
    starts: list[float] = []
    for index, (name, axes) in enumerate(zip(methods, panels)):
        runs = [
            run
            for run in directory.runs
            if run.method == name
            and run.history
            and run.is_usable
            and run.rank == analysis.rank
            and run.batch_size in (analysis.batch_size, None)
        ]
        seed = min(run.seed for run in runs) if runs else None
        runs = sorted((run for run in runs if run.seed == seed), key=lambda run: run.lr)
        own_best = _seed_best_lr(runs, analysis)
        for run, color in zip(runs, shades(name, len(runs))):
            steps = [point.get("step", i) for i, point in enumerate(run.history)]
            losses = [point["loss"] for point in run.history]
            finite = [value for value in losses if math.isfinite(value)]
            all_losses += finite
            starts += finite[:1]
            star = " ★" if run.lr == own_best else ""
            diverged = run.status == Status.DIVERGED
            axes.plot(
                steps,
                losses,
                color=color,
                linewidth=1.3,
                linestyle="--" if diverged else "-",
                label=f"{format_lr(run.lr)}{star}{' (diverged)' if diverged else ''}",
            )
        finish_method_panel(axes, name, seed, ylabel="training loss (nats/token)" if index % 2 == 0 else None)
    if all_losses:
        # Diverged runs shoot up; keep the axis on the learning curves.
        low, high = min(all_losses), max(starts)
        margin = 0.08 * (high - low) if high > low else 0.1 * abs(high) + 1e-3
        panels[0].set_ylim(low - margin, high + margin)
    figure.suptitle(
        "Training loss per learning rate (light → dark: low → high LR; ★ = the LR where this seed's own "
        f"{'score' if analysis.metric in SCORE_METRICS else analysis.metric} was best; dashed = diverged)",
        fontsize=11,
    )
    return figure


def _seed_best_lr(runs: Sequence[RunRecord], analysis: Analysis) -> float | None:
    """The LR at which these runs (one method, one seed) score best on the analysis's metric: the seed's own
    optimum, which need not be the seed mean's."""
    scored = [(value, run.lr) for run in runs if (value := metric_value(run, analysis.metric)) is not None]
    if not scored:
        return None
    pick = max if analysis.higher_is_better else min
    return pick(scored)[1]


def figure_edge_of_stability(directory: RunDirectory, analysis: Analysis) -> Figure | None:
    """(g) Per method, λ̃(t)·η_t/((2+2β₁)/(1−β₁)) (solid) and λ(t)·η_t/2 (dotted) over steps for every LR; 1 is
    the stability limit (:mod:`hessian_lora.analysis.stability`). Where no run has Adam's ratio at more than one
    step (Adam has no state at step 0, and a cosine schedule's LR is 0 at the last step), a time axis would hold
    one point per run: the ratios are drawn against the LR instead, one marker per probed step, and the title
    says so."""
    curves = [
        curve for curve in stability_curves(directory, analysis.beta1) if curve.method in analysis.methods
    ]
    methods = [name for name in analysis.methods if any(curve.method == name for curve in curves)]
    if not methods:
        return None
    informative = max(
        (sum(1 for r in curve.adam_ratio if r is not None and r > 0) for curve in curves), default=0
    )
    by_lr = informative <= 1
    figure, panels = method_panels(methods, row_height=3.6)
    probed_steps: set[int] = set()
    for index, (name, axes) in enumerate(zip(methods, panels)):
        mine = [curve for curve in curves if curve.method == name]
        seed = min(curve.seed for curve in mine)
        mine = sorted((curve for curve in mine if curve.seed == seed), key=lambda curve: curve.lr)
        stable = largest_stable_lr([curve for curve in curves if curve.method == name])
        for curve, color in zip(mine, shades(name, len(mine))):
            adam = [(s, r) for s, r in zip(curve.steps, curve.adam_ratio) if r is not None and r > 0]
            gd = [(s, r) for s, r in zip(curve.steps, curve.gd_ratio) if r is not None and r > 0]
            marks = (" ★" if curve.lr == analysis.methods[name].eta_grid else "") + (
                " (stable max)" if curve.lr == stable else ""
            )
            if by_lr:
                probed_steps.update(step for step, _ in adam)
                if adam:
                    axes.plot(
                        [curve.lr] * len(adam),
                        [r for _, r in adam],
                        color=color,
                        marker="o",
                        linestyle="none",
                        markersize=7,
                        label=f"{format_lr(curve.lr)}{marks}",
                    )
                if gd:
                    axes.plot(
                        [curve.lr] * len(gd),
                        [r for _, r in gd],
                        color=color,
                        marker="x",
                        linestyle="none",
                        markersize=5,
                    )
                continue
            if adam:
                axes.plot(
                    *zip(*adam), color=color, linewidth=1.4, marker=".", label=f"{format_lr(curve.lr)}{marks}"
                )
            if gd:
                axes.plot(*zip(*gd), color=color, linewidth=0.9, linestyle=":", marker="x", markersize=4)
        axes.axhline(1.0, color="black", linewidth=0.9, linestyle="--")
        axes.set_yscale("log")
        if by_lr:
            axes.set_xscale("log")
        finish_method_panel(axes, name, seed, ylabel="sharpness × η / limit" if index % 2 == 0 else None)
        if by_lr:
            axes.set_xlabel(LR_AXIS_LABEL)
    limit = (2 + 2 * analysis.beta1) / (1 - analysis.beta1)
    if by_lr:
        steps = ", ".join(str(step) for step in sorted(probed_steps)) or "none"
        figure.suptitle(
            f"Edge of stability against the LR: λ̃·η_t/{limit:.3g} (Adam, ●) and λ·η_t/2 (GD, ×) at "
            f"the probed steps; 1 = at the limit; ★ = best grid LR\nonly one probed step per run has "
            f"Adam's ratio (step {steps}: it needs Adam's state and η_t > 0), so no time axis",
            fontsize=10,
        )
    else:
        figure.suptitle(
            f"Edge of stability: λ̃·η/{limit:.3g} (Adam, solid) and λ·η/2 (GD, dotted ×); "
            "1 = at the limit; ★ = best grid LR",
            fontsize=11,
        )
    return figure


# ----------------------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class PlotResult:
    """The figures :func:`plot_run` wrote (key → files) and those it skipped (key → why)."""

    written: dict[str, list[Path]] = field(default_factory=dict)  # figure key -> files
    skipped: dict[str, str] = field(default_factory=dict)  # figure key -> why


SKIP_REASONS = {
    "b": "no λ_max at init (eigen reports or the lambda_init column) and no preconditioned sharpness",
    "c": "no per-module eigen reports at init for LoRA and another method",
    "d": "no eigen report with a convergence history",
    "e": "no eigen report with a spectral density (measure with density)",
    "f": "no run has a training-loss history",
    "g": "no run has a sharpness history (sweep with hessian: {during: {every: N}})",
    "k": "no per-module eigen report at init of q_proj or k_proj (scripts/init_modules.py --modules q_proj k_proj)",
}


def save_figure(
    figure: Figure, stem: Path, formats: Sequence[str] = ("png", "pdf"), dpi: int = 150
) -> list[Path]:
    """Save ``figure`` as ``stem.<format>`` for each format, atomically (rendered in memory, then
    :func:`~hessian_lora.core.atomic.write_bytes_atomic`: a reader never sees half a figure)."""
    paths = []
    for extension in formats:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=extension, dpi=dpi)
        paths.append(write_bytes_atomic(stem.with_suffix(f".{extension}"), buffer.getvalue()))
    return paths


def make_figures(directory: RunDirectory, analysis: Analysis) -> dict[str, Figure | None]:
    """All figures by key (``a``..``g``); None where the run directory lacks the data."""
    builders: dict[str, Callable[[], Figure | None]] = {
        "a": lambda: figure_metric_vs_lr(analysis),
        "b": lambda: figure_sharpness_vs_lr(analysis),
        "c": lambda: figure_module_ratios(directory, list(analysis.methods)),
        "d": lambda: figure_convergence(directory),
        "e": lambda: figure_density(directory),
        "f": lambda: figure_loss_curves(directory, analysis),
        "g": lambda: figure_edge_of_stability(directory, analysis),
        "k": lambda: figure_layer_heatmap(directory, list(analysis.methods), layers=_model_layers(directory)),
    }
    return {key: build() for key, build in builders.items()}


def _model_layers(directory: RunDirectory) -> int | None:
    """The model's decoder-layer count where its spec is known without loading it (:func:`model_shape`)."""
    spec = directory.config.get("model")
    shape = model_shape(str(spec)) if spec else None
    return shape.layers if shape is not None else None


def plot_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    analysis: Analysis | None = None,
    formats: Sequence[str] = ("png", "pdf"),
    **analyze_options: object,
) -> PlotResult:
    """Write every figure the run directory has data for.

    Args:
        run_dir: a sweep run directory (only read).
        out_dir: where the figures go (default ``RUN_DIR/figures``).
        analysis: an :class:`Analysis` of the run already made (default: :func:`analyze` with ``analyze_options``).
        formats: file formats to write, e.g. ``("png",)``.
        **analyze_options: :func:`analyze`'s options when ``analysis`` is not given.

    Returns:
        A :class:`PlotResult`: the files written by figure key (``a``…``k``) and, for the others, why each was
        skipped (the data the run lacks).

    Raises:
        UserError: as :func:`analyze`, or ``out_dir`` cannot be written.
    """
    directory = read_run_directory(run_dir)
    analysis = analysis or analyze(run_dir, **analyze_options)
    out = Path(out_dir) if out_dir is not None else RunLayout(run_dir).figures
    result = PlotResult()
    for key, figure in make_figures(directory, analysis).items():
        if figure is None:
            result.skipped[key] = SKIP_REASONS.get(key, "no data")
            continue
        result.written[key] = save_figure(figure, out / FIGURE_NAMES[key], formats)
    return result
