"""Bad input to the newest features (issue 34): the Krylov budget, ``--block-size``, sample sizes, the bf16-era
search and evaluation settings, plain peft / Trainer checkpoints, minimal reports fed to ``analyze``, the
init-reuse records, ``--dry-run``, generated code without confinement, and the scripts in ``scripts/``.

Same rules as tests/test_bad_inputs.py (whose helpers this reuses): one line on stderr naming the file or flag,
the field and the fix; exit 2 (3 where a report is written but not certified); nothing written by a refused
command; the good data beside it byte-identical. Every case here ended in a traceback, measured something else
without a word, or passed a dry run its real run refused before the fixes it came with.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_bad_inputs import GOOD_SWEEP, TINY, fails, fingerprint, write

from hessian_lora.cli import main

REPO = Path(__file__).resolve().parents[1]
FAST = ["--samples", "2", "--batch-size", "2", "--max-length", "96", "--max-iter", "8", "--no-min", "--quiet",
        "--threads", "1"]
EIGEN = ["eigen", *TINY, "--method", "lora", "--rank", "2", "--targets", "q_proj", *FAST]
VECTOR_GIB = 2 * 2 * 64 * 4 * 2 / 2**30  # the tiny model's q_proj block at r=2: 2 layers × (A + B) × 64 × r, fp32


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished one-run sweep with λ_max at init (its fingerprint is checked after each case) and a plain peft
    copy of its checkpoint (no hessian_lora.json, no optimizer state: what a Trainer leaves)."""
    root = tmp_path_factory.mktemp("newest")
    config = write(root / "good.yaml", yaml.safe_dump(GOOD_SWEEP))
    run = root / "run"
    assert main(["sweep", str(config), "--out", str(run), "--threads", "1", "--quiet"]) == 0
    (checkpoint,) = (run / "runs").iterdir()
    peft = root / "peft"
    shutil.copytree(checkpoint, peft, ignore=shutil.ignore_patterns("hessian_lora.json", "optimizer.pt"))
    return {"root": root, "config": config, "run": run, "peft": peft}


@pytest.fixture
def kept(made: dict[str, Path]):
    before = fingerprint(made["root"])
    yield
    assert fingerprint(made["root"]) == before, "good data next to the bad input changed"


