"""Issue 9: every method of the paper (both versions) initialises, saves, and gets certified per-module λ_max."""

from __future__ import annotations

import json

import pytest
import torch

from hessian_lora.cli.main import main
from hessian_lora.measurement.measure import MeasureSettings, measure
from hessian_lora.measurement.targets import Checkpoint
from hessian_lora.methods.registry import METHODS

# One layer of tiny-llama, four short examples: the point is that every tuner's parameters form the blocks.
SETTINGS = MeasureSettings(
    task="arith",
    samples=4,
    batch_size=4,
    max_length=160,
    blocks="per-module",
    layers=(0,),
    modules=("q_proj", "down_proj"),
    tol=1e-3,
    max_iter=60,
    smallest=False,
)


@pytest.mark.parametrize("method", list(METHODS))
def test_init_then_per_module_eigen_is_certified_for_every_method(method: str, tmp_path, capsys) -> None:
    out = tmp_path / "ckpt"
    assert main(["init", "--model", "tiny-llama", "--method", method, "--rank", "4", "--out", str(out)]) == 0
    meta = json.loads((out / "hessian_lora.json").read_text())
    assert "trainable parameters" in capsys.readouterr().out
    report = measure(Checkpoint(out), SETTINGS, progress=False)
    from hessian_lora.training.checkpoint import load_checkpoint

    model = load_checkpoint(out).model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert [b.name for b in report.blocks] == ["layers.0.self_attn.q_proj", "layers.0.mlp.down_proj"]
    for block in report.blocks:
        # the block is *every* trainable parameter of that module, whatever the tuner calls them
        expected = [n for n in trainable if f".{block.name}." in n]
        assert list(block.parameter_names) == expected and len(expected) >= 2
        assert block.converged and block.lambda_max is not None and block.lambda_max > 0
        assert block.residual <= 1e-3 * abs(block.lambda_max) + 1e-12
    assert meta["trainable_parameters"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_loft_reports_the_preconditioner_note_instead_of_a_number(tmp_path) -> None:
    from hessian_lora.inputs.tasks import load_task
    from hessian_lora.methods.loft import PRECONDITIONER_NOTE
    from hessian_lora.training.adapters import AdapterConfig, adapter_at_initialisation, make_optimizer
    from hessian_lora.training.checkpoint import CheckpointMeta, save_checkpoint
    from hessian_lora.training.train import TrainConfig, train

    config = AdapterConfig("loft", rank=2)
    built = adapter_at_initialisation("tiny-llama", config, device="cpu")
    optimizer = make_optimizer(built.model, config, 1e-3, max_grad_norm=1.0)
    task = load_task("arith", n_train=4, n_eval=0)
    train(
        built.model,
        built.tokenizer,
        task.train,
        TrainConfig(lr=1e-3, steps=2, batch_size=2),
        optimizer=optimizer,
        progress=False,
    )
    meta = CheckpointMeta.from_config(config, base_model="tiny-llama", task="arith", lr=1e-3, step=2)
    save_checkpoint(tmp_path / "loft", built.model, meta, optimizer=optimizer)
    settings = MeasureSettings(
        task="arith",
        samples=2,
        batch_size=2,
        max_length=160,
        blocks="per-module",
        layers=(0,),
        modules=("q_proj",),
        preconditioned=True,
        max_iter=30,
    )
    report = measure(Checkpoint(tmp_path / "loft"), settings, progress=False)
    assert report.source["preconditioner_note"] == PRECONDITIONER_NOTE
    assert all(block.preconditioned is None for block in report.blocks)
    assert torch.isfinite(torch.tensor(report.blocks[0].lambda_max))
