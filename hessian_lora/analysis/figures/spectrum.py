"""Figures of the Hessian at initialisation: (c) per-module λ_max relative to a reference method, (d) Lanczos
convergence, (e) the spectral density (SLQ). Drawn from a run directory's eigen reports; each returns None when
the run lacks the data, and :func:`hessian_lora.analysis.figures.plots.plot_run` says why it skipped it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from hessian_lora.analysis.claims import PAPER_LAMBDA_RATIO, UP_TO, per_module_ratios
from hessian_lora.analysis.figures._style import method_style, new_figure
from hessian_lora.analysis.runs import RunDirectory
from hessian_lora.hessian.filters import layer_index
from hessian_lora.measurement.reports import BlockPart, BlockView, ReportView, module_kind
from hessian_lora.methods.registry import DEFAULT_METHOD, method_color, method_label, method_sort_key
from hessian_lora.settings.solvers import label as solver_label


def _module_values(
    directory: RunDirectory, method: str, samples: set[int] | None = None, seeds: set[int] | None = None
) -> tuple[dict[str, float], set[str]]:
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


def _measured_modules(
    directory: RunDirectory, methods: Sequence[str] | None
) -> tuple[dict[str, tuple[dict[str, float], set[str]]], set[int], set[int]]:
    """:func:`_module_values` of every method with an init report (those in ``methods`` only, when given), in the
    registry's order, with the sample sizes and seeds they were measured on."""
    names = sorted({key.method for key in directory.init_reports}, key=method_sort_key)
    if methods is not None:
        names = [name for name in names if name in methods]
    sample_sizes: set[int] = set()
    seeds: set[int] = set()
    return (
        {name: _module_values(directory, name, sample_sizes, seeds) for name in names},
        sample_sizes,
        seeds,
    )


