"""The sweep's result store: ``RUN_DIR/results.sqlite``, table ``runs``, one row per run (docs/ARCHITECTURE.md).

Crash safety rests on SQLite: WAL journal with ``synchronous=FULL``, and every state change is one transaction
(``BEGIN IMMEDIATE`` … ``COMMIT``). A process killed at any moment leaves each row either as it was before the
change or as it is after it. A run's row goes ``running`` before its work starts and to a final status
(``done``/``diverged``/``failed``) only after its checkpoint and history are on disk; a row still ``running``
when no sweep holds the directory is an interrupted run, restarted by the next sweep. The primary key
(``run_id``) makes a duplicate row impossible.

The store itself appears atomically: a new ``results.sqlite`` is built as a hidden temporary file (schema and
all) and renamed into place, so a kill while the first sweep creates it leaves no file, or a temporary one the
next start clears, never a database without its ``runs`` table. A store that an older version left unfinished
that way (no table at all) holds no data and is rebuilt under the sweep lock (:func:`recover_unfinished_store`).
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import math
import os
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hessian_lora.core.atomic import temporary_path
from hessian_lora.core.errors import UserError
from hessian_lora.core.rundir import FINAL_STATUSES, RunLayout, Status

if TYPE_CHECKING:  # an annotation only: the store sits below the config that plans the runs
    from hessian_lora.settings.sweep import RunSpec

# The order the "needs a final status" message lists them in (FINAL_STATUSES is a set).
_FINAL_ORDER: tuple[Status, ...] = tuple(status for status in Status if status in FINAL_STATUSES)

# The contract's columns first (their order is the table's), then this implementation's additions.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "TEXT PRIMARY KEY"),
    ("method", "TEXT"),
    ("lr", "REAL"),
    ("seed", "INTEGER"),
    ("rank", "INTEGER"),
    ("batch_size", "INTEGER"),
    ("status", "TEXT"),
    ("train_loss", "REAL"),
    ("eval_loss", "REAL"),
    ("accuracy", "REAL"),
    ("lambda_init", "REAL"),
    ("lambda_final", "REAL"),
    ("precond_lambda_final", "REAL"),
    ("steps", "INTEGER"),
    ("tokens", "INTEGER"),
    ("wall_seconds", "REAL"),
    ("checkpoint", "TEXT"),
    ("history", "TEXT"),
    ("error", "TEXT"),
    ("updated_at", "TEXT"),
    # additions
    ("initial_loss", "REAL"),
    ("pass_at_1", "REAL"),
    ("eval_examples", "INTEGER"),
    ("attempts", "INTEGER"),
    ("started_at", "TEXT"),
    ("train_seconds", "REAL"),
    ("eval_seconds", "REAL"),
    ("hessian_seconds", "REAL"),
    # sharpness along training (hessian.during): the largest λ_max and λ₁(P⁻¹H) over the run's probes
    ("lambda_max_peak", "REAL"),
    ("precond_peak", "REAL"),
    # evaluation sets (eval_task): one metric column per set, see hessian_lora.sweep.execute.EVAL_SET_COLUMNS
    ("gsm8k_acc", "REAL"),
    ("math_acc", "REAL"),
    ("mbpp_pass_at_1", "REAL"),
    ("humaneval_pass_at_1", "REAL"),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
# What a finished run may set (the key columns are fixed when the row is created).
RESULT_COLUMNS = tuple(
    name
    for name in COLUMN_NAMES
    if name
    not in ("run_id", "method", "lr", "seed", "rank", "batch_size", "updated_at", "attempts", "started_at")
)


def now() -> str:
    """The current UTC time as the ``started_at``/``updated_at`` columns store it (ISO 8601, microseconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


class RunStore:
    """One sweep's ``runs`` table. Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.path = Path(path)
        if read_only:
            if not self.path.is_file():
                raise UserError(
                    f"{self.path} does not exist: pass a directory written by `hessian-lora sweep`."
                )
            self._connection = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, timeout=30.0, isolation_level=None
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                _create_store_file(self.path)
            self._connection = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=FULL")
            self._create()  # an older table gains the columns added since
        self._connection.row_factory = sqlite3.Row

    def close(self) -> None:
        """Close the connection (every change is already committed)."""
        self._connection.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT; any exception rolls the whole change back."""
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            yield self._connection
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")

    def _create(self) -> None:
        with self.transaction() as connection:
            _create_schema(connection)

    def statuses(self) -> dict[str, str]:
        """run_id → status as stored (the plain value, e.g. ``"done"``; equal to the matching :class:`Status`)."""
        return {
            row["run_id"]: row["status"]
            for row in self._connection.execute("SELECT run_id, status FROM runs")
        }

    def get(self, run_id: str) -> dict[str, Any] | None:
        """One row as a dict, or None when ``run_id`` was never started."""
        row = self._connection.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return dict(row) if row is not None else None

    def rows(self) -> list[dict[str, Any]]:
        """Every row, ordered by method, rank, seed, batch size, LR."""
        query = "SELECT * FROM runs ORDER BY method, rank, seed, batch_size, lr"
        return [dict(row) for row in self._connection.execute(query)]

    def start(self, spec: RunSpec) -> None:
        """Mark ``spec`` running: a new row, or a restarted one whose previous results are cleared."""
        stamp = now()
        cleared = ", ".join(f'"{name}" = NULL' for name in RESULT_COLUMNS if name != "status")
        with self.transaction() as connection:
            connection.execute(
                "INSERT INTO runs (run_id, method, lr, seed, rank, batch_size, status, attempts, started_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?) "
                f"ON CONFLICT(run_id) DO UPDATE SET status = excluded.status, {cleared}, "
                "attempts = COALESCE(runs.attempts, 0) + 1, started_at = excluded.started_at, "
                "updated_at = excluded.updated_at",
                (
                    spec.run_id,
                    spec.method,
                    float(spec.lr),
                    spec.seed,
                    spec.rank,
                    spec.batch_size,
                    Status.RUNNING.value,
                    stamp,
                    stamp,
                ),
            )

    def finish(self, run_id: str, result: Mapping[str, Any]) -> None:
        """Record a run's final status and results in one transaction."""
        status = result.get("status")
        if not isinstance(status, str) or status not in FINAL_STATUSES:
            raise ValueError(
                f"a finished run needs a final status ({', '.join(map(str, _FINAL_ORDER))}), got {status!r}"
            )
        unknown = set(result) - set(RESULT_COLUMNS)
        if unknown:
            raise ValueError(f"not columns of runs: {', '.join(sorted(unknown))}")
        values = {name: _sql_value(value) for name, value in result.items()}
        values["updated_at"] = now()
        assignments = ", ".join(f'"{name}" = ?' for name in values)
        with self.transaction() as connection:
            cursor = connection.execute(
                f"UPDATE runs SET {assignments} WHERE run_id = ?", (*values.values(), run_id)
            )
            if cursor.rowcount != 1:
                raise KeyError(f"run {run_id} was never started in {self.path}")


def _create_schema(connection: sqlite3.Connection) -> None:
    """The ``runs`` table with every column (inside the caller's transaction)."""
    columns = ", ".join(f'"{name}" {kind}' for name, kind in COLUMNS)
    connection.execute(f"CREATE TABLE IF NOT EXISTS runs ({columns})")
    present = {row[1] for row in connection.execute("PRAGMA table_info(runs)")}
    for name, kind in COLUMNS:
        if name not in present:  # a store written by an older version: add the new columns
            connection.execute(f'ALTER TABLE runs ADD COLUMN "{name}" {kind}')


def _create_store_file(path: Path) -> None:
    """A new, empty store at ``path``, made in a hidden temporary file and renamed into place (see the module
    docstring): readers see no store or a whole one with its table."""
    staging = temporary_path(path)
    try:
        connection = sqlite3.connect(str(staging), isolation_level=None)
        try:
            # The journal stays in memory: a kill leaves only the staging file, which the next start removes.
            connection.execute("PRAGMA journal_mode=MEMORY")
            connection.execute("BEGIN IMMEDIATE")
            _create_schema(connection)
            connection.execute("COMMIT")
        finally:
            connection.close()
        with open(staging, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(staging, path)
        _fsync_directory(path.parent)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def _fsync_directory(directory: Path) -> None:
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform without directory handles: the rename is as durable as it gets
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def recover_unfinished_store(run_dir: str | os.PathLike[str]) -> bool:
    """Remove ``RUN_DIR/results.sqlite`` when it is an unfinished creation: an empty file, or a database with no
    table at all (what a kill during the first start left before stores were created atomically; SQLite rolls
    its hot journal back on opening). It holds no row, so nothing is lost; the sweep then creates a whole one.
    Call only under the sweep lock. Anything else (a store with tables, a file that is not SQLite) is left for
    :func:`read_rows` to accept or report. Returns whether a store was removed."""
    path = RunLayout(run_dir).database
    if not path.is_file():
        return False
    if path.stat().st_size > 0:
        try:
            connection = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
            try:
                tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            finally:
                connection.close()
        except sqlite3.Error:  # not a database: read_rows says so, with the fix
            return False
        if tables:
            return False
    for companion in ("", "-journal", "-wal", "-shm"):
        Path(f"{path}{companion}").unlink(missing_ok=True)
    return True


def _sql_value(value: Any) -> Any:
    """SQLite keeps no NaN (it becomes NULL anyway) and no containers: JSON for lists, NULL for non-finite.

    Enum members (a :class:`Status`) are stored as their plain value, not left to the driver's adaptation of
    ``str`` subclasses.
    """
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def open_store(run_dir: str | os.PathLike[str], *, read_only: bool = False) -> RunStore:
    """The store of the run directory ``run_dir`` (created unless ``read_only``)."""
    return RunStore(RunLayout(run_dir).database, read_only=read_only)


def read_rows(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every row of ``RUN_DIR/results.sqlite``, read-only: the one read of a run store from outside a sweep.

    A missing directory or store, a file that is not SQLite, or one without a ``runs`` table is a one-line
    :class:`UserError` naming the path and the fix.
    """
    layout = RunLayout(run_dir)
    if not layout.root.is_dir():
        raise UserError(
            f"run directory {str(run_dir)!r} does not exist: pass the --out directory of a sweep."
        )
    if not layout.database.is_file():
        raise UserError(
            f"{str(layout.database)!r} is missing: run `hessian-lora sweep CONFIG --out {run_dir}` first."
        )
    try:
        with RunStore(layout.database, read_only=True) as store:
            return store.rows()
    except sqlite3.Error as exc:
        raise UserError(
            f"{str(layout.database)!r} is not a readable sweep store ({exc}): pass a RUN_DIR written "
            "by `hessian-lora sweep`."
        ) from exc
