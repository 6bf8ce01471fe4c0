"""From a sweep run directory to insight: each method's optimal learning rate, its sharpness, and the relation.

Reads the run-directory contract of docs/ARCHITECTURE.md (``results.sqlite`` table ``runs``, ``hessian/*.json``
eigen reports, ``config.yaml``) and computes, per method:

- the optimal learning rate η*: the best eval metric on the seed-mean curve, refined between grid points by the
  vertex of the parabola through the peak and its two neighbours in log10(LR); the spread of the per-seed η*;
- the peak metric and its gap to the best method;
- λ_max of the loss Hessian w.r.t. the adapter at initialisation and at the end of the η* run, for the whole
  adapter and as the median over per-module blocks; the Adam-preconditioned sharpness at the end.

Across methods: Spearman ρ between λ_max and η*, the least-squares slope of log η* on log λ_max with a two-stage
bootstrap interval (methods, then seeds), the constant c of η* ≈ c/λ_max, η* against gradient descent's
stability bound 2/λ_max, the preconditioned sharpness against Adam's edge-of-stability threshold
(2+2β₁)/((1−β₁)η), and the leave-one-method-out error of the λ-based learning-rate prediction.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from hessian_lora.errors import UserError
from hessian_lora.registry import METHOD_ORDER, method_sort_key  # noqa: F401 (re-exported)

HIGHER_IS_BETTER: dict[str, bool] = {"accuracy": True, "eval_loss": False, "train_loss": False}
LAMBDA_SOURCES = ("auto", "whole", "module_median")
FIT_KINDS = ("power", "inverse")
DEFAULT_BETA1 = 0.9
ANALYSIS_JSON = "analysis.json"
ANALYSIS_MD = "analysis.md"
WHOLE_BLOCK_NAMES = frozenset({"whole", "adapter", "all", "whole_adapter", "model", ""})
_USABLE_STATUSES = frozenset({"done", "diverged"})


# ----------------------------------------------------------------------------------------------------------
# Reading a run directory


@dataclass(frozen=True)
class RunRecord:
    """One row of ``runs``; metrics are None where the sweep did not record them."""

    run_id: str
    method: str
    lr: float
    seed: int
    rank: int | None
    batch_size: int | None
    status: str
    train_loss: float | None = None
    eval_loss: float | None = None
    accuracy: float | None = None
    lambda_init: float | None = None
    lambda_final: float | None = None
    precond_lambda_final: float | None = None
    steps: int | None = None
    wall_seconds: float | None = None
    history: tuple[dict[str, float], ...] = ()

    def metric(self, name: str) -> float | None:
        value = getattr(self, name)
        return None if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True)
class BlockEigen:
    """One Hessian block of an eigen report (the whole adapter, or one module's LoRA factors)."""

    name: str
    lambda_max: float
    lambda_min: float | None = None
    residual: float | None = None
    converged: bool | None = None
    hvps: int | None = None
    seconds: float | None = None
    solver: str | None = None
    history: tuple[tuple[int, float], ...] = ()  # (HVPs so far, λ_max estimate) per iteration
    trace: float | None = None
    density: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # (grid, density values)
    quadrature: tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]] | None = None  # SLQ (nodes, weights)
    precond_sharpness: float | None = None
    precond_history: tuple[tuple[int, float], ...] = ()

    @property
    def is_whole(self) -> bool:
        return self.name.strip().lower() in WHOLE_BLOCK_NAMES

    @property
    def layer(self) -> int | None:
        return module_layer(self.name)

    @property
    def module(self) -> str:
        return module_kind(self.name)


