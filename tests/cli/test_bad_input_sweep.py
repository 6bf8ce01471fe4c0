"""Bad input to ``hessian-lora sweep``: malformed YAML, impossible values, what the preflight must refuse before a
run trains (models, tasks, evaluation sets, sharpness probes, calibrations, search metrics, GraLoRA ranks, the
Krylov budget), damaged run directories to resume, output paths; then what is not a table: sweeps that fail
silently, interrupts, kill leftovers, file permissions, a kill at each step of a first start (issue 23).

The tables run through tests/cli/bad_input_cases.py: one line on stderr naming the YAML file and the field, exit 2,
nothing written (a refused sweep of the newer kinds leaves not even the directory it made), the good data beside it
untouched.
"""

from __future__ import annotations

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
from bad_input_cases import (
    GOOD_SWEEP,
    REPO,
    SWEEP_FLAGS,
    Case,
    Good,
    calibration_with_probe,
    cli_env,
    fails,
    output_cases,
    params,
    refuse,
    sweep_config,
    sweep_yaml,
    write,
)

from hessian_lora.cli.main import main

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
YAML = "{tmp}/sweep.yaml"
NAMES_THE_YAML = f"error: {YAML}: "  # the preflight names the YAML file, not "config"


def refused(
    name: str,
    changes: dict[str, Any],
    *,
    says: list[str] = (),
    files: dict[str, Any] | None = None,
    named: bool = True,
) -> Case:
    """A sweep of GOOD_SWEEP with ``changes`` that is refused before it writes anything at all (not even the
    directory or its lock); ``named``: the line starts with the YAML file's name."""
    return Case(
        name,
        ["sweep", YAML, "--out", "{tmp}/run", *SWEEP_FLAGS],
        files={**(files or {}), "sweep.yaml": sweep_config(changes)},
        says=[*([NAMES_THE_YAML] if named else []), *says],
        unwritten=["{tmp}/run"],
    )


