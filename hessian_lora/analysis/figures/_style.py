"""The look every figure shares: axis labels, a method's shades from light to dark, figure and LR formatting.

Colours and labels of methods come from :mod:`hessian_lora.methods.registry`; this module adds what the figure modules
(:mod:`hessian_lora.analysis.figures.plots`, :mod:`hessian_lora.analysis.figures.spectrum`,
:mod:`hessian_lora.analysis.figures.ablation`) share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hessian_lora.analysis.curves import SCORE_METRICS, is_reasoning_gym
from hessian_lora.methods.registry import METHOD_ORDER, method_color, method_label

METRIC_AXIS_LABELS = {
    "accuracy": "eval accuracy (the task's scorer, %)",
    "pass_at_1": "HumanEval pass@1 (%)",
    "gsm8k_acc": "GSM8K accuracy (%)",
    "math_acc": "MATH accuracy (%)",
    "mbpp_pass_at_1": "MBPP pass@1 (%)",
    "humaneval_pass_at_1": "HumanEval pass@1 (%)",
    "eval_loss": "held-out loss (nats/token)",
    "train_loss": "final training loss (nats/token)",
}
LR_AXIS_LABEL = "peak learning rate η (log scale)"


def metric_axis_label(metric: str, task: str | None = None) -> str:
    """The axis label of ``metric`` on ``task``: a reasoning-gym task's accuracy is a mean partial-credit score
    (:func:`~hessian_lora.analysis.curves.metric_name` says it in full), never "exact match"."""
    if metric == "accuracy" and is_reasoning_gym(task):
        return "mean score, % (reasoning-gym's partial credit)"
    return METRIC_AXIS_LABELS.get(metric, metric)


def shades(method: str, count: int) -> list[tuple[float, float, float]]:
    """``count`` shades of the method's colour from light to dark (low to high learning rate)."""
    base = np.array(mcolors.to_rgb(method_color(method)))
    light, dark = base + (1 - base) * 0.65, base * 0.45
    if count == 1:
        return [tuple(base)]
    out = []
    for t in np.linspace(0, 1, count):
        rgb = light + (base - light) * (2 * t) if t <= 0.5 else base + (dark - base) * (2 * t - 1)
        out.append(tuple(float(v) for v in np.clip(rgb, 0, 1)))
    return out


# One marker and one dash pattern per registry method, so two methods with the same curve (DoRA on LoRA's) stay
# visible: the earlier method in the registry is drawn wider underneath, the later one narrower, dashed, on top.
METHOD_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*")
METHOD_DASHES: tuple[str | tuple[int, tuple[int, ...]], ...] = (
    "-",
    "--",
    "-.",
    (0, (1, 1.5)),
    (0, (5, 1.5, 1, 1.5, 1, 1.5)),
    (0, (8, 2)),
    (0, (3, 1.5)),
    (0, (1, 3)),
    (0, (6, 2, 2, 2)),
    (0, (2, 2)),
    (0, (10, 3)),
    (0, (4, 1, 1, 1)),
)


def method_index(method: str) -> int:
    """The method's position in the registry (unknown methods after them, by name), for its marker and dash."""
    if method in METHOD_ORDER:
        return METHOD_ORDER.index(method)
    return len(METHOD_ORDER) + sum(map(ord, method)) % len(METHOD_MARKERS)


def method_style(method: str, *, line: bool = True) -> dict[str, object]:
    """matplotlib keywords that tell ``method`` apart from every other even where their curves coincide: its
    colour, marker, dash pattern, a line width and marker size that shrink along the registry (earlier methods
    wider, underneath) and a matching z-order."""
    index = method_index(method)
    style: dict[str, object] = {
        "color": method_color(method),
        "marker": METHOD_MARKERS[index % len(METHOD_MARKERS)],
        "markersize": max(7.5 - 0.6 * (index % 8), 3.5),
        "zorder": 2 + 0.01 * index,
        "markeredgecolor": "black",
        "markeredgewidth": 0.4,
    }
    if line:
        style.update(
            linestyle=METHOD_DASHES[index % len(METHOD_DASHES)], linewidth=max(3.0 - 0.3 * (index % 8), 1.0)
        )
    else:
        style["linestyle"] = "none"
    return style


ARROW_FACTOR = 2.5  # how far (a factor on a log axis) a censored optimum's arrow points


def bound_arrow(axes: Axes, x: float, y: float, side: str, color: object) -> None:
    """An arrow from a censored η* (log y axis) towards where the optimum may lie: up for ``high`` (η* ≥ y),
    down for ``low``. The point keeps its method's marker; the arrow says it is a bound."""
    end = y * (ARROW_FACTOR if side == "high" else 1 / ARROW_FACTOR)
    axes.update_datalim([(x, end)])  # autoscaling keeps the arrow's head in frame (annotations do not count)
    axes.annotate(
        "",
        xy=(x, end),
        xytext=(x, y),
        zorder=5,
        annotation_clip=False,
        arrowprops={"arrowstyle": "-|>", "color": color, "linewidth": 1.6, "shrinkA": 6, "shrinkB": 0},
    )


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def metric_scale(metric: str) -> float:
    return 100.0 if metric in SCORE_METRICS else 1.0


def format_lr(lr: float) -> str:
    return f"{lr:.2e}".replace("e-0", "e-").replace("e+0", "e+")


def method_panels(methods: Sequence[str], *, row_height: float) -> tuple[Figure, list[Axes]]:
    """One panel per method, two to a row, sharing the y axis; unused panels hidden."""
    columns = min(len(methods), 2)
    rows = math.ceil(len(methods) / columns)
    figure = new_figure(6.0 * columns, row_height * rows + 0.6)
    grid = figure.subplots(rows, columns, squeeze=False, sharey=True)
    panels = [grid[index // columns][index % columns] for index in range(rows * columns)]
    for unused in panels[len(methods) :]:
        unused.set_visible(False)
    return figure, panels[: len(methods)]


def finish_method_panel(axes: Axes, method: str, seed: int | None, *, ylabel: str | None) -> None:
    """Title in the method's colour, step axis, grid and the learning-rate legend beside the panel."""
    axes.set_title(f"{method_label(method)} (seed {seed})", fontsize=10, color=method_color(method))
    axes.set_xlabel("optimizer step")
    if ylabel is not None:
        axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.legend(
        title="learning rate",
        fontsize=7,
        title_fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0,
    )
