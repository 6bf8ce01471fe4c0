"""Local sweeps on the tiny model: a full grid, resume, refusal of changed configs, failures and divergence."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from sweep_helpers import assert_same_results, tiny_config, tiny_data

from hessian_lora.core.errors import UserError
from hessian_lora.core.rundir import CONFIG_FILE
from hessian_lora.core.store import open_store
from hessian_lora.settings.sweep import RunSpec, config_from_dict
from hessian_lora.sweep import local, runner
from hessian_lora.sweep.runner import pending, plan_run_dir, prepare_run_dir, run_sweep, sweep_lock


def _rows(run_dir: Path) -> list[dict]:
    with open_store(run_dir, read_only=True) as store:
        return store.rows()


def test_tiny_sweep_completes(tiny_sweep):
    run_dir, summary, rows = tiny_sweep
    assert summary.planned == 6 and summary.ran == 6 and summary.counts == {"done": 6}
    assert len(rows) == len({row["run_id"] for row in rows}) == 6
    assert {(row["method"], row["lr"]) for row in rows} == {
        (method, lr) for method in ("lora", "pissa") for lr in (1e-3, 1e-2, 1e-1)
    }
    for row in rows:
        assert row["status"] == "done" and row["steps"] == 12 and row["error"] is None
        assert row["eval_loss"] is not None and row["accuracy"] is not None and row["eval_examples"] == 16
        assert row["train_loss"] < row["initial_loss"]
        checkpoint = run_dir / row["checkpoint"]
        assert (checkpoint / "hessian_lora.json").is_file() and (checkpoint / "optimizer.pt").is_file()
        history = json.loads((checkpoint / "history.json").read_text())
        assert history == json.loads(row["history"]) and len(history) == 12
        scores = json.loads((checkpoint / "eval.json").read_text())[
            "scores"
        ]  # per-example, for the bootstrap
        assert len(scores) == 16 and sum(scores) / 16 == pytest.approx(row["accuracy"])
    assert (run_dir / CONFIG_FILE).is_file()
    assert sorted(
        path.name for path in (run_dir / "hessian").glob("*_init.json")
    ) == [  # tiny.yaml: λ at init
        "lora_r4_s0_init.json",
        "pissa_r4_s0_init.json",
    ]


def test_checkpoint_of_a_run_reloads_with_its_optimizer_state(tiny_sweep):
    from hessian_lora.training.checkpoint import load_checkpoint

    run_dir, _, rows = tiny_sweep
    loaded = load_checkpoint(run_dir / rows[0]["checkpoint"], device="cpu")
    assert (
        loaded.meta.adapter.method == rows[0]["method"]
        and loaded.meta.lr == rows[0]["lr"]
        and loaded.meta.step == 12
    )
    assert loaded.optimizer_state is not None and loaded.optimizer_state.step == 12


def test_rerun_skips_finished_runs(tiny_sweep):
    run_dir, _, rows = tiny_sweep
    summary = run_sweep(tiny_config(), run_dir, progress=False)
    assert summary.ran == 0 and summary.skipped == 6
    assert _rows(run_dir) == rows


def test_interrupted_run_is_restarted_and_gives_the_same_row(tiny_sweep, tmp_path):
    reference_dir, _, reference = tiny_sweep
    config = tiny_config(methods=["lora"])
    run_sweep(config, tmp_path, progress=False)
    victim = config.runs()[1]
    with open_store(tmp_path) as store:
        store.start(victim)  # what a killed sweep leaves behind: the row still 'running'
    (
        tmp_path / "runs" / victim.run_id / "adapter_model.safetensors"
    ).unlink()  # and a half-written checkpoint
    summary = run_sweep(config, tmp_path, progress=False)
    assert summary.ran == 1
    rows = _rows(tmp_path)
    assert {row["run_id"]: row["attempts"] for row in rows}[victim.run_id] == 3  # run, simulated start, rerun
    assert (tmp_path / "runs" / victim.run_id / "adapter_model.safetensors").is_file()
    assert_same_results(rows, [row for row in reference if row["method"] == "lora"])
    del reference_dir


def test_changed_settings_are_refused(tiny_sweep):
    run_dir, _, _ = tiny_sweep
    with pytest.raises(UserError, match="steps"):
        run_sweep(tiny_config(steps=13), run_dir, progress=False)
    with pytest.raises(UserError, match="steps"):
        run_sweep(tiny_config(steps=13), run_dir, progress=False, extend=True)


def test_grid_changes_need_extend(tmp_path):
    first = tiny_config(methods=["lora"], lr=[1e-2])
    run_sweep(first, tmp_path, progress=False)
    second = tiny_config(methods=["lora"], lr=[1e-2, 1e-1])
    with pytest.raises(UserError, match="--extend"):
        run_sweep(second, tmp_path, progress=False)
    summary = run_sweep(second, tmp_path, progress=False, extend=True)
    assert summary.ran == 1 and summary.skipped == 1
    stored = runner.read_stored_config(tmp_path)
    assert stored.lrs == (1e-2, 1e-1)
    # a smaller grid is a change too, and extending with it keeps the union
    with pytest.raises(UserError, match="drops lrs"):
        run_sweep(first, tmp_path, progress=False)
    assert run_sweep(first, tmp_path, progress=False, extend=True).ran == 0
    assert runner.read_stored_config(tmp_path).lrs == (1e-2, 1e-1)
    # an LR that differs only in float rounding is the same grid point (same run id), not a new run
    nearly = tiny_config(methods=["lora"], lr=[1e-2 * (1 + 1e-12), 1e-1])
    assert run_sweep(nearly, tmp_path, progress=False).ran == 0


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    config = tiny_config(methods=["lora"])
    broken = config.runs()[1]
    real = local.execute_run

    def flaky(config, spec, run_dir, **kwargs):
        if spec == broken:
            raise RuntimeError("simulated out-of-memory")
        return real(config, spec, run_dir, **kwargs)

    monkeypatch.setattr(local, "execute_run", flaky)
    summary = run_sweep(config, tmp_path, progress=False)
    assert summary.counts == {"done": 2, "failed": 1}
    failed = [row for row in _rows(tmp_path) if row["status"] == "failed"]
    assert [row["run_id"] for row in failed] == [broken.run_id]
    assert "simulated out-of-memory" in failed[0]["error"] and "Traceback" in failed[0]["error"]
    assert run_sweep(config, tmp_path, progress=False).ran == 0  # failed is final ...
    monkeypatch.setattr(local, "execute_run", real)
    summary = run_sweep(config, tmp_path, progress=False, retry_failed=True)  # ... unless retried
    assert summary.ran == 1 and summary.counts == {"done": 3}


def test_huge_lr_is_recorded_as_diverged_while_the_others_finish(tmp_path):
    # 1e30 on all seven projections overflows fp32 within a few steps (the tiny model's loss cannot grow).
    config = tiny_config(methods=["lora"], lr=[1e-2, 1e30])
    summary = run_sweep(config, tmp_path, progress=False)
    assert summary.counts == {"done": 1, "diverged": 1}
    rows = {row["lr"]: row for row in _rows(tmp_path)}
    diverged = rows[1e30]
    assert diverged["status"] == "diverged" and "nan" in diverged["error"]
    assert diverged["eval_loss"] is None and diverged["accuracy"] is None and diverged["checkpoint"] is None
    assert diverged["steps"] < 12
    assert (tmp_path / "runs" / diverged["run_id"] / "history.json").is_file()
    assert rows[1e-2]["status"] == "done" and rows[1e-2]["accuracy"] is not None


def test_hessian_measurements_fill_their_columns_without_changing_training(tmp_path):
    hessian = {"init": True, "final": True, "samples": 8, "batch_size": 4, "tol": 1e-3, "max_iter": 30}
    # Training with SDPA: the Hessian engine must switch to a double-backward-capable kernel by itself.
    plain = tiny_config(
        methods=["lora"], lr=[1e-2], targets=["q_proj", "v_proj"], ranks=[2], steps=4, attention="sdpa"
    )
    measured = config_from_dict({**plain.to_dict(), "hessian": hessian})
    run_sweep(plain, tmp_path / "plain", progress=False)
    run_sweep(measured, tmp_path / "measured", progress=False)
    (row,) = _rows(tmp_path / "measured")
    assert row["lambda_init"] > 0 and row["lambda_final"] > 0 and row["precond_lambda_final"] > 0
    spec = measured.runs()[0]
    assert (tmp_path / "measured" / "hessian" / f"{spec.init_key}_init.json").is_file()
    assert (tmp_path / "measured" / "hessian" / f"{spec.run_id}_final.json").is_file()
    assert_same_results(_rows(tmp_path / "measured"), _rows(tmp_path / "plain"))


_SPEC = RunSpec("lora", 1e-3, 0, 8, 16)
_OTHER = RunSpec("pissa", 1e-3, 0, 8, 16)


def test_pending_skips_finished_runs():
    specs = [_SPEC, _OTHER, RunSpec("dora", 1e-3, 0, 8, 16), RunSpec("lora", 1e-2, 0, 8, 16)]
    statuses = {_SPEC.run_id: "done", _OTHER.run_id: "running", specs[2].run_id: "failed"}
    assert pending(specs, statuses) == [_OTHER, specs[3]]
    assert pending(specs, statuses, retry_failed=True) == [_OTHER, specs[2], specs[3]]
    statuses[specs[3].run_id] = "diverged"
    assert pending(specs, statuses, retry_failed=True) == [_OTHER, specs[2]]


def test_a_foreign_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a sweep directory"):
        prepare_run_dir(tiny_config(), tmp_path)


def test_one_sweep_per_directory(tmp_path):
    with sweep_lock(tmp_path), pytest.raises(UserError, match="another sweep"):
        run_sweep(tiny_config(), tmp_path, progress=False)


def test_address_needs_the_ray_backend(tmp_path):
    with pytest.raises(UserError, match="--backend ray"):
        run_sweep(tiny_config(), tmp_path, address="localhost:6379", progress=False)


def test_results_command_formats(tiny_sweep, tmp_path, capsys):
    from hessian_lora.cli.main import main

    run_dir, _, rows = tiny_sweep
    assert main(["results", str(run_dir)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["method", "rank", "seed"] and len(table) == 2 + len(rows)
    assert main(["results", str(run_dir), "--format", "csv"]) == 0
    csv_lines = capsys.readouterr().out.splitlines()
    assert csv_lines[0].startswith("run_id,method,lr") and len(csv_lines) == 1 + len(rows)
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    output = tmp_path / "r.parquet"
    assert main(["results", str(run_dir), "--format", "parquet", "--output", str(output)]) == 0
    table = pq.read_table(output)
    assert table.num_rows == len(rows) and sorted(table.column("run_id").to_pylist()) == sorted(
        row["run_id"] for row in rows
    )


def test_sweep_command_reports_bad_configs(tmp_path, capsys):
    from hessian_lora.cli.main import main

    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps({**tiny_data(), "methods": ["nope"]}))
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_gradient_checkpointing_may_change_when_a_sweep_resumes(tiny_sweep):
    # Same gradients, less memory: the new invocation's choice holds, the directory's results stay comparable.
    run_dir, _, _ = tiny_sweep
    effective, changed = plan_run_dir(tiny_config(gradient_checkpointing=True), run_dir)
    assert effective.train.gradient_checkpointing and changed
    assert effective.shared_settings() == tiny_config().shared_settings()
    effective, changed = plan_run_dir(tiny_config(), run_dir)
    assert not effective.train.gradient_checkpointing and not changed
    with pytest.raises(UserError, match="base_dtype"):  # the base's dtype changes results: refused
        plan_run_dir(dataclasses.replace(tiny_config(), base_dtype="bf16"), run_dir)
