"""Bad input to ``hessian-lora plot``: damaged run directories, impossible values, output paths, the same run
directory twice; one table, one test (tests/cli/bad_input_cases.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_input_cases import STORE_DAMAGE, Case, Good, damaged_run, output_cases, params, refuse

CASES: list[Case] = [
    *[
        Case(
            f"store-{name}",
            ["plot", "{tmp}/run", "--bootstrap", "10", "--out", "{tmp}/figs"],
            **damaged_run(name),
        )
        for name in STORE_DAMAGE
    ],
    Case("value-format-gif", ["plot", "{run}", "--formats", "gif"], at_most_a_lock=["{tmp}/out"]),
    *output_cases("plot", ["plot", "{run}", "--bootstrap", "10", "--out", "{out}"], file_output=False),
    *[
        Case(
            f"same-run-twice-{spelling}",
            ["plot", "{run}", second, "--bootstrap", "10", "--out", "{tmp}/a"],
            says=["twice"],
            unwritten=["{tmp}/a"],
        )
        for spelling, second in [("same", "{run}"), ("trailing-dot", "{run}/.")]
    ],
]


@pytest.mark.parametrize("case", params(CASES))
def test_plot_refuses(case: Case, good: Good, untouched, tmp_path: Path, capsys, monkeypatch) -> None:
    refuse(case, good, tmp_path, capsys, monkeypatch)