@dataclass(frozen=True)
class EigenSummary:
    """What analysis and plots need from one eigen report (a ``hessian/*.json`` file)."""

    path: str
    blocks: tuple[BlockEigen, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def whole(self) -> BlockEigen | None:
        """The whole-adapter block: one named so, else the only block that names no layer (when the others do,
        or when it is alone)."""
        named = [block for block in self.blocks if block.is_whole]
        if named:
            return named[0]
        unlayered = [block for block in self.blocks if block.layer is None]
        return unlayered[0] if len(unlayered) == 1 else None

    @property
    def modules(self) -> tuple[BlockEigen, ...]:
        whole = self.whole
        return tuple(block for block in self.blocks if block is not whole)

    @property
    def module_median(self) -> float | None:
        values = [block.lambda_max for block in self.modules if math.isfinite(block.lambda_max)]
        return float(np.median(values)) if values else None

    @property
    def precond_sharpness(self) -> float | None:
        block = self.whole
        return block.precond_sharpness if block else None

    def first_with(self, attribute: str) -> BlockEigen | None:
        """The whole block if it has ``attribute`` (e.g. ``density``), else the first block that has it."""
        candidates = ([self.whole] if self.whole else []) + list(self.blocks)
        return next((block for block in candidates if getattr(block, attribute)), None)


def module_layer(name: str) -> int | None:
    """The decoder-layer index in a module name such as ``model.layers.3.self_attn.q_proj`` (None if absent)."""
    parts = name.replace("/", ".").split(".")
    for before, after in itertools.pairwise(parts):
        if before in ("layers", "layer", "h", "blocks") and after.isdigit():
            return int(after)
    return None


def module_kind(name: str) -> str:
    """The projection a block belongs to (``q_proj``, ``down_proj``, ...): the last name part that is not a
    LoRA-factor suffix."""
    parts = [part for part in name.replace("/", ".").split(".") if part]
    suffixes = {"lora_A", "lora_B", "lora_magnitude_vector", "default", "weight", "base_layer"}
    for part in reversed(parts):
        if part not in suffixes and not part.isdigit():
            return part
    return name


def load_runs(run_dir: str | os.PathLike[str]) -> list[RunRecord]:
    """All rows of ``RUN_DIR/results.sqlite`` (read-only; tolerant of columns a sweep version lacks)."""
    path = Path(run_dir) / "results.sqlite"
    if not Path(run_dir).is_dir():
        raise UserError(f"run directory {str(run_dir)!r} does not exist: pass the --out directory of a sweep.")
    if not path.is_file():
        raise UserError(f"{str(path)!r} is missing: run `hessian-lora sweep CONFIG --out {run_dir}` first.")
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise UserError(f"cannot open {str(path)!r} ({exc}): is it a sweep's results.sqlite?") from exc
    try:
        connection.row_factory = sqlite3.Row
        rows = connection.execute("SELECT * FROM runs").fetchall()
    except sqlite3.Error as exc:
        raise UserError(f"{str(path)!r} has no readable table 'runs' ({exc}): is it a sweep's results.sqlite?") from exc
    finally:
        connection.close()
    return [_record_from_row(dict(row), Path(run_dir)) for row in rows]


def _optional_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _optional_int(value: Any) -> int | None:
    number = _optional_float(value)
    return None if number is None or not math.isfinite(number) else int(number)


def _record_from_row(row: dict[str, Any], run_dir: Path) -> RunRecord:
    history = _parse_history(row.get("history"))
    if not history:
        history = _history_file(run_dir, str(row.get("run_id")))
    return RunRecord(
        run_id=str(row.get("run_id")),
        method=str(row.get("method")),
        lr=float(row.get("lr")),
        seed=_optional_int(row.get("seed")) or 0,
        rank=_optional_int(row.get("rank")),
        batch_size=_optional_int(row.get("batch_size")),
        status=str(row.get("status") or "unknown"),
        train_loss=_optional_float(row.get("train_loss")),
        eval_loss=_optional_float(row.get("eval_loss")),
        accuracy=_optional_float(row.get("accuracy")),
        lambda_init=_optional_float(row.get("lambda_init")),
        lambda_final=_optional_float(row.get("lambda_final")),
        precond_lambda_final=_optional_float(row.get("precond_lambda_final")),
        steps=_optional_int(row.get("steps")),
        wall_seconds=_optional_float(row.get("wall_seconds")),
        history=history,
    )


def _parse_history(raw: Any) -> tuple[dict[str, float], ...]:
    if raw is None or raw == "":
        return ()
    try:
        items = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return ()
    if isinstance(items, Mapping):  # {"steps": [...], "loss": [...], "lr": [...]} column layout
        columns = {key: list(value) for key, value in items.items() if isinstance(value, list)}
        length = min((len(value) for value in columns.values()), default=0)
        items = [{key: value[i] for key, value in columns.items()} for i in range(length)]
    points = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, Mapping) and _optional_float(item.get("loss")) is not None:
            points.append({key: float(value) for key, value in item.items() if _optional_float(value) is not None})
    return tuple(points)


def _history_file(run_dir: Path, run_id: str) -> tuple[dict[str, float], ...]:
    path = run_dir / "runs" / run_id / "history.json"
    if not path.is_file():
        return ()
    try:
        return _parse_history(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError):
        return ()


