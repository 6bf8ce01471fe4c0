"""The bad-input cases' shared machinery (issue 13, split by command in issue 35).

Every bad input gets one line on stderr and a non-zero exit, never a traceback. Each command's module
(``tests/cli/test_bad_input_<command>.py``) holds its cases as a table of :class:`Case` rows, each run by one
parametrised test through :func:`refuse`, which checks: the exit code (2 unless the row says otherwise), exactly
one line on stderr starting ``hessian-lora``, no traceback, the text the line must contain, the paths the refused
command must not have written, and the files that must be byte-identical afterwards. The good data beside the bad
input (``tests/cli/conftest.py``'s session-wide ``good``) is fingerprinted around every case.

Placeholders in a row's argv, file contents, expected text and paths: ``{tmp}`` is the case's ``tmp_path``;
``{run}``, ``{config}``, ``{checkpoint}``, ``{init}``, ``{data}``, ``{plain}`` and ``{root}`` are the good data's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from hessian_lora.cli.main import main

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model", "tiny-llama"]
EIGEN_FAST = [
    "--samples",
    "2",
    "--batch-size",
    "2",
    "--max-length",
    "96",
    "--max-iter",
    "3",
    "--no-min",
    "--quiet",
    "--threads",
    "1",
]
SWEEP_FLAGS = ["--quiet", "--threads", "1"]
GOOD_SWEEP: dict[str, Any] = {
    "name": "good",
    "model": "tiny-llama",
    "task": "arith",
    "n_train": 8,
    "n_eval": 2,
    "methods": ["lora"],
    "ranks": [2],
    "batch_sizes": [4],
    "lr": [1e-3],
    "steps": 2,
    "max_length": 96,
    "targets": ["q_proj", "v_proj"],
    "eval": {"batch_size": 2, "max_new_tokens": 2},
    "hessian": {
        "init": True,
        "final": False,
        "samples": 4,
        "batch_size": 4,
        "max_iter": 4,
        "smallest": False,
    },
}
GOOD_RECORDS = [{"prompt": f"{i} + 1 =", "completion": str(i + 1)} for i in range(8)]
# The good run's λ_max-at-initialisation report (GOOD_SWEEP: lora, rank 2, seed 0).
INIT_REPORT = "hessian/lora_r2_s0_init.json"

Good = dict[str, Path]
# What a row writes at a path: bytes or text as they are, a dict at a .yaml path as YAML, anything else as JSON; a
# callable of the good data gives the content (for damage made from a good file); DELETE, DIRECTORY and
# EMPTY_DIRECTORY below.
Content = Any


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


DELETE = _Sentinel("DELETE")  # the path is removed (if it is there)
DIRECTORY = _Sentinel("DIRECTORY")  # the file is replaced by an empty directory
EMPTY_DIRECTORY = _Sentinel("EMPTY_DIRECTORY")  # an empty directory is made there


@dataclass(frozen=True)
class Case:
    """One bad input and what its refusal must look like.

    ``copies`` (destination under ``{tmp}`` → good-data key, ``"run:light"`` for the run without its weights)
    are made first, then ``files`` (path under ``{tmp}`` → content) are written, then ``unchanged`` files are
    read, then ``argv`` runs in-process with ``env`` set. Afterwards: exit ``exit``, one line containing each of
    ``says``; no path in ``unwritten``; each path in ``at_most_a_lock`` absent or holding only a sweep's lock file;
    each ``unchanged`` file byte-identical.
    """

    id: str
    argv: Sequence[Any]
    files: Mapping[str, Content] = field(default_factory=dict)
    copies: Mapping[str, str] = field(default_factory=dict)
    exit: int = 2
    says: Sequence[str] = ()
    unwritten: Sequence[str] = ()
    at_most_a_lock: Sequence[str] = ()
    unchanged: Sequence[str] = ()
    at_most_once: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    marks: Sequence[Any] = ()

    def param(self) -> Any:
        """The row as a ``pytest.param`` whose id names the case."""
        return pytest.param(self, id=self.id, marks=tuple(self.marks))


def params(cases: Sequence[Case]) -> list[Any]:
    """The rows of a table as ``pytest.param``\\ s; ids must be unique within it."""
    ids = [case.id for case in cases]
    duplicated = sorted({name for name in ids if ids.count(name) > 1})
    assert not duplicated, f"duplicate case ids: {duplicated}"
    return [case.param() for case in cases]


# ----------------------------------------------------------------------------------------------------------
# Files and placeholders


_PLACEHOLDER = re.compile(r"\{(tmp|run|config|checkpoint|init|data|plain|root)\}")


def expand(value: Any, good: Good, tmp_path: Path) -> Any:
    """``value`` with its placeholders replaced (recursively through lists and dicts; other values as they are)."""
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda match: str(tmp_path if match[1] == "tmp" else good[match[1]]), value)
    if isinstance(value, list):
        return [expand(item, good, tmp_path) for item in value]
    if isinstance(value, dict):
        return {key: expand(item, good, tmp_path) for key, item in value.items()}
    return value


def fingerprint(path: Path) -> dict[str, str]:
    """Relative path → SHA-256 of every file under ``path`` (the "good data is untouched" check)."""
    # SQLite readers (re)create the -wal/-shm companions of a WAL database: not a change of its data.
    return {
        str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(path.rglob("*"))
        if file.is_file() and not file.name.endswith(("-wal", "-shm"))
    }


def write(path: Path, content: bytes | str | Any) -> Path:
    """Write bytes or text as they are, anything else as JSON; make the parents."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return path