def _script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_fails(name: str, argv: list[Any], capsys: pytest.CaptureFixture[str]) -> str:
    """A script's refusal: exit 2 and one ``error:`` line on stderr, no traceback."""
    capsys.readouterr()
    code = _script(name).main([str(item) for item in argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, captured.err)
    return lines[0]


# ----------------------------------------------------------------------------------------------------------
# eigen: the Krylov budget, --block-size, Trainer state files


EIGEN_CASES: dict[str, tuple[list[str], str]] = {
    "krylov-below-the-start-block": (["--krylov-memory", f"{3.5 * VECTOR_GIB!r}", "--block-size", "6"],
                                     "--krylov-memory"),
    "krylov-absurd": (["--krylov-memory", "1e12"], "--krylov-memory"),
    "krylov-beyond-any-machine": (["--krylov-memory", "1e300"], "--krylov-memory"),
    "block-size-beyond-max-iter": (["--block-size", "100000"], "max_iter"),
    "block-size-beyond-max-iter-small": (["--block-size", "9"], "max_iter"),
}


@pytest.mark.parametrize("case", sorted(EIGEN_CASES))
def test_eigen_refuses(case: str, made, kept, tmp_path, capsys) -> None:
    extra, named = EIGEN_CASES[case]
    out = tmp_path / "report.json"
    message = fails([*EIGEN, *extra, "--out", out], capsys)
    assert named in message and not out.exists()


@pytest.mark.parametrize("vectors", [3.0, 3.5, 3.9])
def test_a_krylov_budget_between_three_and_four_vectors_runs_until_it_is_spent(vectors: float, tmp_path,
                                                                                capsys) -> None:
    """It used to end in an assertion inside the Krylov store (its pages hold four vectors)."""
    out = tmp_path / "report.json"
    code = main([*EIGEN, "--krylov-memory", repr(vectors * VECTOR_GIB), "--out", str(out)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and code == 3  # written, not certified: the documented exit
    block = json.loads(out.read_text())["blocks"][0]
    assert block["eigen"]["stop_reason"] == "memory" and block["hvps"] >= 2


TRAINER_STATES: dict[str, bytes | str] = {
    "trainer-state-undecodable": b"\xff\xfe\x00{garbage",
    "trainer-state-a-list": "[]",
    "trainer-state-step-a-string": json.dumps({"global_step": "ten"}),
}


@pytest.mark.parametrize("case", sorted(TRAINER_STATES))
def test_eigen_on_a_checkpoint_with_a_damaged_trainer_state(case: str, made, kept, tmp_path, capsys) -> None:
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(made["peft"], checkpoint)
    write(checkpoint / "trainer_state.json", TRAINER_STATES[case])
    out = tmp_path / "report.json"
    message = fails(["eigen", checkpoint, *TINY, *FAST, "--out", out], capsys)
    assert "trainer_state.json" in message and not out.exists()


# ----------------------------------------------------------------------------------------------------------
# analyze: minimal or odd reports, damaged init-reuse records


def _run_copy(made: dict[str, Path], tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(made["run"], run, ignore=shutil.ignore_patterns("*.safetensors", "optimizer.pt"))
    return run


MINIMAL_BLOCKS: dict[str, dict[str, Any]] = {
    "minimal-block": {"name": "adapter", "lambda_max": 1.5},
    "minimal-block-in-a-scan-group": {"name": "adapter", "lambda_max": 1.5, "scan_group": "g"},
    "block-without-eigen-record": {"name": "adapter", "lambda_max": 1.5, "seconds": 2.0, "hvps": 4, "eigen": None},
}


@pytest.mark.parametrize("case", sorted(MINIMAL_BLOCKS))
def test_analyze_a_report_with_a_minimal_block(case: str, made, kept, tmp_path, capsys) -> None:
    run = _run_copy(made, tmp_path)
    write(run / "hessian" / "lora_r2_s0_init.json", {"blocks": [MINIMAL_BLOCKS[case]]})
    assert main(["analyze", str(run), "--bootstrap", "10"]) == 0, capsys.readouterr().err
    cost = json.loads((run / "analysis.json").read_text())["cost"]
    assert cost["eigen_blocks"] == 1 and cost["eigen_seconds"] >= 0


def test_analyze_a_block_whose_time_is_not_a_number(made, kept, tmp_path, capsys) -> None:
    run = _run_copy(made, tmp_path)
    report = write(run / "hessian" / "lora_r2_s0_init.json",
                   {"blocks": [{"name": "adapter", "lambda_max": 1.5, "seconds": "x"}]})
    message = fails(["analyze", run, "--bootstrap", "10"], capsys)
    assert str(report) in message and "wrong type" in message and not (run / "analysis.json").exists()


def test_an_undecodable_init_reuse_record_counts_as_absent(made, kept, tmp_path, capsys) -> None:
    run = _run_copy(made, tmp_path)
    write(run / "hessian" / "lora_r2_s0_init.inputs", b"\xff\xfe\x00")
    assert main(["analyze", str(run), "--bootstrap", "10"]) == 0, capsys.readouterr().err
    # A sweep extended over it (a new seed, whose run compares its inputs with every record) finishes.
    config = write(tmp_path / "two-seeds.yaml", yaml.safe_dump({**GOOD_SWEEP, "seeds": [0, 1]}))
    assert main(["sweep", str(config), "--out", str(run), "--extend", "--threads", "1", "--quiet"]) == 0
    assert json.loads((run / "hessian" / "lora_r2_s1_init.inputs").read_text())["sha256"]


# ----------------------------------------------------------------------------------------------------------
# sweep: sizes and settings the preflight must refuse, in the dry run as in the real run


def _calibration_for_the_tiny_model(tmp_path: Path, methods: int) -> str:
    data = json.loads((REPO / "hessian_lora" / "data" / "calibration_smollm2.json").read_text())
    names = ["lora", *[name for name in data["points"] if name != "lora"]][:methods]
    data["points"] = {name: data["points"][name] for name in names}
    data["probe"] = {**data.get("probe", {}), "model": "tiny-llama", "task": "arith", "rank": 2}
    return str(write(tmp_path / "calibration.json", data))


SWEEP_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "hessian-krylov-memory-absurd": ({"hessian": {**GOOD_SWEEP["hessian"], "krylov_memory": 1e12}},
                                     "hessian.krylov_memory"),
    "hessian-block-size-beyond-max-iter": ({"hessian": {**GOOD_SWEEP["hessian"], "block_size": 64}}, "block_size"),
    "search-leave-method-out-with-two-methods": ({"search": {"mode": "adaptive", "max_runs": 2,
                                                             "leave_method_out": True,
                                                             "calibration": "CALIBRATION"}}, "leave_method_out"),
    "eval-allow-unconfined-code-a-string": ({"eval": {"allow_unconfined_code": "yes"}}, "allow_unconfined_code"),
    "eval-accuracy-a-string": ({"eval": {"accuracy": "no"}}, "eval.accuracy"),
    "eval-humaneval-a-string": ({"eval": {"humaneval": "yes"}}, "eval.humaneval"),
}


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize("case", sorted(SWEEP_CASES))
def test_sweep_refuses_before_writing(case: str, dry_run: bool, kept, tmp_path, capsys) -> None:
    changes, named = SWEEP_CASES[case]
    changes = json.loads(json.dumps(changes))
    if changes.get("search", {}).get("calibration") == "CALIBRATION":
        changes["search"]["calibration"] = _calibration_for_the_tiny_model(tmp_path, methods=2)
    config = write(tmp_path / "config.yaml", yaml.safe_dump({**GOOD_SWEEP, **changes}))
    out = tmp_path / "out"
    message = fails(["sweep", config, "--out", out, "--threads", "1", "--quiet",
                     *(["--dry-run"] if dry_run else [])], capsys)
    assert named in message, message
    assert not out.exists()  # nothing at all: no config.yaml, no store, no lock


def test_a_dry_run_on_a_directory_of_another_grid_refuses_as_the_run_does(made, kept, tmp_path, capsys) -> None:
    config = write(tmp_path / "ranks.yaml", yaml.safe_dump({**GOOD_SWEEP, "ranks": [4]}))
    dry = fails(["sweep", config, "--out", made["run"], "--dry-run", "--threads", "1", "--quiet"], capsys)
    real = fails(["sweep", config, "--out", made["run"], "--threads", "1", "--quiet"], capsys)
    assert dry == real and "--extend" in dry
    # With --extend both go ahead (the dry run says what the extended grid holds, and writes nothing).
    capsys.readouterr()
    assert main(["sweep", str(config), "--out", str(made["run"]), "--dry-run", "--extend", "--threads", "1",
                 "--quiet"]) == 0
    assert "grid: 2 runs" in capsys.readouterr().out


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_code_evaluation_without_confinement_is_refused_unless_the_flag_accepts_it(dry_run: bool, kept, tmp_path,
                                                                                  capsys, monkeypatch) -> None:
    from hessian_lora import sandbox

    unavailable = sandbox.Confinement("none", "none", reason="simulated: no user namespaces")
    monkeypatch.setattr(sandbox, "probe_confinement", lambda: unavailable)
    monkeypatch.setattr(sandbox, "_announced", set())
    monkeypatch.setattr(sandbox, "_accepted_in_process", False)  # the flag below sets it for the process
    mbpp = f"mbpp:{REPO / 'tests' / 'fixtures' / 'mbpp.jsonl'}"
    config = write(tmp_path / "code.yaml", yaml.safe_dump({**GOOD_SWEEP, "eval_task": [mbpp]}))
    out = tmp_path / "out"
    flags = ["--threads", "1", "--quiet", *(["--dry-run"] if dry_run else [])]
    message = fails(["sweep", config, "--out", out, *flags], capsys)
    assert "--allow-unconfined-code" in message and not out.exists()
    if dry_run:  # the flag accepts the risk (the dry run writes nothing, and runs no code)
        assert main(["sweep", str(config), "--out", str(out), *flags, "--allow-unconfined-code"]) == 0
        assert not out.exists()


# ----------------------------------------------------------------------------------------------------------
# scripts/init_modules.py: what it would otherwise measure in place of what was asked


INIT_MODULES_CASES: dict[str, tuple[list[str], str]] = {
    "one-layer": (["--layers", "1"], "--layers"),
    "negative-layers": (["--layers", "-3"], "--layers"),
    "zero-layers": (["--layers", "0"], "--layers"),
    "layers-not-a-number": (["--layers", "some"], "--layers"),
    "a-module-the-adapter-does-not-target": (["--modules", "gate_proj"], "--modules gate_proj"),
    "zero-samples": (["--samples", "0"], "--samples"),
    "negative-samples": (["--samples", "-2"], "--samples"),
    "zero-threads": (["--threads", "0"], "--threads"),
    "a-seed-the-sweep-never-ran": (["--seeds", "9"], "--seeds 9"),
    "a-method-the-sweep-never-ran": (["--methods", "dora"], "--methods dora"),
}


@pytest.mark.parametrize("case", sorted(INIT_MODULES_CASES))
def test_init_modules_refuses(case: str, made, kept, tmp_path, capsys) -> None:
    argv, named = INIT_MODULES_CASES[case]
    run = _run_copy(made, tmp_path)
    before = fingerprint(run)
    threads = [] if "--threads" in argv else ["--threads", "1"]
    message = script_fails("init_modules", [run, *argv, *threads], capsys)
    assert named in message and fingerprint(run) == before


# ----------------------------------------------------------------------------------------------------------
# scripts/ship_run.py: nothing half-made


def _damaged_database(made: dict[str, Path], tmp_path: Path) -> Path:
    run = _run_copy(made, tmp_path)
    (run / "results.sqlite").write_bytes(b"not a database " * 64)
    for companion in run.glob("results.sqlite-*"):
        companion.unlink()
    return run


SHIP_CASES = ["target-is-a-file", "damaged-database", "source-missing", "source-is-a-file", "target-is-the-source",
              "target-inside-the-source"]


@pytest.mark.parametrize("case", SHIP_CASES)
def test_ship_refuses_and_leaves_no_half_made_copy(case: str, made, kept, tmp_path, capsys) -> None:
    source, target = made["run"], tmp_path / "shipped"
    if case == "target-is-a-file":
        target = write(tmp_path / "a-file", "mine\n")
    elif case == "damaged-database":
        source = _damaged_database(made, tmp_path)
    elif case == "source-missing":
        source = tmp_path / "no-such-run"
    elif case == "source-is-a-file":
        source = write(tmp_path / "a-file", "mine\n")
    elif case == "target-is-the-source":
        target = made["run"]
    else:
        target = made["run"] / "shipped"
    message = script_fails("ship_run", [source, target, "--no-analyze"], capsys)
    assert str(source if case != "target-is-a-file" and not case.startswith("target-is") else target) in message
    if case == "target-is-a-file":
        assert target.read_text() == "mine\n"
    elif case not in ("target-is-the-source", "target-inside-the-source"):
        assert not target.exists()  # not even the directory: the database is read before anything is written
    else:
        assert not (made["run"] / "shipped").exists()
