"""A sweep's run directory read back: its rows as :class:`RunRecord`, and rows, eigen reports and config together
as a :class:`RunDirectory` (:func:`read_run_directory`), what analysis, plots, recommend and the demo read.

The names and layout it reads by are :mod:`hessian_lora.core.rundir`'s (a torch-free foundation, below the sweep);
this module sits above both the sweep's store (rows through its :func:`~hessian_lora.core.store.read_rows`) and
the eigen reports (:mod:`hessian_lora.measurement.reports`, through :meth:`EigenReport.from_dict`, seen as a
:class:`~hessian_lora.measurement.reports.ReportView`), which is why it is not part of the foundation.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hessian_lora.core.errors import UserError
from hessian_lora.core.rundir import (
    USABLE_STATUSES,
    InitKey,
    RunLayout,
    parse_report_name,
    read_init_inputs,
)
from hessian_lora.core.store import read_rows
from hessian_lora.measurement.reports import ReportView, load_eigen_report, merge_reports, optional_float
from hessian_lora.settings.schemas import read_config

# ----------------------------------------------------------------------------------------------------------
# Rows of results.sqlite


@dataclass(frozen=True)
class RunRecord:
    """One row of ``runs``; metrics are None where the sweep did not record them."""

    run_id: str
    method: str
    lr: float
    seed: int
    rank: int | None
    batch_size: int | None
    status: str  # a Status value; "unknown" for a row without one
    train_loss: float | None = None
    eval_loss: float | None = None
    accuracy: float | None = None
    lambda_init: float | None = None
    lambda_final: float | None = None
    precond_lambda_final: float | None = None
    steps: int | None = None
    wall_seconds: float | None = None
    train_seconds: float | None = None  # the training loop's own seconds (older sweeps: not recorded)
    eval_seconds: float | None = None  # the held-out evaluation's seconds
    history: tuple[dict[str, float], ...] = ()
    eval_scores: tuple[float, ...] | None = (
        None  # per-example accuracy scores (runs/<id>/eval.json), if stored
    )
    # evaluation sets (a sweep's eval_task)
    pass_at_1: float | None = None
    gsm8k_acc: float | None = None
    math_acc: float | None = None
    mbpp_pass_at_1: float | None = None
    humaneval_pass_at_1: float | None = None

    def metric(self, name: str) -> float | None:
        """The metric ``name`` of the run, or None where not recorded or not finite."""
        value = getattr(self, name)
        return None if value is None or not math.isfinite(value) else float(value)

    @property
    def is_usable(self) -> bool:
        """Whether analysis reads the run (done or diverged)."""
        return self.status in USABLE_STATUSES


def load_runs(run_dir: str | os.PathLike[str]) -> list[RunRecord]:
    """All rows of ``RUN_DIR/results.sqlite`` (read-only; tolerant of columns a sweep version lacks)."""
    layout = RunLayout(run_dir)
    rows = read_rows(run_dir)
    return [_record_from_row(row, layout) for row in rows]


def _optional_int(value: Any) -> int | None:
    number = optional_float(value)
    return None if number is None or not math.isfinite(number) else int(number)


# The rows' float columns a RunRecord keeps (None where a sweep version did not record them).
_FLOAT_COLUMNS = (
    "train_loss",
    "eval_loss",
    "accuracy",
    "pass_at_1",
    "gsm8k_acc",
    "math_acc",
    "mbpp_pass_at_1",
    "humaneval_pass_at_1",
    "lambda_init",
    "lambda_final",
    "precond_lambda_final",
    "wall_seconds",
    "train_seconds",
    "eval_seconds",
)


def _record_from_row(row: Mapping[str, Any], layout: RunLayout) -> RunRecord:
    history = _parse_history(row.get("history"))
    if not history:  # older sweeps kept the history only in runs/<run_id>/history.json
        history = _read_history_file(layout.history(str(row.get("run_id"))))
    return RunRecord(
        run_id=str(row.get("run_id")),
        method=str(row.get("method")),
        lr=float(row.get("lr")),  # lr is never NULL
        seed=_optional_int(row.get("seed")) or 0,
        rank=_optional_int(row.get("rank")),
        batch_size=_optional_int(row.get("batch_size")),
        status=str(row.get("status") or "unknown"),
        steps=_optional_int(row.get("steps")),
        history=history,
        eval_scores=_read_eval_scores(layout.eval_scores(str(row.get("run_id")))),
        **{name: optional_float(row.get(name)) for name in _FLOAT_COLUMNS},
    )


def _read_eval_scores(path: Path) -> tuple[float, ...] | None:
    """``{"scores": [...]}`` (or a bare list) from eval.json; None when absent or unreadable (older sweeps)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    scores = data.get("scores") if isinstance(data, Mapping) else data
    if not isinstance(scores, list) or not scores:
        return None
    values = [optional_float(value) for value in scores]
    return (
        None if any(value is None for value in values) else tuple(float(v) for v in values)
    )  # no None, checked


