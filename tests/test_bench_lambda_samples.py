"""bench/lambda_samples.py's summary (issue 20, item 2): the relative changes, the ratios to LoRA and the verdict
on which sample size suffices, from known measurements (no model)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "lambda_samples.py"
_spec = importlib.util.spec_from_file_location("lambda_samples", _PATH)
lambda_samples = importlib.util.module_from_spec(_spec)
sys.modules["lambda_samples"] = lambda_samples  # dataclasses look their module up by name
_spec.loader.exec_module(lambda_samples)


def _row(method, block, samples, value, certified=True):
    return lambda_samples.Measured(
        method, block, samples, value, certified, None if certified else 0.02, 10, 1.0, 3 * samples
    )


def test_verdict_names_the_smallest_sample_within_the_tolerance():
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    rows = [
        _row("lora", "adapter", 8, 30.0),
        _row("lora", "adapter", 32, 27.0),
        _row("lora", "adapter", 128, 28.0),
        _row("pissa", "adapter", 8, 3000.0),
        _row("pissa", "adapter", 32, 2300.0),
        _row("pissa", "adapter", 128, 2254.0),
        _row("lora", q, 8, 0.5),
        _row("lora", q, 32, 0.44),
        _row("lora", q, 128, 0.43),
        _row("pissa", q, 8, 5.5),
        _row("pissa", q, 32, 4.8),
        _row("pissa", q, 128, 4.78, certified=False),
    ]
    lines, verdict = lambda_samples.summarise(rows, (8, 32, 128), within=0.1)
    # n = 8: PiSSA's whole λ is 33 % above its 128-example value -> not enough; n = 32: every change <= 10 %.
    assert verdict["smallest_sample_within"] == 32
    assert verdict["worst_whole_change"]["8"] == pytest.approx(3000 / 2254 - 1)
    assert verdict["uncertified"] == 1
    table = "\n".join(lines)
    assert "| pissa | whole adapter | 3000 | 2300 | 2254 | +33.1% | +2.0% |" in table
    assert "q_proj L0" in table and "(uncert.)" in table and "1 values not certified" in lines[-1]
    _, strict = lambda_samples.summarise(rows, (8, 32, 128), within=0.01)
    assert (
        strict["smallest_sample_within"] == 128
        and "no smaller sample is" in lambda_samples.summarise(rows, (8, 32, 128), within=0.01)[0][-1]
    )


def test_a_rerun_resumes_skips_what_is_measured_and_refuses_other_settings(tmp_path, monkeypatch):
    """Each (size, kind, method) is saved as it is measured, every method's whole adapter before any module at a
    size; a rerun measures only what is missing (here a new size),
    and a rerun with a setting the values depend on is refused with a one-line error naming the file."""
    measured = []
    q = "base_model.model.model.layers.{}.self_attn.q_proj"

    def fake_unit(method, size, kinds, args, layers):
        measured.append((method, size, tuple(kinds)))
        rows = []
        if "whole" in kinds:
            rows.append(_row(method, "adapter", size, 10.0 * size))
        if "per-module" in kinds:
            rows += [_row(method, q.format(layer), size, float(size + layer)) for layer in layers]
        return rows

    monkeypatch.setattr(lambda_samples, "measure_unit", fake_unit)
    out = tmp_path / "samples.json"
    common = ["--methods", "lora,pissa", "--layers", "0,2", "--out", str(out)]
    assert lambda_samples.main([*common, "--samples", "8,32"]) == 0
    assert measured == [
        (method, size, (kind,))
        for size in (8, 32)
        for kind in ("whole", "per-module")
        for method in ("lora", "pissa")
    ]
    first = json.loads(out.read_text())
    assert first["complete"] and len(first["rows"]) == 12 and "λ n=8" in first["table"][0]
    measured.clear()
    assert lambda_samples.main([*common, "--samples", "8,32,128"]) == 0
    assert measured == [
        ("lora", 128, ("whole",)),
        ("pissa", 128, ("whole",)),
        ("lora", 128, ("per-module",)),
        ("pissa", 128, ("per-module",)),
    ]
    second = json.loads(out.read_text())
    assert len(second["rows"]) == 18 and second["verdict"]["largest_sample"] == 128
    measured.clear()
    with pytest.raises(
        SystemExit, match=r"samples\.json: was measured with rank=64, this run has 8: pass --rank 64"
    ):
        lambda_samples.main([*common, "--samples", "8", "--rank", "8"])
    assert measured == [] and json.loads(out.read_text()) == second  # nothing lost
    # --no-measure rewrites the table, verdict and figure from the values there, measuring nothing.
    assert lambda_samples.main([*common, "--samples", "8,32,128,512", "--no-measure"]) == 0
    third = json.loads(out.read_text())
    assert measured == [] and third["rows"] == second["rows"] and not third["complete"]
    assert out.with_suffix(".png").stat().st_size > 10_000
    with pytest.raises(SystemExit, match=r"--no-measure: .*empty\.json holds no values"):
        lambda_samples.main([*common[:-1], str(tmp_path / "empty.json"), "--no-measure"])


def test_a_part_way_run_says_which_blocks_the_verdict_leaves_out_and_draws_its_figure(tmp_path):
    """With the whole adapter at 128 examples but no module there yet, the verdict judges the whole adapter only
    and names the modules it leaves out; the figure is written beside --out."""
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    rows = [
        _row(method, block, n, value * (1 + n / 1000))
        for method, scale in (("lora", 1.0), ("pissa", 80.0))
        for block, value in (("adapter", 30.0 * scale), (q, 0.4 * scale))
        for n in (8, 32)
    ]
    rows += [_row("lora", "adapter", 128, 30.0 * 1.128), _row("pissa", "adapter", 128, 2400.0 * 1.128)]
    lines, verdict = lambda_samples.summarise(rows, (8, 32, 128), within=0.1)
    assert (
        verdict["not_judged"] == ["q_proj L0"]
        and "left out, as they have no 128-example value yet: q_proj L0" in lines[-1]
    )
    assert (
        verdict["smallest_sample_within"] == 32
    )  # the whole adapter: −10.6 % at 8, −8.5 % at 32; ratios fixed
    path = tmp_path / "samples.png"
    lambda_samples.draw(rows, path)
    assert path.stat().st_size > 10_000
