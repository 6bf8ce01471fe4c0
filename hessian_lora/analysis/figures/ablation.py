"""Figures of an ablation (several ranks, batch sizes or run directories): each setting's own figures, and three
that compare settings: (g) η* per method against the setting, (h) the peak against the setting, (i) the metric
per setting × learning rate for each method (with batch size varying: the paper's batch-size × LR table).

Kept apart from :mod:`hessian_lora.analysis.figures.plots` (one sweep setting) so each module stays about one thing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from hessian_lora.analysis.ablation import Ablation, analyze_ablation, lr_table
from hessian_lora.analysis.figures._style import (
    METRIC_AXIS_LABELS,
    bound_arrow,
    format_lr,
    method_style,
    metric_scale,
    new_figure,
)
from hessian_lora.analysis.figures.plots import FIGURE_NAMES, PlotResult, make_figures, save_figure
from hessian_lora.analysis.runs import read_run_directory
from hessian_lora.analysis.summary import MethodSummary
from hessian_lora.core.rundir import RunLayout
from hessian_lora.methods.registry import method_color, method_label

ABLATION_FIGURES: dict[str, str] = {
    # h, i, j: the per-run figures use a-g and k (the per-layer heatmap), so the keys of both sets stay distinct
    "h": "h_eta_vs_setting",
    "i": "i_peak_vs_setting",
    "j": "j_setting_lr_table",
}


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label).strip("_") or "setting"


def _method_points(ablation: Ablation) -> list[tuple[str, list[tuple[float, MethodSummary]]]]:
    """Per method, (x, summary) of each setting that has it: x is the setting's index, nudged per method so
    methods' markers at one setting do not overlap."""
    offsets = np.linspace(-0.12, 0.12, max(len(ablation.methods), 1))
    return [
        (
            name,
            [
                (index + offset, analysis.methods[name])
                for index, analysis in enumerate(ablation.analyses)
                if name in analysis.methods
            ],
        )
        for offset, name in zip(offsets, ablation.methods)
    ]