def load_eigen_report(path: str | os.PathLike[str]) -> EigenSummary:
    """Parse an eigen report JSON (``EigenReport.to_dict()`` of ``hessian_lora.hessian.results``), keeping only
    what analysis and plots use. Optional parts (history, trace, density, preconditioned) may be absent."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read eigen report {str(path)!r} ({exc}): rerun the measurement.") from exc
    if not isinstance(data, Mapping):
        raise UserError(f"{str(path)!r} is not an eigen report (expected a JSON object with 'blocks').")
    return parse_eigen_report(data, path=str(path))


def parse_eigen_report(data: Mapping[str, Any], *, path: str = "") -> EigenSummary:
    raw_blocks = data.get("blocks")
    if isinstance(raw_blocks, Mapping):
        raw_blocks = [dict(value, name=value.get("name", key)) for key, value in raw_blocks.items()]
    blocks = tuple(block for block in (_parse_block(item) for item in raw_blocks or []) if block is not None)
    settings = data.get("settings")
    return EigenSummary(path=path, blocks=blocks, settings=dict(settings) if isinstance(settings, Mapping) else {})


def _history(eigen: Any) -> tuple[tuple[int, float], ...]:
    """(HVPs, top estimate) per iteration from ``EigenResult.history`` (``IterationRecord``: the largest of its
    ``values``, which are Ritz values for Lanczos and the Rayleigh quotient for power iteration)."""
    points = []
    records = eigen.get("history") if isinstance(eigen, Mapping) else None
    for index, record in enumerate(records or []):
        if not isinstance(record, Mapping):
            continue
        values = [v for v in (_optional_float(x) for x in record.get("values") or []) if v is not None]
        if values:
            points.append((_optional_int(record.get("hvps")) or index + 1, max(values)))
    return tuple(points)


def _parse_block(item: Any) -> BlockEigen | None:
    if not isinstance(item, Mapping):
        return None
    lambda_max = _optional_float(item.get("lambda_max"))
    if lambda_max is None:
        return None
    eigen = item.get("eigen") if isinstance(item.get("eigen"), Mapping) else {}
    trace = item.get("trace")
    precond = item.get("preconditioned") if isinstance(item.get("preconditioned"), Mapping) else {}
    converged = item.get("converged")
    return BlockEigen(
        name=str(item.get("name", "whole")),
        lambda_max=lambda_max,
        lambda_min=_optional_float(item.get("lambda_min")),
        residual=_optional_float(item.get("residual")),
        converged=bool(converged) if converged is not None else None,
        hvps=_optional_int(item.get("hvps")),
        seconds=_optional_float(item.get("seconds")),
        solver=eigen.get("solver") if isinstance(eigen.get("solver"), str) else None,
        history=_history(eigen),
        trace=_optional_float(trace.get("trace")) if isinstance(trace, Mapping) else None,
        density=_parse_density(item.get("density")),
        quadrature=_parse_quadrature(item.get("density")),
        precond_sharpness=_optional_float(precond.get("sharpness")),
        precond_history=_history(precond.get("eigen")),
    )


def _parse_quadrature(raw: Any) -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]] | None:
    """``DensityResult``'s per-run Gauss nodes and weights, when present and consistent."""
    if not isinstance(raw, Mapping) or not raw.get("nodes") or not raw.get("weights"):
        return None
    try:
        nodes = tuple(tuple(float(x) for x in run) for run in raw["nodes"])
        weights = tuple(tuple(float(x) for x in run) for run in raw["weights"])
    except (TypeError, ValueError):
        return None
    if len(nodes) != len(weights) or any(len(n) != len(w) or not n for n, w in zip(nodes, weights)):
        return None
    return nodes, weights


def _parse_density(raw: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``DensityResult`` as a Gaussian-smoothed curve on a grid."""
    quadrature = _parse_quadrature(raw)
    if quadrature is None:
        return None
    return smoothed_density([np.asarray(n) for n in quadrature[0]], [np.asarray(w) for w in quadrature[1]])


def smoothed_density(
    nodes: Sequence[np.ndarray], weights: Sequence[np.ndarray], *, points: int = 600, sigma: float | None = None,
    grid: np.ndarray | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The SLQ runs' averaged quadrature measure convolved with a Gaussian (as ``DensityResult.smoothed``);
    ``sigma`` defaults to 1/100 of the spectrum's span, ``grid`` to ``points`` points covering it."""
    all_nodes = np.concatenate([np.ravel(n) for n in nodes])
    span = float(all_nodes.max() - all_nodes.min()) or max(abs(float(all_nodes.max())), 1.0)
    sigma = sigma or span / 100
    if grid is None:
        grid = np.linspace(all_nodes.min() - 5 * sigma, all_nodes.max() + 5 * sigma, points)
    density = np.zeros_like(grid)
    for run_nodes, run_weights in zip(nodes, weights):
        kernel = np.exp(-0.5 * ((grid[:, None] - np.ravel(run_nodes)[None, :]) / sigma) ** 2)
        density += kernel @ np.ravel(run_weights) / (sigma * math.sqrt(2 * math.pi))
    density /= len(nodes)
    return tuple(grid.tolist()), tuple(density.tolist())


@dataclass(frozen=True)
class RunDirectory:
    """A sweep's run directory, read once: rows, eigen reports at init and at the end, and its config."""

    path: str
    runs: tuple[RunRecord, ...]
    init_reports: Mapping[tuple[str, int | None, int], EigenSummary]  # (method, rank, seed) -> report
    final_reports: Mapping[str, EigenSummary]  # run_id -> report
    config: Mapping[str, Any]

    def init_report(self, method: str, seed: int, rank: int | None = None) -> EigenSummary | None:
        if (method, rank, seed) in self.init_reports:
            return self.init_reports[(method, rank, seed)]
        matches = [report for (m, _, s), report in self.init_reports.items() if m == method and s == seed]
        return matches[0] if len(matches) == 1 else None


def read_run_directory(run_dir: str | os.PathLike[str]) -> RunDirectory:
    runs = load_runs(run_dir)
    root = Path(run_dir)
    init_reports: dict[tuple[str, int | None, int], EigenSummary] = {}
    final_reports: dict[str, EigenSummary] = {}
    run_ids = {run.run_id for run in runs}
    extras: dict[tuple[str, int | None, int], list[EigenSummary]] = {}
    for path in sorted((root / "hessian").glob("*.json")) if (root / "hessian").is_dir() else []:
        stem = path.stem
        key_text, marker, suffix = stem.rpartition("_init")
        if marker and (suffix == "" or suffix.startswith("_")):
            parsed = _parse_init_stem(key_text)
            if parsed is None:
                continue
            if suffix == "":
                init_reports[parsed] = load_eigen_report(path)
            else:  # e.g. _init_modules.json: more blocks of the same adapter at initialisation
                extras.setdefault(parsed, []).append(load_eigen_report(path))
        elif stem.endswith("_final") and stem[: -len("_final")] in run_ids:
            final_reports[stem[: -len("_final")]] = load_eigen_report(path)
    for key, summaries in extras.items():
        merged = init_reports.get(key)
        for summary in summaries:
            merged = summary if merged is None else merge_reports(merged, summary)
        if merged is not None:
            init_reports[key] = merged
    return RunDirectory(str(root), tuple(runs), init_reports, final_reports, _read_config(root))


def merge_reports(primary: EigenSummary, extra: EigenSummary) -> EigenSummary:
    """``primary``'s blocks, completed by ``extra``: blocks it lacks are added, and a block both have keeps
    ``primary``'s numbers with the optional parts (history, trace, density) it lacks taken from ``extra``."""
    from dataclasses import replace

    def key(block: BlockEigen) -> str:
        return "" if block.is_whole else block.name  # whole-adapter blocks match whatever they are called

    blocks = {key(block): block for block in primary.blocks}
    for block in extra.blocks:
        if key(block) not in blocks:
            blocks[key(block)] = block
            continue
        kept = blocks[key(block)]
        fill = {name: getattr(block, name) for name in ("history", "trace", "density", "quadrature", "solver")
                if not getattr(kept, name) and getattr(block, name)}
        blocks[key(block)] = replace(kept, **fill)
    return EigenSummary(path=primary.path, blocks=tuple(blocks.values()), settings=primary.settings)


def _parse_init_stem(stem: str) -> tuple[str, int | None, int] | None:
    """``<method>_r<rank>_s<seed>`` -> (method, rank, seed); methods may contain underscores."""
    parts = stem.split("_")
    if len(parts) < 3 or not parts[-1].startswith("s") or not parts[-2].startswith("r"):
        return None
    try:
        seed, rank = int(parts[-1][1:]), int(parts[-2][1:])
    except ValueError:
        return None
    return "_".join(parts[:-2]), rank, seed


def _read_config(root: Path) -> Mapping[str, Any]:
    path = root / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, Mapping) else {}


