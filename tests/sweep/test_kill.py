"""SIGKILL a sweep subprocess mid-run, resume it, and get the uninterrupted table: no lost, no duplicate row."""

from __future__ import annotations

import os
import subprocess
import sys

from sweep_helpers import TINY_YAML, assert_same_results, sigkill_mid_run

from hessian_lora.core.store import open_store
from hessian_lora.sweep.runner import run_sweep

_STARTUP_LIMIT_S = 240.0


def test_sigkill_mid_sweep_then_resume(tiny_sweep, tmp_path):
    _, _, reference = tiny_sweep
    run_dir = tmp_path / "killed"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hessian_lora",
            "sweep",
            str(TINY_YAML),
            "--out",
            str(run_dir),
            "--threads",
            "1",
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment,
    )
    sigkill_mid_run(process, run_dir, done=2, limit_s=_STARTUP_LIMIT_S)  # a run in flight, two finished
    with open_store(run_dir, read_only=True) as store:
        before = {row["run_id"]: row for row in store.rows()}
    finished_before = {run_id: row for run_id, row in before.items() if row["status"] == "done"}
    assert len(finished_before) >= 2 and len(finished_before) < 6

    summary = run_sweep(_config(), run_dir, progress=False)
    assert summary.skipped == len(finished_before) and summary.ran == 6 - len(finished_before)
    with open_store(run_dir, read_only=True) as store:
        rows = store.rows()
    assert len(rows) == len({row["run_id"] for row in rows}) == 6
    for row in rows:  # finished runs were neither lost nor redone
        if row["run_id"] in finished_before:
            assert row == finished_before[row["run_id"]]
        assert row["status"] == "done"
    assert_same_results(rows, reference)
    leftovers = [path.name for path in (run_dir / "runs").iterdir() if path.name.startswith(".")]
    assert leftovers == []


def _config():
    import yaml

    from hessian_lora.settings.sweep import config_from_dict

    return config_from_dict(yaml.safe_load(TINY_YAML.read_text()), source=str(TINY_YAML))
