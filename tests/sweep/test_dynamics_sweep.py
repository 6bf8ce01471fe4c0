"""hessian.during probes in a sweep (sharpness.json, peak columns) and the ``checkpoints: best`` policy."""

from __future__ import annotations

import json

import pytest
from sweep_helpers import tiny_config

from hessian_lora.core.rundir import RunLayout
from hessian_lora.core.store import open_store

DURING = {"every": 2, "samples": 8, "batch_size": 4, "tol": 1e-2}


@pytest.fixture(scope="module")
def probed_sweep(tmp_path_factory):
    from hessian_lora.sweep.runner import run_sweep

    run_dir = tmp_path_factory.mktemp("probed")
    config = tiny_config(
        methods=["lora", "loraplus"],
        lr=[1e-3, 1e-2],
        steps=4,
        n_train=32,
        n_eval=8,
        checkpoints="best",
        hessian={"during": DURING},
    )
    run_sweep(config, run_dir, progress=False)
    with open_store(run_dir, read_only=True) as store:
        rows = store.rows()
    return run_dir, config, rows


def test_during_probes_write_per_step_histories(probed_sweep):
    run_dir, config, rows = probed_sweep
    layout = RunLayout(run_dir)
    assert config.hessian.during is not None and config.hessian.during.every == 2
    assert len(rows) == 4
    for row in rows:
        assert row["status"] == "done", row["error"]
        document = json.loads(layout.sharpness(row["run_id"]).read_text())
        history = document["history"]
        assert [point["step"] for point in history] == [0, 2, 4]
        assert document["peak_lr"] == pytest.approx(row["lr"])
        assert document["beta1"] == 0.9
        assert all(point["lambda_max"] > 0 and point["hvps"] > 0 for point in history)
        assert history[0]["preconditioned"] is None
        assert all(point["preconditioned"] > 0 for point in history[1:])
        assert row["lambda_max_peak"] == pytest.approx(max(point["lambda_max"] for point in history))
        assert row["precond_peak"] == pytest.approx(max(point["preconditioned"] for point in history[1:]))


def test_best_policy_keeps_one_checkpoint_per_group(probed_sweep):
    run_dir, _, rows = probed_sweep
    layout = RunLayout(run_dir)
    for method in ("lora", "loraplus"):
        group = [row for row in rows if row["method"] == method]
        kept = [row for row in group if row["checkpoint"]]
        assert len(kept) == 1
        best = min(group, key=lambda row: row["eval_loss"])  # the tiny model's accuracy is 0: held-out loss
        assert kept[0]["run_id"] == best["run_id"]
        assert (run_dir / kept[0]["checkpoint"] / "hessian_lora.json").is_file()
        for row in group:
            assert layout.history(row["run_id"]).is_file()  # documents survive pruning
            assert layout.sharpness(row["run_id"]).is_file()
            if row is not kept[0]:
                # only the run's documents stay (eval.json where the task is scored per example)
                left = {p.name for p in layout.run(row["run_id"]).iterdir()}
                assert (
                    {"history.json", "sharpness.json"}
                    <= left
                    <= {p.name for p in layout.documents(row["run_id"])}
                )


def test_prune_recovers_from_a_kill_between_its_steps(probed_sweep, tmp_path):
    # Copy the finished directory, then recreate the states a kill can leave and check prune() repairs them.
    import shutil

    from hessian_lora.sweep.retention import prune

    run_dir, _, rows = probed_sweep
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    layout = RunLayout(copy)
    kept = next(row for row in rows if row["method"] == "lora" and row["checkpoint"])
    loser = next(row for row in rows if row["method"] == "lora" and not row["checkpoint"])
    # Killed between "row final" and prune (step 2 → 3): the loser still references a whole checkpoint.
    for name in ("hessian_lora.json", "adapter_model.safetensors"):
        shutil.copy(layout.run(kept["run_id"]) / name, layout.run(loser["run_id"]) / name)
    with open_store(copy) as store:
        with store.transaction() as connection:
            connection.execute(
                "UPDATE runs SET checkpoint = ? WHERE run_id = ?",
                (layout.relative_run(loser["run_id"]), loser["run_id"]),
            )
        assert prune(store, copy) == [loser["run_id"]]
        assert store.get(loser["run_id"])["checkpoint"] is None
        assert store.get(kept["run_id"])["checkpoint"] == kept["checkpoint"]
        # Killed between clearing the column and deleting the files (step 3a → 3b): orphan files go.
        shutil.copy(layout.run(kept["run_id"]) / "hessian_lora.json", layout.run(loser["run_id"]))
        assert prune(store, copy) == []
    assert not (layout.run(loser["run_id"]) / "hessian_lora.json").exists()
    assert (layout.run(kept["run_id"]) / "hessian_lora.json").is_file()


def test_edge_of_stability_analysis_and_figure(probed_sweep, tmp_path):
    from hessian_lora.analysis import analyze, write_analysis
    from hessian_lora.analysis.figures.plots import plot_run
    from hessian_lora.analysis.stability import stability_report

    run_dir, _, rows = probed_sweep
    analysis = analyze(run_dir)
    report = stability_report(run_dir, analysis)
    assert report is not None and len(report.curves) == 4
    assert set(report.methods) == {"lora", "loraplus"}
    for curve in report.curves:
        row = next(row for row in rows if row["run_id"] == curve.run_id)
        assert curve.steps == (0, 2, 4)
        lrs = _lrs(run_dir, row["run_id"])
        assert lrs[-1] == 0.0  # the cosine schedule ends at 0: no update follows, no ratio
        assert curve.adam_ratio[0] is None and curve.adam_ratio[-1] is None and curve.adam_ratio[1] > 0
        assert curve.peak_adam_ratio == pytest.approx(
            max(p * lr / 38.0 for p, lr in zip(curve.preconditioned[1:], lrs[1:]))
        )
    for item in report.methods.values():
        assert item.lambda_init is not None and item.lambda_init > 0  # the step-0 probe
    json_path, md_path = write_analysis(analysis, tmp_path)
    assert "Edge of stability" in md_path.read_text()
    assert "stability" in json.loads(json_path.read_text())
    result = plot_run(run_dir, tmp_path / "figures", analysis=analysis, formats=("png",))
    assert "g" in result.written


def _lrs(run_dir, run_id):
    return [point["lr"] for point in json.loads(RunLayout(run_dir).sharpness(run_id).read_text())["history"]]
