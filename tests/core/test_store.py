"""Result store: one row per run, transactions, restart of interrupted runs, schema migration."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys

import pytest

from hessian_lora.core.store import COLUMN_NAMES, RunStore
from hessian_lora.settings.sweep import RunSpec

SPEC = RunSpec("lora", 1e-3, 0, 8, 16)
OTHER = RunSpec("pissa", 1e-3, 0, 8, 16)


def test_start_then_finish(tmp_path):
    with RunStore(tmp_path / "r.sqlite") as store:
        store.start(SPEC)
        assert store.statuses() == {SPEC.run_id: "running"}
        store.finish(
            SPEC.run_id,
            {
                "status": "done",
                "train_loss": 1.5,
                "history": [{"step": 1, "loss": 2.0}],
                "eval_loss": float("nan"),
                "accuracy": 0.25,
            },
        )
        row = store.get(SPEC.run_id)
    assert row["status"] == "done" and row["train_loss"] == 1.5 and row["accuracy"] == 0.25
    assert row["eval_loss"] is None  # non-finite values are stored as NULL
    assert row["history"] == '[{"step": 1, "loss": 2.0}]'
    assert row["method"] == "lora" and row["lr"] == 1e-3 and row["rank"] == 8 and row["attempts"] == 1


def test_restart_reuses_the_row_and_clears_old_results(tmp_path):
    with RunStore(tmp_path / "r.sqlite") as store:
        store.start(SPEC)
        store.finish(SPEC.run_id, {"status": "failed", "error": "boom", "train_loss": 3.0})
        store.start(SPEC)
        rows = store.rows()
    assert len(rows) == 1
    assert rows[0]["status"] == "running" and rows[0]["attempts"] == 2
    assert rows[0]["error"] is None and rows[0]["train_loss"] is None


def test_finish_checks_status_and_columns(tmp_path):
    with RunStore(tmp_path / "r.sqlite") as store:
        store.start(SPEC)
        with pytest.raises(ValueError):
            store.finish(SPEC.run_id, {"status": "running"})
        with pytest.raises(ValueError):
            store.finish(SPEC.run_id, {"status": "done", "colour": "red"})
        with pytest.raises(KeyError):
            store.finish(OTHER.run_id, {"status": "done"})


def test_a_failed_transaction_changes_nothing(tmp_path):
    with RunStore(tmp_path / "r.sqlite") as store:
        store.start(SPEC)
        with pytest.raises(RuntimeError), store.transaction() as connection:
            connection.execute("UPDATE runs SET status = 'done' WHERE run_id = ?", (SPEC.run_id,))
            raise RuntimeError("crash inside the transaction")
        assert store.statuses() == {SPEC.run_id: "running"}


def test_sigkill_inside_a_transaction_loses_only_that_transaction(tmp_path):
    path = tmp_path / "r.sqlite"
    with RunStore(path) as store:
        store.start(SPEC)
        store.finish(SPEC.run_id, {"status": "done", "train_loss": 1.0})
    script = (
        "import os, signal, sys\n"
        "from hessian_lora.core.store import RunStore\n"
        "from hessian_lora.settings.sweep import RunSpec\n"
        f"store = RunStore({str(path)!r})\n"
        "store.start(RunSpec('pissa', 1e-3, 0, 8, 16))\n"
        "connection = store._connection\n"
        "connection.execute('BEGIN IMMEDIATE')\n"
        "connection.execute(\"UPDATE runs SET status = 'done', train_loss = 9.0\")\n"
        "connection.execute(\"INSERT INTO runs (run_id, status) VALUES ('ghost', 'done')\")\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    process = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert process.returncode == -signal.SIGKILL
    with RunStore(path) as store:
        rows = {row["run_id"]: row for row in store.rows()}
    assert set(rows) == {SPEC.run_id, OTHER.run_id}
    assert rows[SPEC.run_id]["status"] == "done" and rows[SPEC.run_id]["train_loss"] == 1.0
    assert rows[OTHER.run_id]["status"] == "running"


def test_an_older_table_gains_the_new_columns(tmp_path):
    path = tmp_path / "r.sqlite"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, method TEXT, lr REAL, status TEXT)")
    connection.execute("INSERT INTO runs VALUES ('old', 'lora', 0.001, 'done')")
    connection.commit()
    connection.close()
    with RunStore(path) as store:
        row = store.get("old")
    assert set(row) == set(COLUMN_NAMES) and row["status"] == "done"


def test_wal_mode(tmp_path):
    with RunStore(tmp_path / "r.sqlite") as store:
        assert store._connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_statuses_are_stored_as_plain_text(tmp_path):
    from hessian_lora.core.rundir import Status

    with RunStore(tmp_path / "r.sqlite") as store:
        store.start(SPEC)
        store.start(OTHER)
        store.finish(SPEC.run_id, {"status": Status.DIVERGED, "train_loss": 1.0})
        assert store.statuses() == {SPEC.run_id: "diverged", OTHER.run_id: "running"}
    connection = sqlite3.connect(tmp_path / "r.sqlite")
    try:
        raw = dict(connection.execute("SELECT run_id, status || '|' || typeof(status) FROM runs").fetchall())
    finally:
        connection.close()
    assert raw == {SPEC.run_id: "diverged|text", OTHER.run_id: "running|text"}
