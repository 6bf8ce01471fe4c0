"""Bad input to ``hessian-lora info`` (and ``methods``, which reads no input): damaged checkpoints and damaged
peft adapter directories, one table run by one test (tests/cli/bad_input_cases.py); then the check that the good
files pass every check of ``info`` and ``eigen``. The interrupt of ``methods`` is in test_bad_input_cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_input_cases import (
    CHECKPOINT_DAMAGE,
    EIGEN_FAST,
    PEFT_DAMAGE,
    Case,
    Good,
    damaged_checkpoint,
    params,
    peft_directory,
    refuse,
)

from hessian_lora.cli.main import main

CASES: list[Case] = [
    *[
        Case(f"checkpoint-{name}", ["info", "{tmp}/ckpt"], **damaged_checkpoint(name))
        for name in sorted(CHECKPOINT_DAMAGE)
    ],
    *[
        Case(
            f"peft-{name}",
            ["info", "{tmp}/peft"],
            says=["adapter_config.json"],
            unwritten=["{tmp}/r.json"],
            **peft_directory(name),
        )
        for name in sorted(PEFT_DAMAGE)
    ],
]


@pytest.mark.parametrize("case", params(CASES))
def test_info_refuses(case: Case, good: Good, untouched, tmp_path: Path, capsys, monkeypatch) -> None:
    refuse(case, good, tmp_path, capsys, monkeypatch)


def test_good_checkpoint_passes_every_check(good, untouched, tmp_path, capsys) -> None:
    """The checks refuse only bad input: the good files pass them."""
    assert main(["info", str(good["checkpoint"]), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["optimizer_state"]["step"] == 2
    assert main(
        ["eigen", str(good["checkpoint"]), "--preconditioned", *EIGEN_FAST, "--out", str(tmp_path / "r.json")]
    ) in (0, 3)  # 3: written, three products need not certify
    assert main(["info", str(good["init"])]) == 0