def adam_beta1(config: Mapping[str, Any]) -> float:
    """β₁ of the sweep's AdamW (``betas: [b1, b2]`` or ``beta1`` anywhere in the config), else 0.9."""
    found = _find_key(config, ("betas", "adam_betas", "beta1", "adam_beta1"))
    if isinstance(found, (list, tuple)) and found:
        return float(found[0])
    number = _optional_float(found)
    return DEFAULT_BETA1 if number is None else number


def _find_key(config: Any, keys: Sequence[str]) -> Any:
    if isinstance(config, Mapping):
        for key in keys:
            if key in config:
                return config[key]
        for value in config.values():
            found = _find_key(value, keys)
            if found is not None:
                return found
    return None


# ----------------------------------------------------------------------------------------------------------
# Optimal learning rate


@dataclass(frozen=True)
class PeakFit:
    """The optimum of one metric-vs-LR curve.

    ``kind``: ``quadratic`` (vertex of the parabola through the best grid point and its neighbours in log10 LR),
    ``edge`` (best at the first or last grid point: the optimum may lie outside the grid), ``flat`` (three or
    more tied best points: the centre of the plateau), ``single`` (one grid point).
    """

    eta_star: float
    eta_grid: float
    kind: str
    peak_metric: float  # observed metric at eta_grid
    peak_metric_fit: float  # the parabola's value at the vertex (= peak_metric unless kind == "quadratic")

    @property
    def at_edge(self) -> bool:
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
            return PeakFit(float(lr_sorted[best]), float(lr_sorted[best]), "edge", float(values[best]),
                           float(values[best]))
    window = slice(best - 1, best + 2)
    log_lrs = np.log10(lr_sorted[window])
    vertex_x, vertex_score, curvature = parabola_vertex(log_lrs, score[window])
    if curvature >= 0:
        return PeakFit(float(lr_sorted[best]), float(lr_sorted[best]), "flat", float(values[best]),
                       float(values[best]))
    vertex_x = float(np.clip(vertex_x, log_lrs[0], log_lrs[2]))
    peak_fit = vertex_score if higher_is_better else -vertex_score
    return PeakFit(float(10**vertex_x), float(lr_sorted[best]), "quadratic", float(values[best]), float(peak_fit))


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


def metric_value(run: RunRecord, metric: str) -> float | None:
    """The run's metric; a diverged run without one scores 0 accuracy (it answers nothing right) and is left
    out of loss curves (its loss is not a number to average)."""
    value = run.metric(metric)
    if value is None and run.status == "diverged" and metric == "accuracy":
        return 0.0
    return value


def method_curves(runs: Iterable[RunRecord], metric: str) -> dict[str, MethodCurve]:
    by_method: dict[str, list[RunRecord]] = {}
    for run in runs:
        if run.status in _USABLE_STATUSES:
            by_method.setdefault(run.method, []).append(run)
    curves = {}
    for method, method_runs in by_method.items():
        by_lr: dict[float, list[float]] = {}
        per_seed: dict[int, list[tuple[float, float]]] = {}
        diverged: dict[float, int] = {}
        for run in method_runs:
            if run.status == "diverged":
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