def figure_module_ratios(
    directory: RunDirectory, methods: Sequence[str] | None = None, reference: str = DEFAULT_METHOD
) -> Figure | None:
    """(c) Per module kind, each method's λ_max / the reference's at every *measured* layer: one marker per
    layer (no line: layers between the measured ones were not measured), methods nudged apart along the layer
    axis so equal ratios stay visible, hollow where either λ was not certified; dashed: the method's median."""
    measured, sample_sizes, seeds = _measured_modules(directory, methods)
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
    offsets = dict(
        zip(others, np.linspace(-0.025, 0.025, len(others)) * max(span, 4) if len(others) > 1 else [0.0])
    )
    any_uncertified = False
    for index, kind in enumerate(kinds):
        axes = axes_grid[index // columns][index % columns]
        for name in others:
            layered = sorted(
                (layer_index(block), ratio, block in uncertified[name] or block in uncertified[reference])
                for block, ratio in by_module[name].items()
                if module_kind(block) == kind and layer_index(block) is not None
            )
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
                    style = {
                        **style,
                        "markerfacecolor": "white",
                        "markeredgecolor": method_color(name),
                        "markeredgewidth": 1.8,
                    }
                axes.plot(np.asarray(layers, dtype=float) + offsets[name], ratios, **style)
            if name in medians:
                axes.axhline(
                    medians[name], color=method_color(name), linestyle="--", linewidth=1.0, alpha=0.8
                )
        axes.axhline(1.0, color="0.5", linewidth=0.8)
        if reference == DEFAULT_METHOD:
            _paper_marks(axes, others)
        kind_layers = sorted(
            {
                layer
                for block in base
                if module_kind(block) == kind and (layer := layer_index(block)) is not None
            }
        )
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
    facts = _measured_on(sample_sizes, seeds)
    on = f" ({'; '.join(facts)})" if facts else ""
    paper = (
        "\ndotted, labelled at the right: the paper's figure (Qwen3-0.6B, q_proj)"
        if reference == DEFAULT_METHOD and any(name in PAPER_LAMBDA_RATIO for name in others)
        else ""
    )
    figure.suptitle(
        rf"Per-module $\lambda_{{\max}}$ at initialisation relative to {method_label(reference)}{on}"
        "\none marker per measured layer (no line: the layers between were not measured),\n"
        f"methods nudged apart; dashed: median over all modules{paper}{hollow}",
        fontsize=10,
    )
    return figure


def _paper_marks(axes: Axes, methods: Sequence[str]) -> None:
    """The paper's λ ratio to LoRA for each method drawn (claims.PAPER_LAMBDA_RATIO): a dotted line per distinct
    figure in the first such method's colour, named at the right edge."""
    figures: dict[float, list[str]] = {}
    for name in methods:
        if name in PAPER_LAMBDA_RATIO:
            figures.setdefault(PAPER_LAMBDA_RATIO[name], []).append(name)
    for value, names in figures.items():
        axes.axhline(value, color=method_color(names[0]), linestyle=(0, (1, 2)), linewidth=1.6, alpha=0.9)
        upto = "up to " if all(name in UP_TO for name in names) else ""
        axes.annotate(
            f"paper: {', '.join(method_label(name) for name in names)} {upto}~{value:g}×",
            (1.0, value),
            xycoords=("axes fraction", "data"),
            xytext=(-3, 2),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=7.5,
            color=method_color(names[0]),
        )


def _measured_on(sample_sizes: set[int], seeds: set[int]) -> list[str]:
    """What per-module values were measured on, for a title: the probe's size and the seeds. They belong there
    because a per-module scan may use fewer examples, and fewer seeds, than the whole-adapter probes
    (scripts/init_modules.py --seeds, --samples)."""
    facts = []
    if sample_sizes:
        low, high = min(sample_sizes), max(sample_sizes)
        facts.append(f"on {low} training examples" if low == high else f"on {low}–{high} training examples")
    if seeds:
        facts.append(
            f"seed {min(seeds)}"
            if len(seeds) == 1
            else f"geometric mean over seeds {', '.join(str(seed) for seed in sorted(seeds))}"
        )
    return facts


def _plain_log_labels(axes: Axes) -> None:
    """Tick labels such as 0.95 and 2 on a log axis; minor ticks labelled only when it spans under a decade."""
    low, high = axes.get_ylim()
    plain = FuncFormatter(lambda value, _: f"{value:.3g}")
    axes.yaxis.set_major_formatter(plain)
    axes.yaxis.set_minor_formatter(plain if high / low < 10 else NullFormatter())


# ----------------------------------------------------------------------------------------------------------
# (d) solver convergence, (e) spectral density


def _first_report_per_method(
    directory: RunDirectory, attribute: BlockPart
) -> dict[str, tuple[ReportView, int]]:
    """Per method, the lowest seed's init report that has a block with ``attribute`` (and that seed)."""
    chosen: dict[str, tuple[ReportView, int]] = {}
    ordered = sorted(directory.init_reports.items(), key=lambda item: (item[0].method, item[0].seed))
    for key, report in ordered:
        if key.method not in chosen and report.first_with(attribute) is not None:
            chosen[key.method] = (report, key.seed)
    return dict(sorted(chosen.items(), key=lambda item: method_sort_key(item[0])))


def _certificate_text(block: BlockView) -> str:
    """The word ``certified``, or why not, for a legend: the last estimate of an uncertified run is not "converged"."""
    residual = block.uncertified_residual
    if residual is None:
        return "certified"
    reason = getattr(block.report.eigen, "stop_reason", None) if block.report.eigen is not None else None
    return f"NOT certified, residual {residual:.1e}{f', {reason}' if reason else ''}"


def _relative_residuals(block: BlockView) -> tuple[np.ndarray, np.ndarray]:
    """(products, ‖Hy − θy‖/|θ|) of the top Ritz pair at each iteration that recorded its residual: the quantity
    the certificate compares with tol (empty where the solver recorded none, e.g. an older report)."""
    eigen = block.report.eigen
    points = [
        (record.hvps, record.residuals[0] / abs(record.values[0]))
        for record in (eigen.history if eigen is not None else ())
        if record.residuals and record.values and record.values[0]
    ]
    return np.array([p for p, _ in points], dtype=float), np.array([r for _, r in points], dtype=float)


def figure_convergence(directory: RunDirectory) -> Figure | None:
    """(d) Each method's λ_max estimate per product (left) and, right, the certificate's own quantity: the top
    Ritz pair's relative residual ‖Hy − θy‖/|θ| per product against the solver's tol (a λ is certified once it is
    below). A report without residuals in its history shows the distance to its last estimate instead, dashed
    grey in the legend's words, since that distance reaches 0 by construction and certifies nothing."""
    reports = _first_report_per_method(directory, "history")
    if not reports:
        return None
    figure = new_figure(11.0, 4.9)
    left, right = figure.subplots(1, 2)
    solvers = set()
    finals = []
    tolerances: set[float] = set()
    uncertified = 0
    fallback = []
    for name, (report, _) in reports.items():
        block = report.first_with("history")
        solvers.add(block.solver or "solver")
        hvps = np.array([point[0] for point in block.history], dtype=float)
        estimates = np.array([point[1] for point in block.history])
        where = "" if block is report.whole else " (" + block.name + ")"
        certificate = _certificate_text(block)
        uncertified += certificate != "certified"
        style = {**method_style(name), "markersize": 4}
        left.plot(
            hvps,
            estimates,
            label=f"{method_label(name)}{where}: {block.lambda_max:.4g}, {certificate}",
            **style,
        )
        finals.append(abs(block.lambda_max))
        products, residuals = _relative_residuals(block)
        if block.report.eigen is not None and block.report.eigen.tol:
            tolerances.add(float(block.report.eigen.tol))
        if residuals.size:
            right.plot(products, residuals, **style)
        else:  # no residuals recorded: the distance to the last estimate, marked as such
            fallback.append(method_label(name))
            error = np.abs(estimates - block.lambda_max) / abs(block.lambda_max)
            keep = error > 0
            right.plot(hvps[keep], error[keep], **{**style, "alpha": 0.5})
    for tol in sorted(tolerances):
        right.axhline(tol, color="black", linestyle="--", linewidth=1.0)
        right.annotate(
            f"tol {tol:g}: certified below",
            (0.0, tol),
            xycoords=("axes fraction", "data"),
            xytext=(4, -3),
            textcoords="offset points",
            ha="left",
            va="top",
            fontsize=8,
        )
    left.set_xlabel("Hessian-vector products")
    left.set_ylabel(r"$\lambda_{\max}$ estimate")
    if min(finals) > 0 and max(finals) / min(finals) > 10:  # a linear axis would flatten the smaller methods
        left.set_yscale("log")
    left.set_title("Top eigenvalue estimate per iteration", fontsize=10)
    right.set_xlabel("Hessian-vector products")
    right.set_ylabel(r"relative residual $\|Hy - \theta y\| / |\theta|$")
    right.set_yscale("log")
    title = "Certificate: the top Ritz pair's relative residual"
    if fallback:
        title += f"\n(faint, {len(fallback)} of {len(reports)}: none recorded; distance to the last estimate)"
    right.set_title(title, fontsize=10)
    for axes in (left, right):
        axes.grid(True, alpha=0.3)
    left.legend(fontsize=7.5)
    solver_text = " / ".join(dict.fromkeys(solver_label(solver) for solver in sorted(solvers)))
    flagged = f"; {uncertified} of {len(reports)} not certified" if uncertified else "; all certified"
    figure.suptitle(
        rf"Convergence of {solver_text} for $\lambda_{{\max}}$ at initialisation (lowest seed{flagged})",
        fontsize=11,
    )
    return figure


DENSITY_BINS = 100  # a method's kernel width: its own spectrum's span over this many widths
DENSITY_FLOOR = 1e-4  # the y axis's floor, relative to the panel's peak


def figure_density(directory: RunDirectory) -> Figure | None:
    """Figure (e): the spectral density at initialisation, one panel per method (None without densities). The
    methods' spectra span four decades (LoRA's λ_max ~30, OLoRA's ~10⁴), so one shared kernel would be wider
    than LoRA's whole spectrum: each panel smooths with its own width, 1/100 of its own span (said in its
    title), on a linear λ axis; the log density axis stops at 10⁻⁴ of the peak, above which single quadrature
    nodes of weight ~1/n (λ_max among them, the dotted line) would otherwise stand out as peaks."""
    reports = _first_report_per_method(directory, "density")
    blocks = {
        name: block
        for name, (report, _) in reports.items()
        if (block := report.first_with("density")) is not None and block.density is not None
    }
    if not blocks:
        return None
    columns = min(len(blocks), 3)
    rows = math.ceil(len(blocks) / columns)
    figure = new_figure(4.0 * columns, 2.9 * rows + 0.8)
    grid_axes = figure.subplots(rows, columns, squeeze=False)
    panels = [grid_axes[i // columns][i % columns] for i in range(rows * columns)]
    for unused in panels[len(blocks) :]:
        unused.set_visible(False)
    for index, ((name, block), axes) in enumerate(zip(blocks.items(), panels)):
        nodes = np.concatenate([np.ravel(run) for run in block.density.nodes])
        sigma = float(np.ptp(nodes)) / DENSITY_BINS or 1e-3 * max(abs(block.lambda_max), 1.0)
        grid = np.linspace(nodes.min() - 5 * sigma, nodes.max() + 5 * sigma, 800)
        density = block.density.smoothed(grid, sigma).numpy()
        style = method_style(name)
        axes.plot(grid, density, color=style["color"], linewidth=1.6)
        axes.axvline(block.lambda_max, color=method_color(name), linestyle=":", linewidth=1.0)
        axes.set_yscale("log")
        axes.set_ylim(float(density.max()) * DENSITY_FLOOR, float(density.max()) * 3)
        uncertified = ", not certified" if block.uncertified_residual is not None else ""
        axes.set_title(
            rf"{method_label(name)}: $\lambda_{{\max}}$ = {block.lambda_max:.3g}{uncertified}; "
            f"kernel σ = {sigma:.2g}",
            fontsize=9,
            color=method_color(name),
        )
        axes.set_xlabel("eigenvalue λ")
        if index % columns == 0:
            axes.set_ylabel("density (smoothed SLQ, log)")
        axes.grid(True, alpha=0.3)
    figure.suptitle(
        "Hessian spectral density w.r.t. the adapter at initialisation (dotted: λ_max; each panel "
        f"its own kernel, 1/{DENSITY_BINS} of its span; floor {DENSITY_FLOOR:g} × peak)",
        fontsize=10,
    )
    return figure


# ----------------------------------------------------------------------------------------------------------
# (f) training loss curves


# ----------------------------------------------------------------------------------------------------------
# (k) the paper's per-layer view: λ_max at initialisation per layer × method

HEATMAP_KINDS = ("q_proj", "k_proj")  # the paper's v2 heatmaps: the query and key projections


def figure_layer_heatmap(
    directory: RunDirectory,
    methods: Sequence[str] | None = None,
    kinds: Sequence[str] = HEATMAP_KINDS,
    layers: int | None = None,
) -> Figure | None:
    """(k) λ_max at initialisation of each layer's module (rows: decoder layers, columns: methods), one panel per
    module kind, one log colour scale for all: the paper's v2 heatmaps. A cell no report measured is grey and
    hatched ("not measured"), never interpolated; each measured cell prints its value, hollow-marked (†) where its
    solver did not certify it. ``layers``: the model's layer count (default: one past the highest layer any report
    measured, which the title says). None without any per-module report of these kinds."""
    measured, sample_sizes, seeds = _measured_modules(directory, methods)
    cells: dict[tuple[str, str, int], tuple[float, bool]] = {}
    for name, (values, uncertified) in measured.items():
        for block, value in values.items():
            layer = layer_index(block)
            if module_kind(block) in kinds and layer is not None:
                cells[(module_kind(block), name, layer)] = (value, block in uncertified)
    if not cells:
        return None
    inferred = layers is None
    count = layers if layers is not None else max(layer for _, _, layer in cells) + 1
    columns = [name for name in measured if any(key[1] == name for key in cells)]
    values = [value for value, _ in cells.values()]
    norm = LogNorm(vmin=min(values), vmax=max(values))
    figure = new_figure(max(8.0, 2.2 + 0.62 * len(columns) * len(kinds)), max(4.2, 1.8 + 0.22 * count))
    panels = figure.subplots(1, len(kinds), squeeze=False, sharey=True)[0]
    image = None
    for axes, kind in zip(panels, kinds):
        grid = np.full((count, len(columns)), np.nan)
        for (cell_kind, name, layer), (value, flagged) in cells.items():
            if cell_kind != kind or layer >= count:
                continue
            column = columns.index(name)
            grid[layer, column] = value
            axes.text(
                column,
                layer,
                f"{value:.3g}{'†' if flagged else ''}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if norm(value) < 0.6 else "black",
            )  # viridis: dark at the low end
        axes.add_patch(
            Rectangle(
                (-0.5, -0.5),
                len(columns),
                count,
                facecolor="0.88",
                hatch="///",
                edgecolor="0.7",
                linewidth=0,
                zorder=0,
            )
        )  # what no cell covers: not measured
        image = axes.imshow(
            np.ma.masked_invalid(grid),
            cmap="viridis",
            norm=norm,
            aspect="auto",
            interpolation="nearest",
            zorder=1,
        )
        filled = int(np.isfinite(grid).sum())
        axes.set_title(
            f"{kind}: {filled} of {count * len(columns)} cells measured"
            + (" (none yet)" if not filled else ""),
            fontsize=9,
        )
        axes.set_xticks(
            range(len(columns)), [method_label(name) for name in columns], rotation=45, ha="right", fontsize=8
        )
        axes.set_yticks(range(0, count, max(1, count // 15)))
        axes.set_xlim(-0.5, len(columns) - 0.5)
        axes.set_ylim(count - 0.5, -0.5)
    panels[0].set_ylabel("decoder layer")
    if image is not None:
        figure.colorbar(
            image, ax=list(panels), label=r"$\lambda_{\max}$ at initialisation (log scale)", shrink=0.8
        )
    rows = f"layers 0–{count - 1}" + (" (up to the highest layer measured)" if inferred else "")
    facts = _measured_on(sample_sizes, seeds)
    measured_on = f" ({'; '.join(facts)})" if facts else ""
    figure.suptitle(
        rf"Per-layer $\lambda_{{\max}}$ at initialisation{measured_on}" + f"\n{rows}; hatched grey: "
        "not measured; † not certified",
        fontsize=10,
    )
    return figure
