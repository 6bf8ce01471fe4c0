"""Ablations: several ranks and batch sizes in one sweep, several run directories (n_train), and the tiny-llama
version of experiments/smollm2_ablation.yaml through sweep → analyze → plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from synthetic_run import SyntheticMethod, write_run_dir

from hessian_lora.analysis import analyze
from hessian_lora.analysis.ablation import analyze_ablation, find_settings, lr_table
from hessian_lora.cli.main import main
from hessian_lora.core.errors import UserError

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _method(eta: float, lam: float, peak: float = 0.6) -> SyntheticMethod:
    return SyntheticMethod(eta_star=eta, lambda_init=lam, peak=peak)


# η* per (rank, batch size): known, so the cross-setting tables can be checked exactly.
TRUTH = {
    (4, 8): {"lora": 3.1e-4, "pissa": 3.1e-5},
    (4, 16): {"lora": 5.0e-4, "pissa": 5.0e-5},
    (8, 8): {"lora": 2.0e-4, "pissa": 2.0e-5 * 2},
    (8, 16): {"lora": 4.0e-4, "pissa": 6.0e-5},
}


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation") / "run"
    for index, ((rank, batch), etas) in enumerate(TRUTH.items()):
        methods = {
            name: _method(eta, 1.5 if name == "lora" else 15.0, 0.6 - 0.01 * index)
            for name, eta in etas.items()
        }
        write_run_dir(root, methods, rank=rank, batch_size=batch, append=index > 0, final_reports=False)
    return root


def test_one_summary_per_rank_and_batch_size(grid_dir) -> None:
    with pytest.raises(UserError, match="pick one"):  # analyze() itself stays one setting
        analyze(grid_dir)
    ablation = analyze_ablation([grid_dir], bootstrap_samples=50)
    assert [(s.rank, s.batch_size) for s in ablation.settings] == list(TRUTH)
    assert ablation.axes == ("rank", "batch_size")
    assert [s.label for s in ablation.settings] == ["r=4, b=8", "r=4, b=16", "r=8, b=8", "r=8, b=16"]
    for (key, etas), result in zip(TRUTH.items(), ablation.analyses):
        for name, eta in etas.items():
            assert result.methods[name].eta_star == pytest.approx(eta, rel=1e-9), (key, name)
    lrs, rows = lr_table(ablation, "lora")
    assert [label for label, _ in rows] == [s.label for s in ablation.settings] and len(rows[0][1]) == len(
        lrs
    )
    narrowed = find_settings([grid_dir], rank=8)
    assert [(s.rank, s.batch_size, s.label) for s in narrowed] == [(8, 8, "b=8"), (8, 16, "b=16")]


def test_analyze_and_plot_cli_handle_several_ranks_and_batch_sizes(grid_dir, tmp_path, capsys) -> None:
    assert main(["analyze", str(grid_dir), "--bootstrap", "50", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "η* per method" in out and "lora: accuracy (points) per setting × learning rate" in out
    data = json.loads((tmp_path / "ablation.json").read_text())
    assert data["axes"] == ["rank", "batch_size"] and len(data["analyses"]) == 4
    assert main(["analyze", str(grid_dir), "--rank", "4", "--batch-size", "8", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "analysis.json").is_file()  # one setting: the single-sweep analysis, as before
    assert (
        main(["plot", str(grid_dir), "--bootstrap", "50", "--out", str(tmp_path / "fig"), "--formats", "png"])
        == 0
    )
    written = {path.relative_to(tmp_path / "fig").as_posix() for path in (tmp_path / "fig").rglob("*.png")}
    assert {"h_eta_vs_setting.png", "i_peak_vs_setting.png", "j_setting_lr_table.png"} <= written
    assert "r=4_b=8/a_metric_vs_lr.png" in written and "r=8_b=16/b_sharpness_vs_lr.png" in written


def test_run_directories_differing_in_n_train_are_compared(tmp_path) -> None:
    small = write_run_dir(tmp_path / "n64", {"lora": _method(3.1e-4, 1.5), "pissa": _method(3.1e-5, 15.0)})
    large = write_run_dir(
        tmp_path / "n256",
        {"lora": _method(2.0e-4, 1.5), "pissa": _method(2.0e-5, 15.0)},
        config={"n_train": 256},
    )
    ablation = analyze_ablation([small, large], bootstrap_samples=50)
    assert ablation.axes == ("n_train",) and [s.label for s in ablation.settings] == [
        "n_train=64",
        "n_train=256",
    ]
    assert ablation.analyses[1].methods["lora"].eta_star == pytest.approx(2.0e-4, rel=1e-9)


def test_tiny_version_of_the_smollm2_ablation_sweeps_analyses_and_plots(tmp_path, capsys) -> None:
    """experiments/smollm2_ablation.yaml on tiny-llama (2 methods × 2 ranks × 2 batch sizes × 2 LRs, 2 steps):
    sweep → analyze → plot, every cross-setting figure drawn."""
    from hessian_lora.settings.sweep import config_from_dict
    from hessian_lora.sweep.runner import run_sweep

    data = yaml.safe_load((EXPERIMENTS / "smollm2_ablation.yaml").read_text())
    assert len(data["methods"]) * len(data["ranks"]) * len(data["batch_sizes"]) == 8
    data.update(
        model="tiny-llama",
        task="arith",
        n_train=16,
        n_eval=4,
        ranks=[2, 4],
        batch_sizes=[2, 4],
        lr=[1e-3, 1e-2],
        steps=2,
        max_length=128,
        attention="eager",
        eval={"batch_size": 4, "max_new_tokens": 2},
    )
    config = config_from_dict(data, source="tiny ablation")
    run_dir = tmp_path / "run"
    summary = run_sweep(config, run_dir, progress=False)
    assert summary.counts.get("done", 0) + summary.counts.get("diverged", 0) == 16
    assert main(["analyze", str(run_dir), "--bootstrap", "20", "--metric", "eval_loss"]) == 0
    assert "r=2, b=2" in capsys.readouterr().out
    assert main(["plot", str(run_dir), "--bootstrap", "20", "--metric", "eval_loss", "--formats", "png"]) == 0
    figures = run_dir / "figures"
    for name in ("h_eta_vs_setting", "i_peak_vs_setting", "j_setting_lr_table"):
        assert (figures / f"{name}.png").is_file(), name