def sweep_yaml(changes: Mapping[str, Any]) -> str:
    """GOOD_SWEEP with ``changes`` as YAML text."""
    return yaml.safe_dump(sweep_config(changes))


def sweep_config(changes: Mapping[str, Any]) -> dict[str, Any]:
    """GOOD_SWEEP with ``changes`` (a row's content for a .yaml path)."""
    return {**GOOD_SWEEP, **changes}


def cli_env() -> dict[str, str]:
    """The environment of a CLI run in a subprocess: this checkout, one thread, the hub offline."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }


def checkpoint_meta(good: Good, **changes: Any) -> str:
    """The good checkpoint's ``hessian_lora.json`` with ``changes``, as JSON text."""
    data = json.loads((good["checkpoint"] / "hessian_lora.json").read_text())
    data.update(changes)
    return json.dumps(data)


def sqlite_without_runs() -> bytes:
    """A valid SQLite database whose only table is not ``runs``."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "other.sqlite"
        connection = sqlite3.connect(path)
        connection.execute("CREATE TABLE other (x)")
        connection.commit()
        connection.close()
        return path.read_bytes()


def calibration_with_probe(change: Any) -> dict[str, Any]:
    """The shipped calibration with its probe changed (``"LIST"``: the probe a list)."""
    from hessian_lora.sweep.recommend import load_calibration

    data = json.loads(json.dumps(load_calibration(None).to_dict()))
    if change == "LIST":
        data["probe"] = ["model", "tiny-llama"]
    else:
        data["probe"].update(change)
    return data


def make_files(case: Case, good: Good, tmp_path: Path) -> None:
    """The row's copies of good data, then its files (placeholders expanded)."""
    for destination, key in case.copies.items():
        name, _, variant = key.partition(":")
        ignore = shutil.ignore_patterns("*.safetensors", "optimizer.pt") if variant == "light" else None
        shutil.copytree(good[name], tmp_path / destination, ignore=ignore)
    for relative, content in case.files.items():
        path = tmp_path / expand(relative, good, tmp_path)
        if callable(content):
            content = content(good)
        if content is DELETE:
            path.unlink(missing_ok=True)
        elif content is DIRECTORY:
            path.unlink()
            path.mkdir()
        elif content is EMPTY_DIRECTORY:
            path.mkdir(parents=True)
        else:
            content = expand(content, good, tmp_path)
            if path.suffix == ".yaml" and isinstance(content, dict):
                content = yaml.safe_dump(content)  # placeholders expanded first: YAML may quote or fold them
            write(path, content)


# ----------------------------------------------------------------------------------------------------------
# The checks


def snapshot(path: Path) -> bytes | dict[str, str]:
    """A file's bytes, or a directory's :func:`fingerprint`."""
    return fingerprint(path) if path.is_dir() else path.read_bytes()


def snapshots(case: Case, good: Good, tmp_path: Path) -> dict[Path, bytes | dict[str, str]]:
    """The row's ``unchanged`` paths → their :func:`snapshot` now."""
    return {path: snapshot(path) for path in (Path(expand(name, good, tmp_path)) for name in case.unchanged)}


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, *, expected: int = 2) -> str:
    """The single stderr line of a refused command, after checking the exit code and that there is no traceback."""
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert "Traceback" not in captured.err, captured.err
    assert code == expected, f"exit {code}: {captured.err}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{captured.err}"
    assert lines[0].startswith("hessian-lora"), lines[0]
    return lines[0]