def figure_eta_vs_setting(ablation: Ablation) -> Figure:
    """η* per method across settings, with its bootstrap interval; a censored optimum gets an arrow (up: ≥)."""
    figure = new_figure(8.5, 5.0)
    axes = figure.add_subplot()
    labels = [setting.label for setting in ablation.settings]
    for name, points in _method_points(ablation):
        xs, ys = [], []
        for x, summary in points:
            style = method_style(name, line=False)
            if summary.censored:  # a bound: an arrow towards where the optimum may lie
                bound_arrow(axes, x, summary.eta_star, summary.censored, method_color(name))
            interval = summary.eta_ci if not summary.censored else None
            yerr = [[summary.eta_star - interval[0]], [interval[1] - summary.eta_star]] if interval else None
            axes.errorbar([x], [summary.eta_star], yerr=yerr, capsize=3, ecolor=method_color(name), **style)
            xs.append(x)
            ys.append(summary.eta_star)
        # Settings are categories: a faint guide joins one method's points, not an interpolation between them.
        axes.plot(xs, ys, ":", color=method_color(name), linewidth=0.9, alpha=0.6)
        axes.plot([], [], label=method_label(name), **method_style(name, line=False))
    axes.set_yscale("log")
    axes.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 4 else 0)
    axes.set_xlabel("setting (" + ", ".join(ablation.axes) + ")")
    axes.set_ylabel(r"optimal learning rate $\eta^*$")
    level = ablation.analyses[0].level
    censored = any(s.censored for analysis in ablation.analyses for s in analysis.methods.values())
    bars = any(s.eta_ci for analysis in ablation.analyses for s in analysis.methods.values())
    notes = ([f"bars: {level:.0%} bootstrap CI"] if bars else []) + (
        ["arrows: censored at the grid edge"] if censored else []
    )
    axes.set_title(
        "Optimal learning rate per setting" + (f" ({'; '.join(notes)})" if notes else ""), fontsize=10
    )
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def figure_peak_vs_setting(ablation: Ablation) -> Figure:
    """The tuned peak per method across settings, with its bootstrap interval."""
    figure = new_figure(8.5, 5.0)
    axes = figure.add_subplot()
    metric = ablation.analyses[0].metric
    scale = metric_scale(metric)
    labels = [setting.label for setting in ablation.settings]
    for name, points in _method_points(ablation):
        xs, ys = [], []
        for x, summary in points:
            value = summary.peak_metric * scale
            yerr = (
                [[max(value - summary.peak_ci[0] * scale, 0)], [max(summary.peak_ci[1] * scale - value, 0)]]
                if summary.peak_ci
                else None
            )
            axes.errorbar(
                [x],
                [value],
                yerr=yerr,
                capsize=3,
                ecolor=method_color(name),
                **method_style(name, line=False),
            )
            xs.append(x)
            ys.append(value)
        axes.plot(xs, ys, ":", color=method_color(name), linewidth=0.9, alpha=0.6)
        axes.plot([], [], label=method_label(name), **method_style(name, line=False))
    axes.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 4 else 0)
    axes.set_xlabel("setting (" + ", ".join(ablation.axes) + ")")
    axes.set_ylabel("tuned " + METRIC_AXIS_LABELS.get(metric, metric))
    axes.set_title(
        f"Peak {metric} per setting (bars: {ablation.analyses[0].level:.0%} bootstrap CI)", fontsize=10
    )
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def figure_setting_lr_table(ablation: Ablation) -> Figure:
    """Per method, a heat map of the seed-mean metric: settings (rows) × learning rates (columns)."""
    methods = ablation.methods
    metric = ablation.analyses[0].metric
    scale = metric_scale(metric)
    figure = new_figure(max(5.0 * len(methods), 6.0), 0.5 * len(ablation.settings) + 2.6)
    axes_row = figure.subplots(1, len(methods), squeeze=False)[0]
    for axes, name in zip(axes_row, methods):
        lrs, rows = lr_table(ablation, name)
        grid = np.array(
            [[np.nan if v is None else v * scale for v in values] for _, values in rows], dtype=float
        )
        image = axes.imshow(
            grid, aspect="auto", cmap="viridis" if ablation.analyses[0].higher_is_better else "viridis_r"
        )
        middle = float(np.nanmean(grid)) if np.isfinite(grid).any() else 0.0
        sign = 1.0 if ablation.analyses[0].higher_is_better else -1.0
        for (row, column), value in np.ndenumerate(grid):
            if np.isfinite(value):  # dark text on the bright (yellow) half of viridis
                axes.text(
                    column,
                    row,
                    f"{value:.3g}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if sign * (value - middle) > 0 else "white",
                )
        axes.set_xticks(range(len(lrs)), [format_lr(lr) for lr in lrs], rotation=45, fontsize=7)
        axes.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
        axes.set_title(method_label(name), fontsize=10, color=method_color(name))
        axes.set_xlabel("learning rate")
        figure.colorbar(image, ax=axes, shrink=0.8)
    figure.suptitle(f"{METRIC_AXIS_LABELS.get(metric, metric)} per setting × learning rate", fontsize=11)
    return figure


def plot_ablation(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    formats: Sequence[str] = ("png", "pdf"),
    rank: int | None = None,
    batch_size: int | None = None,
    **analyze_options: Any,
) -> PlotResult:
    """Cross-setting figures and each setting's own figures.

    Args:
        run_dirs: one or more sweep run directories, as for :func:`analyze_ablation`.
        out_dir: where the figures go (default: the first run directory's ``figures/``); each setting's own
            figures go to ``out_dir/<setting>/``.
        formats: file formats to write, e.g. ``("png",)``.
        rank: only this rank (default: every rank).
        batch_size: only this batch size (default: every one).
        **analyze_options: :func:`analyze`'s options.

    Returns:
        A :class:`PlotResult`: the figures written by key (the cross-setting ones and ``<setting>/a`` ...).

    Raises:
        UserError: as :func:`analyze_ablation`, or ``out_dir`` cannot be written.
    """
    ablation = analyze_ablation(run_dirs, rank=rank, batch_size=batch_size, **analyze_options)
    out = Path(out_dir) if out_dir is not None else RunLayout(run_dirs[0]).figures
    result = PlotResult()
    for key, figure in (
        ("h", figure_eta_vs_setting(ablation)),
        ("i", figure_peak_vs_setting(ablation)),
        ("j", figure_setting_lr_table(ablation)),
    ):
        result.written[key] = save_figure(figure, out / ABLATION_FIGURES[key], formats)
    directories = {str(path): read_run_directory(path) for path in dict.fromkeys(map(str, run_dirs))}
    for setting, analysis in zip(ablation.settings, ablation.analyses):
        folder = out / _slug(setting.label)
        for key, figure in make_figures(directories[setting.run_dir], analysis).items():
            if figure is not None:
                result.written[f"{_slug(setting.label)}/{key}"] = save_figure(
                    figure, folder / FIGURE_NAMES[key], formats
                )
    return result
