"""Bad input to ``hessian-lora init``: models that cannot load, impossible values, output paths. One table, one
test (tests/cli/bad_input_cases.py): one line naming what is wrong, exit 2, nothing written under ``--out``, the
good data beside it untouched. Then the unreachable hub id, which must also be fast.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from bad_input_cases import BAD_MODELS, OFFLINE, TINY, Case, Good, cli_env, output_cases, params, refuse

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
OUT = ["--out", "{tmp}/out"]
LORA = ["init", *TINY, "--method", "lora"]
# Impossible values: each refused before anything is written under --out.
IMPOSSIBLE: dict[str, list[str]] = {
    "rank-huge": [*LORA, "--rank", "100000000000"],
    "rank-zero": [*LORA, "--rank", "0"],
    "rank-negative": [*LORA, "--rank", "-3"],
    "alpha-nan": [*LORA, "--alpha", "nan"],
    "alpha-inf": [*LORA, "--alpha", "inf"],
    "alpha-negative": [*LORA, "--alpha", "-1"],
    "dropout-nan": [*LORA, "--dropout", "nan"],
    "dropout-over-one": [*LORA, "--dropout", "1.5"],
    "method-unknown": ["init", *TINY, "--method", "nope"],
    "targets-unknown": [*LORA, "--targets", "nope_proj"],
    "targets-empty": [*LORA, "--targets", ","],
    "pissa-niter-zero": ["init", *TINY, "--method", "pissa", "--pissa-niter", "0"],
    "loraga-batches-zero": ["init", *TINY, "--method", "lora_ga", "--loraga-batches", "0"],
    "rank-text": [*LORA, "--rank", "four"],
    "device-cuda": [*LORA, "--device", "cuda"],
}

CASES: list[Case] = [
    *[
        Case(
            f"model-{name}",
            ["init", "--model", spec, "--method", "lora", "--rank", "2", *OUT],
            files=files,
            env=OFFLINE,
            unwritten=["{tmp}/out"],
        )
        for name, (spec, files) in BAD_MODELS.items()
    ],
    *[
        Case(
            f"value-{name}",
            [*argv, *OUT],
            at_most_a_lock=["{tmp}/out"],
            marks=[NO_CUDA] if "cuda" in name else [],
        )
        for name, argv in IMPOSSIBLE.items()
    ],
    *[
        Case(
            f"value-gralora-rank-{rank}",
            ["init", *TINY, "--method", "gralora", "--rank", rank, *OUT],
            says=["multiple of"],
            unwritten=["{tmp}/out"],
        )
        for rank in ["3", "34"]
    ],
    *output_cases("init", [*LORA, "--rank", "2", "--out", "{out}"], file_output=False),
]


@pytest.mark.parametrize("case", params(CASES))
def test_init_refuses(case: Case, good: Good, untouched, tmp_path: Path, capsys, monkeypatch) -> None:
    refuse(case, good, tmp_path, capsys, monkeypatch)


def test_hub_id_offline_is_fast(tmp_path: Path) -> None:
    """An unreachable hub id: one line, in seconds, without the retry warnings."""
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hessian_lora",
            "init",
            "--model",
            "no-such-org-xyz/no-such-model-xyz",
            "--method",
            "lora",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert time.monotonic() - started < 60