def choose_metric(runs: Sequence[RunRecord], requested: str = "auto") -> str:
    """``auto``: accuracy when it can locate an optimum for every method (each method has finished runs with
    some non-zero and unequal accuracies); otherwise held-out loss, then training loss."""
    if requested != "auto":
        if requested not in HIGHER_IS_BETTER:
            raise UserError(f"unknown metric {requested!r}: use auto, {', '.join(HIGHER_IS_BETTER)}.")
        return requested
    done = [run for run in runs if run.status == "done"]
    by_method: dict[str, list[float | None]] = {}
    for run in done:
        by_method.setdefault(run.method, []).append(run.accuracy)
    if by_method and all(
        None not in values and max(values) > 0 and len(set(values)) > 1  # type: ignore[type-var]
        for values in by_method.values()
    ):
        return "accuracy"
    if any(run.eval_loss is not None for run in done):
        return "eval_loss"
    if any(run.train_loss is not None for run in done):
        return "train_loss"
    raise UserError("no finished run has accuracy, eval_loss or train_loss: let the sweep finish some runs.")


# ----------------------------------------------------------------------------------------------------------
# The λ_max–η* relation


@dataclass(frozen=True)
class PowerLaw:
    """log10 η* = intercept + slope · log10 λ_max (least squares)."""

    slope: float
    intercept: float
    r2: float | None
    n: int

    def predict(self, lambda_max: float) -> float:
        return float(10 ** (self.intercept + self.slope * math.log10(lambda_max)))


def fit_power_law(lambdas: Sequence[float], etas: Sequence[float]) -> PowerLaw:
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
    method: str
    lambda_max: float
    actual: float
    predicted: float
    fit: str  # the calibration used: "power" or "inverse" (power needs two distinct λ among the others)

    @property
    def ratio(self) -> float:
        return self.predicted / self.actual

    @property
    def within_2x(self) -> bool:
        return abs(math.log2(self.ratio)) <= 1.0 + 1e-12


def predict_eta(lambdas: Sequence[float], etas: Sequence[float], lambda_max: float, fit: str) -> tuple[float, str]:
    """η* predicted at ``lambda_max`` from calibration points by a power law (``fit="power"``, falling back to
    c/λ when the points hold fewer than two distinct λ) or by c/λ (``fit="inverse"``)."""
    if fit not in FIT_KINDS:
        raise UserError(f"unknown fit {fit!r}: use {' or '.join(FIT_KINDS)}.")
    if fit == "power" and len(set(lambdas)) >= 2:
        return fit_power_law(lambdas, etas).predict(lambda_max), "power"
    constant, _ = fit_inverse_constant(lambdas, etas)
    return constant / lambda_max, "inverse"


def leave_one_method_out(points: Mapping[str, tuple[float, float]], fit: str) -> list[LomoPrediction]:
    """For each method, predict its η* from its λ_max with a calibration fitted on the other methods only."""
    predictions = []
    for method, (lambda_max, eta) in points.items():
        others = [(lam, et) for name, (lam, et) in points.items() if name != method]
        if not others:
            continue
        predicted, used = predict_eta([lam for lam, _ in others], [et for _, et in others], lambda_max, fit)
        predictions.append(LomoPrediction(method, lambda_max, eta, predicted, used))
    return predictions


def adam_threshold(lr: float, beta1: float = DEFAULT_BETA1) -> float:
    """Adam's edge-of-stability level of the preconditioned sharpness, (2+2β₁)/((1−β₁)η) (Cohen et al. 2022)."""
    return (2 + 2 * beta1) / ((1 - beta1) * lr)


# ----------------------------------------------------------------------------------------------------------
# Putting it together


@dataclass(frozen=True)
class MethodSummary:
    method: str
    n_seeds: int
    lrs: tuple[float, ...]
    metric_mean: tuple[float, ...]
    metric_std: tuple[float, ...]
    diverged_lrs: tuple[float, ...]
    eta_star: float
    eta_grid: float
    fit_kind: str
    eta_star_per_seed: Mapping[int, float]
    eta_spread_factor: float | None  # 10**std(log10 η*_seed); None with one seed
    peak_metric: float
    peak_metric_std: float
    peak_metric_fit: float
    gap_to_best: float = 0.0  # how much worse than the best method's peak (>= 0, in metric units)
    lambda_init_whole: float | None = None
    lambda_init_module_median: float | None = None
    lambda_init_per_seed: Mapping[int, float] = field(default_factory=dict)  # the relation's λ source
    lambda_final_whole: float | None = None
    lambda_final_module_median: float | None = None
    precond_lambda_final: float | None = None
    eta_lambda_over_2: float | None = None  # η*·λ_init/2: η* as a fraction of gradient descent's bound 2/λ
    final_lambda_eta_over_2: float | None = None  # λ_final·η/2 at the η* run's LR (edge of stability ≈ 1)
    precond_over_adam_threshold: float | None = None  # λ̃_final / ((2+2β₁)/((1−β₁)η)) at the η* run's LR


@dataclass(frozen=True)
class Relation:
    lambda_source: str
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
    lomo: Mapping[str, list[dict[str, Any]]]
    lomo_within_2x: Mapping[str, int]
    preferred_fit: str | None


