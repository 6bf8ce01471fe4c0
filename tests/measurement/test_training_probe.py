"""In-loop sharpness probes: no effect on training, live preconditioner = checkpoint preconditioner, warm starts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hessian_lora.core.errors import UserError
from hessian_lora.inputs.tasks import load_task, make_batches
from hessian_lora.measurement.training_probe import DuringSettings, SharpnessProbe, stability_ratios
from hessian_lora.training.adapters import AdapterConfig, build_adapter, make_optimizer, trainable_parameters
from hessian_lora.training.train import TrainConfig, train

TARGETS = ("q_proj", "v_proj", "down_proj")


@pytest.fixture(scope="module")
def arith():
    return load_task("arith", seed=0, n_train=32, n_eval=8)


def _run(
    arith,
    *,
    method: str = "lora",
    dropout: float = 0.1,
    probe_settings: DuringSettings | None = None,
    steps: int = 6,
    lr: float = 3e-3,
):
    from hessian_lora.inputs.models import load_model

    tiny = load_model("tiny-llama", device="cpu")
    config = AdapterConfig(method, rank=4, dropout=dropout, targets=TARGETS)
    model = build_adapter(tiny.model, config)
    optimizer = make_optimizer(model, config, lr)
    train_config = TrainConfig(lr=lr, steps=steps, batch_size=8, max_length=96, seed=0)
    probe = None
    if probe_settings is not None:
        batches = make_batches(tiny.tokenizer, arith.train[:8], 4, max_length=96)
        probe = SharpnessProbe(model, batches, probe_settings, total_steps=steps)
    train(model, tiny.tokenizer, arith.train, train_config, optimizer=optimizer, progress=False, probe=probe)
    return model, optimizer, probe, tiny


def test_probes_leave_training_bit_identical(arith):
    # Dropout on: training consumes the RNG, so a probe that moved it would change the weights.
    plain, _, _, _ = _run(arith)
    probed, _, probe, _ = _run(arith, probe_settings=DuringSettings(every=2, tol=1e-2))
    assert [point.step for point in probe.history] == [0, 2, 4, 6]
    for (name, a), (_, b) in zip(trainable_parameters(plain).items(), trainable_parameters(probed).items()):
        assert torch.equal(a, b), name
    assert probe.history[0].preconditioned is None  # no Adam state before the first update
    assert all(point.lambda_max is not None and point.lambda_max > 0 for point in probe.history)
    assert all(point.preconditioned is not None for point in probe.history[1:])


def test_live_preconditioner_matches_the_checkpoint_measurement(arith, tmp_path):
    # LoRA+ (two groups): the live probe and measure() on the saved checkpoint agree on λ̃ and λ_max.
    from hessian_lora.measurement.measure import MeasureSettings, measure
    from hessian_lora.measurement.targets import Checkpoint
    from hessian_lora.training.checkpoint import CheckpointMeta, save_checkpoint

    settings = DuringSettings(every=4, tol=1e-6, max_iter=200, warm_start=False)
    model, optimizer, probe, _ = _run(arith, method="loraplus", dropout=0.0, probe_settings=settings, steps=4)
    config = AdapterConfig("loraplus", rank=4, targets=TARGETS)
    meta = CheckpointMeta.from_config(
        config, base_model="tiny-llama", task="arith", model_seed=0, dtype=torch.float32, lr=3e-3, step=4
    )
    save_checkpoint(tmp_path / "ck", model, meta, optimizer=optimizer)
    report = measure(
        Checkpoint(tmp_path / "ck"),
        MeasureSettings(preconditioned=True, smallest=False, tol=1e-6, max_iter=200),
        batches=probe.batches,
        progress=False,
    )
    last = probe.history[-1]
    assert last.step == 4
    assert last.lambda_max == pytest.approx(report.blocks[0].lambda_max, rel=1e-4)
    assert last.preconditioned == pytest.approx(report.blocks[0].preconditioned.sharpness, rel=1e-4)


def test_warm_start_reaches_the_cold_value_with_fewer_products(arith):
    settings = DuringSettings(every=1, tol=1e-4, max_iter=200, preconditioned=True)
    model, optimizer, probe, _ = _run(arith, dropout=0.0, probe_settings=settings, steps=5)
    warm = probe.history[-1]
    cold = SharpnessProbe(model, probe.batches, dataclasses.replace(settings, warm_start=False)).measure(
        5, optimizer, warm.lr
    )
    assert warm.converged and cold.converged
    # Both certified to a relative residual of 1e-4: the values agree to within the residuals.
    assert abs(warm.lambda_max - cold.lambda_max) <= warm.residual + cold.residual + 1e-6 * cold.lambda_max
    assert abs(warm.preconditioned - cold.preconditioned) <= (
        warm.precond_residual + cold.precond_residual + 1e-6 * cold.preconditioned
    )
    assert warm.hvps < cold.hvps
    assert warm.precond_hvps < cold.precond_hvps


def test_a_dora_probe_measures_the_hessian_it_is_asked_for():
    """``dora_norm`` reaches the probe's operator: each probe agrees with a direct Lanczos on that Hessian."""
    from hessian_lora.hessian import HessianOperator, WholeAdapter, lanczos
    from hessian_lora.inputs.models import load_model

    tiny = load_model("tiny-llama", device="cpu")
    model = build_adapter(tiny.model, AdapterConfig("dora", rank=2, targets=("q_proj",)))
    batches = make_batches(tiny.tokenizer, load_task("arith", n_train=4, n_eval=0).train, 2)
    (block,) = WholeAdapter().blocks(model)
    found = {}
    for norm in ("detached", "differentiated"):
        settings = DuringSettings(tol=1e-6, max_iter=80, preconditioned=False, dora_norm=norm)
        found[norm] = SharpnessProbe(model, batches, settings).measure(0).lambda_max
        direct = lanczos(
            HessianOperator(model, batches, block, dora_norm=norm),
            k=1,
            which="largest",
            tol=1e-6,
            max_iter=80,
        )
        assert found[norm] == pytest.approx(direct.lambda_max, rel=1e-5)
    assert (
        abs(found["detached"] - found["differentiated"]) > 1e-3 * found["detached"]
    )  # two Hessians, even at init
    with pytest.raises(UserError, match="dora_norm"):
        DuringSettings(dora_norm="true")


def test_stability_ratios_and_settings():
    gd, adam = stability_ratios({"lambda_max": 100.0, "preconditioned": 3800.0, "lr": 0.01}, beta1=0.9)
    assert gd == pytest.approx(0.5)
    assert adam == pytest.approx(1.0)
    assert stability_ratios({"lambda_max": 1.0, "lr": None}) == (None, None)
    with pytest.raises(UserError):
        DuringSettings(every=0)
    with pytest.raises(UserError):
        DuringSettings.from_mapping({"evry": 3})
    assert DuringSettings.from_mapping({"tol": "1e-2"}).tol == 1e-2
