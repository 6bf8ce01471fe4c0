"""Bad input to ``hessian-lora demo``: impossible values, a damaged config, output paths; one table, one test
(tests/cli/bad_input_cases.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_input_cases import Case, Good, output_cases, params, refuse

OUT = ["--out", "{tmp}/out"]

CASES: list[Case] = [
    Case(
        "value-layer-samples-one",
        ["demo", "--quick", "--layer-samples", "1", *OUT],
        at_most_a_lock=["{tmp}/out"],
    ),
    Case(
        "value-density-negative",
        ["demo", "--quick", "--density-steps", "-1", *OUT],
        at_most_a_lock=["{tmp}/out"],
    ),
    Case("value-config-missing", ["demo", "--config", "no/such.yaml", *OUT], at_most_a_lock=["{tmp}/out"]),
    Case(
        "value-config-binary",
        ["demo", "--config", "{tmp}/b.yaml", *OUT],
        files={"b.yaml": b"\x00\xff"},
        at_most_a_lock=["{tmp}/out"],
    ),
    *output_cases("demo", ["demo", "--quick", "--config", "{config}", "--out", "{out}"], file_output=False),
]


@pytest.mark.parametrize("case", params(CASES))
def test_demo_refuses(case: Case, good: Good, untouched, tmp_path: Path, capsys, monkeypatch) -> None:
    refuse(case, good, tmp_path, capsys, monkeypatch)