@dataclass(frozen=True)
class Analysis:
    run_dir: str
    metric: str
    higher_is_better: bool
    beta1: float
    rank: int | None
    batch_size: int | None
    methods: Mapping[str, MethodSummary]
    best_method: str
    relation: Relation
    created: str
    n_runs: int

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def _geometric_mean(values: Iterable[float | None]) -> float | None:
    kept = [value for value in values if value is not None and value > 0 and math.isfinite(value)]
    return float(10 ** np.mean(np.log10(kept))) if kept else None


def _select_configuration(runs: Sequence[RunRecord], rank: int | None, batch_size: int | None) -> list[RunRecord]:
    selected = [run for run in runs if (rank is None or run.rank == rank) and
                (batch_size is None or run.batch_size == batch_size)]
    if not selected:
        raise UserError(f"no run with rank={rank} batch_size={batch_size}: check `hessian-lora results RUN_DIR`.")
    for attribute, flag in (("rank", "--rank"), ("batch_size", "--batch-size")):
        values = sorted({getattr(run, attribute) for run in selected if getattr(run, attribute) is not None})
        if len(values) > 1:
            raise UserError(f"the runs hold several {attribute} values {values}: pick one with {flag}.")
    return selected


def analyze(
    run_dir: str | os.PathLike[str],
    *,
    metric: str = "auto",
    lambda_source: str = "auto",
    rank: int | None = None,
    batch_size: int | None = None,
    bootstrap_samples: int = 2000,
    seed: int = 0,
) -> Analysis:
    """Analyse a sweep run directory (see the module docstring)."""
    if lambda_source not in LAMBDA_SOURCES:
        raise UserError(f"unknown λ source {lambda_source!r}: use {', '.join(LAMBDA_SOURCES)}.")
    directory = read_run_directory(run_dir)
    if not directory.runs:
        raise UserError(f"{run_dir} holds no runs yet: run the sweep first.")
    runs = _select_configuration(directory.runs, rank, batch_size)
    metric = choose_metric(runs, metric)
    higher = HIGHER_IS_BETTER[metric]
    curves = method_curves(runs, metric)
    if not curves:
        raise UserError(f"no finished run has a {metric}: let the sweep finish or pick another --metric.")
    beta1 = adam_beta1(directory.config)
    chosen_rank = next((run.rank for run in runs if run.rank is not None), None)
    chosen_batch = next((run.batch_size for run in runs if run.batch_size is not None), None)

    summaries = {method: _summarise_method(curve, runs, directory, metric, beta1) for method, curve in
                 sorted(curves.items(), key=lambda item: method_sort_key(item[0]))}
    source = _resolve_lambda_source(summaries, lambda_source)
    summaries = {method: _with_relation_lambda(summary, runs, directory, source) for method, summary in
                 summaries.items()}
    peaks = {method: summary.peak_metric for method, summary in summaries.items()}
    best_method = (max if higher else min)(peaks, key=lambda name: peaks[name])
    summaries = {
        method: _replace(summary, gap_to_best=abs(peaks[best_method] - summary.peak_metric))
        for method, summary in summaries.items()
    }
    relation = _relation(summaries, source, bootstrap_samples, seed)
    return Analysis(
        run_dir=str(run_dir), metric=metric, higher_is_better=higher, beta1=beta1, rank=chosen_rank,
        batch_size=chosen_batch, methods=summaries, best_method=best_method, relation=relation,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), n_runs=len(runs),
    )


def _replace(summary: MethodSummary, **changes: Any) -> MethodSummary:
    from dataclasses import replace

    return replace(summary, **changes)


def _summarise_method(
    curve: MethodCurve, runs: Sequence[RunRecord], directory: RunDirectory, metric: str, beta1: float
) -> MethodSummary:
    higher = HIGHER_IS_BETTER[metric]
    peak = fit_peak(curve.lrs, curve.mean, higher_is_better=higher)
    per_seed = {}
    for seed, points in curve.per_seed.items():
        lrs = [lr for lr, _ in points]
        if len(set(lrs)) == len(lrs):
            per_seed[seed] = fit_peak(lrs, [value for _, value in points], higher_is_better=higher).eta_star
    spread = float(10 ** np.std(np.log10(list(per_seed.values())), ddof=1)) if len(per_seed) > 1 else None
    peak_index = curve.lrs.index(peak.eta_grid)
    method_runs = [run for run in runs if run.method == curve.method]

    init_whole, init_median = [], []
    for seed in sorted({run.seed for run in method_runs}):
        report = directory.init_report(curve.method, seed, method_runs[0].rank)
        if report is not None:
            init_whole.append(report.whole.lambda_max if report.whole else None)
            init_median.append(report.module_median)

    # End-of-training sharpness of the runs at the best grid LR (one per seed).
    best_runs = [run for run in method_runs if run.lr == peak.eta_grid and run.status == "done"]
    final_whole, final_median, precond = [], [], []
    for run in best_runs:
        report = directory.final_reports.get(run.run_id)
        whole = report.whole.lambda_max if report and report.whole else None
        final_whole.append(whole if whole is not None else run.lambda_final)
        final_median.append(report.module_median if report else None)
        precond.append(run.precond_lambda_final if run.precond_lambda_final is not None else
                       (report.precond_sharpness if report else None))
    lambda_final = _geometric_mean(final_whole)
    precond_final = _geometric_mean(precond)
    return MethodSummary(
        method=curve.method,
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
        peak_metric=peak.peak_metric,
        peak_metric_std=curve.std[peak_index],
        peak_metric_fit=peak.peak_metric_fit,
        lambda_init_whole=_geometric_mean(init_whole),
        lambda_init_module_median=_geometric_mean(init_median),
        lambda_final_whole=lambda_final,
        lambda_final_module_median=_geometric_mean(final_median),
        precond_lambda_final=precond_final,
        final_lambda_eta_over_2=lambda_final * peak.eta_grid / 2 if lambda_final else None,
        precond_over_adam_threshold=precond_final / adam_threshold(peak.eta_grid, beta1) if precond_final else None,
    )


