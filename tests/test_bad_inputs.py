"""Every bad input gets one line on stderr and a non-zero exit, never a traceback (issue 13).

Organised by the audit's classes: damaged files, impossible values, output paths, sweeps that fail silently,
interrupts and kill leftovers. Each case runs ``hessian_lora.cli.main`` in-process (subprocesses only where a
signal is needed) and checks: exit code 2 (130 for an interrupt, 1 for a sweep that recorded failed runs),
exactly one line on stderr, no traceback, and that the good data beside the bad input is untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from hessian_lora.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny-llama"]
EIGEN_FAST = ["--samples", "2", "--batch-size", "2", "--max-length", "96", "--max-iter", "3", "--no-min", "--quiet",
              "--threads", "1"]
GOOD_SWEEP: dict[str, Any] = {
    "name": "good", "model": "tiny-llama", "task": "arith", "n_train": 8, "n_eval": 2, "methods": ["lora"],
    "ranks": [2], "batch_sizes": [4], "lr": [1e-3], "steps": 2, "max_length": 96, "targets": ["q_proj", "v_proj"],
    "eval": {"batch_size": 2, "max_new_tokens": 2},
    "hessian": {"init": True, "final": False, "samples": 4, "batch_size": 4, "max_iter": 4, "smallest": False},
}
GOOD_RECORDS = [{"prompt": f"{i} + 1 =", "completion": str(i + 1)} for i in range(8)]


# ----------------------------------------------------------------------------------------------------------
# Helpers


def fingerprint(path: Path) -> dict[str, str]:
    """Relative path → SHA-256 of every file under ``path`` (the "good data is untouched" check)."""
    # SQLite readers (re)create the -wal/-shm companions of a WAL database: not a change of its data.
    return {str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest()
            for file in sorted(path.rglob("*")) if file.is_file() and not file.name.endswith(("-wal", "-shm"))}


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, *, expected: int = 2) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert "Traceback" not in captured.err, captured.err
    assert code == expected, f"exit {code}: {captured.err}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{captured.err}"
    assert lines[0].startswith("hessian-lora"), lines[0]
    return lines[0]


def fails(argv: list[str], capsys: pytest.CaptureFixture[str], *, expected: int = 2) -> str:
    capsys.readouterr()
    return one_line_error(capsys, main([str(item) for item in argv]), expected=expected)


def write(path: Path, content: bytes | str | Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return path


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1"}


# ----------------------------------------------------------------------------------------------------------
# Good data, made once


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished one-run sweep (checkpoint with optimizer state, λ_max at init), a step-0 checkpoint, a data
    file and a calibration fitted by hand; their fingerprints are checked after every case."""
    root = tmp_path_factory.mktemp("good")
    config = write(root / "good.yaml", yaml.safe_dump(GOOD_SWEEP))
    run_dir = root / "run"
    assert main(["sweep", str(config), "--out", str(run_dir), "--threads", "1", "--quiet"]) == 0
    (checkpoint,) = [path for path in (run_dir / "runs").iterdir()]
    init = root / "init"
    assert main(["init", *TINY, "--method", "lora", "--rank", "2", "--targets", "q_proj,v_proj",
                 "--out", str(init)]) == 0
    data = write(root / "data.json", GOOD_RECORDS)
    return {"root": root, "config": config, "run": run_dir, "checkpoint": checkpoint, "init": init, "data": data}


@pytest.fixture
def untouched(good: dict[str, Path]):
    before = fingerprint(good["root"])
    yield
    assert fingerprint(good["root"]) == before, "good data next to the bad input changed"


def damaged_copy(source: Path, destination: Path, file: str, content: bytes | str | Any | None) -> Path:
    shutil.copytree(source, destination)
    target = destination / file
    if content is None:
        target.unlink()
    elif content == "DIR":
        target.unlink()
        target.mkdir()
    else:
        write(target, content)
    return destination


# ----------------------------------------------------------------------------------------------------------
# Damaged files: checkpoints (info and eigen)


def _meta(good: dict[str, Path], **changes: Any) -> dict[str, Any]:
    data = json.loads((good["checkpoint"] / "hessian_lora.json").read_text())
    data.update(changes)
    return data


CHECKPOINT_DAMAGE = {
    "meta-list": ("hessian_lora.json", []),
    "meta-empty-object": ("hessian_lora.json", {}),
    "meta-rank-text": ("hessian_lora.json", {"rank": "four"}),
    "meta-rank-zero": ("hessian_lora.json", {"rank": 0}),
    "meta-alpha-nan": ("hessian_lora.json", "ALPHA_NAN"),
    "meta-targets-number": ("hessian_lora.json", {"targets": 5}),
    "meta-method-unknown": ("hessian_lora.json", {"method": "nope"}),
    "meta-dtype-unknown": ("hessian_lora.json", {"dtype": "float8"}),
    "meta-format-future": ("hessian_lora.json", {"format_version": 99}),
    "meta-not-utf8": ("hessian_lora.json", b"\xff\xfe\x00garbage\x80"),
    "meta-not-json": ("hessian_lora.json", "{ not json"),
    "meta-is-directory": ("hessian_lora.json", "DIR"),
    "adapter-truncated": ("adapter_model.safetensors", "TRUNCATE"),
    "adapter-empty": ("adapter_model.safetensors", b""),
    "adapter-missing": ("adapter_model.safetensors", None),
    "adapter-config-not-json": ("adapter_config.json", "nope"),
    "optimizer-random": ("optimizer.pt", os.urandom(256)),
    "optimizer-empty": ("optimizer.pt", b""),
}


def _damaged_checkpoint(good: dict[str, Path], tmp_path: Path, case: str) -> Path:
    file, content = CHECKPOINT_DAMAGE[case]
    if file == "hessian_lora.json" and isinstance(content, dict) and content:
        content = json.dumps(_meta(good, **content))
    elif content == "ALPHA_NAN":
        content = json.dumps(_meta(good, alpha=float("nan")))
    elif content == "TRUNCATE":
        content = (good["checkpoint"] / file).read_bytes()[:100]
    return damaged_copy(good["checkpoint"], tmp_path / "ckpt", file, content)


@pytest.mark.parametrize("case", sorted(CHECKPOINT_DAMAGE))
def test_info_damaged_checkpoint(case: str, good, untouched, tmp_path, capsys) -> None:
    fails(["info", _damaged_checkpoint(good, tmp_path, case)], capsys)


@pytest.mark.parametrize("case", sorted(CHECKPOINT_DAMAGE))
def test_eigen_damaged_checkpoint(case: str, good, untouched, tmp_path, capsys) -> None:
    extra = ["--preconditioned"] if case.startswith("optimizer") else []
    fails(["eigen", _damaged_checkpoint(good, tmp_path, case), *extra, *EIGEN_FAST, "--out", tmp_path / "r.json"],
          capsys)
    assert not (tmp_path / "r.json").exists()


# ----------------------------------------------------------------------------------------------------------
# Damaged files: model files and specs (init and eigen)


