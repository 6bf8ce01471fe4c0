"""Bad input to ``hessian-lora results``: damaged run directories, impossible values, output paths; one table,
one test (tests/cli/bad_input_cases.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_input_cases import STORE_DAMAGE, Case, Good, damaged_run, output_cases, params, refuse

CASES: list[Case] = [
    # results reads only the table: the damaged λ_max reports are no input of its.
    *[
        Case(f"store-{name}", ["results", "{tmp}/run"], **damaged_run(name))
        for name in STORE_DAMAGE
        if not name.startswith("init-report")
    ],
    Case("value-table-output", ["results", "{run}", "--output", "x.txt"], at_most_a_lock=["{tmp}/out"]),
    Case("value-format-unknown", ["results", "{run}", "--format", "xlsx"], at_most_a_lock=["{tmp}/out"]),
    *output_cases(
        "results-csv", ["results", "{run}", "--format", "csv", "--output", "{out}"], file_output=True
    ),
]


@pytest.mark.parametrize("case", params(CASES))
def test_results_refuses(case: Case, good: Good, untouched, tmp_path: Path, capsys, monkeypatch) -> None:
    refuse(case, good, tmp_path, capsys, monkeypatch)
