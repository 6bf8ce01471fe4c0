from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tinylora import operator_for

from hessian_lora.core.errors import UserError
from hessian_lora.hessian import WholeAdapter, adam_preconditioner, adam_thresholds, preconditioned_sharpness
from hessian_lora.hessian.loss import loss_sum
from hessian_lora.inputs.models import load_model
from hessian_lora.inputs.tasks import Example, make_batches
from hessian_lora.measurement.preconditioning import checkpoint_preconditioner
from hessian_lora.training.adapters import AdapterConfig, build_adapter, make_optimizer
from hessian_lora.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint


def test_thresholds_are_the_edge_of_stability_bounds() -> None:
    gd, adam = adam_thresholds(1e-3, 0.9)
    assert gd == pytest.approx(2000.0) and adam == pytest.approx(38000.0)
    assert adam_thresholds(None, 0.9) == (None, None)


@pytest.mark.parametrize("solver", ["lanczos", "power"])
def test_preconditioned_sharpness_matches_the_dense_symmetrised_matrix(generic_problem, solver: str) -> None:
    operator = operator_for(generic_problem.model, generic_problem.batches, generic_problem.block)
    generator = torch.Generator().manual_seed(0)
    preconditioner = torch.rand(operator.size, generator=generator, dtype=torch.float64) * 5 + 0.1
    result = preconditioned_sharpness(
        operator, preconditioner, lr=1e-3, beta1=0.9, eps=1e-8, step=10, solver=solver, tol=1e-8, max_iter=400
    )
    scale = preconditioner.rsqrt()
    symmetric = scale[:, None] * generic_problem.dense * scale[None, :]
    expected = float(torch.linalg.eigvalsh(symmetric)[-1])
    assert result.eigen.converged
    assert result.sharpness == pytest.approx(expected, rel=1e-7)
    # The same as the largest eigenvalue of the non-symmetric P⁻¹H.
    unsymmetric = torch.linalg.eigvals(generic_problem.dense / preconditioner[:, None])
    assert result.sharpness == pytest.approx(float(unsymmetric.real.max()), rel=1e-7)
    assert result.adam_threshold == pytest.approx(38000.0) and result.gd_threshold == pytest.approx(2000.0)


def test_preconditioner_from_second_moments() -> None:
    moments = {"a": torch.tensor([4.0, 9.0]), "b": torch.tensor([[1.0]])}
    diagonal = adam_preconditioner(moments, ["b", "a"], eps=0.5, lr_ratios={"a": 2.0})
    assert diagonal.tolist() == pytest.approx([1.5, 2.5 / 2, 3.5 / 2])
    with pytest.raises(UserError, match="no second moment"):
        adam_preconditioner(moments, ["c"], eps=0.5)


@pytest.mark.parametrize("method", ["lora", "loraplus"])
def test_preconditioner_from_a_trained_checkpoint(tmp_path: Path, method: str) -> None:
    base = load_model("tiny-llama", device="cpu")
    config = AdapterConfig(method, rank=2, targets=("q_proj", "v_proj"), loraplus_ratio=4.0)
    model = build_adapter(base.model, config)
    optimizer = make_optimizer(model, config, 1e-2, betas=(0.8, 0.99), eps=1e-6)
    examples = [Example(prompt=f"{i} plus {i + 2}?", response=f"{2 * i + 2}") for i in range(4)]
    batches = make_batches(base.tokenizer, examples, 2)
    for step in range(3):
        optimizer.zero_grad()
        batch = batches[step % 2]
        (loss_sum(model, batch) / batch.loss_tokens).backward()
        optimizer.step()
    meta = CheckpointMeta.from_config(config, base_model="tiny-llama", lr=1e-2, step=3)
    save_checkpoint(tmp_path / "c", model, meta, optimizer=optimizer)
    loaded = load_checkpoint(tmp_path / "c", device="cpu")
    block = WholeAdapter().blocks(loaded.model)[0]
    diagonal, settings = checkpoint_preconditioner(loaded, block.names)
    by_param = {id(p): name for name, p in model.named_parameters()}
    expected = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state[param]
            corrected = state["exp_avg_sq"] / (1 - 0.99 ** int(state["step"]))
            ratio = group["lr"] / optimizer.param_groups[0]["lr"]
            expected.append((by_param[id(param)], (corrected.sqrt() + 1e-6).reshape(-1) / ratio))
    expected_flat = torch.cat([dict(expected)[name].double() for name in block.names])
    assert torch.allclose(diagonal, expected_flat, rtol=1e-12)
    assert settings["beta1"] == pytest.approx(0.8) and settings["eps"] == pytest.approx(1e-6)
    assert settings["lr"] == pytest.approx(1e-2) and settings["step"] == 3
    if method == "loraplus":  # B learns 4x faster: its P entries are divided by 4 (checked through expected)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-2, 4e-2])


def test_group_ratios_survive_a_schedule_that_decayed_to_zero() -> None:
    from types import SimpleNamespace

    from hessian_lora.measurement.preconditioning import _group_ratios

    assert _group_ratios([{"lr": 1e-3}, {"lr": 4e-3}], None) == pytest.approx([1.0, 4.0])
    decayed = [{"lr": 0.0, "initial_lr": 1e-3}, {"lr": 0.0, "initial_lr": 2e-3}]
    assert _group_ratios(decayed, None) == pytest.approx([1.0, 2.0])
    loraplus = SimpleNamespace(method="loraplus", loraplus_ratio=16.0)
    assert _group_ratios([{"lr": 0.0}, {"lr": 0.0}], loraplus) == [1.0, 16.0]
    assert _group_ratios([{"lr": 0.0}], None) == [1.0]
