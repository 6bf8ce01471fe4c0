"""Sweep fixtures: the tiny sweep (experiments/tiny.yaml) run once per session as the reference table."""

from __future__ import annotations

import pytest
import yaml
from sweep_helpers import TINY_YAML

from hessian_lora.settings.sweep import config_from_dict


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
    """The full tiny sweep (2 methods x 3 LRs), run in-process once: (run_dir, summary, rows)."""
    from hessian_lora.core.store import open_store
    from hessian_lora.sweep.runner import run_sweep

    run_dir = tmp_path_factory.mktemp("tiny_sweep")
    config = config_from_dict(yaml.safe_load(TINY_YAML.read_text()), source=str(TINY_YAML))
    summary = run_sweep(config, run_dir, progress=False)
    with open_store(run_dir, read_only=True) as store:
        rows = store.rows()
    return run_dir, summary, rows
