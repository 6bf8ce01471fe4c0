"""The run directory: the one owner of a sweep directory's layout, names and statuses.

A sweep writes, and analysis, plots, recommend and the demo read, one directory (docs/ARCHITECTURE.md,
"Sweep run directory")::

    RUN_DIR/
      config.yaml                         the sweep config as resolved
      search.json                         adaptive search: each method's centre, computed once (sweep/adaptive.py)
      results.sqlite                      table runs, one row per run (sweep/store.py)
      runs/<run_id>/                      checkpoint + history.json + eval.json (per-example scores)
                                          (+ sharpness.json with hessian.during)
      hessian/<init_key>_init.json        eigen report at initialisation
      hessian/<init_key>_init_<what>.json more blocks of the same adapter at initialisation (merged on reading)
      hessian/<run_id>_final.json         eigen report at the end of a run
      analysis.json, analysis.md, figures/
      ablation.json, ablation.md          several settings (ranks, batch sizes, run directories) compared

Every file name, run id and init key is formatted and parsed here and nowhere else, and the directory is read
here (:func:`read_run_directory`): rows through the sweep's own :class:`~hessian_lora.sweep.store.RunStore`,
eigen reports through :meth:`EigenReport.from_dict`, seen through the thin :class:`ReportView`.
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hessian_lora.errors import UserError
from hessian_lora.reports import ReportView, _optional_float, load_eigen_report, merge_reports

CONFIG_FILE = "config.yaml"
DATABASE_FILE = "results.sqlite"
LOCK_FILE = ".sweep.lock"
SEARCH_FILE = "search.json"
RUNS_DIR = "runs"
HESSIAN_DIR = "hessian"
HISTORY_FILE = "history.json"
SHARPNESS_FILE = "sharpness.json"  # sharpness along training (hessian.during probes)
EVAL_FILE = "eval.json"  # per-example scores of the run's evaluation, in evaluation order
RunDocument = Literal["history", "sharpness", "eval_scores"]
RUN_DOCUMENTS: dict[RunDocument, str] = {"history": HISTORY_FILE, "sharpness": SHARPNESS_FILE, "eval_scores": EVAL_FILE}
ANALYSIS_JSON = "analysis.json"
ANALYSIS_MD = "analysis.md"
ABLATION_JSON = "ablation.json"  # cross-setting comparison (several ranks, batch sizes or run directories)
ABLATION_MD = "ablation.md"
FIGURES_DIR = "figures"
INIT_MARKER = "_init"
FINAL_MARKER = "_final"


class Status(str, enum.Enum):
    """A run's status in the ``runs`` table (stored as its value)."""

    RUNNING = "running"  # started; a row still running when no sweep holds the directory was interrupted
    DONE = "done"
    DIVERGED = "diverged"  # stopped by divergence detection: a real outcome at that learning rate
    FAILED = "failed"  # raised: the row's error column holds the traceback

    def __str__(self) -> str:  # f-strings and SQLite see the plain value on every Python version
        return self.value

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES

    @property
    def is_usable(self) -> bool:
        """Whether analysis reads the run (a diverged run is a data point; a failed one is not)."""
        return self in USABLE_STATUSES


FINAL_STATUSES: frozenset[Status] = frozenset({Status.DONE, Status.DIVERGED, Status.FAILED})
USABLE_STATUSES: frozenset[Status] = frozenset({Status.DONE, Status.DIVERGED})


@dataclass(frozen=True, order=True)
class InitKey:
    """Which adapter at initialisation an ``_init`` report describes: the same for every LR and batch size."""

    method: str
    rank: int
    seed: int

    def __str__(self) -> str:
        return f"{self.method}_r{self.rank}_s{self.seed}"

    @classmethod
    def parse(cls, text: str) -> InitKey | None:
        """``<method>_r<rank>_s<seed>`` → InitKey (methods may contain underscores); None if it is not one."""
        match = _INIT_KEY.fullmatch(text)
        if match is None:
            return None
        return cls(match["method"], int(match["rank"]), int(match["seed"]))


_INIT_KEY = re.compile(r"(?P<method>.+)_r(?P<rank>\d+)_s(?P<seed>\d+)")


