"""Bad input to ``hessian-lora recommend``: damaged calibration files and probes, damaged run directories to
calibrate from, impossible values, the output of ``--save-calibration``; one table, one test
(tests/cli/bad_input_cases.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from bad_input_cases import (
    STORE_DAMAGE,
    TINY,
    Case,
    Good,
    calibration_with_probe,
    damaged_run,
    output_cases,
    params,
    refuse,
)

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
LORA = ["recommend", "--method", "lora", *TINY]


def _nan_calibration(good: Good) -> dict[str, Any]:
    from hessian_lora.sweep.recommend import load_calibration

    content = load_calibration(None).to_dict()
    content["c"] = float("nan")
    return content


CALIBRATIONS: dict[str, Any] = {
    "not-json": "{{",
    "not-utf8": b"\xff\xfe",
    "list": [],
    "empty-object": {},
    "c-text": {"c": "x", "slope": 1, "fit": "inverse", "points": []},
    "c-nan": _nan_calibration,
}
PROBES: dict[str, Any] = {
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
IMPOSSIBLE: dict[str, list[str]] = {
    "rank-zero": [*LORA, "--rank", "0"],
    "rank-negative": [*LORA, "--rank", "-1"],
    "method-unknown": ["recommend", "--method", "nope", *TINY],
    "nothing": ["recommend"],
    "device-cuda": [*LORA, "--device", "cuda"],
}

CASES: list[Case] = [
    *[
        Case(f"calibration-{name}", [*LORA, "--calibration", "{tmp}/cal.json"], files={"cal.json": content})
        for name, content in sorted(CALIBRATIONS.items())
    ],
    *[
        Case(
            f"calibration-probe-{name}",
            [*LORA, "--calibration", "{tmp}/cal.json"],
            files={"cal.json": lambda good, change=change: calibration_with_probe(change)},
            says=["{tmp}/cal.json", "probe"],
        )
        for name, change in sorted(PROBES.items())
    ],
    *[
        Case(
            f"store-{name}",
            ["recommend", "--calibration", "{tmp}/run", "--save-calibration", "{tmp}/c.json"],
            **damaged_run(name),
        )
        for name in STORE_DAMAGE
    ],
    *[
        Case(f"value-{name}", argv, at_most_a_lock=["{tmp}/out"], marks=[NO_CUDA] if "cuda" in name else [])
        for name, argv in IMPOSSIBLE.items()
    ],
    Case(
        "value-gralora-rank-3",
        ["recommend", "--method", "gralora", *TINY, "--rank", "3"],
        says=["multiple of"],
        unwritten=["{tmp}/out"],
    ),
    *output_cases(
        "save-calibration",
        ["recommend", "--calibration", "{run}", "--save-calibration", "{out}"],
        file_output=True,
    ),
]


@pytest.mark.parametrize("case", params(CASES))
def test_recommend_refuses(case: Case, good: Good, untouched, tmp_path: Path, capsys, monkeypatch) -> None:
    refuse(case, good, tmp_path, capsys, monkeypatch)
