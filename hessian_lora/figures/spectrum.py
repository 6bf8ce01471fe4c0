"""Figures of the Hessian at initialisation: (c) per-module λ_max relative to a reference method, (d) Lanczos
convergence, (e) the spectral density (SLQ). Drawn from a run directory's eigen reports; each returns None when
the run lacks the data, and :func:`hessian_lora.figures.plots.plot_run` says why it skipped it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from hessian_lora.analysis.claims import per_module_ratios
from hessian_lora.figures._style import method_style, new_figure
from hessian_lora.hessian.filters import layer_index
from hessian_lora.registry import method_color, method_label, method_sort_key
from hessian_lora.reports import BlockPart, BlockView, ReportView, module_kind
from hessian_lora.runs import RunDirectory


def _module_values(directory: RunDirectory, method: str, samples: set[int] | None = None,
                   seeds: set[int] | None = None) -> tuple[dict[str, float], set[str]]:
    """Per-module λ_max at init, geometric mean over the method's seeds, and the modules with a λ_max of any seed
    that its solver did not certify; the numbers of training examples they were measured on are added to
    ``samples``, and the seeds they come from to ``seeds``."""
    collected: dict[str, list[float]] = {}
    uncertified: set[str] = set()
    for key, report in directory.init_reports.items():
        if key.method != method:
            continue
        for block in report.modules:
            if block.lambda_max > 0:
                collected.setdefault(block.name, []).append(block.lambda_max)
                if block.uncertified_residual is not None:
                    uncertified.add(block.name)
                if samples is not None and (count := report.samples_of(block)) is not None:
                    samples.add(count)
                if seeds is not None:
                    seeds.add(key.seed)
    return {name: float(10 ** np.mean(np.log10(values))) for name, values in collected.items()}, uncertified


def figure_module_ratios(directory: RunDirectory, methods: Sequence[str] | None = None,
                         reference: str = "lora") -> Figure | None:
    """(c) Per module kind, each method's λ_max / the reference's at every *measured* layer: one marker per
    layer (no line: layers between the measured ones were not measured), methods nudged apart along the layer
    axis so equal ratios stay visible, hollow where either λ was not certified; dashed: the method's median."""
    names = sorted({key.method for key in directory.init_reports}, key=method_sort_key)
    if methods is not None:
        names = [name for name in names if name in methods]
    sample_sizes: set[int] = set()
    seeds: set[int] = set()
    measured = {name: _module_values(directory, name, sample_sizes, seeds) for name in names}
    values = {name: blocks for name, (blocks, _) in measured.items() if blocks}
    uncertified = {name: flagged for name, (_, flagged) in measured.items()}
    if reference not in values:
        reference = next(iter(values), reference)
    others = [name for name in values if name != reference]
    if reference not in values or not others:
        return None
    base = values[reference]
    kinds = sorted({module_kind(name) for name in base})
    columns = min(len(kinds), 4)
    rows = math.ceil(len(kinds) / columns)
    # Wide enough for the title and a two-column legend even with a single module kind.
    figure = new_figure(max(3.4 * columns + 1.2, 8.0), 2.9 * rows + 1.1 + 0.35 * math.ceil(len(others) / 2))
    axes_grid = figure.subplots(rows, columns, squeeze=False, sharey=True)
    by_module = {name: per_module_ratios(values[name], base) for name in others}
    medians = {name: float(np.median(list(found.values()))) for name, found in by_module.items() if found}
    all_layers = sorted({layer for block in base if (layer := layer_index(block)) is not None})
    span = (all_layers[-1] - all_layers[0]) if len(all_layers) > 1 else 1
    offsets = dict(zip(others, np.linspace(-0.025, 0.025, len(others)) * max(span, 4) if len(others) > 1
                       else [0.0]))
    any_uncertified = False
    for index, kind in enumerate(kinds):
        axes = axes_grid[index // columns][index % columns]
        for name in others:
            layered = sorted((layer_index(block), ratio, block in uncertified[name] or block in uncertified[reference])
                             for block, ratio in by_module[name].items()
                             if module_kind(block) == kind and layer_index(block) is not None)
            if not layered:
                continue
            style = method_style(name, line=False)
            for certified in (True, False):
                chosen = [(layer, ratio) for layer, ratio, flag in layered if flag != certified]
                if not chosen:
                    continue
                layers, ratios = zip(*chosen)
                if not certified:
                    any_uncertified = True
                    style = {**style, "markerfacecolor": "white", "markeredgecolor": method_color(name),
                             "markeredgewidth": 1.8}
                axes.plot(np.asarray(layers, dtype=float) + offsets[name], ratios, **style)
            if name in medians:
                axes.axhline(medians[name], color=method_color(name), linestyle="--", linewidth=1.0, alpha=0.8)
        axes.axhline(1.0, color="0.5", linewidth=0.8)
        kind_layers = sorted({layer for block in base if module_kind(block) == kind
                              and (layer := layer_index(block)) is not None})
        axes.set_xticks(kind_layers)  # a tick per measured layer, and only there
        if len(kind_layers) > 12:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_yscale("log")
        _plain_log_labels(axes)
        axes.set_title(kind, fontsize=10)
        axes.set_xlabel(f"decoder layer ({len(kind_layers)} measured)")
        axes.grid(True, which="both", alpha=0.25)
        if index % columns == 0:
            axes.set_ylabel(rf"$\lambda_{{\max}}$ / $\lambda_{{\max}}$ of {method_label(reference)}")
    for index in range(len(kinds), rows * columns):
        axes_grid[index // columns][index % columns].set_visible(False)
    for name in others:
        text = f" (median ×{medians[name]:.2f})" if name in medians else ""
        figure.axes[0].plot([], [], label=f"{method_label(name)}{text}", **method_style(name, line=False))
    figure.legend(loc="outside lower center", ncol=min(len(others), max(2, columns)), fontsize=9)
    hollow = "; hollow: a λ_max not certified" if any_uncertified else ""
    # The probe's size and the seeds belong in the title: a per-module scan may use fewer examples, and fewer
    # seeds, than the whole-adapter probes (scripts/init_modules.py --seeds).
    facts = []
    if sample_sizes:
        low, high = min(sample_sizes), max(sample_sizes)
        facts.append(f"on {low} training examples" if low == high else f"on {low}–{high} training examples")
    if seeds:
        facts.append(f"seed {min(seeds)}" if len(seeds) == 1
                     else f"geometric mean over seeds {', '.join(str(seed) for seed in sorted(seeds))}")
    on = f" ({'; '.join(facts)})" if facts else ""
    figure.suptitle(rf"Per-module $\lambda_{{\max}}$ at initialisation relative to {method_label(reference)}{on}"
                    "\none marker per measured layer (no line: the layers between were not measured),\n"
                    f"methods nudged apart; dashed: median over all modules{hollow}", fontsize=10)
    return figure


def _plain_log_labels(axes: Axes) -> None:
    """Tick labels such as 0.95 and 2 on a log axis; minor ticks labelled only when it spans under a decade."""
    low, high = axes.get_ylim()
    plain = FuncFormatter(lambda value, _: f"{value:.3g}")
    axes.yaxis.set_major_formatter(plain)
    axes.yaxis.set_minor_formatter(plain if high / low < 10 else NullFormatter())


# ----------------------------------------------------------------------------------------------------------
# (d) solver convergence, (e) spectral density


def _first_report_per_method(directory: RunDirectory, attribute: BlockPart) -> dict[str, tuple[ReportView, int]]:
    """Per method, the lowest seed's init report that has a block with ``attribute`` (and that seed)."""
    chosen: dict[str, tuple[ReportView, int]] = {}
    ordered = sorted(directory.init_reports.items(), key=lambda item: (item[0].method, item[0].seed))
    for key, report in ordered:
        if key.method not in chosen and report.first_with(attribute) is not None:
            chosen[key.method] = (report, key.seed)
    return dict(sorted(chosen.items(), key=lambda item: method_sort_key(item[0])))


def _certificate_text(block: BlockView) -> str:
    """"certified" or why not, for a legend: the last estimate of an uncertified run is not "converged"."""
    residual = block.uncertified_residual
    if residual is None:
        return "certified"
    reason = getattr(block.report.eigen, "stop_reason", None) if block.report.eigen is not None else None
    return f"NOT certified, residual {residual:.1e}{f', {reason}' if reason else ''}"


def figure_convergence(directory: RunDirectory) -> Figure | None:
    """(d) Each method's λ_max estimate per product and its distance to the *last* estimate (the value reported:
    certified, or not, as the legend says); coinciding curves stay visible by their dashes and markers."""
    reports = _first_report_per_method(directory, "history")
    if not reports:
        return None
    figure = new_figure(11.0, 4.9)
    left, right = figure.subplots(1, 2)
    solvers = set()
    finals = []
    uncertified = 0
    for name, (report, _) in reports.items():
        block = report.first_with("history")
        solvers.add(block.solver or "solver")
        hvps = np.array([point[0] for point in block.history], dtype=float)
        estimates = np.array([point[1] for point in block.history])
        where = '' if block is report.whole else ' (' + block.name + ')'
        certificate = _certificate_text(block)
        uncertified += certificate != "certified"
        style = {**method_style(name), "markersize": 4}
        left.plot(hvps, estimates, label=f"{method_label(name)}{where}: {block.lambda_max:.4g}, {certificate}",
                  **style)
        finals.append(abs(block.lambda_max))
        error = np.abs(estimates - block.lambda_max) / abs(block.lambda_max)
        keep = error > 0
        right.plot(hvps[keep], error[keep], **style)
    left.set_xlabel("Hessian-vector products")
    left.set_ylabel(r"$\lambda_{\max}$ estimate")
    if min(finals) > 0 and max(finals) / min(finals) > 10:  # a linear axis would flatten the smaller methods
        left.set_yscale("log")
    left.set_title("Top eigenvalue estimate per iteration", fontsize=10)
    right.set_xlabel("Hessian-vector products")
    right.set_ylabel(r"|estimate − last estimate| / last estimate")
    right.set_yscale("log")
    right.set_title("Relative distance to the last estimate (the reported value)", fontsize=10)
    for axes in (left, right):
        axes.grid(True, alpha=0.3)
    left.legend(fontsize=7.5)
    names = {"lanczos": "Lanczos", "power": "power iteration"}
    solver_text = " / ".join(names.get(solver, solver) for solver in sorted(solvers))
    flagged = f"; {uncertified} of {len(reports)} not certified" if uncertified else "; all certified"
    figure.suptitle(rf"Convergence of {solver_text} for $\lambda_{{\max}}$ at initialisation (lowest seed{flagged})",
                    fontsize=11)
    return figure


def figure_density(directory: RunDirectory) -> Figure | None:
    """Figure (e): the spectral density at initialisation per method (None without densities)."""
    reports = _first_report_per_method(directory, "density")
    if not reports:
        return None
    figure = new_figure(9.0, 5.0)
    axes = figure.add_subplot()
    densities = {name: report.first_with("density") for name, (report, _) in reports.items()}
    blocks = {name: block for name, block in densities.items() if block is not None and block.density is not None}
    # One kernel width and grid for every method, so the curves compare; 1/150 of the joint spectrum's span.
    all_nodes = np.concatenate([np.ravel(run) for block in blocks.values() for run in block.density.nodes])
    sigma = float(np.ptp(all_nodes)) / 150 or 1e-3
    grid = np.linspace(all_nodes.min() - 5 * sigma, all_nodes.max() + 5 * sigma, 800)
    floor, top = math.inf, 0.0
    for name, block in blocks.items():
        density = block.density.smoothed(grid, sigma).numpy()
        style = method_style(name)  # its own dash and width: DoRA's curve on LoRA's leaves LoRA visible
        uncertified = ", not certified" if block.uncertified_residual is not None else ""
        axes.plot(grid, density, color=style["color"], linestyle=style["linestyle"], linewidth=style["linewidth"],
                  zorder=style["zorder"], label=rf"{method_label(name)}: $\lambda_{{\max}}$ = {block.lambda_max:.3g}"
                                               f"{uncertified}")
        axes.axvline(block.lambda_max, color=method_color(name), linestyle=":", linewidth=1.0)
        floor = min(floor, _density_floor(block, sigma, float(density.max())))
        top = max(top, float(density.max()) * 3)
    axes.set_yscale("log")
    axes.set_ylim(floor, top)
    axes.set_xlabel("eigenvalue λ of the loss Hessian w.r.t. the adapter")
    width = f", kernel σ = {sigma:.2g}" if sigma else ""
    axes.set_ylabel(f"spectral density (smoothed SLQ{width}, log)")
    axes.set_title(r"Hessian spectral density at initialisation (dotted: $\lambda_{\max}$)", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def _density_floor(block: BlockView, sigma: float | None, peak: float) -> float:
    """Low enough that the smallest quadrature node's bump shows: the extreme eigenvalues (λ_max among them)
    carry weights near 1/size, orders of magnitude below the bulk."""
    if sigma and block.density is not None:
        nodes, weights = block.density.nodes, block.density.weights
        bumps = [w / (len(nodes) * sigma * math.sqrt(2 * math.pi)) for run in weights for w in run if w > 0]
        if bumps:
            return max(min(bumps) * 0.3, peak * 1e-12)
    return peak * 1e-5


# ----------------------------------------------------------------------------------------------------------
# (f) training loss curves