def _model_spec(tmp_path: Path, case: str) -> str:
    if case == "config-not-json":
        write(tmp_path / "m" / "config.json", "{{{")
        return str(tmp_path / "m")
    if case == "config-empty-object":
        write(tmp_path / "m" / "config.json", {})
        return str(tmp_path / "m")
    if case == "config-binary":
        write(tmp_path / "m" / "config.json", b"\x89PNG\x00\xff")
        return str(tmp_path / "m")
    if case == "config-no-weights":
        write(tmp_path / "m" / "config.json", {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 1,
                                               "num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 300})
        return str(tmp_path / "m")
    if case == "gguf-random":
        return str(write(tmp_path / "fake.gguf", os.urandom(64)))
    if case == "gguf-empty":
        return str(write(tmp_path / "empty.gguf", b""))
    if case == "gguf-missing":
        return str(tmp_path / "missing.gguf")
    if case == "hub-offline":
        return "no-such-org-xyz/no-such-model-xyz"
    return {"tiny-hidden-zero": "tiny-llama:hidden_size=0", "tiny-unknown-option": "tiny-llama:foo=3",
            "tiny-not-number": "tiny-llama:layers=x", "tiny-heads-mismatch": "tiny-llama:hidden_size=30",
            "tiny-huge": "tiny-llama:hidden_size=100000000", "unknown-name": "gpt-17"}[case]


MODEL_CASES = ["config-not-json", "config-empty-object", "config-binary", "config-no-weights", "gguf-random",
               "gguf-empty", "gguf-missing", "hub-offline", "tiny-hidden-zero", "tiny-unknown-option",
               "tiny-not-number", "tiny-heads-mismatch", "tiny-huge", "unknown-name"]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("case", MODEL_CASES)
def test_init_bad_model(case: str, offline, untouched, tmp_path, capsys) -> None:
    fails(["init", "--model", _model_spec(tmp_path, case), "--method", "lora", "--rank", "2",
           "--out", tmp_path / "out"], capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", MODEL_CASES)
def test_eigen_bad_model(case: str, offline, untouched, tmp_path, capsys) -> None:
    fails(["eigen", "--method", "lora", "--model", _model_spec(tmp_path, case), *EIGEN_FAST,
           "--out", tmp_path / "r.json"], capsys)


def test_hub_id_offline_is_fast(tmp_path: Path) -> None:
    """An unreachable hub id: one line, in seconds, without the retry warnings."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "hessian_lora", "init", "--model", "no-such-org-xyz/no-such-model-xyz",
         "--method", "lora", "--out", str(tmp_path / "o")], capture_output=True, text=True, env=cli_env(),
        timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert time.monotonic() - started < 60


# ----------------------------------------------------------------------------------------------------------
# Damaged files: data files (eigen --data and a sweep's task)

DATA_CASES: dict[str, bytes | str | Any] = {
    "number": 42,
    "object-data-number": {"data": 5},
    "object-no-data": {"rows": []},
    "not-utf8": b"\xff\xfe\x80\x81",
    "not-json": "[{",
    "empty-file": "",
    "empty-list": [],
    "list-of-numbers": [1, 2, 3],
    "wrong-fields": [{"foo": "a", "bar": "b"}],
    "null-prompt": [{"prompt": None, "completion": "1"}] * 4,
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_eigen_bad_data_file(case: str, untouched, tmp_path, capsys) -> None:
    data = write(tmp_path / "data.json", DATA_CASES[case])
    fails(["eigen", "--method", "lora", *TINY, "--rank", "2", "--data", data, *EIGEN_FAST[:-2],
           "--out", tmp_path / "r.json"], capsys)


@pytest.mark.parametrize("case", ["jsonl-list-line", "jsonl-not-json", "jsonl-not-utf8"])
def test_eigen_bad_jsonl_file(case: str, untouched, tmp_path, capsys) -> None:
    content = {"jsonl-list-line": '{"prompt": "a", "completion": "b"}\n[1, 2]\n', "jsonl-not-json": "{\n",
               "jsonl-not-utf8": b'{"prompt": "\xff"}\n'}[case]
    data = write(tmp_path / "data.jsonl", content)
    fails(["eigen", "--method", "lora", *TINY, "--rank", "2", "--data", data, *EIGEN_FAST[:-2],
           "--out", tmp_path / "r.json"], capsys)


# ----------------------------------------------------------------------------------------------------------
# Damaged files: sweep YAML


def _sweep_yaml(tmp_path: Path, content: bytes | str | dict[str, Any]) -> Path:
    if isinstance(content, dict):
        content = yaml.safe_dump(content)
    return write(tmp_path / "sweep.yaml", content)


YAML_TEXT_CASES = {
    "binary": b"\x00\x01\x02\xff\xfe binary",
    "not-utf8": b"model: tiny-llama\nname: \xff\xfe\n",
    "list": "- 1\n- 2\n",
    "scalar": "42\n",
    "empty": "",
    "syntax": "model: [unclosed\n",
    "tabs": "model:\ttiny\n\t- x: [\n",
}


@pytest.mark.parametrize("case", sorted(YAML_TEXT_CASES))
def test_sweep_malformed_yaml(case: str, untouched, tmp_path, capsys) -> None:
    fails(["sweep", _sweep_yaml(tmp_path, YAML_TEXT_CASES[case]), "--out", tmp_path / "out", "--quiet"], capsys)
    assert not (tmp_path / "out" / "results.sqlite").exists()


YAML_VALUE_CASES: dict[str, dict[str, Any]] = {
    "lr-nan": {"lr": [float("nan")]},
    "lr-inf": {"lr": [float("inf")]},
    "lr-text": {"lr": ["fast"]},
    "lr-zero": {"lr": [0.0]},
    "alpha-nan": {"alpha": float("nan")},
    "alpha-inf": {"alpha": float("inf")},
    "dropout-nan": {"dropout": float("nan")},
    "steps-text": {"steps": "ten"},
    "steps-zero": {"steps": 0},
    "rank-zero": {"ranks": [0]},
    "rank-huge": {"ranks": [100000000000]},
    "batch-size-text": {"batch_sizes": ["big"]},
    "unknown-key": {"learning_rate": 1},
    "unknown-method": {"methods": ["nope"]},
    "unknown-hessian-option": {"hessian": {"init": True, "bogus": 1}},
    "hessian-init-text": {"hessian": {"init": "yes please"}},
    "eval-unknown": {"eval": {"bogus": 1}},
    "targets-number": {"targets": 5},
    "betas-text": {"betas": "x"},
    "model-number": {"model": 5},
    "name-list": {"name": [1]},
    "max-length-zero": {"max_length": 0},
    "model-missing-dir": {"model": "./no/such/dir"},
    "model-unknown": {"model": "gpt-17"},
    "task-missing-file": {"task": "no_such_file.jsonl"},
}


def test_a_bad_reuse_budget_stops_the_sweep_before_it_writes(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HESSIAN_LORA_REUSE_GIB", "plenty")
    message = fails(["sweep", _sweep_yaml(tmp_path, GOOD_SWEEP), "--out", tmp_path / "out", "--quiet",
                     "--threads", "1"], capsys)
    assert "HESSIAN_LORA_REUSE_GIB=plenty" in message and "GiB" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", sorted(YAML_VALUE_CASES))
def test_sweep_bad_value(case: str, untouched, tmp_path, capsys) -> None:
    fails(["sweep", _sweep_yaml(tmp_path, {**GOOD_SWEEP, **YAML_VALUE_CASES[case]}), "--out", tmp_path / "out",
           "--quiet", "--threads", "1"], capsys)
    assert not (tmp_path / "out" / "results.sqlite").exists()
    assert not (tmp_path / "out" / "config.yaml").exists()


# ----------------------------------------------------------------------------------------------------------
# Damaged files: run stores (results, analyze, plot, recommend --calibration RUN_DIR, sweep resume)

STORE_CASES = ["db-random", "db-empty-file", "db-no-runs-table", "db-missing", "dir-missing", "dir-is-file",
               "init-report-not-json", "init-report-list"]


def _damaged_run(good: dict[str, Path], tmp_path: Path, case: str) -> Path:
    run = tmp_path / "run"
    if case == "dir-missing":
        return run
    if case == "dir-is-file":
        return write(run, "x")
    shutil.copytree(good["run"], run)
    db = run / "results.sqlite"
    for leftover in (run / "results.sqlite-wal", run / "results.sqlite-shm"):
        leftover.unlink(missing_ok=True)
    if case == "db-random":
        write(db, os.urandom(4096))
    elif case == "db-empty-file":
        write(db, b"")
    elif case == "db-missing":
        db.unlink()
    elif case == "db-no-runs-table":
        db.unlink()
        connection = sqlite3.connect(db)
        connection.execute("CREATE TABLE other (x)")
        connection.commit()
        connection.close()
    else:
        (report,) = (run / "hessian").glob("*_init.json")
        write(report, "{not json" if case == "init-report-not-json" else [])
    return run


@pytest.mark.parametrize("command", ["results", "analyze", "plot", "recommend"])
@pytest.mark.parametrize("case", STORE_CASES)
def test_damaged_run_directory(command: str, case: str, good, untouched, tmp_path, capsys) -> None:
    if command == "results" and case.startswith("init-report"):
        pytest.skip("results reads only the table")
    run = _damaged_run(good, tmp_path, case)
    argv = {"results": ["results", run],
            "analyze": ["analyze", run, "--bootstrap", "10", "--out", tmp_path / "a"],
            "plot": ["plot", run, "--bootstrap", "10", "--out", tmp_path / "figs"],
            "recommend": ["recommend", "--calibration", run, "--save-calibration", tmp_path / "c.json"]}[command]
    fails(argv, capsys)


@pytest.mark.parametrize("case", ["config-binary", "config-list", "config-other-model"])
def test_sweep_resume_damaged_config(case: str, good, untouched, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(good["run"], run)
    content = {"config-binary": b"\x00\xff\xfe", "config-list": "- 1\n",
               "config-other-model": yaml.safe_dump({**GOOD_SWEEP, "model": "tiny-llama:layers=1"})}[case]
    write(run / "config.yaml", content)
    before = (run / "results.sqlite").read_bytes()
    fails(["sweep", good["config"], "--out", run, "--quiet", "--threads", "1"], capsys)
    assert (run / "results.sqlite").read_bytes() == before


# ----------------------------------------------------------------------------------------------------------
# Damaged files: calibration files and eigen reports read back for resume

CALIBRATION_CASES: dict[str, bytes | str | Any] = {
    "not-json": "{{",
    "not-utf8": b"\xff\xfe",
    "list": [],
    "empty-object": {},
    "c-text": {"c": "x", "slope": 1, "fit": "inverse", "points": []},
    "c-nan": "NAN",
}


@pytest.mark.parametrize("case", sorted(CALIBRATION_CASES))
def test_recommend_bad_calibration_file(case: str, untouched, tmp_path, capsys) -> None:
    content = CALIBRATION_CASES[case]
    if content == "NAN":
        from hessian_lora.recommend import load_calibration

        content = load_calibration(None).to_dict()
        content["c"] = float("nan")
    path = write(tmp_path / "cal.json", content)
    fails(["recommend", "--method", "lora", *TINY, "--calibration", path], capsys)


REPORT_CASES: dict[str, bytes | str | Any] = {
    "not-json": "{", "not-utf8": b"\xff\xfe", "list": [], "empty-object": {}, "blocks-number": {"blocks": 5},
    "blocks-garbage": {"settings": {}, "blocks": [{"name": 3}]},
}


@pytest.mark.parametrize("case", sorted(REPORT_CASES))
def test_eigen_resume_from_damaged_report(case: str, untouched, tmp_path, capsys) -> None:
    out = write(tmp_path / "r.json", REPORT_CASES[case])
    before = out.read_bytes()
    fails(["eigen", "--method", "lora", *TINY, "--rank", "2", *EIGEN_FAST[:-2], "--out", out], capsys)
    assert out.read_bytes() == before


# ----------------------------------------------------------------------------------------------------------
# Impossible values

IMPOSSIBLE = {
    "init-rank-huge": ["init", *TINY, "--method", "lora", "--rank", "100000000000"],
    "init-rank-zero": ["init", *TINY, "--method", "lora", "--rank", "0"],
    "init-rank-negative": ["init", *TINY, "--method", "lora", "--rank", "-3"],
    "init-alpha-nan": ["init", *TINY, "--method", "lora", "--alpha", "nan"],
    "init-alpha-inf": ["init", *TINY, "--method", "lora", "--alpha", "inf"],
    "init-alpha-negative": ["init", *TINY, "--method", "lora", "--alpha", "-1"],
    "init-dropout-nan": ["init", *TINY, "--method", "lora", "--dropout", "nan"],
    "init-dropout-over-one": ["init", *TINY, "--method", "lora", "--dropout", "1.5"],
    "init-method-unknown": ["init", *TINY, "--method", "nope"],
    "init-targets-unknown": ["init", *TINY, "--method", "lora", "--targets", "nope_proj"],
    "init-targets-empty": ["init", *TINY, "--method", "lora", "--targets", ","],
    "init-pissa-niter-zero": ["init", *TINY, "--method", "pissa", "--pissa-niter", "0"],
    "init-loraga-batches-zero": ["init", *TINY, "--method", "lora_ga", "--loraga-batches", "0"],
    "init-rank-text": ["init", *TINY, "--method", "lora", "--rank", "four"],
    "eigen-threads-zero": ["eigen", "--method", "lora", *TINY, "--threads", "0"],
    "eigen-rank-zero": ["eigen", "--method", "lora", *TINY, "--rank", "0"],
    "eigen-alpha-nan": ["eigen", "--method", "lora", *TINY, "--alpha", "nan"],
    "eigen-samples-zero": ["eigen", "--method", "lora", *TINY, "--samples", "0"],
    "eigen-batch-zero": ["eigen", "--method", "lora", *TINY, "--batch-size", "0"],
    "eigen-max-length-zero": ["eigen", "--method", "lora", *TINY, "--max-length", "0"],
    "eigen-max-length-one": ["eigen", "--method", "lora", *TINY, "--max-length", "1"],
    "eigen-top-k-zero": ["eigen", "--method", "lora", *TINY, "--top-k", "0"],
    "eigen-tol-nan": ["eigen", "--method", "lora", *TINY, "--tol", "nan"],
    "eigen-tol-negative": ["eigen", "--method", "lora", *TINY, "--tol", "-1"],
    "eigen-max-iter-zero": ["eigen", "--method", "lora", *TINY, "--max-iter", "0"],
    "eigen-lr-nan": ["eigen", "--method", "lora", *TINY, "--lr", "nan"],
    "eigen-layers-garbage": ["eigen", "--method", "lora", *TINY, "--blocks", "per-module", "--layers", "a:b"],
    "eigen-no-source": ["eigen"],
    "eigen-task-unknown": ["eigen", "--method", "lora", *TINY, "--task", "no-such-task"],
    "eigen-device-nonsense": ["eigen", "--method", "lora", *TINY, "--device", "warp-drive"],
    "eigen-device-cuda": ["eigen", "--method", "lora", *TINY, "--device", "cuda"],
    "init-device-cuda": ["init", *TINY, "--method", "lora", "--device", "cuda"],
    "recommend-rank-zero": ["recommend", "--method", "lora", *TINY, "--rank", "0"],
    "recommend-rank-negative": ["recommend", "--method", "lora", *TINY, "--rank", "-1"],
    "recommend-method-unknown": ["recommend", "--method", "nope", *TINY],
    "recommend-nothing": ["recommend"],
    "recommend-device-cuda": ["recommend", "--method", "lora", *TINY, "--device", "cuda"],
    "analyze-bootstrap-zero": ["analyze", "RUN", "--bootstrap", "0"],
    "analyze-rank-absent": ["analyze", "RUN", "--rank", "99", "--bootstrap", "10"],
    "analyze-metric-unknown": ["analyze", "RUN", "--metric", "vibes"],
    "plot-format-gif": ["plot", "RUN", "--formats", "gif"],
    "results-table-output": ["results", "RUN", "--output", "x.txt"],
    "results-format-unknown": ["results", "RUN", "--format", "xlsx"],
    "sweep-threads-zero": ["sweep", "CONFIG", "--threads", "0"],
    "sweep-device-cuda": ["sweep", "CONFIG", "--device", "cuda"],
    "sweep-address-without-ray": ["sweep", "CONFIG", "--address", "ray://x"],
    "demo-layer-samples-one": ["demo", "--quick", "--layer-samples", "1"],
    "demo-density-negative": ["demo", "--quick", "--density-steps", "-1"],
    "demo-config-missing": ["demo", "--config", "no/such.yaml"],
    "demo-config-binary": ["demo", "--config", "BINARY"],
    "unknown-command": ["frobnicate"],
}


@pytest.mark.parametrize("case", sorted(IMPOSSIBLE))
def test_impossible_value(case: str, good, untouched, tmp_path, capsys) -> None:
    if "cuda" in case and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    argv = [good["run"] if item == "RUN" else good["config"] if item == "CONFIG" else
            write(tmp_path / "b.yaml", b"\x00\xff") if item == "BINARY" else item for item in IMPOSSIBLE[case]]
    if argv[0] in ("init", "eigen", "sweep", "demo") and case not in ("eigen-no-source",):
        argv += ["--out", tmp_path / "out"]
    if argv[0] == "eigen":
        argv += ["--quiet"]
    if argv[0] == "sweep":
        argv += ["--quiet"]
    fails(argv, capsys)
    # Nothing written, at most the sweep's lock file (a directory holding only it is a fresh one).
    out = tmp_path / "out"
    assert not out.exists() or {entry.name for entry in out.iterdir()} <= {".sweep.lock"}


# ----------------------------------------------------------------------------------------------------------
# Output paths


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    return write(tmp_path / "regular-file", "x")


def _output_argv(command: str, where: Path, good: dict[str, Path]) -> list[Any]:
    return {
        "init": ["init", *TINY, "--method", "lora", "--rank", "2", "--out", where],
        "eigen": ["eigen", "--method", "lora", *TINY, "--rank", "2", *EIGEN_FAST[:-2], "--out", where],
        "sweep": ["sweep", good["config"], "--out", where, "--quiet"],
        "results-csv": ["results", good["run"], "--format", "csv", "--output", where],
        "analyze": ["analyze", good["run"], "--bootstrap", "10", "--out", where],
        "plot": ["plot", good["run"], "--bootstrap", "10", "--out", where],
        "save-calibration": ["recommend", "--calibration", good["run"], "--save-calibration", where],
        "demo": ["demo", "--quick", "--config", good["config"], "--out", where],
    }[command]


OUTPUT_COMMANDS = ["init", "eigen", "sweep", "results-csv", "analyze", "plot", "save-calibration", "demo"]


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_output_under_a_regular_file(command: str, good, untouched, a_file, capsys) -> None:
    fails(_output_argv(command, a_file / "sub" / "out", good), capsys)
    assert a_file.read_text() == "x"


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_output_that_cannot_be_created(command: str, good, untouched, capsys) -> None:
    fails(_output_argv(command, Path("/proc/hessian-lora-no-such/out"), good), capsys)


@pytest.mark.parametrize("command", ["eigen", "results-csv", "save-calibration"])
def test_output_file_is_an_existing_directory(command: str, good, untouched, tmp_path, capsys) -> None:
    where = tmp_path / "a-directory"
    where.mkdir()
    fails(_output_argv(command, where, good), capsys)


@pytest.mark.parametrize("command", ["init", "sweep", "analyze", "plot", "demo"])
def test_output_directory_is_a_file(command: str, good, untouched, a_file, capsys) -> None:
    fails(_output_argv(command, a_file, good), capsys)
    assert a_file.read_text() == "x"


# ----------------------------------------------------------------------------------------------------------
# Sweeps that fail silently


def test_sweep_model_that_cannot_load_then_fixed_config_runs_in_the_same_directory(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    broken = _sweep_yaml(tmp_path, {**GOOD_SWEEP, "model": "gpt-17", "hessian": {"init": False}})
    line = fails(["sweep", broken, "--out", run, "--quiet"], capsys)
    assert "gpt-17" in line
    assert not (run / "results.sqlite").exists() and not (run / "config.yaml").exists()
    fixed = _sweep_yaml(tmp_path, {**GOOD_SWEEP, "hessian": {"init": False}})
    capsys.readouterr()
    assert main(["sweep", str(fixed), "--out", str(run), "--quiet", "--threads", "1"]) == 0
    assert "1 done" in capsys.readouterr().err


PREFLIGHT_CASES: dict[str, dict[str, Any]] = {
    "targets-absent": {"targets": ["nope_proj"]},
    "max-length-one": {"max_length": 1},
    "task-empty-file": {"task": "EMPTY"},
    "task-wrong-fields": {"task": "WRONG"},
    "tiny-bad-option": {"model": "tiny-llama:foo=3"},
    "hessian-samples-beyond-max-length": {"hessian": {"init": True, "max_length": 1}},
    "micro-batch-empty": {"task": "PROMPT_ONLY"},
}


@pytest.mark.parametrize("case", sorted(PREFLIGHT_CASES))
def test_sweep_preflight_leaves_nothing_behind(case: str, untouched, tmp_path, capsys) -> None:
    changes = dict(PREFLIGHT_CASES[case])
    if changes.get("task") == "EMPTY":
        changes["task"] = str(write(tmp_path / "empty.json", []))
    elif changes.get("task") == "WRONG":
        changes["task"] = str(write(tmp_path / "wrong.json", [{"a": 1, "b": 2}] * 4))
    elif changes.get("task") == "PROMPT_ONLY":
        long_prompt = "x" * 200
        changes["task"] = str(write(tmp_path / "long.json", [{"prompt": long_prompt, "completion": "1"}] * 8))
    run = tmp_path / "run"
    config = _sweep_yaml(tmp_path, {**GOOD_SWEEP, **changes})
    message = fails(["sweep", config, "--out", run, "--quiet", "--threads", "1"], capsys)
    assert f"error: {config}: " in message, message  # the preflight names the YAML file, not "config"
    assert not run.exists()  # nothing at all, not even the lock of the directory it made


def test_sweep_with_failed_runs_exits_1_and_counts_the_errors(tmp_path, capsys, monkeypatch) -> None:
    """A run that raises after preflight is recorded failed; the sweep exits 1 and names each error once."""
    from hessian_lora.sweep import local

    real = local.execute_run

    def flaky(config, spec, *args, **kwargs):
        if spec.lr > 5e-3:
            raise RuntimeError("simulated failure at a high learning rate")
        return real(config, spec, *args, **kwargs)

    monkeypatch.setattr(local, "execute_run", flaky)
    config = _sweep_yaml(tmp_path, {**GOOD_SWEEP, "lr": [1e-3, 1e-2, 1e-1], "hessian": {"init": False}})
    capsys.readouterr()
    code = main(["sweep", str(config), "--out", str(tmp_path / "run"), "--quiet", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert "2 runs failed" in err and "2 x RuntimeError: simulated failure at a high learning rate" in err, err


def test_zero_token_run_is_an_error_not_done(tmp_path) -> None:
    from hessian_lora.sweep.execute import check_trained_tokens

    with pytest.raises(ValueError, match="zero"):
        check_trained_tokens(0, max_length=1)
    check_trained_tokens(5, max_length=64)


# ----------------------------------------------------------------------------------------------------------
# Interrupts


@pytest.mark.parametrize("command", ["methods", "init", "info", "eigen", "sweep", "results", "analyze", "recommend",
                                     "plot", "demo"])
def test_keyboard_interrupt_inside_any_command(command: str, monkeypatch, capsys) -> None:
    import importlib

    module = importlib.import_module(f"hessian_lora.commands.{command}")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "run", interrupted)
    argv = {"methods": ["methods"], "init": ["init", "--method", "lora", "--out", "x"], "info": ["info", "x"],
            "eigen": ["eigen", "--method", "lora", "--out", "x"], "sweep": ["sweep", "c.yaml", "--out", "x"],
            "results": ["results", "x"], "analyze": ["analyze", "x"], "recommend": ["recommend"],
            "plot": ["plot", "x"], "demo": ["demo"]}[command]
    fails(argv, capsys, expected=130)


def test_importing_the_cli_imports_no_torch() -> None:
    code = "import sys, hessian_lora.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_an_interrupt_escaping_exec_still_exits_130(tmp_path) -> None:
    """CPython marks a KeyboardInterrupt that leaves ``exec`` of source text (how dataclasses build methods, so an
    import interrupted there does it), and under ``python -m`` ends the process by SIGINT (-2) instead of our
    130 (CI saw it in test_ctrl_c_in_the_first_seconds). Run as a module, like ``python -m hessian_lora``."""
    write(tmp_path / "interrupted_import.py",
          "import sys, hessian_lora.cli as cli\n"
          "def interrupted_while_importing():\n    exec('raise KeyboardInterrupt')\n"
          "cli.build_parser = interrupted_while_importing\nsys.exit(cli.main([]))\n")
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "interrupted_import"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == "hessian-lora: interrupted; finished work is kept, rerun to resume."


def test_an_interrupt_during_an_import_waits_for_the_import(tmp_path) -> None:
    """A Ctrl-C raised inside an import can abort the process from torch's C++ start-up (status -6, CI saw it in
    test_ctrl_c_in_the_first_seconds): the CLI delivers it once the import is done, and still exits 130."""
    write(tmp_path / "slow_module.py",
          "import signal, time\nsignal.raise_signal(signal.SIGINT)\ntime.sleep(0.3)\nFINISHED = True\n")
    write(tmp_path / "interrupted_import.py",
          "import sys, time, hessian_lora.cli as cli\n"
          "def build_parser():\n    import slow_module\n    time.sleep(30)\n"
          "cli.build_parser = build_parser\ncode = cli.main([])\n"
          "print(getattr(sys.modules.get('slow_module'), 'FINISHED', False))\nsys.exit(code)\n")
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "interrupted_import"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 130, result.stderr
    assert result.stdout.strip() == "True"  # the import ran to its end before the interrupt landed
    assert time.monotonic() - started < 20  # ... and the interrupt did land, in the sleep after it
    assert result.stderr.strip() == "hessian-lora: interrupted; finished work is kept, rerun to resume."


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.5])
def test_ctrl_c_in_the_first_seconds(delay: float, good, tmp_path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "hessian_lora", "sweep", str(good["config"]), "--out", str(tmp_path / "run"),
         "--quiet", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:  # finished before the signal: nothing to check
        return
    assert process.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


# ----------------------------------------------------------------------------------------------------------
# Kill leftovers


def test_stale_config_temp_in_a_fresh_directory_is_not_refused(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    write(run / ".config.yaml.abcd1234.tmp", "model: half-writ")
    write(run / ".sweep.lock", "")
    config = _sweep_yaml(tmp_path, {**GOOD_SWEEP, "hessian": {"init": False}})
    assert main(["sweep", str(config), "--out", str(run), "--quiet", "--threads", "1"]) == 0
    assert not list(run.rglob("*.tmp"))


def test_stale_report_temps_are_cleaned_on_resume(good, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(good["run"], run)
    write(run / "hessian" / ".lora_r2_s0_init.json.x1y2.tmp", "{")
    write(run / "runs" / ".some_run.abc.tmp" / "adapter_model.safetensors", b"")
    write(run / ".results.csv.q.tmp", "")
    before = (run / "results.sqlite").read_bytes()
    assert main(["sweep", str(good["config"]), "--out", str(run), "--quiet", "--threads", "1"]) == 0
    assert not list(run.rglob("*.tmp"))
    assert (run / "results.sqlite").read_bytes() == before


def test_eigen_cleans_stale_temps_beside_its_report(tmp_path, capsys) -> None:
    write(tmp_path / "reports" / ".r.json.zz.tmp", "{")
    # 0 or 3 (written, not certified in three products): this test is about the stale temporaries.
    assert main(["eigen", "--method", "lora", *TINY, "--rank", "2", *EIGEN_FAST[:-2],
                 "--out", str(tmp_path / "reports" / "r.json")]) in (0, 3)
    assert not list((tmp_path / "reports").glob("*.tmp"))


def test_sweep_files_get_umask_permissions(tmp_path, capsys) -> None:
    old = os.umask(0o022)
    try:
        run = tmp_path / "run"
        config = _sweep_yaml(tmp_path, {**GOOD_SWEEP, "hessian": {"init": False}})
        assert main(["sweep", str(config), "--out", str(run), "--quiet", "--threads", "1"]) == 0
    finally:
        os.umask(old)
    assert (run / "config.yaml").stat().st_mode & 0o777 == 0o644
    (checkpoint,) = list((run / "runs").iterdir())
    assert checkpoint.stat().st_mode & 0o777 == 0o755
    assert (checkpoint / "hessian_lora.json").stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------------------------------------
# The checks refuse only bad input: the good files pass them


def test_good_checkpoint_passes_every_check(good, untouched, tmp_path, capsys) -> None:
    assert main(["info", str(good["checkpoint"]), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["optimizer_state"]["step"] == 2
    assert main(["eigen", str(good["checkpoint"]), "--preconditioned", *EIGEN_FAST,
                 "--out", str(tmp_path / "r.json")]) in (0, 3)  # 3: written, three products need not certify
    assert main(["info", str(good["init"])]) == 0


# ----------------------------------------------------------------------------------------------------------
# A kill at each step of a sweep's first start, then a rerun (issue 23)

KILL_SWEEP = {**GOOD_SWEEP, "lr": [1e-3, 1e-2], "hessian": {"init": False}}
# The columns two executions of the same run agree on (timings and timestamps differ).
KILL_COMPARED = ("run_id", "status", "steps", "tokens", "train_loss", "initial_loss", "eval_loss", "accuracy")
# Each step of a fresh start, and what the process does there before it is killed (SIGKILL to itself, so the
# instant is exact): patched into the sweep's modules by _KILL_SCRIPT.
KILL_POINTS = ("lock-taken", "config-half-written", "config-written", "store-being-built",
               "store-built-in-place", "store-created", "first-row-running")
_KILL_SCRIPT = """
import os, signal, sqlite3, sys
from hessian_lora.cli import main
from hessian_lora.sweep import runner, store
from hessian_lora._io import temporary_path

def die(*_):
    os.kill(os.getpid(), signal.SIGKILL)

point = sys.argv[1]
if point == "lock-taken":
    runner.clean_stale_files = die
elif point == "config-half-written":
    def half(path, data):
        temporary_path(path).write_text("model: tiny-ll")
        die()
    runner._write_config = half
elif point == "config-written":
    write_config = runner._write_config
    runner._write_config = lambda path, data: (write_config(path, data), die())
elif point == "store-being-built":
    schema = store._create_schema
    store._create_schema = lambda connection: (schema(connection), die())
elif point == "store-built-in-place":  # how a store was created before issue 23: its table in the file itself
    def in_place(path):
        connection = sqlite3.connect(str(path), isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        store._create_schema(connection)
        die()
    store._create_store_file = in_place
elif point == "store-created":
    store.RunStore.start = die
elif point == "first-row-running":
    start = store.RunStore.start
    store.RunStore.start = lambda self, spec: (start(self, spec), die())
sys.exit(main(sys.argv[2:]))
"""


def _table(run: Path) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(f"file:{run / 'results.sqlite'}?mode=ro", uri=True)
    try:
        connection.row_factory = sqlite3.Row
        rows = connection.execute("SELECT * FROM runs ORDER BY run_id").fetchall()
    finally:
        connection.close()
    return [tuple(row[name] for name in KILL_COMPARED) for row in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[Any, ...]]]:
    root = tmp_path_factory.mktemp("uninterrupted")
    config = write(root / "kill.yaml", yaml.safe_dump(KILL_SWEEP))
    assert main(["sweep", str(config), "--out", str(root / "run"), "--quiet", "--threads", "1"]) == 0
    return config, _table(root / "run")


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_at_each_step_of_the_first_start_then_a_rerun_finishes(point: str, uninterrupted, tmp_path,
                                                                      capsys) -> None:
    config, reference = uninterrupted
    run = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, point, "sweep", str(config), "--out", str(run),
                             "--quiet", "--threads", "1"], capture_output=True, text=True, env=cli_env(), timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if point == "store-built-in-place":  # the leftover the issue describes: a store with no runs table
        with pytest.raises(sqlite3.Error, match="no such table"):
            _table(run)
    capsys.readouterr()
    assert main(["sweep", str(config), "--out", str(run), "--quiet", "--threads", "1"]) == 0, capsys.readouterr().err
    rows = _table(run)
    assert [row[:3] for row in rows] == [row[:3] for row in reference]
    for row, expected in zip(rows, reference):
        assert row[3:] == pytest.approx(expected[3:], rel=1e-6), (row, expected)
    assert not list(run.rglob("*.tmp")) and not list(run.glob("*-journal"))


# ----------------------------------------------------------------------------------------------------------
# The newer features (issue 23): evaluation sets, hessian.during, bounded numbers, calibration probes, peft
# adapter directories, GraLoRA ranks, ablation inputs, search metrics. Every case: one line, exit 2, nothing
# written (a refused sweep leaves not even the directory it made), the good data beside it untouched.


def _refused_sweep(tmp_path: Path, changes: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> str:
    config = _sweep_yaml(tmp_path, {**GOOD_SWEEP, **changes})
    run = tmp_path / "run"
    message = fails(["sweep", config, "--out", run, "--quiet", "--threads", "1"], capsys)
    assert f"error: {config}: " in message, message
    assert not run.exists(), sorted(path.name for path in run.iterdir())
    return message


GSM8K_GOOD = {"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}
EVAL_SET_CASES: dict[str, tuple[str, bytes | str | Any]] = {
    "gsm8k-empty-file": ("gsm8k", ""),
    "gsm8k-not-utf8": ("gsm8k", b'{"question": "\xff\xfe"}\n'),
    "gsm8k-line-not-json": ("gsm8k", json.dumps(GSM8K_GOOD) + "\n{oops\n"),
    "gsm8k-line-a-list": ("gsm8k", "[1, 2]\n"),
    "gsm8k-no-answer-field": ("gsm8k", json.dumps({"question": "q", "solution": "#### 4"}) + "\n"),
    "gsm8k-answer-without-hashes": ("gsm8k", json.dumps({"question": "q", "answer": "it is 4"}) + "\n"),
    "gsm8k-question-a-number": ("gsm8k", json.dumps({"question": 7, "answer": "#### 4"}) + "\n"),
    "math-solution-without-boxed": ("math", json.dumps({"problem": "1 + 1?", "solution": "It is 2."}) + "\n"),
    "math-json-array-of-strings": ("math", '["a", "b"]'),
    "mbpp-test-list-a-string": ("mbpp", json.dumps({"task_id": 1, "text": "t", "code": "x = 1",
                                                    "test_list": "assert True"}) + "\n"),
}


@pytest.mark.parametrize("case", sorted(EVAL_SET_CASES))
def test_sweep_bad_evaluation_set_is_refused_before_any_run_trains(case: str, untouched, tmp_path, capsys,
                                                                    monkeypatch) -> None:
    from hessian_lora.training import train

    def no_training(*args, **kwargs):
        raise AssertionError("a run trained although its evaluation set is unusable")

    monkeypatch.setattr(train, "train", no_training)
    kind, content = EVAL_SET_CASES[case]
    path = write(tmp_path / "eval.jsonl", content)
    message = _refused_sweep(tmp_path, {"eval_task": [f"{kind}:{path}"]}, capsys)
    assert str(path) in message


def test_the_preflight_reads_each_evaluation_set_once_for_every_run(tmp_path, capsys, monkeypatch) -> None:
    """The sets the preflight read are the ones the runs score with: read once, not once per run."""
    from hessian_lora import evalsets
    from hessian_lora.sweep import execute

    execute.cached_eval_set.cache_clear()
    reads: list[str] = []
    real = evalsets.load_eval_set
    monkeypatch.setattr(evalsets, "load_eval_set", lambda spec, **kw: reads.append(spec) or real(spec, **kw))
    spec = f"gsm8k:{REPO / 'tests' / 'fixtures' / 'gsm8k.jsonl'}"
    config = _sweep_yaml(tmp_path, {**GOOD_SWEEP, "lr": [1e-3, 1e-2], "eval_task": [spec],
                                    "hessian": {"init": False}})
    assert main(["sweep", str(config), "--out", str(tmp_path / "run"), "--quiet", "--threads", "1"]) == 0
    assert reads == [spec]
    rows = _table_rows(tmp_path / "run")
    assert all(row["gsm8k_acc"] is not None for row in rows) and len(rows) == 2


def _table_rows(run: Path) -> list[dict[str, Any]]:
    connection = sqlite3.connect(f"file:{run / 'results.sqlite'}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute("SELECT * FROM runs")]
    finally:
        connection.close()


DURING_CASES: dict[str, dict[str, Any]] = {
    "backend-unknown": {"backend": "magic"},
    "backend-number": {"backend": 3},
    "tol-inf": {"tol": float("inf")},
    "tol-nan": {"tol": float("nan")},
    "tol-one": {"tol": 1.0},
    "tol-zero": {"tol": 0.0},
    "tol-text": {"tol": "tight"},
    "seed-negative": {"seed": -1},
    "samples-text": {"samples": "all"},
}


@pytest.mark.parametrize("case", sorted(DURING_CASES))
def test_sweep_bad_sharpness_probe_setting(case: str, untouched, tmp_path, capsys) -> None:
    message = _refused_sweep(tmp_path, {"hessian": {"during": {"every": 1, **DURING_CASES[case]}}}, capsys)
    assert "hessian.during" in message


@pytest.mark.parametrize("where", ["during", "final"])
def test_sweep_dora_with_finite_differences_is_refused_before_any_run(where: str, untouched, tmp_path,
                                                                     capsys) -> None:
    """The engine refuses DoRA with finite differences at its first product; the preflight now does, at once."""
    hessian = ({"during": {"every": 1, "backend": "finite_difference"}} if where == "during" else
               {"init": False, "final": True, "samples": 4, "batch_size": 4, "backend": "finite_difference"})
    message = _refused_sweep(tmp_path, {"methods": ["lora", "dora"], "hessian": hessian}, capsys)
    assert "dora" in message and "finite_difference" in message


NUMBER_CASES: dict[str, dict[str, Any]] = {
    "humaneval-timeout-nan": {"eval": {"humaneval_timeout": float("nan")}},
    "humaneval-timeout-inf": {"eval": {"humaneval_timeout": float("inf")}},
    "humaneval-timeout-zero": {"eval": {"humaneval_timeout": 0}},
    "humaneval-timeout-text": {"eval": {"humaneval_timeout": "long"}},
    "hessian-tol-inf": {"hessian": {"init": True, "tol": float("inf")}},
    "hessian-tol-two": {"hessian": {"init": True, "options": {"tol": 2}}},
}


@pytest.mark.parametrize("case", sorted(NUMBER_CASES))
def test_sweep_unbounded_number(case: str, untouched, tmp_path, capsys) -> None:
    config = _sweep_yaml(tmp_path, {**GOOD_SWEEP, **NUMBER_CASES[case]})
    message = fails(["sweep", config, "--out", tmp_path / "run", "--quiet", "--threads", "1"], capsys)
    assert "finite number" in message and str(config) in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("tol", ["2", "inf", "1", "0", "-0.5"])
def test_eigen_tolerance_outside_zero_one(tol: str, untouched, tmp_path, capsys) -> None:
    message = fails(["eigen", "--method", "lora", *TINY, "--tol", tol, *EIGEN_FAST[:-2], "--out",
                     tmp_path / "r.json"], capsys)
    assert "--tol" in message and "(0, 1)" in message
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 0.0, -1.0, True, "10"])
def test_no_sandbox_runs_without_a_finite_time_limit(timeout: Any, tmp_path) -> None:
    """Every way into the code sandbox refuses a limit that never expires, before a program starts."""
    from hessian_lora.errors import UserError
    from hessian_lora.evalsets import load_eval_set
    from hessian_lora.evaluate import EvalConfig, run_program

    marker = tmp_path / "ran"
    with pytest.raises(UserError, match="finite number"):
        run_program(f"open({str(marker)!r}, 'w').write('x')\n", timeout=timeout)
    assert not marker.exists()
    with pytest.raises(UserError, match="finite number"):
        EvalConfig(humaneval_timeout=timeout)
    with pytest.raises(UserError, match="finite number"):
        load_eval_set(f"mbpp:{REPO / 'tests' / 'fixtures' / 'mbpp.jsonl'}", code_timeout=timeout)


def test_the_sandbox_limit_stops_a_program_that_never_ends() -> None:
    from hessian_lora.evaluate import run_program

    started = time.monotonic()
    assert run_program("while True:\n    pass\n", timeout=0.5) is False
    assert time.monotonic() - started < 30


def _calibration(good: dict[str, Path], tmp_path: Path, case: str) -> Path:
    from hessian_lora.recommend import load_calibration

    data = json.loads(json.dumps(load_calibration(None).to_dict()))
    change = CALIBRATION_PROBE_CASES[case]
    if change == "LIST":
        data["probe"] = ["model", "tiny-llama"]
    else:
        data["probe"].update(change)
    return write(tmp_path / "cal.json", data)


CALIBRATION_PROBE_CASES: dict[str, Any] = {
    "probe-a-list": "LIST",
    "samples-text": {"samples": "many"},
    "rank-zero": {"rank": 0},
    "attention-unknown": {"attention": "flash_attention_9"},
    "blocks-unknown": {"blocks": "every-other"},
    "targets-number": {"targets": 5},
    "max-length-text": {"max_length": "long"},
    "eigen-options-unknown": {"eigen_options": {"tolerance": 1e-3}},
    "eigen-options-tol-inf": {"eigen_options": {"tol": float("inf")}},
    "template-unusable": {"prompt_template": "no placeholder"},
}


@pytest.mark.parametrize("case", sorted(CALIBRATION_PROBE_CASES))
def test_recommend_bad_calibration_probe(case: str, good, untouched, tmp_path, capsys) -> None:
    path = _calibration(good, tmp_path, case)
    message = fails(["recommend", "--method", "lora", *TINY, "--calibration", path], capsys)
    assert str(path) in message and "probe" in message


@pytest.mark.parametrize("case", ["probe-a-list", "attention-unknown", "samples-text", "eigen-options-tol-inf"])
def test_sweep_search_with_a_bad_calibration_leaves_nothing(case: str, good, untouched, tmp_path, capsys) -> None:
    path = _calibration(good, tmp_path, case)
    message = _refused_sweep(tmp_path, {"search": {"mode": "adaptive", "calibration": str(path)}}, capsys)
    assert "search.calibration" in message and str(path) in message


def test_sweep_search_metric_nothing_records_is_refused(untouched, tmp_path, capsys) -> None:
    message = _refused_sweep(tmp_path, {"search": {"mode": "adaptive", "metric": "accuracy"},
                                        "eval": {"accuracy": False}}, capsys)
    assert "eval.accuracy" in message


@pytest.mark.parametrize("metric", ["accuracy", "eval_loss", "auto"])
def test_sweep_search_metric_without_held_out_examples(metric: str, untouched, tmp_path, capsys) -> None:
    message = _refused_sweep(tmp_path, {"n_eval": 0, "search": {"mode": "adaptive", "metric": metric}}, capsys)
    assert "n_eval" in message


# Plain peft adapter directories: good["init"] without hessian_lora.json is one (saved by save_pretrained).

PEFT_CASES: dict[str, Any] = {
    "config-not-utf8": b"\xff\xfe{\x80",
    "config-not-json": "{ nope",
    "config-a-list": ["LORA"],
    "config-is-directory": "DIR",
    "r-text": {"r": "four"},
    "r-zero": {"r": 0},
    "r-bool": {"r": True},
    "alpha-nan": {"lora_alpha": "NAN"},
    "alpha-negative": {"lora_alpha": -4},
    "dropout-one": {"lora_dropout": 1.0},
    "base-a-number": {"base_model_name_or_path": 5},
    "targets-a-number": {"target_modules": 7},
    "peft-type-unknown": {"peft_type": "IA3"},
    "use-dora-text": {"use_dora": "sometimes"},
}


def _peft_directory(good: dict[str, Path], tmp_path: Path, case: str | None = None) -> Path:
    directory = tmp_path / "peft"
    shutil.copytree(good["init"], directory)
    (directory / "hessian_lora.json").unlink()
    if case is None:
        return directory
    config = directory / "adapter_config.json"
    change = PEFT_CASES[case]
    if isinstance(change, dict):
        data = {**json.loads(config.read_text()), **change}
        text = json.dumps(data).replace('"NAN"', "NaN")  # JSON's NaN, which Python's json module reads
        write(config, text)
    elif change == "DIR":
        config.unlink()
        config.mkdir()
    else:
        write(config, change)
    return directory


@pytest.mark.parametrize("command", ["info", "eigen"])
@pytest.mark.parametrize("case", sorted(PEFT_CASES))
def test_damaged_peft_adapter_config(command: str, case: str, good, untouched, tmp_path, capsys) -> None:
    directory = _peft_directory(good, tmp_path, case)
    argv = ["info", directory] if command == "info" else ["eigen", directory, *EIGEN_FAST, "--out",
                                                          tmp_path / "r.json"]
    message = fails(argv, capsys)
    assert "adapter_config.json" in message
    assert not (tmp_path / "r.json").exists()


PEFT_BASE_CASES = {
    "other-shape": ["--model", "tiny-llama:hidden_size=32"],
    "other-layer-count": ["--model", "tiny-llama:layers=1"],
    "targets-absent": "nope_proj",
    "targets-regex-matches-nothing": ".*\\.nothing_here",
}


@pytest.mark.parametrize("case", sorted(PEFT_BASE_CASES))
def test_peft_adapter_on_a_base_it_does_not_fit(case: str, good, untouched, tmp_path, capsys) -> None:
    directory = _peft_directory(good, tmp_path)
    change = PEFT_BASE_CASES[case]
    extra: list[Any] = []
    if isinstance(change, list):
        extra = change
    else:
        config = directory / "adapter_config.json"
        data = json.loads(config.read_text())
        data["target_modules"] = change if case.endswith("regex-matches-nothing") else [change]
        write(config, data)
    message = fails(["eigen", directory, *extra, *EIGEN_FAST, "--out", tmp_path / "r.json"], capsys)
    assert str(directory) in message and "--model" in message
    assert "size mismatch" not in message or message.count("size mismatch") == 1


def test_good_peft_directory_passes_the_checks(good, untouched, tmp_path, capsys) -> None:
    directory = _peft_directory(good, tmp_path)
    assert main(["info", str(directory)]) == 0
    assert "alpha             2 (scale 1)" in capsys.readouterr().out
    # Enough iterations to certify λ_max: an uncertified value is not a success (the CLI may exit non-zero).
    converging = [item if item != "3" else "40" for item in EIGEN_FAST]
    assert main(["eigen", str(directory), *converging, "--out", str(tmp_path / "r.json")]) == 0


GRALORA_CASES = {
    "init-rank-3": ["init", *TINY, "--method", "gralora", "--rank", "3", "--out", "OUT"],
    "init-rank-34": ["init", *TINY, "--method", "gralora", "--rank", "34", "--out", "OUT"],
    "eigen-rank-5": ["eigen", "--method", "gralora", *TINY, "--rank", "5", *EIGEN_FAST, "--out", "OUT"],
    "recommend-rank-3": ["recommend", "--method", "gralora", *TINY, "--rank", "3"],
}


@pytest.mark.parametrize("case", sorted(GRALORA_CASES))
def test_gralora_rank_that_its_blocks_do_not_divide(case: str, untouched, tmp_path, capsys) -> None:
    argv = [tmp_path / "out" if item == "OUT" else item for item in GRALORA_CASES[case]]
    message = fails(argv, capsys)
    assert "multiple of" in message
    assert not (tmp_path / "out").exists()


def test_sweep_gralora_rank_is_refused_when_the_yaml_is_read(untouched, tmp_path, capsys) -> None:
    message = _refused_sweep(tmp_path, {"methods": ["lora", "gralora"], "ranks": [2, 6, 3]}, capsys)
    assert "ranks" in message and "got 3" in message


ABLATION_CONFIGS = {"config-binary": b"\x00\xff\xfe\x80", "config-a-list": "- 1\n- 2\n",
                    "config-not-yaml": "model: [unclosed\n", "config-model-a-list": "model: [1, 2]\n"}


@pytest.mark.parametrize("dirs", [1, 2])
@pytest.mark.parametrize("case", sorted(ABLATION_CONFIGS))
def test_analyze_run_directory_with_a_damaged_config(case: str, dirs: int, good, untouched, tmp_path,
                                                     capsys) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(good["run"], damaged)
    write(damaged / "config.yaml", ABLATION_CONFIGS[case])
    run_dirs = [damaged] if dirs == 1 else [good["run"], damaged]
    message = fails(["analyze", *run_dirs, "--bootstrap", "10", "--out", tmp_path / "a"], capsys)
    assert str(damaged / "config.yaml") in message
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("command", ["analyze", "plot"])
@pytest.mark.parametrize("spelling", ["same", "trailing-dot"])
def test_the_same_run_directory_twice_is_refused(command: str, spelling: str, good, untouched, tmp_path,
                                                 capsys) -> None:
    second = good["run"] if spelling == "same" else good["run"] / "."
    message = fails([command, good["run"], second, "--bootstrap", "10", "--out", tmp_path / "a"], capsys)
    assert "twice" in message
    assert not (tmp_path / "a").exists()


def test_bad_template_recorded_in_a_checkpoint_names_the_checkpoint(good, untouched, tmp_path, capsys) -> None:
    checkpoint = damaged_copy(good["checkpoint"], tmp_path / "ckpt", "hessian_lora.json",
                              json.dumps(_meta(good, extra={"prompt_template": "no placeholder"})))
    message = fails(["eigen", checkpoint, *EIGEN_FAST, "--out", tmp_path / "r.json"], capsys)
    assert str(checkpoint) in message and "--prompt-template" in message


@pytest.mark.parametrize("method", ["gralora", "randlora"])
def test_peft_adapter_of_another_tuner_on_another_base(method: str, untouched, tmp_path, capsys) -> None:
    """Tensors the shape check does not know (GraLoRA's blocks, RandLoRA's bases): peft's own size mismatch,
    one line instead of one per tensor."""
    directory = tmp_path / method
    assert main(["init", *TINY, "--method", method, "--rank", "2", "--targets", "q_proj,v_proj",
                 "--out", str(directory)]) == 0
    (directory / "hessian_lora.json").unlink()
    capsys.readouterr()
    message = fails(["eigen", directory, "--model", "tiny-llama:hidden_size=32", *EIGEN_FAST, "--out",
                     tmp_path / "r.json"], capsys)
    assert message.count("size mismatch") == 1 and "more like it" in message and "--model" in message
