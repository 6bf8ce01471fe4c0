"""Bad input through the Python API rather than the CLI: the code sandbox's time limit, a run that trained on
zero tokens."""

from __future__ import annotations

import time
from typing import Any

import pytest
from bad_input_cases import REPO

from hessian_lora.core.errors import UserError


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 0.0, -1.0, True, "10"])
def test_no_sandbox_runs_without_a_finite_time_limit(timeout: Any, tmp_path) -> None:
    """Every way into the code sandbox refuses a limit that never expires, before a program starts."""
    # local: collecting the bad-input tests stays fast (evaluate and evalsets import transformers)
    from hessian_lora.training.evalsets import load_eval_set
    from hessian_lora.training.evaluate import EvalConfig, run_program

    marker = tmp_path / "ran"
    with pytest.raises(UserError, match="finite number"):
        run_program(f"open({str(marker)!r}, 'w').write('x')\n", timeout=timeout)
    assert not marker.exists()
    with pytest.raises(UserError, match="finite number"):
        EvalConfig(humaneval_timeout=timeout)
    with pytest.raises(UserError, match="finite number"):
        load_eval_set(f"mbpp:{REPO / 'tests' / 'fixtures' / 'mbpp.jsonl'}", code_timeout=timeout)


def test_the_sandbox_limit_stops_a_program_that_never_ends() -> None:
    from hessian_lora.training.evaluate import run_program  # local: as above

    started = time.monotonic()
    assert run_program("while True:\n    pass\n", timeout=0.5) is False
    assert time.monotonic() - started < 30


def test_zero_token_run_is_an_error_not_done() -> None:
    from hessian_lora.sweep.execute import check_trained_tokens  # local: as above

    with pytest.raises(ValueError, match="zero"):
        check_trained_tokens(0, max_length=1)
    check_trained_tokens(5, max_length=64)
