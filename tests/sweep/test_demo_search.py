"""The main job's adaptive search: the demo's overall progress line, --full, and the shipped config's budget."""

from __future__ import annotations

import time

import pytest

from hessian_lora.settings.sweep import load_config
from hessian_lora.sweep import demo as demo_module


def test_overall_progress_line_counts_runs_and_estimates_the_rest():
    progress = demo_module.OverallProgress(enabled=False, started=time.perf_counter() - 65)
    progress.phase("[1/4] sweep (adaptive LR search)")
    assert progress.line().startswith("demo [1/4] sweep (adaptive LR search) | elapsed 1:0")
    progress.runs(0, 8)
    progress.sweep_started -= 30  # two runs of 15 s
    progress.runs(2, 8)
    line = progress.line()
    assert "runs 2/8" in line and "sweep ~1:30 left" in line, line
    progress.runs(8, 8)
    assert "left" not in progress.line()
    progress.close()


class _Stop(Exception):
    pass


@pytest.mark.parametrize("full", [False, True])
def test_full_runs_the_grid_of_an_adaptive_config(monkeypatch, tmp_path, full):
    seen = []

    def fake_sweep(config, *args, **kwargs):
        seen.append((config, kwargs))
        raise _Stop

    monkeypatch.setattr("hessian_lora.sweep.runner.run_sweep", fake_sweep)
    with pytest.raises(_Stop):
        demo_module.run_demo(config=demo_module.FULL_CONFIG, out=tmp_path / "run", progress=False, full=full)
    config, kwargs = seen[0]
    assert (config.search is None) == full
    assert callable(kwargs["on_run"])


def test_main_config_is_the_budgeted_adaptive_search():
    config = load_config(demo_module.FULL_CONFIG)
    assert config.methods == ("lora", "pissa", "milora", "initab", "dora", "olora", "loraga")
    assert config.search is not None and config.search.max_runs <= 6
    # The search's lattice is the grid's: every grid LR is a lattice point (same run ids as `demo --full`).
    assert all(config.search.lattice_index(lr) is not None for lr in config.lrs)
    # λ at init measured once per method by the sweep (the centre), as the shipped calibration's probe was.
    assert config.hessian.init and not config.hessian.measure.smallest
    assert (config.hessian.samples, config.hessian.batch_size, config.max_length) == (8, 8, 128)


def test_adaptive_demo_builds_each_adapter_at_init_once(monkeypatch, tmp_path, tiny_calibration):
    """The per-module scan at init rides on the adapter the search's centre built: the demo never builds it again."""
    import json

    import yaml

    data = yaml.safe_load(demo_module.QUICK_CONFIG.read_text())
    data.update(
        methods=["lora"],
        n_eval=4,
        lr={"base": 2e-5, "per_decade": 4, "k": [7, 17]},
        hessian={"init": True, "samples": 8, "batch_size": 8, "smallest": False, "max_iter": 30},
        search={
            "mode": "adaptive",
            "metric": "eval_loss",
            "max_runs": 3,
            "calibration": str(tiny_calibration),
        },
    )
    config = tmp_path / "adaptive.yaml"
    config.write_text(yaml.safe_dump(data))

    def no_second_build(*args, **kwargs):
        raise AssertionError("the demo built an adapter at initialisation again")

    monkeypatch.setattr(demo_module, "_adapter_like_the_sweep", no_second_build)
    result = demo_module.run_demo(
        config=config,
        out=tmp_path / "run",
        progress=False,
        measure_final=False,
        layer_samples=2,
        density_steps=0,
    )
    modules = json.loads((tmp_path / "run" / "hessian" / "lora_r4_s0_init_modules.json").read_text())
    assert [block["name"] for block in modules["blocks"]] == [
        "layers.0.self_attn.q_proj",
        "layers.1.self_attn.q_proj",
    ]
    assert result.measured == (str(tmp_path / "run" / "hessian" / "lora_r4_s0_init_modules.json"),)