YAML_TEXTS: dict[str, bytes | str] = {
    "binary": b"\x00\x01\x02\xff\xfe binary",
    "not-utf8": b"model: tiny-llama\nname: \xff\xfe\n",
    "list": "- 1\n- 2\n",
    "scalar": "42\n",
    "empty": "",
    "syntax": "model: [unclosed\n",
    "tabs": "model:\ttiny\n\t- x: [\n",
}
BAD_VALUES: dict[str, dict[str, Any]] = {
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
# Refused by the preflight (the YAML parses; the run could not): files under {tmp} it needs.
PREFLIGHT: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "targets-absent": ({"targets": ["nope_proj"]}, {}),
    "max-length-one": ({"max_length": 1}, {}),
    "task-empty-file": ({"task": "{tmp}/empty.json"}, {"empty.json": []}),
    "task-wrong-fields": ({"task": "{tmp}/wrong.json"}, {"wrong.json": [{"a": 1, "b": 2}] * 4}),
    "tiny-bad-option": ({"model": "tiny-llama:foo=3"}, {}),
    "hessian-samples-beyond-max-length": ({"hessian": {"init": True, "max_length": 1}}, {}),
    "micro-batch-empty": (
        {"task": "{tmp}/long.json"},
        {"long.json": [{"prompt": "x" * 200, "completion": "1"}] * 8},
    ),
}
DURING: dict[str, dict[str, Any]] = {
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
DORA_FINITE_DIFFERENCES: dict[str, dict[str, Any]] = {
    # The engine refuses DoRA with finite differences at its first product; the preflight now does, at once.
    "during": {"during": {"every": 1, "backend": "finite_difference"}},
    "final": {"init": False, "final": True, "samples": 4, "batch_size": 4, "backend": "finite_difference"},
}
UNBOUNDED_NUMBERS: dict[str, dict[str, Any]] = {
    "humaneval-timeout-nan": {"eval": {"humaneval_timeout": float("nan")}},
    "humaneval-timeout-inf": {"eval": {"humaneval_timeout": float("inf")}},
    "humaneval-timeout-zero": {"eval": {"humaneval_timeout": 0}},
    "humaneval-timeout-text": {"eval": {"humaneval_timeout": "long"}},
    "hessian-tol-inf": {"hessian": {"init": True, "tol": float("inf")}},
    "hessian-tol-two": {"hessian": {"init": True, "options": {"tol": 2}}},
}
BAD_CALIBRATION_PROBES: dict[str, Any] = {
    "probe-a-list": "LIST",
    "attention-unknown": {"attention": "flash_attention_9"},
    "samples-text": {"samples": "many"},
    "eigen-options-tol-inf": {"eigen_options": {"tol": float("inf")}},
}
RESUME_CONFIGS: dict[str, Any] = {
    "config-binary": b"\x00\xff\xfe",
    "config-list": "- 1\n",
    "config-other-model": sweep_config({"model": "tiny-llama:layers=1"}),
}
IMPOSSIBLE: dict[str, list[str]] = {
    "threads-zero": ["--threads", "0"],
    "device-cuda": ["--device", "cuda"],
    "address-without-ray": ["--address", "ray://x"],
}


def _calibration_for_the_tiny_model(good: Good) -> dict[str, Any]:
    """The shipped calibration with two methods, probed on the tiny model (a leave-method-out search needs
    three)."""
    data = json.loads((REPO / "hessian_lora" / "sweep" / "calibrations" / "smollm2.json").read_text())
    names = ["lora", *[name for name in data["points"] if name != "lora"]][:2]
    data["points"] = {name: data["points"][name] for name in names}
    data["probe"] = {**data.get("probe", {}), "model": "tiny-llama", "task": "arith", "rank": 2}
    return data


# The newer settings: refused by the dry run as by the run, before either writes anything.
BEFORE_WRITING: dict[str, tuple[dict[str, Any], str]] = {
    "hessian-krylov-memory-absurd": (
        {"hessian": {**GOOD_SWEEP["hessian"], "krylov_memory": 1e12}},
        "hessian.krylov_memory",
    ),
    "hessian-block-size-beyond-max-iter": (
        {"hessian": {**GOOD_SWEEP["hessian"], "block_size": 64}},
        "block_size",
    ),
    "search-leave-method-out-with-two-methods": (
        {
            "search": {
                "mode": "adaptive",
                "max_runs": 2,
                "leave_method_out": True,
                "calibration": "{tmp}/calibration.json",
            }
        },
        "leave_method_out",
    ),
    "eval-allow-unconfined-code-a-string": (
        {"eval": {"allow_unconfined_code": "yes"}},
        "allow_unconfined_code",
    ),
    "eval-accuracy-a-string": ({"eval": {"accuracy": "no"}}, "eval.accuracy"),
    "eval-humaneval-a-string": ({"eval": {"humaneval": "yes"}}, "eval.humaneval"),
}

CASES: list[Case] = [
    *[
        Case(
            f"yaml-{name}",
            ["sweep", YAML, "--out", "{tmp}/out", "--quiet"],
            files={"sweep.yaml": text},
            unwritten=["{tmp}/out/results.sqlite"],
        )
        for name, text in sorted(YAML_TEXTS.items())
    ],
    *[
        Case(
            f"value-{name}",
            ["sweep", YAML, "--out", "{tmp}/out", *SWEEP_FLAGS],
            files={"sweep.yaml": sweep_config(changes)},
            unwritten=["{tmp}/out/results.sqlite", "{tmp}/out/config.yaml"],
        )
        for name, changes in BAD_VALUES.items()
    ],
    *[
        Case(
            f"value-{name}",
            ["sweep", "{config}", *flags, "--out", "{tmp}/out", "--quiet"],
            at_most_a_lock=["{tmp}/out"],
            marks=[NO_CUDA] if "cuda" in name else [],
        )
        for name, flags in IMPOSSIBLE.items()
    ],
    Case(
        "value-reuse-budget-not-a-size",
        ["sweep", YAML, "--out", "{tmp}/out", *SWEEP_FLAGS],
        files={"sweep.yaml": sweep_config({})},
        env={"HESSIAN_LORA_REUSE_GIB": "plenty"},
        says=["HESSIAN_LORA_REUSE_GIB=plenty", "GiB"],
        unwritten=["{tmp}/out"],
    ),
    *[refused(f"preflight-{name}", changes, files=files) for name, (changes, files) in PREFLIGHT.items()],
    *[
        refused(f"during-{name}", {"hessian": {"during": {"every": 1, **change}}}, says=["hessian.during"])
        for name, change in sorted(DURING.items())
    ],
    *[
        refused(
            f"dora-finite-differences-{where}",
            {"methods": ["lora", "dora"], "hessian": hessian},
            says=["dora", "finite_difference"],
        )
        for where, hessian in DORA_FINITE_DIFFERENCES.items()
    ],
    *[
        refused(f"number-{name}", changes, says=["finite number", YAML], named=False)
        for name, changes in sorted(UNBOUNDED_NUMBERS.items())
    ],
    *[
        refused(
            f"search-calibration-{name}",
            {"search": {"mode": "adaptive", "calibration": "{tmp}/cal.json"}},
            files={"cal.json": lambda good, change=change: calibration_with_probe(change)},
            says=["search.calibration", "{tmp}/cal.json"],
        )
        for name, change in BAD_CALIBRATION_PROBES.items()
    ],
    refused(
        "search-metric-nothing-records",
        {"search": {"mode": "adaptive", "metric": "accuracy"}, "eval": {"accuracy": False}},
        says=["eval.accuracy"],
    ),
    *[
        refused(
            f"search-metric-{metric}-without-held-out-examples",
            {"n_eval": 0, "search": {"mode": "adaptive", "metric": metric}},
            says=["n_eval"],
        )
        for metric in ["accuracy", "eval_loss", "auto"]
    ],
    refused(
        "gralora-ranks-its-blocks-do-not-divide",
        {"methods": ["lora", "gralora"], "ranks": [2, 6, 3]},
        says=["ranks", "got 3"],
    ),
    *[
        Case(
            f"{name}-{mode}",
            [
                "sweep",
                "{tmp}/config.yaml",
                "--out",
                "{tmp}/out",
                *SWEEP_FLAGS,
                *(["--dry-run"] if mode == "dry-run" else []),
            ],
            files={
                **(
                    {"calibration.json": _calibration_for_the_tiny_model}
                    if "{tmp}/calibration.json" in str(changes)
                    else {}
                ),
                "config.yaml": sweep_config(changes),
            },
            says=[named],
            unwritten=["{tmp}/out"],
        )  # nothing at all: no config.yaml, no store, no lock
        for name, (changes, named) in sorted(BEFORE_WRITING.items())
        for mode in ["dry-run", "run"]
    ],
    *[
        Case(
            f"resume-{name}",
            ["sweep", "{config}", "--out", "{tmp}/run", *SWEEP_FLAGS],
            copies={"run": "run"},
            files={"run/config.yaml": content},
            unchanged=["{tmp}/run/results.sqlite"],
        )
        for name, content in RESUME_CONFIGS.items()
    ],
    *output_cases("sweep", ["sweep", "{config}", "--out", "{out}", "--quiet"], file_output=False),
]

GSM8K_GOOD = {"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}
BAD_EVAL_SETS: dict[str, tuple[str, bytes | str]] = {
    "gsm8k-empty-file": ("gsm8k", ""),
    "gsm8k-not-utf8": ("gsm8k", b'{"question": "\xff\xfe"}\n'),
    "gsm8k-line-not-json": ("gsm8k", json.dumps(GSM8K_GOOD) + "\n{oops\n"),
    "gsm8k-line-a-list": ("gsm8k", "[1, 2]\n"),
    "gsm8k-no-answer-field": ("gsm8k", json.dumps({"question": "q", "solution": "#### 4"}) + "\n"),
    "gsm8k-answer-without-hashes": ("gsm8k", json.dumps({"question": "q", "answer": "it is 4"}) + "\n"),
    "gsm8k-question-a-number": ("gsm8k", json.dumps({"question": 7, "answer": "#### 4"}) + "\n"),
    "math-solution-without-boxed": ("math", json.dumps({"problem": "1 + 1?", "solution": "It is 2."}) + "\n"),
    "math-json-array-of-strings": ("math", '["a", "b"]'),
    "mbpp-test-list-a-string": (
        "mbpp",
        json.dumps({"task_id": 1, "text": "t", "code": "x = 1", "test_list": "assert True"}) + "\n",
    ),
}
UNTRAINED_CASES: list[Case] = [
    refused(
        f"eval-set-{name}",
        {"eval_task": [f"{kind}:{{tmp}}/eval.jsonl"]},
        files={"eval.jsonl": content},
        says=["{tmp}/eval.jsonl"],
    )
    for name, (kind, content) in sorted(BAD_EVAL_SETS.items())
]


@pytest.mark.parametrize("case", params(CASES))
def test_sweep_refuses(case: Case, good: Good, untouched, tmp_path: Path, capsys, monkeypatch) -> None:
    refuse(case, good, tmp_path, capsys, monkeypatch)


@pytest.mark.parametrize("case", params(UNTRAINED_CASES))
def test_sweep_refuses_before_any_run_trains(
    case: Case, good: Good, untouched, tmp_path: Path, capsys, monkeypatch
) -> None:
    from hessian_lora.training import train

    def no_training(*args, **kwargs):
        raise AssertionError("a run trained although its evaluation set is unusable")

    monkeypatch.setattr(train, "train", no_training)
    refuse(case, good, tmp_path, capsys, monkeypatch)


# ----------------------------------------------------------------------------------------------------------
# Sweeps that fail silently, and what the preflight reads


def test_sweep_model_that_cannot_load_then_fixed_config_runs_in_the_same_directory(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    broken = write(tmp_path / "sweep.yaml", sweep_yaml({"model": "gpt-17", "hessian": {"init": False}}))
    line = fails(["sweep", broken, "--out", run, "--quiet"], capsys)
    assert "gpt-17" in line
    assert not (run / "results.sqlite").exists() and not (run / "config.yaml").exists()
    fixed = write(tmp_path / "sweep.yaml", sweep_yaml({"hessian": {"init": False}}))
    capsys.readouterr()
    assert main(["sweep", str(fixed), "--out", str(run), *SWEEP_FLAGS]) == 0
    assert "1 done" in capsys.readouterr().err


def test_sweep_with_failed_runs_exits_1_and_counts_the_errors(tmp_path, capsys, monkeypatch) -> None:
    """A run that raises after preflight is recorded failed; the sweep exits 1 and names each error once."""
    from hessian_lora.sweep import local

    real = local.execute_run

    def flaky(config, spec, *args, **kwargs):
        if spec.lr > 5e-3:
            raise RuntimeError("simulated failure at a high learning rate")
        return real(config, spec, *args, **kwargs)

    monkeypatch.setattr(local, "execute_run", flaky)
    config = write(
        tmp_path / "sweep.yaml", sweep_yaml({"lr": [1e-3, 1e-2, 1e-1], "hessian": {"init": False}})
    )
    capsys.readouterr()
    code = main(["sweep", str(config), "--out", str(tmp_path / "run"), *SWEEP_FLAGS])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert "2 runs failed" in err and "2 x RuntimeError: simulated failure at a high learning rate" in err, (
        err
    )


def test_the_preflight_reads_each_evaluation_set_once_for_every_run(tmp_path, capsys, monkeypatch) -> None:
    """The sets the preflight read are the ones the runs score with: read once, not once per run."""
    from hessian_lora.sweep import execute
    from hessian_lora.training import evalsets

    execute.cached_eval_set.cache_clear()
    reads: list[str] = []
    real = evalsets.load_eval_set
    monkeypatch.setattr(evalsets, "load_eval_set", lambda spec, **kw: reads.append(spec) or real(spec, **kw))
    spec = f"gsm8k:{REPO / 'tests' / 'fixtures' / 'gsm8k.jsonl'}"
    config = write(
        tmp_path / "sweep.yaml",
        sweep_yaml({"lr": [1e-3, 1e-2], "eval_task": [spec], "hessian": {"init": False}}),
    )
    assert main(["sweep", str(config), "--out", str(tmp_path / "run"), *SWEEP_FLAGS]) == 0
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


def test_a_dry_run_on_a_directory_of_another_grid_refuses_as_the_run_does(
    good, untouched, tmp_path, capsys
) -> None:
    config = write(tmp_path / "ranks.yaml", sweep_yaml({"ranks": [4]}))
    dry = fails(["sweep", config, "--out", good["run"], "--dry-run", *SWEEP_FLAGS], capsys)
    real = fails(["sweep", config, "--out", good["run"], *SWEEP_FLAGS], capsys)
    assert dry == real and "--extend" in dry
    # With --extend both go ahead (the dry run says what the extended grid holds, and writes nothing).
    capsys.readouterr()
    assert main(["sweep", str(config), "--out", str(good["run"]), "--dry-run", "--extend", *SWEEP_FLAGS]) == 0
    assert "grid: 2 runs" in capsys.readouterr().out


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_code_evaluation_without_confinement_is_refused_unless_the_flag_accepts_it(
    dry_run: bool, untouched, tmp_path, capsys, monkeypatch
) -> None:
    from hessian_lora.training import sandbox

    unavailable = sandbox.Confinement("none", "none", reason="simulated: no user namespaces")
    monkeypatch.setattr(sandbox, "probe_confinement", lambda: unavailable)
    monkeypatch.setattr(sandbox, "_announced", set())
    monkeypatch.setattr(sandbox, "_accepted_in_process", False)  # the flag below sets it for the process
    mbpp = f"mbpp:{REPO / 'tests' / 'fixtures' / 'mbpp.jsonl'}"
    config = write(tmp_path / "code.yaml", sweep_yaml({"eval_task": [mbpp]}))
    out = tmp_path / "out"
    flags = [*SWEEP_FLAGS, *(["--dry-run"] if dry_run else [])]
    message = fails(["sweep", config, "--out", out, *flags], capsys)
    assert "--allow-unconfined-code" in message and not out.exists()
    if dry_run:  # the flag accepts the risk (the dry run writes nothing, and runs no code)
        assert main(["sweep", str(config), "--out", str(out), *flags, "--allow-unconfined-code"]) == 0
        assert not out.exists()


# ----------------------------------------------------------------------------------------------------------
# Interrupts, kill leftovers, permissions


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.5])
def test_ctrl_c_in_the_first_seconds(delay: float, good, tmp_path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hessian_lora",
            "sweep",
            str(good["config"]),
            "--out",
            str(tmp_path / "run"),
            *SWEEP_FLAGS,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:  # finished before the signal: nothing to check
        return
    assert process.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_stale_config_temp_in_a_fresh_directory_is_not_refused(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    write(run / ".config.yaml.abcd1234.tmp", "model: half-writ")
    write(run / ".sweep.lock", "")
    config = write(tmp_path / "sweep.yaml", sweep_yaml({"hessian": {"init": False}}))
    assert main(["sweep", str(config), "--out", str(run), *SWEEP_FLAGS]) == 0
    assert not list(run.rglob("*.tmp"))


def test_stale_report_temps_are_cleaned_on_resume(good, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(good["run"], run)
    write(run / "hessian" / ".lora_r2_s0_init.json.x1y2.tmp", "{")
    write(run / "runs" / ".some_run.abc.tmp" / "adapter_model.safetensors", b"")
    write(run / ".results.csv.q.tmp", "")
    before = (run / "results.sqlite").read_bytes()
    assert main(["sweep", str(good["config"]), "--out", str(run), *SWEEP_FLAGS]) == 0
    assert not list(run.rglob("*.tmp"))
    assert (run / "results.sqlite").read_bytes() == before


def test_sweep_files_get_umask_permissions(tmp_path, capsys) -> None:
    old = os.umask(0o022)
    try:
        run = tmp_path / "run"
        config = write(tmp_path / "sweep.yaml", sweep_yaml({"hessian": {"init": False}}))
        assert main(["sweep", str(config), "--out", str(run), *SWEEP_FLAGS]) == 0
    finally:
        os.umask(old)
    assert (run / "config.yaml").stat().st_mode & 0o777 == 0o644
    (checkpoint,) = list((run / "runs").iterdir())
    assert checkpoint.stat().st_mode & 0o777 == 0o755
    assert (checkpoint / "hessian_lora.json").stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------------------------------------
# A kill at each step of a sweep's first start, then a rerun (issue 23)

KILL_SWEEP = {**GOOD_SWEEP, "lr": [1e-3, 1e-2], "hessian": {"init": False}}
# The columns two executions of the same run agree on (timings and timestamps differ).
KILL_COMPARED = ("run_id", "status", "steps", "tokens", "train_loss", "initial_loss", "eval_loss", "accuracy")
# Each step of a fresh start, and what the process does there before it is killed (SIGKILL to itself, so the
# instant is exact): patched into the sweep's modules by _KILL_SCRIPT.
KILL_POINTS = (
    "lock-taken",
    "config-half-written",
    "config-written",
    "store-being-built",
    "store-built-in-place",
    "store-created",
    "first-row-running",
)
_KILL_SCRIPT = """
import os, signal, sqlite3, sys
from hessian_lora.cli.main import main
from hessian_lora.sweep import runner
from hessian_lora.core import store
from hessian_lora.core.atomic import temporary_path

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
    assert main(["sweep", str(config), "--out", str(root / "run"), *SWEEP_FLAGS]) == 0
    return config, _table(root / "run")


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_at_each_step_of_the_first_start_then_a_rerun_finishes(
    point: str, uninterrupted, tmp_path, capsys
) -> None:
    config, reference = uninterrupted
    run = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, point, "sweep", str(config), "--out", str(run), *SWEEP_FLAGS],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=240,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if point == "store-built-in-place":  # the leftover the issue describes: a store with no runs table
        with pytest.raises(sqlite3.Error, match="no such table"):
            _table(run)
    capsys.readouterr()
    assert main(["sweep", str(config), "--out", str(run), *SWEEP_FLAGS]) == 0, capsys.readouterr().err
    rows = _table(run)
    assert [row[:3] for row in rows] == [row[:3] for row in reference]
    for row, expected in zip(rows, reference):
        assert row[3:] == pytest.approx(expected[3:], rel=1e-6), (row, expected)
    assert not list(run.rglob("*.tmp")) and not list(run.glob("*-journal"))
