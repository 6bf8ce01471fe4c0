"""``checkpoints: best``: keep, per (method, rank, batch size, seed), only the checkpoint of the best run so far.

"Best" is by the sweep's metric as analysis chooses it (:func:`hessian_lora.analysis.curves.choose_metric` over
the finished runs: accuracy when it locates an optimum for every method, else held-out loss, else training loss).
Only the checkpoint files go; the run's documents (history.json, sharpness.json) stay.

Invariant, at every instant (a kill may come between any two steps):

    (I1) a row whose ``checkpoint`` column is set has its whole checkpoint on disk;
    (I2) in every group, the best final row that was given a checkpoint still has it.

How a run ends under ``best``:

1. :func:`~hessian_lora.sweep.execute.execute_run` saves ``runs/<id>/`` (staged in a hidden sibling, then
   renamed: whole or absent), exactly as under ``final``;
2. :func:`~hessian_lora.sweep.bookkeeping.end_run` writes the documents, then marks the row final with its
   ``checkpoint`` column in one transaction;
3. :func:`prune` ranks the group's rows that hold a checkpoint and, for every one but the best: (a) clears its
   ``checkpoint`` column (one transaction), then (b) deletes its checkpoint files.

A kill before 2 leaves the row ``running``: the next sweep restarts it whole and the old best is untouched. A
kill between 2 and 3 leaves two referenced checkpoints (I1, I2 hold); the next :func:`prune` (the next run's
end, or the start of the next sweep) removes the loser. A kill between 3a and 3b leaves files no row refers to;
:func:`prune` also deletes the checkpoint files of every final row whose column is empty. Deleting only after
the column is cleared is what keeps I1; clearing only rows that lose to a row with a checkpoint keeps I2.

Caveat: while the sweep is young the automatic metric may change (held-out loss until accuracies separate);
a checkpoint pruned under the earlier metric is not brought back.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hessian_lora.analysis.curves import HIGHER_IS_BETTER, choose_metric
from hessian_lora.analysis.runs import load_runs
from hessian_lora.core.errors import UserError
from hessian_lora.core.rundir import RunLayout, Status
from hessian_lora.core.store import RunStore, now

GROUP_KEYS = ("method", "rank", "batch_size", "seed")


def prune(store: RunStore, root: str | os.PathLike[str]) -> list[str]:
    """Apply the ``best`` policy to the whole run directory; returns the run ids whose checkpoint was removed."""
    layout = RunLayout(root)
    rows = store.rows()
    try:
        metric = choose_metric(load_runs(root))
    except UserError:  # nothing finished with a metric yet: nothing to rank
        metric = None
    removed: list[str] = []
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("status") in (Status.DONE.value, Status.DIVERGED.value, Status.FAILED.value):
            groups.setdefault(tuple(row.get(key) for key in GROUP_KEYS), []).append(row)
    for members in groups.values():
        holders = [row for row in members if row.get("checkpoint")]
        if metric is not None:
            scored = [row for row in holders if _finite(row.get(metric))]
            if scored:
                sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
                best = max(scored, key=lambda row: (sign * float(row[metric]), -float(row["lr"])))
                for row in holders:
                    if row is not best:
                        _retire(store, layout, str(row["run_id"]))
                        removed.append(str(row["run_id"]))
        for row in members:  # a kill between clearing a column and deleting the files (step 3a/3b)
            if not row.get("checkpoint") and str(row["run_id"]) not in removed:
                remove_checkpoint_files(layout, str(row["run_id"]))
    return removed


def _retire(store: RunStore, layout: RunLayout, run_id: str) -> None:
    with store.transaction() as connection:
        connection.execute(
            'UPDATE runs SET "checkpoint" = NULL, updated_at = ? WHERE run_id = ?', (now(), run_id)
        )
    remove_checkpoint_files(layout, run_id)


def remove_checkpoint_files(layout: RunLayout, run_id: str) -> None:
    """Delete ``runs/<run_id>/``'s checkpoint files, keeping the run's documents (history, sharpness)."""
    directory = layout.run(run_id)
    if not directory.is_dir():
        return
    keep = {Path(path).name for path in layout.documents(run_id)}
    for entry in directory.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
