"""Bad input to ``hessian-lora analyze``: damaged run directories and run configs, impossible values, output
paths, the same run directory twice, a report block of the wrong type; one table, one test
(tests/cli/bad_input_cases.py). Then the odd reports it accepts: minimal blocks, an undecodable init-reuse record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bad_input_cases import (
    INIT_REPORT,
    STORE_DAMAGE,
    SWEEP_FLAGS,
    Case,
    Good,
    damaged_run,
    make_files,
    output_cases,
    params,
    refuse,
    sweep_yaml,
    write,
)

from hessian_lora.cli.main import main

ABLATION_CONFIGS = {
    "config-binary": b"\x00\xff\xfe\x80",
    "config-a-list": "- 1\n- 2\n",
    "config-not-yaml": "model: [unclosed\n",
    "config-model-a-list": "model: [1, 2]\n",
}

CASES: list[Case] = [
    *[
        Case(
            f"store-{name}",
            ["analyze", "{tmp}/run", "--bootstrap", "10", "--out", "{tmp}/a"],
            **damaged_run(name),
        )
        for name in STORE_DAMAGE
    ],
    Case("value-bootstrap-zero", ["analyze", "{run}", "--bootstrap", "0"], at_most_a_lock=["{tmp}/out"]),
    Case(
        "value-rank-absent",
        ["analyze", "{run}", "--rank", "99", "--bootstrap", "10"],
        at_most_a_lock=["{tmp}/out"],
    ),
    Case("value-metric-unknown", ["analyze", "{run}", "--metric", "vibes"], at_most_a_lock=["{tmp}/out"]),
    *output_cases("analyze", ["analyze", "{run}", "--bootstrap", "10", "--out", "{out}"], file_output=False),
    *[
        Case(
            f"run-config-{name}-of-{dirs}",
            [
                "analyze",
                *(["{run}"] if dirs == 2 else []),
                "{tmp}/damaged",
                "--bootstrap",
                "10",
                "--out",
                "{tmp}/a",
            ],
            copies={"damaged": "run"},
            files={"damaged/config.yaml": content},
            says=["{tmp}/damaged/config.yaml"],
            unwritten=["{tmp}/a"],
        )
        for name, content in sorted(ABLATION_CONFIGS.items())
        for dirs in [1, 2]
    ],
    *[
        Case(
            f"same-run-twice-{spelling}",
            ["analyze", "{run}", second, "--bootstrap", "10", "--out", "{tmp}/a"],
            says=["twice"],
            unwritten=["{tmp}/a"],
        )
        for spelling, second in [("same", "{run}"), ("trailing-dot", "{run}/.")]
    ],
    Case(
        "block-time-not-a-number",
        ["analyze", "{tmp}/run", "--bootstrap", "10"],
        copies={"run": "run:light"},
        files={f"run/{INIT_REPORT}": {"blocks": [{"name": "adapter", "lambda_max": 1.5, "seconds": "x"}]}},
        says=[f"{{tmp}}/run/{INIT_REPORT}", "wrong type"],
        unwritten=["{tmp}/run/analysis.json"],
    ),
]


@pytest.mark.parametrize("case", params(CASES))
def test_analyze_refuses(case: Case, good: Good, untouched, tmp_path: Path, capsys, monkeypatch) -> None:
    refuse(case, good, tmp_path, capsys, monkeypatch)


# ----------------------------------------------------------------------------------------------------------
# Not refusals: the odd reports analyze accepts


MINIMAL_BLOCKS: dict[str, dict[str, Any]] = {
    "minimal-block": {"name": "adapter", "lambda_max": 1.5},
    "minimal-block-in-a-scan-group": {"name": "adapter", "lambda_max": 1.5, "scan_group": "g"},
    "block-without-eigen-record": {
        "name": "adapter",
        "lambda_max": 1.5,
        "seconds": 2.0,
        "hvps": 4,
        "eigen": None,
    },
}


@pytest.mark.parametrize("case", sorted(MINIMAL_BLOCKS))
def test_analyze_a_report_with_a_minimal_block(case: str, good, untouched, tmp_path, capsys) -> None:
    make_files(
        Case(
            case,
            [],
            copies={"run": "run:light"},
            files={f"run/{INIT_REPORT}": {"blocks": [MINIMAL_BLOCKS[case]]}},
        ),
        good,
        tmp_path,
    )
    run = tmp_path / "run"
    assert main(["analyze", str(run), "--bootstrap", "10"]) == 0, capsys.readouterr().err
    cost = json.loads((run / "analysis.json").read_text())["cost"]
    assert cost["eigen_blocks"] == 1 and cost["eigen_seconds"] >= 0


def test_an_undecodable_init_reuse_record_counts_as_absent(good, untouched, tmp_path, capsys) -> None:
    make_files(
        Case(
            "inputs",
            [],
            copies={"run": "run:light"},
            files={"run/hessian/lora_r2_s0_init.inputs": b"\xff\xfe\x00"},
        ),
        good,
        tmp_path,
    )
    run = tmp_path / "run"
    assert main(["analyze", str(run), "--bootstrap", "10"]) == 0, capsys.readouterr().err
    # A sweep extended over it (a new seed, whose run compares its inputs with every record) finishes.
    config = write(tmp_path / "two-seeds.yaml", sweep_yaml({"seeds": [0, 1]}))
    assert main(["sweep", str(config), "--out", str(run), "--extend", *SWEEP_FLAGS]) == 0
    assert json.loads((run / "hessian" / "lora_r2_s1_init.inputs").read_text())["sha256"]
