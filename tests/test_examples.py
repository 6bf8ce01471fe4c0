"""Every script in examples/ runs to the end on the tiny random Llama and prints what it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RUNS = {
    "my_peft_adapter.py": (["--model", "tiny-llama"], r"λ_max = [-\d.e+]+ \(converged True"),
    "per_module_scan.py": (
        ["--model", "tiny-llama", "--layers", "0,1", "--samples", "4"],
        r"\| .*layers\.1\.self_attn\.q_proj \| [\d.e+-]+ \| [\d.e+-]+ \| [\d.e+-]+×",
    ),
    "trainer_callback.py": (
        ["--model", "tiny-llama", "--steps", "4", "--every", "2"],
        r"step +4: λ_max [\d.e+-]+, Adam-preconditioned",
    ),
    "recommend_lr.py": (
        ["--model", "tiny-llama", "--method", "pissa", "--rank", "4"],
        r"pissa: λ_max at initialisation .* sweep these",
    ),
}


def test_every_example_is_run_here() -> None:
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_example_runs(name: str) -> None:
    arguments, expected = RUNS[name]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *arguments, "--threads", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(expected, done.stdout), done.stdout