def _parse_history(raw: Any) -> tuple[dict[str, float], ...]:
    """Training-loss points from the ``history`` column or file: a list of ``{"step", "loss", "lr"}`` records,
    or the column layout ``{"steps": [...], "loss": [...]}``; points without a loss are dropped."""
    if raw is None or raw == "":
        return ()
    try:
        items = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return ()
    if isinstance(items, Mapping):
        columns = {key: list(value) for key, value in items.items() if isinstance(value, list)}
        length = min((len(value) for value in columns.values()), default=0)
        items = [{key: value[i] for key, value in columns.items()} for i in range(length)]
    points = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, Mapping) and optional_float(item.get("loss")) is not None:
            points.append(
                {key: float(value) for key, value in item.items() if optional_float(value) is not None}
            )
    return tuple(points)


def _read_history_file(path: Path) -> tuple[dict[str, float], ...]:
    if not path.is_file():
        return ()
    try:
        return _parse_history(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError):
        return ()


# ----------------------------------------------------------------------------------------------------------
# The whole directory


@dataclass(frozen=True)
class RunDirectory:
    """A sweep's run directory, read once: rows, eigen reports at init and at the end, and its config."""

    path: str
    runs: tuple[RunRecord, ...]
    init_reports: Mapping[InitKey, ReportView]  # ``_init_<part>`` reports merged into their ``_init`` report
    final_reports: Mapping[str, ReportView]  # run_id -> report
    config: Mapping[str, Any]
    # init reports copied from another key's, measured on bit-identical inputs (sweep/init_reuse.py): key -> source
    reused_inits: Mapping[InitKey, InitKey] = field(default_factory=dict)

    def init_report(self, method: str, seed: int, rank: int | None = None) -> ReportView | None:
        """The report of (method, rank, seed); without a rank (or with a rank no report has), the method's only
        report for that seed."""
        if rank is not None and InitKey(method, rank, seed) in self.init_reports:
            return self.init_reports[InitKey(method, rank, seed)]
        matches = [
            report for key, report in self.init_reports.items() if key.method == method and key.seed == seed
        ]
        return matches[0] if len(matches) == 1 else None


def read_run_directory(run_dir: str | os.PathLike[str]) -> RunDirectory:
    """Rows, eigen reports and config of a sweep run directory (UserError when it is not one)."""
    runs = load_runs(run_dir)
    layout = RunLayout(run_dir)
    init_reports: dict[InitKey, ReportView] = {}
    final_reports: dict[str, ReportView] = {}
    run_ids = {run.run_id for run in runs}
    extras: dict[InitKey, list[ReportView]] = {}
    for path in sorted(layout.hessian.glob("*.json")) if layout.hessian.is_dir() else []:
        name = parse_report_name(path.stem)
        if name is None:
            continue
        if name.kind == "init" and name.init_key is not None:
            if name.part == "":
                init_reports[name.init_key] = load_eigen_report(path)
            else:  # e.g. _init_modules.json: more blocks of the same adapter at initialisation
                extras.setdefault(name.init_key, []).append(load_eigen_report(path))
        elif name.kind == "final" and name.run_id in run_ids:
            final_reports[name.run_id] = load_eigen_report(path)
    for key, views in extras.items():
        merged = init_reports.get(key)
        for view in views:
            merged = view if merged is None else merge_reports(merged, view)
        if merged is not None:
            init_reports[key] = merged
    reused = {
        key: source
        for key, record in read_init_inputs(layout).items()
        if (source := InitKey.parse(str(record.get("reused_from") or ""))) is not None and key in init_reports
    }
    return RunDirectory(
        str(layout.root), tuple(runs), init_reports, final_reports, read_config(layout.config), reused
    )


def read_outcomes(run_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """search.json's ``searches`` (empty for a grid sweep, an older file, or a search not finished once)."""
    path = RunLayout(run_dir).search
    if not path.is_file():
        return {}
    try:
        searches = json.loads(path.read_text(encoding="utf-8")).get("searches") or {}
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(f"{path} is damaged ({exc}): delete it to compute the search centres again.") from exc
    return {str(name): dict(item) for name, item in searches.items() if isinstance(item, dict)}