def run_id(method: str, lr: float, seed: int, rank: int, batch_size: int) -> str:
    """The run key as a string (directory name and primary key); the LR to 5 significant digits, so two LRs
    that print alike are one grid point."""
    return f"{method}_r{rank}_s{seed}_b{batch_size}_lr{lr:.4e}"


def lr_key(lr: float) -> str:
    """A learning rate as run ids see it: grid points are compared by this."""
    return f"{lr:.4e}"


@dataclass(frozen=True)
class ReportName:
    """What a ``hessian/*.json`` file name says: an init report (with an optional ``part``) or a final one."""

    kind: str  # "init" or "final"
    init_key: InitKey | None = None
    part: str = ""  # "" for <key>_init.json, "modules" for <key>_init_modules.json, ...
    run_id: str | None = None


def parse_report_name(stem: str) -> ReportName | None:
    """Classify a report file's stem; None for names the layout does not define."""
    key_text, marker, suffix = stem.rpartition(INIT_MARKER)
    if marker and (suffix == "" or suffix.startswith("_")):
        key = InitKey.parse(key_text)
        if key is not None:
            return ReportName("init", init_key=key, part=suffix[1:])
    if stem.endswith(FINAL_MARKER) and len(stem) > len(FINAL_MARKER):
        return ReportName("final", run_id=stem[: -len(FINAL_MARKER)])
    return None


class RunLayout:
    """Paths inside one run directory. Pure path arithmetic: nothing is read or created."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.config = self.root / CONFIG_FILE
        self.database = self.root / DATABASE_FILE
        self.lock = self.root / LOCK_FILE
        self.search = self.root / SEARCH_FILE  # adaptive search's centres, written once per method-setting
        self.runs = self.root / RUNS_DIR
        self.hessian = self.root / HESSIAN_DIR
        self.figures = self.root / FIGURES_DIR
        self.analysis_json = self.root / ANALYSIS_JSON
        self.analysis_md = self.root / ANALYSIS_MD
        self.ablation_json = self.root / ABLATION_JSON
        self.ablation_md = self.root / ABLATION_MD

    def run(self, run_id: str) -> Path:
        """The run's checkpoint directory."""
        return self.runs / run_id

    def relative_run(self, run_id: str) -> str:
        """The run's checkpoint directory as the ``checkpoint`` column stores it (relative to the root)."""
        return f"{RUNS_DIR}/{run_id}"

    def document(self, run_id: str, kind: RunDocument) -> Path:
        """One of the run's JSON documents (:data:`RUN_DOCUMENTS`)."""
        return self.run(run_id) / RUN_DOCUMENTS[kind]

    def relative_document(self, run_id: str, kind: RunDocument) -> str:
        """The document's path relative to the root, as a :class:`~hessian_lora.sweep.execute.RunOutcome` names it."""
        return f"{RUNS_DIR}/{run_id}/{RUN_DOCUMENTS[kind]}"

    # The documents by name: history (per-step loss), sharpness (hessian.during probes), eval scores (per example).
    def history(self, run_id: str) -> Path:
        return self.document(run_id, "history")

    def sharpness(self, run_id: str) -> Path:
        return self.document(run_id, "sharpness")

    def eval_scores(self, run_id: str) -> Path:
        return self.document(run_id, "eval_scores")

    def documents(self, run_id: str) -> tuple[Path, ...]:
        """The run's JSON documents inside its directory (kept when only its checkpoint is removed)."""
        return tuple(self.document(run_id, kind) for kind in RUN_DOCUMENTS)

    def init_report(self, key: InitKey | str, part: str = "") -> Path:
        suffix = f"_{part}" if part else ""
        return self.hessian / f"{key}{INIT_MARKER}{suffix}.json"

    def final_report(self, run_id: str) -> Path:
        return self.hessian / f"{run_id}{FINAL_MARKER}.json"


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
    history: tuple[dict[str, float], ...] = ()
    eval_scores: tuple[float, ...] | None = None  # per-example accuracy scores (runs/<id>/eval.json), if stored
    # evaluation sets (a sweep's eval_task)
    pass_at_1: float | None = None
    gsm8k_acc: float | None = None
    math_acc: float | None = None
    mbpp_pass_at_1: float | None = None
    humaneval_pass_at_1: float | None = None

    def metric(self, name: str) -> float | None:
        value = getattr(self, name)
        return None if value is None or not math.isfinite(value) else float(value)

    @property
    def is_usable(self) -> bool:
        """Whether analysis reads the run (done or diverged)."""
        return self.status in USABLE_STATUSES


