"""What every backend does around one run: mark it running, record its outcome, describe it in one line.

Shared by the local loop (:mod:`hessian_lora.sweep.local`) and the Ray driver
(:mod:`hessian_lora.sweep.ray_backend`), so both produce the same rows and files; neither needs the planner
(:mod:`hessian_lora.sweep.runner`), which imports them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hessian_lora.core.atomic import write_json_atomic
from hessian_lora.core.rundir import RunLayout, Status
from hessian_lora.core.store import RunStore
from hessian_lora.settings.sweep import RunSpec
from hessian_lora.sweep.execute import RunOutcome
from hessian_lora.sweep.retention import prune


def begin_run(store: RunStore, root: str | os.PathLike[str], spec: RunSpec) -> None:
    """Mark ``spec`` running and clear what an earlier, interrupted attempt left."""
    store.start(spec)
    clear_run_files(root, spec.run_id)


def end_run(
    store: RunStore,
    root: str | os.PathLike[str],
    spec: RunSpec,
    outcome: RunOutcome,
    *,
    checkpoints: str = "final",
) -> None:
    """Files first, then the row: a final row always has its documents on disk. Under ``checkpoints: best`` the
    checkpoints that are no longer their group's best go afterwards (:mod:`hessian_lora.sweep.retention`)."""
    write_documents(root, outcome.documents)
    store.finish(spec.run_id, outcome.row)
    if checkpoints == "best":
        prune(store, root)


def clear_run_files(root: str | os.PathLike[str], run_id: str) -> None:
    """Remove what an interrupted attempt of ``run_id`` may have left (its directory, staging directories)."""
    layout = RunLayout(root)
    shutil.rmtree(layout.run(run_id), ignore_errors=True)
    if layout.runs.is_dir():
        # Staging and retired checkpoint directories are hidden siblings named after the run.
        for leftover in layout.runs.glob(f".{run_id}.*"):
            shutil.rmtree(leftover, ignore_errors=True)
    layout.final_report(run_id).unlink(missing_ok=True)


def write_documents(root: str | os.PathLike[str], documents: Mapping[str, Any]) -> None:
    """Write each JSON document (path relative to ``root`` → data) atomically."""
    for relative, data in documents.items():
        write_json_atomic(Path(root) / relative, data, indent=2)


def describe(spec: RunSpec, row: Mapping[str, Any]) -> str:
    """One progress line for a finished run: its grid point, status, headline numbers and any error."""
    parts = [
        f"{spec.method} r={spec.rank} seed={spec.seed} batch={spec.batch_size} lr={spec.lr:.3g}: {row['status']}"
    ]
    for key in ("train_loss", "eval_loss", "accuracy", "lambda_init", "lambda_final"):
        value = row.get(key)
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
    if row.get("wall_seconds") is not None:
        parts.append(f"({row['wall_seconds']:.1f} s)")
    if row["status"] != Status.DONE and row.get("error"):
        parts.append("- " + str(row["error"]).strip().splitlines()[-1][:200])
    return " ".join(parts)
