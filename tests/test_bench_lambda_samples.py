"""bench/lambda_samples.py's summary (issue 20, item 2): the relative changes, the ratios to LoRA and the verdict
on which sample size suffices, from known measurements (no model)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "lambda_samples.py"
_spec = importlib.util.spec_from_file_location("lambda_samples", _PATH)
lambda_samples = importlib.util.module_from_spec(_spec)
sys.modules["lambda_samples"] = lambda_samples  # dataclasses look their module up by name
_spec.loader.exec_module(lambda_samples)


def _row(method, block, samples, value, certified=True):
    return lambda_samples.Measured(method, block, samples, value, certified, None if certified else 0.02, 10, 1.0,
                                   3 * samples)


def test_verdict_names_the_smallest_sample_within_the_tolerance():
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    rows = [_row("lora", "adapter", 8, 30.0), _row("lora", "adapter", 32, 27.0), _row("lora", "adapter", 128, 28.0),
            _row("pissa", "adapter", 8, 3000.0), _row("pissa", "adapter", 32, 2300.0),
            _row("pissa", "adapter", 128, 2254.0),
            _row("lora", q, 8, 0.5), _row("lora", q, 32, 0.44), _row("lora", q, 128, 0.43),
            _row("pissa", q, 8, 5.5), _row("pissa", q, 32, 4.8), _row("pissa", q, 128, 4.78, certified=False)]
    lines, verdict = lambda_samples.summarise(rows, (8, 32, 128), within=0.1)
    # n = 8: PiSSA's whole λ is 33 % above its 128-example value -> not enough; n = 32: every change <= 10 %.
    assert verdict["smallest_sample_within"] == 32
    assert verdict["worst_whole_change"]["8"] == pytest.approx(3000 / 2254 - 1)
    assert verdict["uncertified"] == 1
    table = "\n".join(lines)
    assert "| pissa | whole adapter | 3000 | 2300 | 2254 | +33.1% | +2.0% |" in table
    assert "q_proj L0" in table and "(uncert.)" in table and "1 values not certified" in lines[-1]
    _, strict = lambda_samples.summarise(rows, (8, 32, 128), within=0.01)
    assert strict["smallest_sample_within"] == 128 and "no smaller sample is" in lambda_samples.summarise(
        rows, (8, 32, 128), within=0.01)[0][-1]
