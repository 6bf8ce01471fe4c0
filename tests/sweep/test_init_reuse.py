"""λ at initialisation measured once per distinct adapter (hessian_lora/sweep/init_reuse.py): a seed whose adapter
at init is bit-identical to another's takes that seed's report; every other seed is measured."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from sweep_helpers import tiny_config

from hessian_lora.analysis.report import cost_section
from hessian_lora.analysis.runs import read_run_directory
from hessian_lora.core.rundir import InitKey, RunLayout, read_init_inputs
from hessian_lora.core.store import open_store
from hessian_lora.inputs.tasks import TokenBatch
from hessian_lora.sweep.init_reuse import inputs_digest, reuse_identical_report
from hessian_lora.sweep.runner import run_sweep


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    model[1].weight.requires_grad_(False)
    return model


def _batches(token: int = 5) -> list[TokenBatch]:
    ids = torch.tensor([[1, 2, token]])
    return [TokenBatch(ids, torch.ones_like(ids), ids.clone())]


def test_the_digest_sees_every_bit_of_the_model_the_data_and_the_settings():
    settings = {"tol": 1e-3, "samples": 1}
    digest = inputs_digest(_model(), _batches(), settings)
    assert digest == inputs_digest(_model(), _batches(), dict(reversed(settings.items())))
    flipped = _model()
    with torch.no_grad():  # one bit of one weight
        flipped[0].weight.view(-1)[0] = torch.nextafter(flipped[0].weight.view(-1)[0], torch.tensor(1.0))
    trained = _model()
    trained[1].weight.requires_grad_(True)  # the same numbers, but another set of Hessian variables
    others = {
        inputs_digest(flipped, _batches(), settings),
        inputs_digest(trained, _batches(), settings),
        inputs_digest(_model(), _batches(token=6), settings),
        inputs_digest(_model(), _batches(), {**settings, "tol": 1e-4}),
        inputs_digest(_model().to(torch.bfloat16), _batches(), settings),
    }
    assert digest not in others and len(others) == 5


def _report(layout: RunLayout, key: InitKey, value: float) -> None:
    layout.hessian.mkdir(parents=True, exist_ok=True)
    layout.init_report(key).write_text(json.dumps({"blocks": [{"lambda_max": value}]}))


def test_a_report_is_copied_only_to_a_key_without_one_from_a_key_with_the_same_digest(tmp_path: Path):
    layout = RunLayout(tmp_path)
    first, second, third = (InitKey("pissa", 4, seed) for seed in (1, 2, 3))
    _report(layout, first, 7.0)
    # a report from before the records gets one, and is not touched
    assert reuse_identical_report(layout, first, "aa") is None
    assert read_init_inputs(layout) == {first: {"sha256": "aa", "reused_from": None}}
    assert reuse_identical_report(layout, second, "aa") == first
    assert layout.init_report(second).read_bytes() == layout.init_report(first).read_bytes()
    assert read_init_inputs(layout)[second] == {"sha256": "aa", "reused_from": "pissa_r4_s1"}
    assert reuse_identical_report(layout, third, "bb") is None  # other inputs: measured as usual
    assert not layout.init_report(third).exists()
    assert read_init_inputs(layout)[third] == {"sha256": "bb", "reused_from": None}
    # the record describes what its report measured: never overwritten once the report exists
    assert reuse_identical_report(layout, first, "cc") is None
    assert read_init_inputs(layout)[first]["sha256"] == "aa"


def test_a_sweep_measures_pissa_once_for_two_seeds_and_lora_twice(tmp_path: Path):
    hessian = {"init": True, "samples": 4, "batch_size": 4, "tol": 1e-2, "max_iter": 20}
    config = tiny_config(
        methods=["lora", "pissa"],
        seeds=[1, 2],
        lr=[1e-2],
        steps=2,
        ranks=[2],
        targets=["q_proj", "v_proj"],
        hessian=hessian,
        checkpoints="none",
    )
    run_sweep(config, tmp_path, progress=False)
    layout = RunLayout(tmp_path)
    records = read_init_inputs(layout)
    pissa, lora = (InitKey("pissa", 2, 2), InitKey("lora", 2, 2))
    assert records[pissa]["reused_from"] == "pissa_r2_s1"
    assert records[pissa]["sha256"] == records[InitKey("pissa", 2, 1)]["sha256"]
    assert layout.init_report(pissa).read_bytes() == layout.init_report(InitKey("pissa", 2, 1)).read_bytes()
    assert (
        records[lora]["reused_from"] is None
        and records[lora]["sha256"] != records[InitKey("lora", 2, 1)]["sha256"]
    )
    with open_store(tmp_path, read_only=True) as store:
        rows = {(row["method"], row["seed"]): row for row in store.rows()}
    assert rows["pissa", 1]["lambda_init"] == rows["pissa", 2]["lambda_init"]
    assert rows["lora", 1]["lambda_init"] != rows["lora", 2]["lambda_init"]
    directory = read_run_directory(tmp_path)
    assert directory.reused_inits == {pissa: InitKey("pissa", 2, 1)}
    data, text = cost_section(directory)
    assert data["eigen_reports"] == 3 and data["eigen_reports_reused"] == 1  # the copy costs nothing
    assert "1 more copied from a seed whose adapter at init was bit-identical" in text
