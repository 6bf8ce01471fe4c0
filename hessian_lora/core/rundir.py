"""The run directory: the one owner of a sweep directory's layout, names and statuses.

A sweep writes, and analysis, plots, recommend and the demo read, one directory (docs/ARCHITECTURE.md,
"Sweep run directory")::

    RUN_DIR/
      config.yaml                         the sweep config as resolved
      search.json                         adaptive search: each method's centre, computed once (sweep/adaptive.py)
      results.sqlite                      table runs, one row per run (core/store.py)
      runs/<run_id>/                      checkpoint + history.json + eval.json (per-example scores)
                                          (+ sharpness.json with hessian.during)
      hessian/<init_key>_init.json        eigen report at initialisation
      hessian/<init_key>_init_<what>.json more blocks of the same adapter at initialisation (merged on reading)
      hessian/<init_key>_init.inputs      digest of what the init report measured; names the report it was
                                          copied from when another seed's adapter was identical (sweep/init_reuse.py)
      hessian/<run_id>_final.json         eigen report at the end of a run
      analysis.json, analysis.md, figures/
      ablation.json, ablation.md          several settings (ranks, batch sizes, run directories) compared

Every file name, run id and init key is formatted and parsed here and nowhere else. This module is a torch-free
foundation (a sweep YAML loads through it); reading a whole directory back, rows and eigen reports, is
:mod:`hessian_lora.analysis.runs`'s (:func:`~hessian_lora.analysis.runs.read_run_directory`), above the sweep's store
and the reports.
"""

from __future__ import annotations

import enum
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
RUN_DOCUMENTS: dict[RunDocument, str] = {
    "history": HISTORY_FILE,
    "sharpness": SHARPNESS_FILE,
    "eval_scores": EVAL_FILE,
}
ANALYSIS_JSON = "analysis.json"
ANALYSIS_MD = "analysis.md"
ABLATION_JSON = "ablation.json"  # cross-setting comparison (several ranks, batch sizes or run directories)
ABLATION_MD = "ablation.md"
FIGURES_DIR = "figures"
INIT_MARKER = "_init"
INIT_INPUTS_SUFFIX = (
    ".inputs"  # beside an init report, not *.json: no reader of hessian/*.json takes it for one
)
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
        """Whether a run in this status is finished (its row will not change)."""
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
        """The run's ``history.json``."""
        return self.document(run_id, "history")

    def sharpness(self, run_id: str) -> Path:
        """The run's ``sharpness.json``."""
        return self.document(run_id, "sharpness")

    def eval_scores(self, run_id: str) -> Path:
        """The run's ``eval.json``."""
        return self.document(run_id, "eval_scores")

    def documents(self, run_id: str) -> tuple[Path, ...]:
        """The run's JSON documents inside its directory (kept when only its checkpoint is removed)."""
        return tuple(self.document(run_id, kind) for kind in RUN_DOCUMENTS)

    def init_report(self, key: InitKey | str, part: str = "") -> Path:
        """The eigen report at initialisation of ``key`` (``part``: a further report of the same adapter)."""
        suffix = f"_{part}" if part else ""
        return self.hessian / f"{key}{INIT_MARKER}{suffix}.json"

    def final_report(self, run_id: str) -> Path:
        """The run's eigen report at the end."""
        return self.hessian / f"{run_id}{FINAL_MARKER}.json"

    def init_inputs(self, key: InitKey | str) -> Path:
        """The record of what ``key``'s report at initialisation measured (:mod:`hessian_lora.sweep.init_reuse`)."""
        return self.hessian / f"{key}{INIT_MARKER}{INIT_INPUTS_SUFFIX}"


def read_init_inputs(layout: RunLayout) -> dict[InitKey, dict[str, Any]]:
    """Every readable init-inputs record of a run directory, by key (``{"sha256": ..., "reused_from": key or
    None}``); an unreadable one counts as absent, so nothing is reused from it."""
    records: dict[InitKey, dict[str, Any]] = {}
    suffix = INIT_MARKER + INIT_INPUTS_SUFFIX
    for path in sorted(layout.hessian.glob(f"*{suffix}")) if layout.hessian.is_dir() else []:
        key = InitKey.parse(path.name[: -len(suffix)])
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not JSON, or not UTF-8 (UnicodeDecodeError)
            continue
        if key is not None and isinstance(record, dict) and isinstance(record.get("sha256"), str):
            records[key] = record
    return records
