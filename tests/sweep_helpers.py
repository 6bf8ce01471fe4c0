"""Helpers of the sweep tests: the tiny config (experiments/tiny.yaml) with overrides, row comparison."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hessian_lora.core.rundir import DATABASE_FILE
from hessian_lora.settings.sweep import SweepConfig, config_from_dict

TINY_YAML = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"
# The columns two executions of the same run must agree on (timings and timestamps differ).
RESULT_COLUMNS = (
    "run_id",
    "method",
    "lr",
    "seed",
    "rank",
    "batch_size",
    "status",
    "steps",
    "tokens",
    "train_loss",
    "initial_loss",
    "eval_loss",
    "accuracy",
    "eval_examples",
)


def tiny_data(**overrides: Any) -> dict[str, Any]:
    data = yaml.safe_load(TINY_YAML.read_text())
    data.update(overrides)
    return data


def tiny_config(**overrides: Any) -> SweepConfig:
    return config_from_dict(tiny_data(**overrides), source="tiny test config")


def comparable(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(tuple(row[name] for name in RESULT_COLUMNS) for row in rows)


def assert_same_results(rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> None:
    got, expected = comparable(rows), comparable(reference)
    assert [row[:8] for row in got] == [row[:8] for row in expected]
    for row, ref in zip(got, expected):
        for value, wanted in zip(row[8:], ref[8:]):
            assert (value is None) == (wanted is None), (row, ref)
            if value is not None:
                assert value == pytest.approx(wanted, rel=1e-6), (row, ref)


def live_statuses(run_dir: Path) -> dict[str, str]:
    """Run statuses of a store another process is writing (read-only; empty while the table is being created)."""
    path = run_dir / DATABASE_FILE
    if not path.is_file():
        return {}
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return dict(connection.execute("SELECT run_id, status FROM runs").fetchall())
        finally:
            connection.close()
    except sqlite3.OperationalError:
        return {}


def sigkill_mid_run(process: subprocess.Popen[bytes], run_dir: Path, *, done: int, limit_s: float) -> None:
    """SIGKILL the sweep ``process`` once ``done`` runs have finished and another is in flight."""
    deadline = time.monotonic() + limit_s
    try:
        while True:
            statuses = live_statuses(run_dir)
            finished = [run_id for run_id, status in statuses.items() if status == "done"]
            if len(finished) >= done and "running" in statuses.values():
                break
            assert process.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "the sweep subprocess made no progress"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