def _resolve_lambda_source(summaries: Mapping[str, MethodSummary], requested: str) -> str:
    if requested != "auto":
        return requested
    if summaries and all(s.lambda_init_whole is not None for s in summaries.values()):
        return "whole"
    if summaries and all(s.lambda_init_module_median is not None for s in summaries.values()):
        return "module_median"
    return "whole"


def _with_relation_lambda(
    summary: MethodSummary, runs: Sequence[RunRecord], directory: RunDirectory, source: str
) -> MethodSummary:
    """Per-seed λ_max at init from the chosen source: the eigen reports, else the ``lambda_init`` column (the
    sweep's own measurement, assumed to be of the whole adapter)."""
    method_runs = [run for run in runs if run.method == summary.method]
    per_seed: dict[int, float] = {}
    for seed in sorted({run.seed for run in method_runs}):
        report = directory.init_report(summary.method, seed, method_runs[0].rank)
        value = None
        if report is not None:
            value = report.whole.lambda_max if source == "whole" and report.whole else (
                report.module_median if source == "module_median" else None)
        if value is None and source == "whole":
            column = [run.lambda_init for run in method_runs if run.seed == seed and run.lambda_init is not None]
            value = float(np.median(column)) if column else None
        if value is not None and value > 0:
            per_seed[seed] = value
    whole = summary.lambda_init_whole
    if whole is None and source == "whole" and per_seed:
        whole = _geometric_mean(per_seed.values())
    relation_lambda = _geometric_mean(per_seed.values())
    return _replace(
        summary,
        lambda_init_per_seed=per_seed,
        lambda_init_whole=whole,
        eta_lambda_over_2=summary.eta_star * relation_lambda / 2 if relation_lambda else None,
    )


def relation_lambda(summary: MethodSummary) -> float | None:
    """The λ_max at initialisation that the relation uses for this method (geometric mean over seeds)."""
    return _geometric_mean(summary.lambda_init_per_seed.values())


