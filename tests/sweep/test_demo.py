"""`hessian-lora demo --quick`: the tiny sweep, λ_max at init and at the end, analysis and all six figures."""

from __future__ import annotations

import json

import pytest

from hessian_lora.analysis import read_run_directory
from hessian_lora.cli.main import main
from hessian_lora.core.errors import UserError
from hessian_lora.sweep import recommend
from hessian_lora.sweep.demo import run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return run_demo(quick=True, out=tmp_path_factory.mktemp("demo") / "run", progress=False)


def test_quick_demo_produces_the_analysis_and_every_figure(demo) -> None:
    run_dir = demo.run_dir
    # (g) needs a sharpness history, which the quick demo does not record; (k) is the per-layer heatmap
    assert sorted(demo.plots.written) == list("abcdefk"), demo.plots.skipped
    for paths in demo.plots.written.values():
        assert all(path.is_file() and path.stat().st_size > 0 for path in paths)
    data = json.loads((run_dir / "analysis.json").read_text())
    assert set(data["methods"]) == {"lora", "pissa"}  # experiments/tiny.yaml
    assert (run_dir / "analysis.md").read_text().startswith("| method |")
    directory = read_run_directory(run_dir)
    for method in ("lora", "pissa"):
        report = directory.init_report(method, 0)
        assert report.whole is not None and report.whole.density is not None  # whole adapter + SLQ density
        assert {block.module for block in report.modules} == {"q_proj", "v_proj"}  # merged _init_modules.json
        summary = demo.analysis.methods[method]
        assert summary.lambda_init_whole == pytest.approx(report.whole.lambda_max)
        assert summary.precond_lambda_final is not None and summary.lambda_final_whole is not None
    assert len(directory.final_reports) == 2  # one per method: its best run
    summary = demo.summary()
    assert "Spearman" not in summary or "ρ" in summary
    assert str(run_dir / "figures") in summary and "wall time" in summary


def test_rerun_resumes_without_new_work_and_the_cli_prints_the_table(demo, capsys) -> None:
    reports = {path: path.stat().st_mtime_ns for path in (demo.run_dir / "hessian").iterdir()}
    assert main(["demo", "--quick", "--out", str(demo.run_dir), "--quiet"]) == 0
    assert {path: path.stat().st_mtime_ns for path in (demo.run_dir / "hessian").iterdir()} == reports
    out = capsys.readouterr().out
    assert "| lora" in out and "a_metric_vs_lr.png" in out


def test_recommend_probe_matches_the_demo_measurement(demo) -> None:
    # The tiny demo's two optima (one at the grid edge) are too few to calibrate on: refused, saying why.
    with pytest.raises(UserError, match="not enough interior optima"):
        recommend.load_calibration(demo.run_dir)
    directory = read_run_directory(demo.run_dir)
    init_settings = next(dict(report.settings) for report in directory.init_reports.values())
    probe = recommend.probe_settings(demo.analysis, directory.config, init_settings)
    calibration = recommend.Calibration(
        fit="inverse",
        c=1.0,
        slope=None,
        intercept=None,
        log10_error=None,
        lambda_source=demo.analysis.relation.lambda_source,
        points={},
        probe=probe,
    )
    result = recommend.recommend("pissa", calibration=calibration, progress=False)
    # The probe builds the adapter and data the way the sweep does: the same λ_max as the demo's report.
    assert result.lambda_max == pytest.approx(
        recommend.relation_lambda(demo.analysis.methods["pissa"]), rel=1e-3
    )


def test_bad_demo_config_is_a_user_error(tmp_path) -> None:
    assert main(["demo", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "x")]) == 2
