"""The replication experiment (experiments/smollm2_replication.yaml, issue 20): its definition meets the issue's
bar, its centres are honest, and `sweep --dry-run` preflights it without writing anything."""

from __future__ import annotations

from pathlib import Path

from hessian_lora.cli.main import main
from hessian_lora.settings.sweep import load_config

ROOT = Path(__file__).resolve().parents[2]
REPLICATION = ROOT / "experiments" / "smollm2_replication.yaml"
DEMO = ROOT / "experiments" / "smollm2_arith.yaml"


def test_replication_is_the_demo_with_three_seeds_256_problems_a_quarter_decade_and_64_examples():
    config, demo = load_config(REPLICATION), load_config(DEMO)
    assert (
        config.model,
        config.task,
        config.methods,
        config.ranks,
        config.steps,
        config.adapter.targets,
    ) == (demo.model, demo.task, demo.methods, demo.ranks, demo.steps, demo.adapter.targets)
    assert len(config.seeds) == 3 and config.n_eval >= 256
    search = config.search
    assert search is not None and search.per_decade == 4 and search.resolution == 0.25 and search.base == 2e-5
    assert search.fallback == "eval_loss" and search.metric == "auto"
    assert config.hessian.init and config.hessian.samples >= 64 and config.hessian.measure.tol <= 1e-3
    # Honest centres: the calibration's methods are left out of their own centre, and it was fitted on a seed
    # this run does not use.
    from hessian_lora.sweep.recommend import load_calibration

    calibration = load_calibration(search.calibration)
    assert search.leave_method_out
    assert not set(config.seeds) & set(calibration.provenance["config"]["seeds"])


def test_dry_run_preflights_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["sweep", str(REPLICATION), "--out", str(out), "--dry-run", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "preflight passed" in text and "seeds [1, 2, 3], n_eval 256" in text
    assert "64 training examples in batches of 8, tol 0.001" in text
    assert "at most 8 points × 3 seeds × 7 searches = 168 runs" in text
    assert "lora: refitted without its own point on dora, initab, milora, pissa" in text
    assert "olora: the calibration as it is (not in it)" in text
    assert not out.exists()


def test_dry_run_refuses_a_bad_config_in_one_line(tmp_path, capsys):
    import yaml

    data = yaml.safe_load((ROOT / "experiments" / "tiny.yaml").read_text())
    data["model"] = str(tmp_path / "no_such_model")  # found by the preflight, not by the YAML's reader
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["sweep", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
    assert len(err) == 1 and str(path) in err[0] and "model" in err[0], err
    assert not (tmp_path / "run").exists()


SHIPPED = ROOT / "results" / "smollm2"


def test_the_shipped_run_directory_reanalyses_to_its_shipped_analysis(tmp_path, monkeypatch, capsys):
    """No training: `hessian-lora analyze results/smollm2` on the committed data gives the committed analysis.json
    and analysis.md (the README's numbers are read from them), apart from the time it was written."""
    import json

    monkeypatch.chdir(ROOT)  # the analysis records the run directory as given
    assert main(["analyze", "results/smollm2", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    fresh = json.loads((tmp_path / "analysis.json").read_text())
    shipped = json.loads((SHIPPED / "analysis.json").read_text())
    fresh.pop("created"), shipped.pop("created")
    assert fresh == shipped
    assert (tmp_path / "analysis.md").read_text() == (SHIPPED / "analysis.md").read_text()


def test_the_shipped_run_directory_is_self_contained():
    """The committed database needs no -wal file beside it, every run row has its documents, and no checkpoint
    was committed."""
    import sqlite3

    assert not (SHIPPED / "results.sqlite-wal").exists() and not (SHIPPED / "results.sqlite-shm").exists()
    with sqlite3.connect(f"file:{SHIPPED / 'results.sqlite'}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        done = [row[0] for row in db.execute("SELECT run_id FROM runs WHERE status = 'done'")]
    assert done
    for run_id in done:
        assert (SHIPPED / "runs" / run_id / "eval.json").is_file(), run_id
    assert not [p for p in SHIPPED.rglob("*") if p.suffix in {".safetensors", ".bin", ".pt"}]


def test_the_results_page_and_the_readme_carry_the_shipped_analysis_and_its_figures():
    """Every block of docs/results.md marked as copied from results/smollm2/analysis.md equals that section of the
    shipped file (scripts/sync_readme.py --check), the claims table and the main table among them; every figure that
    page or the README shows from results/smollm2/figures is one `hessian-lora plot results/smollm2` draws, and is
    shipped."""
    import importlib.util
    import re

    from hessian_lora.analysis.figures.plots import FIGURE_NAMES

    spec = importlib.util.spec_from_file_location("sync_readme", ROOT / "scripts" / "sync_readme.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    page = ROOT / "docs" / "results.md"
    text = page.read_text()
    for heading in ("(top)", "### The paper's claims", "### Cost (as recorded)"):
        assert f"<!-- from ../results/smollm2/analysis.md: {heading} -->" in text, heading
    assert sync.sync(page, check=True) == []
    for shown_in in (page, ROOT / "README.md"):
        shown = re.findall(r"\]\(((?:\.\./)?results/smollm2/figures/[^)]+\.png)\)", shown_in.read_text())
        assert shown, shown_in
        for path in shown:
            assert (
                Path(path).stem in FIGURE_NAMES.values() and (shown_in.parent / path).resolve().is_file()
            ), path