def spearman_exact(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's ρ with a two-sided p-value; exact over all orderings for n <= 8.

    scipy's default p comes from a t approximation that is meaningless for a handful of methods (it gives 1e-24
    for a perfect ρ over 5 points, where the exact value is 2/5! = 0.017).
    """
    result = stats.spearmanr(x, y)
    rho = float(result.statistic)
    if len(x) > 8:
        return rho, float(result.pvalue)
    exact = stats.permutation_test((list(x),), lambda a: stats.spearmanr(a, y).statistic,
                                   permutation_type="pairings", alternative="two-sided", n_resamples=math.inf)
    return rho, float(exact.pvalue)


def _relation(summaries: Mapping[str, MethodSummary], source: str, samples: int, seed: int) -> Relation:
    points = {name: (relation_lambda(s), s.eta_star) for name, s in summaries.items() if relation_lambda(s)}
    lambdas = [lam for lam, _ in points.values()]
    etas = [eta for _, eta in points.values()]
    rho = p_value = None
    if len(points) >= 3 and len(set(lambdas)) > 1 and len(set(etas)) > 1:
        rho, p_value = spearman_exact(lambdas, etas)
    power = fit_power_law(lambdas, etas) if len(set(lambdas)) >= 2 else None
    interval, valid = None, 0
    if power is not None and len(points) >= 3:
        seed_points = {}
        for name, summary in summaries.items():
            if name not in points:
                continue
            pairs = [(summary.lambda_init_per_seed[s], summary.eta_star_per_seed[s])
                     for s in summary.lambda_init_per_seed if s in summary.eta_star_per_seed]
            seed_points[name] = pairs or [points[name]]
        try:
            low, high, valid = bootstrap_slope(seed_points, samples=samples, seed=seed)
            interval = (low, high)
        except ValueError:
            interval = None
    c = spread = None
    if points:
        c, spread = fit_inverse_constant(lambdas, etas)
    lomo: dict[str, list[dict[str, Any]]] = {}
    within: dict[str, int] = {}
    if len(points) >= 2:
        for fit in FIT_KINDS:
            predictions = leave_one_method_out(points, fit)
            lomo[fit] = [dict(asdict(p), ratio=p.ratio, within_2x=p.within_2x) for p in predictions]
            within[fit] = sum(p.within_2x for p in predictions)
    preferred = None
    if lomo:
        # The fit whose held-out predictions are closer in log space; ties go to the simpler c/λ.
        errors = {fit: float(np.mean([abs(math.log10(item["ratio"])) for item in lomo[fit]])) for fit in lomo}
        preferred = min(FIT_KINDS[::-1], key=lambda fit: errors.get(fit, math.inf))
    return Relation(
        lambda_source=source, n_methods=len(points), spearman_rho=rho, spearman_p=p_value,
        slope=power.slope if power else None, intercept=power.intercept if power else None,
        r2=power.r2 if power else None, slope_ci95=interval, bootstrap_valid=valid, c=c, c_spread_factor=spread,
        lomo=lomo, lomo_within_2x=within, preferred_fit=preferred,
    )


# ----------------------------------------------------------------------------------------------------------
# Output


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def markdown_table(analysis: Analysis | Mapping[str, Any]) -> str:
    """The per-method table and the relation summary, as markdown."""
    data = analysis.to_dict() if isinstance(analysis, Analysis) else dict(analysis)
    metric = data["metric"]
    relation = data["relation"]
    preferred = relation.get("preferred_fit")
    lomo = {item["method"]: item for item in relation.get("lomo", {}).get(preferred or "", [])}
    lines = [
        f"| method | η* | grid best LR | η* spread over seeds | peak {metric} | gap to best | "
        "λ_max init (whole) | λ_max init (module median) | λ_max end | η*·λ/2 | λ̃ end / Adam bound | "
        "LOMO predicted η* (×actual) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, method in data["methods"].items():
        eta = _fmt(method["eta_star"])
        if method["fit_kind"] == "edge":
            eta = ("≤ " if method["eta_star"] == min(method["lrs"]) else "≥ ") + eta
        spread = method.get("eta_spread_factor")
        spread_text = f"×{spread:.2f} ({method['n_seeds']} seeds)" if spread else f"– ({method['n_seeds']} seed)"
        peak = _fmt(method["peak_metric"], ".4g")
        if method["n_seeds"] > 1:
            peak += f" ± {_fmt(method['peak_metric_std'], '.2g')}"
        prediction = lomo.get(name)
        lomo_text = f"{_fmt(prediction['predicted'])} (×{prediction['ratio']:.2f})" if prediction else "–"
        lines.append(
            f"| {name}{' (best)' if name == data['best_method'] else ''} | {eta} | {_fmt(method['eta_grid'])} | "
            f"{spread_text} | {peak} | {_fmt(method['gap_to_best'], '.3g')} | {_fmt(method['lambda_init_whole'])} | "
            f"{_fmt(method['lambda_init_module_median'])} | {_fmt(method['lambda_final_whole'])} | "
            f"{_fmt(method['eta_lambda_over_2'])} | {_fmt(method['precond_over_adam_threshold'])} | {lomo_text} |"
        )
    lines.append("")
    lines.append(relation_summary(data))
    return "\n".join(lines)


def relation_summary(data: Mapping[str, Any]) -> str:
    relation = data["relation"]
    parts = [f"λ_max–η* relation over {relation['n_methods']} methods (λ at init, {relation['lambda_source']}):"]
    if relation.get("spearman_rho") is not None:
        parts.append(f"Spearman ρ = {relation['spearman_rho']:.3f} (p = {relation['spearman_p']:.3g});")
    if relation.get("slope") is not None:
        text = f"slope of log η* on log λ_max = {relation['slope']:.3f}"
        if relation.get("slope_ci95"):
            low, high = relation["slope_ci95"]
            text += f" (95% bootstrap CI [{low:.3f}, {high:.3f}], {relation['bootstrap_valid']} resamples)"
        parts.append(text + ";")
    if relation.get("c") is not None:
        parts.append(f"η* ≈ c/λ_max with c = {relation['c']:.3g} (×{relation['c_spread_factor']:.2f} spread);")
    gd = [m["eta_lambda_over_2"] for m in data["methods"].values() if m.get("eta_lambda_over_2")]
    if gd:
        parts.append(f"η* is {min(gd):.3g}–{max(gd):.3g} of gradient descent's bound 2/λ_max at init;")
    adam = [m["precond_over_adam_threshold"] for m in data["methods"].values() if m.get("precond_over_adam_threshold")]
    if adam:
        parts.append(f"the preconditioned sharpness at the end of the η* run is {min(adam):.3g}–{max(adam):.3g} of "
                     "Adam's edge of stability (2+2β₁)/((1−β₁)η);")
    for fit, count in relation.get("lomo_within_2x", {}).items():
        total = len(relation["lomo"][fit])
        marker = " (preferred)" if fit == relation.get("preferred_fit") else ""
        parts.append(f"leave-one-method-out within 2×: {count}/{total} with the {fit} fit{marker};")
    parts.append(f"metric = {data['metric']}, Adam β₁ = {data['beta1']}.")
    return " ".join(parts)


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write via a temporary file in the same directory and ``os.replace`` (never a half-written file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temporary, 0o666 & ~mask)  # mkstemp makes 0600; keep the permissions of a plain open()
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_analysis(analysis: Analysis, out_dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """``analysis.json`` and ``analysis.md`` in ``out_dir`` (default: the run directory)."""
    root = Path(out_dir or analysis.run_dir)
    json_path, md_path = root / ANALYSIS_JSON, root / ANALYSIS_MD
    write_atomic(json_path, json.dumps(analysis.to_dict(), indent=2, ensure_ascii=False) + "\n")
    write_atomic(md_path, markdown_table(analysis) + "\n")
    return json_path, md_path