def load_runs(run_dir: str | os.PathLike[str]) -> list[RunRecord]:
    """All rows of ``RUN_DIR/results.sqlite`` (read-only; tolerant of columns a sweep version lacks)."""
    # Imported here: the store pulls in the sweep config (and with it the method registry of peft adapters).
    from hessian_lora.sweep.store import read_rows

    layout = RunLayout(run_dir)
    rows = read_rows(run_dir)
    return [_record_from_row(row, layout) for row in rows]


def _optional_int(value: Any) -> int | None:
    number = _optional_float(value)
    return None if number is None or not math.isfinite(number) else int(number)


def _record_from_row(row: Mapping[str, Any], layout: RunLayout) -> RunRecord:
    history = _parse_history(row.get("history"))
    if not history:  # older sweeps kept the history only in runs/<run_id>/history.json
        history = _read_history_file(layout.history(str(row.get("run_id"))))
    return RunRecord(
        run_id=str(row.get("run_id")),
        method=str(row.get("method")),
        lr=float(row.get("lr")),  # type: ignore[arg-type]
        seed=_optional_int(row.get("seed")) or 0,
        rank=_optional_int(row.get("rank")),
        batch_size=_optional_int(row.get("batch_size")),
        status=str(row.get("status") or "unknown"),
        train_loss=_optional_float(row.get("train_loss")),
        eval_loss=_optional_float(row.get("eval_loss")),
        accuracy=_optional_float(row.get("accuracy")),
        pass_at_1=_optional_float(row.get("pass_at_1")),
        gsm8k_acc=_optional_float(row.get("gsm8k_acc")),
        math_acc=_optional_float(row.get("math_acc")),
        mbpp_pass_at_1=_optional_float(row.get("mbpp_pass_at_1")),
        humaneval_pass_at_1=_optional_float(row.get("humaneval_pass_at_1")),
        lambda_init=_optional_float(row.get("lambda_init")),
        lambda_final=_optional_float(row.get("lambda_final")),
        precond_lambda_final=_optional_float(row.get("precond_lambda_final")),
        steps=_optional_int(row.get("steps")),
        wall_seconds=_optional_float(row.get("wall_seconds")),
        history=history,
        eval_scores=_read_eval_scores(layout.eval_scores(str(row.get("run_id")))),
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
    values = [_optional_float(value) for value in scores]
    return None if any(value is None for value in values) else tuple(float(v) for v in values)  # type: ignore[arg-type]


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
        if isinstance(item, Mapping) and _optional_float(item.get("loss")) is not None:
            points.append({key: float(value) for key, value in item.items() if _optional_float(value) is not None})
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

    def init_report(self, method: str, seed: int, rank: int | None = None) -> ReportView | None:
        """The report of (method, rank, seed); without a rank (or with a rank no report has), the method's only
        report for that seed."""
        if rank is not None and InitKey(method, rank, seed) in self.init_reports:
            return self.init_reports[InitKey(method, rank, seed)]
        matches = [report for key, report in self.init_reports.items() if key.method == method and key.seed == seed]
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
    return RunDirectory(str(layout.root), tuple(runs), init_reports, final_reports, read_config(layout.config))


def read_config(path: Path) -> Mapping[str, Any]:
    """The sweep config as a mapping (empty when there is none: analysis then uses defaults). A file that is not
    UTF-8, not YAML, not a mapping, or holds a setting of the wrong type (:class:`schemas.RunConfigDocument`) is a
    :class:`UserError` naming it: analysis would otherwise crash on it, or label and calibrate with nonsense."""
    if not path.exists():
        return {}
    import yaml

    from hessian_lora import schemas

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}): {schemas.RUN_CONFIG_FIX}") from exc
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or exc}): {schemas.RUN_CONFIG_FIX}") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}): {schemas.RUN_CONFIG_FIX}") from exc
    if loaded is None:
        return {}
    schemas.validate_document(schemas.RunConfigDocument, loaded, source=str(path), fix=schemas.RUN_CONFIG_FIX)
    return loaded