def fails(argv: Sequence[Any], capsys: pytest.CaptureFixture[str], *, expected: int = 2) -> str:
    """Run the CLI in-process on ``argv`` and return its one error line (see :func:`one_line_error`)."""
    capsys.readouterr()
    return one_line_error(capsys, main([str(item) for item in argv]), expected=expected)


def refuse(
    case: Case,
    good: Good,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """Run one row and check everything it promises; returns the error line."""
    make_files(case, good, tmp_path)
    unchanged = snapshots(case, good, tmp_path)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    message = fails(expand(list(case.argv), good, tmp_path), capsys, expected=case.exit)
    for text in case.says:
        assert expand(text, good, tmp_path) in message, message
    for text in case.at_most_once:
        assert message.count(expand(text, good, tmp_path)) <= 1, message
    for name in case.unwritten:
        path = Path(expand(name, good, tmp_path))
        assert not path.exists(), f"{path} was written"
    for name in case.at_most_a_lock:
        # Nothing written, at most the sweep's lock file (a directory holding only it is a fresh one).
        path = Path(expand(name, good, tmp_path))
        assert not path.exists() or {entry.name for entry in path.iterdir()} <= {".sweep.lock"}
    for path, before in unchanged.items():
        assert snapshot(path) == before, f"{path} changed"
    return message


# ----------------------------------------------------------------------------------------------------------
# Tables more than one command reads


# A checkpoint's damaged file → what is written there (a dict for hessian_lora.json: changes to the good one).
CHECKPOINT_DAMAGE: dict[str, tuple[str, Content]] = {
    "meta-list": ("hessian_lora.json", []),
    "meta-empty-object": ("hessian_lora.json", {}),
    "meta-rank-text": ("hessian_lora.json", lambda good: checkpoint_meta(good, rank="four")),
    "meta-rank-zero": ("hessian_lora.json", lambda good: checkpoint_meta(good, rank=0)),
    "meta-alpha-nan": ("hessian_lora.json", lambda good: checkpoint_meta(good, alpha=float("nan"))),
    "meta-targets-number": ("hessian_lora.json", lambda good: checkpoint_meta(good, targets=5)),
    "meta-method-unknown": ("hessian_lora.json", lambda good: checkpoint_meta(good, method="nope")),
    "meta-dtype-unknown": ("hessian_lora.json", lambda good: checkpoint_meta(good, dtype="float8")),
    "meta-format-future": ("hessian_lora.json", lambda good: checkpoint_meta(good, format_version=99)),
    "meta-not-utf8": ("hessian_lora.json", b"\xff\xfe\x00garbage\x80"),
    "meta-not-json": ("hessian_lora.json", "{ not json"),
    "meta-is-directory": ("hessian_lora.json", DIRECTORY),
    "adapter-truncated": (
        "adapter_model.safetensors",
        lambda good: (good["checkpoint"] / "adapter_model.safetensors").read_bytes()[:100],
    ),
    "adapter-empty": ("adapter_model.safetensors", b""),
    "adapter-missing": ("adapter_model.safetensors", DELETE),
    "adapter-config-not-json": ("adapter_config.json", "nope"),
    "optimizer-random": ("optimizer.pt", os.urandom(256)),
    "optimizer-empty": ("optimizer.pt", b""),
}


def damaged_checkpoint(case: str) -> dict[str, Any]:
    """A row's ``copies`` and ``files`` for the good checkpoint copied to ``{tmp}/ckpt`` with one damage."""
    file, content = CHECKPOINT_DAMAGE[case]
    return {"copies": {"ckpt": "checkpoint"}, "files": {f"ckpt/{file}": content}}


# A plain peft adapter directory: good["init"] without hessian_lora.json (what save_pretrained leaves), with its
# adapter_config.json damaged (a dict: changes to the good one; "NAN" becomes JSON's NaN).
PEFT_DAMAGE: dict[str, Content] = {
    "config-not-utf8": b"\xff\xfe{\x80",
    "config-not-json": "{ nope",
    "config-a-list": ["LORA"],
    "config-is-directory": DIRECTORY,
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


def _peft_config(change: Mapping[str, Any]) -> Callable[[Good], str]:
    def content(good: Good) -> str:
        data = {**json.loads((good["init"] / "adapter_config.json").read_text()), **change}
        return json.dumps(data).replace('"NAN"', "NaN")  # JSON's NaN, which Python's json module reads

    return content


def peft_directory(damage: str | None = None, *, targets: Any = None) -> dict[str, Any]:
    """A row's ``copies`` and ``files`` for a plain peft directory at ``{tmp}/peft``: damaged as ``PEFT_DAMAGE``
    says, or with its ``target_modules`` replaced by ``targets``, or (neither) good."""
    files: dict[str, Content] = {"peft/hessian_lora.json": DELETE}
    if damage is not None:
        change = PEFT_DAMAGE[damage]
        files["peft/adapter_config.json"] = _peft_config(change) if isinstance(change, dict) else change
    elif targets is not None:
        files["peft/adapter_config.json"] = _peft_config({"target_modules": targets})
    return {"copies": {"peft": "init"}, "files": files}


STORE_DAMAGE = [
    "db-random",
    "db-empty-file",
    "db-no-runs-table",
    "db-missing",
    "dir-missing",
    "dir-is-file",
    "init-report-not-json",
    "init-report-list",
]


def damaged_run(case: str) -> dict[str, Any]:
    """A row's ``copies`` and ``files`` for a damaged run directory at ``{tmp}/run`` (``STORE_DAMAGE``)."""
    if case == "dir-missing":
        return {}
    if case == "dir-is-file":
        return {"files": {"run": "x"}}
    files: dict[str, Content] = {"run/results.sqlite-wal": DELETE, "run/results.sqlite-shm": DELETE}
    files.update(
        {
            "db-random": {"run/results.sqlite": os.urandom(4096)},
            "db-empty-file": {"run/results.sqlite": b""},
            "db-missing": {"run/results.sqlite": DELETE},
            "db-no-runs-table": {"run/results.sqlite": lambda good: sqlite_without_runs()},
            "init-report-not-json": {f"run/{INIT_REPORT}": "{not json"},
            "init-report-list": {f"run/{INIT_REPORT}": []},
        }[case]
    )
    return {"copies": {"run": "run"}, "files": files}


def output_cases(command: str, argv: Sequence[Any], *, file_output: bool) -> list[Case]:
    """The output-path rows of one command whose argv holds ``{out}`` where its output goes: under a regular file,
    somewhere that cannot be created, and (``file_output``) an existing directory where a file goes or (not) a
    regular file where a directory goes."""

    def at(where: str) -> list[Any]:
        return [where if item == "{out}" else item for item in argv]

    rows = [
        Case(
            f"{command}-out-under-a-regular-file",
            at("{tmp}/regular-file/sub/out"),
            files={"regular-file": "x"},
            unchanged=["{tmp}/regular-file"],
        ),
        Case(f"{command}-out-cannot-be-created", at("/proc/hessian-lora-no-such/out")),
    ]
    if file_output:
        rows.append(
            Case(
                f"{command}-out-is-an-existing-directory",
                at("{tmp}/a-directory"),
                files={"a-directory": EMPTY_DIRECTORY},
            )
        )
    else:
        rows.append(
            Case(
                f"{command}-out-is-a-file",
                at("{tmp}/regular-file"),
                files={"regular-file": "x"},
                unchanged=["{tmp}/regular-file"],
            )
        )
    return rows


# A model argument that cannot load → (the spec, the files it needs under {tmp}). The hub is offline.
BAD_MODELS: dict[str, tuple[str, dict[str, Content]]] = {
    "config-not-json": ("{tmp}/m", {"m/config.json": "{{{"}),
    "config-empty-object": ("{tmp}/m", {"m/config.json": {}}),
    "config-binary": ("{tmp}/m", {"m/config.json": b"\x89PNG\x00\xff"}),
    "config-no-weights": (
        "{tmp}/m",
        {
            "m/config.json": {
                "model_type": "llama",
                "hidden_size": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 32,
                "vocab_size": 300,
            }
        },
    ),
    "gguf-random": ("{tmp}/fake.gguf", {"fake.gguf": os.urandom(64)}),
    "gguf-empty": ("{tmp}/empty.gguf", {"empty.gguf": b""}),
    "gguf-missing": ("{tmp}/missing.gguf", {}),
    "hub-offline": ("no-such-org-xyz/no-such-model-xyz", {}),
    "tiny-hidden-zero": ("tiny-llama:hidden_size=0", {}),
    "tiny-unknown-option": ("tiny-llama:foo=3", {}),
    "tiny-not-number": ("tiny-llama:layers=x", {}),
    "tiny-heads-mismatch": ("tiny-llama:hidden_size=30", {}),
    "tiny-huge": ("tiny-llama:hidden_size=100000000", {}),
    "unknown-name": ("gpt-17", {}),
}
OFFLINE = {"HF_HUB_OFFLINE": "1"}
