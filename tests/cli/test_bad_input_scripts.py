"""Bad input to the scripts in ``scripts/``: ``init_modules.py`` (what it would otherwise measure in place of what
was asked) and ``ship_run.py`` (nothing half-made). A script's refusal: exit 2 and one ``error:`` line on stderr
naming the flag or path, no traceback, nothing written, the good data beside it untouched. One table per script,
each row a :class:`Case` whose argv is the script's (tests/cli/bad_input_cases.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from bad_input_cases import DELETE, REPO, Case, Good, expand, make_files, params, snapshot, snapshots


def _script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_refuses(
    name: str, case: Case, good: Good, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> str:
    """Run one row through ``scripts/<name>.py``'s ``main`` and check its refusal; returns the error line."""
    make_files(case, good, tmp_path)
    unchanged = snapshots(case, good, tmp_path)
    capsys.readouterr()
    code = _script(name).main([str(item) for item in expand(list(case.argv), good, tmp_path)])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert "Traceback" not in captured.err, captured.err
    assert code == case.exit and len(lines) == 1 and lines[0].startswith("error: "), (code, captured.err)
    for text in case.says:
        assert expand(text, good, tmp_path) in lines[0], lines[0]
    for item in case.unwritten:
        assert not Path(expand(item, good, tmp_path)).exists(), item
    for path, before in unchanged.items():
        assert snapshot(path) == before, f"{path} changed"
    return lines[0]


INIT_MODULES = ["{tmp}/run"]
INIT_MODULES_CASES: list[Case] = [
    Case(
        name,
        [*INIT_MODULES, *argv, *([] if "--threads" in argv else ["--threads", "1"])],
        says=[named],
        copies={"run": "run:light"},
        unchanged=["{tmp}/run"],
    )
    for name, (argv, named) in {
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
    }.items()
]


@pytest.mark.parametrize("case", params(INIT_MODULES_CASES))
def test_init_modules_refuses(case: Case, good: Good, untouched, tmp_path: Path, capsys) -> None:
    script_refuses("init_modules", case, good, tmp_path, capsys)


NO_ANALYZE = ["--no-analyze"]
SHIP_CASES: list[Case] = [
    Case(
        "target-is-a-file",
        ["{run}", "{tmp}/a-file", *NO_ANALYZE],
        files={"a-file": "mine\n"},
        says=["{tmp}/a-file"],
        unchanged=["{tmp}/a-file"],
    ),
    # Not even the directory: the database is read before anything is written.
    Case(
        "damaged-database",
        ["{tmp}/run", "{tmp}/shipped", *NO_ANALYZE],
        copies={"run": "run:light"},
        files={
            "run/results.sqlite": b"not a database " * 64,
            "run/results.sqlite-wal": DELETE,
            "run/results.sqlite-shm": DELETE,
            "run/results.sqlite-journal": DELETE,
        },
        says=["{tmp}/run"],
        unwritten=["{tmp}/shipped"],
    ),
    Case(
        "source-missing",
        ["{tmp}/no-such-run", "{tmp}/shipped", *NO_ANALYZE],
        says=["{tmp}/no-such-run"],
        unwritten=["{tmp}/shipped"],
    ),
    Case(
        "source-is-a-file",
        ["{tmp}/a-file", "{tmp}/shipped", *NO_ANALYZE],
        files={"a-file": "mine\n"},
        says=["{tmp}/a-file"],
        unwritten=["{tmp}/shipped"],
    ),
    Case(
        "target-is-the-source", ["{run}", "{run}", *NO_ANALYZE], says=["{run}"], unwritten=["{run}/shipped"]
    ),
    Case(
        "target-inside-the-source",
        ["{run}", "{run}/shipped", *NO_ANALYZE],
        says=["{run}"],
        unwritten=["{run}/shipped"],
    ),
]


@pytest.mark.parametrize("case", params(SHIP_CASES))
def test_ship_refuses_and_leaves_no_half_made_copy(
    case: Case, good: Good, untouched, tmp_path: Path, capsys
) -> None:
    script_refuses("ship_run", case, good, tmp_path, capsys)
