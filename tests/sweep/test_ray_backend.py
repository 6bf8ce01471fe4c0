"""The Ray backend on a local Ray instance gives the same rows as the local backend."""

from __future__ import annotations

import pytest
from sweep_helpers import assert_same_results, tiny_config

from hessian_lora.core.store import open_store
from hessian_lora.sweep.runner import run_sweep

ray = pytest.importorskip("ray")


def test_ray_backend_matches_local_backend(tiny_sweep, tmp_path):
    _, _, reference = tiny_sweep
    config = tiny_config(methods=["lora"], lr=[1e-2, 1e-1, 1e30])
    summary = run_sweep(config, tmp_path, backend="ray", progress=False)
    assert summary.ran == 3
    with open_store(tmp_path, read_only=True) as store:
        rows = store.rows()
    local = tmp_path / "local_diverged"
    run_sweep(tiny_config(methods=["lora"], lr=[1e30]), local, progress=False)
    with open_store(local, read_only=True) as store:
        diverged = store.rows()
    expected = [row for row in reference if row["method"] == "lora" and row["lr"] in (1e-2, 1e-1)] + diverged
    assert_same_results(rows, expected)
    assert {row["status"] for row in rows} == {"done", "diverged"}
    for row in rows:
        if row["status"] == "done":
            assert (tmp_path / row["checkpoint"] / "history.json").is_file()
    assert not ray.is_initialized()  # the local instance was shut down
