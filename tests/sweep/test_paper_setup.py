"""Issue 9 through the sweep: the v2 methods train, prompt templates and evaluation sets reach the runs table."""

from __future__ import annotations

import json
from pathlib import Path

from sweep_helpers import tiny_config

from hessian_lora.loft import PRECONDITIONER_NOTE
from hessian_lora.sweep.runner import run_sweep
from hessian_lora.sweep.store import open_store


def _rows(run_dir: Path) -> list[dict]:
    with open_store(run_dir, read_only=True) as store:
        return store.rows()


def test_v2_methods_train_in_a_sweep_and_loft_reports_its_note(tmp_path):
    hessian = {"init": False, "final": True, "samples": 4, "batch_size": 4, "max_iter": 20, "blocks": "per-module",
               "modules": "q_proj", "layers": "0"}
    config = tiny_config(methods=["loft", "gralora", "randlora"], lr=[1e-2], targets=["q_proj", "v_proj"], ranks=[4],
                         steps=4, n_eval=4, hessian=hessian)
    run_sweep(config, tmp_path, progress=False)
    rows = {row["method"]: row for row in _rows(tmp_path)}
    assert set(rows) == {"loft", "gralora", "randlora"}
    for row in rows.values():
        assert row["status"] == "done", row["error"]
        assert row["train_loss"] < row["initial_loss"] and row["lambda_final"] > 0
    assert rows["loft"]["precond_lambda_final"] is None  # not an Adam run: no diagonal preconditioner
    assert rows["gralora"]["precond_lambda_final"] > 0
    (report,) = (tmp_path / "hessian").glob("loft_*_final.json")
    assert json.loads(report.read_text())["source"]["preconditioner_note"] == PRECONDITIONER_NOTE
