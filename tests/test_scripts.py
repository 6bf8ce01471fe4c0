"""The repository's scripts/: shipping a run directory and the per-module λ_max at initialisation it can carry."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from synthetic_run import RUNS_SCHEMA

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_config(run_dir: Path) -> Path:
    data = yaml.safe_load((ROOT / "experiments" / "tiny.yaml").read_text())
    data["hessian"] = {"init": True, "samples": 4, "batch_size": 4, "max_iter": 30, "tol": 1e-2}
    run_dir.mkdir(parents=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_init_modules_measures_every_layer_like_the_sweep_and_resumes(tmp_path, capsys) -> None:
    from hessian_lora.analysis.runs import read_run_directory

    run_dir = tmp_path / "run"
    _tiny_config(run_dir)
    script = _script("init_modules")
    args = [
        str(run_dir),
        "--modules",
        "q_proj",
        "--layers",
        "all",
        "--methods",
        "lora",
        "--seeds",
        "0",
        "--threads",
        "1",
    ]
    assert script.main(args) == 0
    path = run_dir / "hessian" / "lora_r4_s0_init_modules.json"
    assert f"wrote {path}" in capsys.readouterr().out
    report = json.loads(path.read_text())
    names = [block["name"] for block in report["blocks"]]
    assert len(names) == 2 and all(
        name.endswith("self_attn.q_proj") for name in names
    )  # both layers of the tiny model
    with sqlite3.connect(run_dir / "results.sqlite") as db:  # no run yet: the reports stand on their own
        db.execute(RUNS_SCHEMA)
    directory = read_run_directory(run_dir)
    assert {block.module for key, r in directory.init_reports.items() for block in r.modules} == {"q_proj"}
    mtime = path.stat().st_mtime_ns
    assert script.main(args) == 0 and path.stat().st_mtime_ns == mtime  # measured once: a rerun resumes
    assert "wrote" not in capsys.readouterr().out


def test_init_modules_cut_short_keeps_its_blocks_aside_and_the_rerun_finishes_them(
    tmp_path, monkeypatch, capsys
) -> None:
    # A report cut short must not take the final name: the rerun would skip the key and its missing layers.
    import hessian_lora.measurement.measure as measure_module

    run_dir = tmp_path / "run"
    _tiny_config(run_dir)
    script = _script("init_modules")
    args = [
        str(run_dir),
        "--modules",
        "q_proj",
        "--layers",
        "all",
        "--methods",
        "lora",
        "--seeds",
        "0",
        "--threads",
        "1",
    ]
    real_write = measure_module.write_report

    def write_then_stop(path, report):
        real_write(path, report)
        raise KeyboardInterrupt  # the session's end, right after the first block was saved

    monkeypatch.setattr(measure_module, "write_report", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        script.main(args)
    final = run_dir / "hessian" / "lora_r4_s0_init_modules.json"
    partial = final.with_name(final.name + ".partial")
    assert not final.exists() and len(json.loads(partial.read_text())["blocks"]) == 1
    monkeypatch.setattr(measure_module, "write_report", real_write)
    assert script.main(args) == 0
    names = [block["name"] for block in json.loads(final.read_text())["blocks"]]
    assert len(names) == 2 and not partial.exists()


def test_init_modules_refuses_a_method_the_sweep_does_not_have(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    _tiny_config(run_dir)
    assert _script("init_modules").main([str(run_dir), "--methods", "dora"]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.yaml" in err and "dora" in err and "pick from" in err and len(err.splitlines()) == 1


def test_ship_run_copies_documents_and_one_self_contained_database(tmp_path) -> None:
    source = tmp_path / "source"
    (source / "runs" / "a").mkdir(parents=True)
    (source / "hessian").mkdir()
    (source / "config.yaml").write_text("name: x\n")
    (source / "hessian" / "a_init.json").write_text("{}")
    (source / "runs" / "a" / "eval.json").write_text("[]")
    (source / "runs" / "a" / "adapter_model.safetensors").write_bytes(b"weights")
    with sqlite3.connect(source / "results.sqlite") as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE runs (run_id TEXT)")
        db.execute("INSERT INTO runs VALUES ('a')")
    writer = sqlite3.connect(source / "results.sqlite")  # a sweep still holding the database open
    target = tmp_path / "shipped"
    summary = _script("ship_run").ship(source, target)
    writer.close()
    assert "1 rows, 1 eigen reports, 1 run documents" in summary
    assert (target / "runs" / "a" / "eval.json").is_file()
    assert not (target / "runs" / "a" / "adapter_model.safetensors").exists()
    assert not (target / "results.sqlite-wal").exists()
    with sqlite3.connect(target / "results.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert db.execute("SELECT run_id FROM runs").fetchall() == [("a",)]


def test_sync_readme_copies_a_heading_body_and_check_names_a_stale_block(tmp_path) -> None:
    sync = _script("sync_readme")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "analysis.md").write_text(
        "| a | b |\n|---|---|\n| 1 | 2 |\n\nData: one seed.\n\n### Cost\n\n3 runs.\n\n### The claims\n\n| c |\n"
        "|---|\n| supported |\n"
    )
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n\n<!-- from run/analysis.md: (top) -->\nold\n<!-- end -->\n\ntext\n\n"
        "<!-- from run/analysis.md: ### The claims -->\n<!-- end -->\n"
    )
    assert sync.sync(readme, check=True) == ["run/analysis.md: (top)", "run/analysis.md: ### The claims"]
    assert "old" in readme.read_text()  # --check writes nothing
    assert sync.main(["--readme", str(readme), "--check"]) == 1
    assert sync.main(["--readme", str(readme)]) == 0
    assert readme.read_text() == (
        "# x\n\n<!-- from run/analysis.md: (top) -->\n| a | b |\n|---|---|\n| 1 | 2 |\n\nData: one seed.\n"
        "<!-- end -->\n\ntext\n\n<!-- from run/analysis.md: ### The claims -->\n| c |\n|---|\n| supported |\n"
        "<!-- end -->\n"
    )
    assert sync.main(["--readme", str(readme), "--check"]) == 0


def test_sync_readme_refuses_a_heading_the_source_lacks_in_one_line(tmp_path) -> None:
    sync = _script("sync_readme")
    (tmp_path / "analysis.md").write_text("### Cost\n\n3 runs.\n")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- from analysis.md: ### Claims -->\n<!-- end -->\n")
    with pytest.raises(SystemExit) as caught:
        sync.sync(readme, check=True)
    message = str(caught.value)
    assert "README.md" in message and "### Claims" in message and "0 times" in message and "\n" not in message
