"""Trainer: schedule values, exact gradient accumulation, clipping, divergence, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from hessian_lora.core.errors import UserError
from hessian_lora.inputs.tasks import load_task, make_batches
from hessian_lora.training.adapters import AdapterConfig, build_adapter, trainable_parameters
from hessian_lora.training.train import (
    TrainConfig,
    accumulate_gradient,
    cosine_with_warmup,
    divergence_reason,
    example_stream,
    global_batches,
    steps_for_epochs,
    train,
    warmup_steps,
)


@pytest.fixture(scope="module")
def arith():
    return load_task("arith", seed=0, n_train=32, n_eval=8)


def _adapted(tiny, method: str = "lora"):
    return build_adapter(tiny.model, AdapterConfig(method, rank=4, targets=("q_proj", "v_proj", "down_proj")))


def test_warmup_steps_rounds_up_like_the_hf_trainer():
    assert warmup_steps(100, 0.03) == 3
    assert warmup_steps(12, 0.03) == 1
    assert warmup_steps(10, 0.0) == 0


def test_cosine_with_warmup_hand_values():
    # 10 steps, 2 warm-up: 0, 1/2, then cos over the remaining 8 steps.
    values = [cosine_with_warmup(step, 10, 2) for step in range(10)]
    expected = [0.0, 0.5] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert values == pytest.approx(expected, abs=1e-12)
    assert cosine_with_warmup(6, 10, 2) == pytest.approx(0.5)
    assert cosine_with_warmup(0, 5, 0) == 1.0


@pytest.mark.parametrize(("total", "ratio"), [(100, 0.03), (12, 0.03), (7, 0.0), (33, 0.1)])
def test_cosine_with_warmup_matches_transformers(total, ratio):
    from transformers import get_cosine_schedule_with_warmup

    n_warmup = warmup_steps(total, ratio)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, n_warmup, total)
    reference = []
    for _ in range(total):
        reference.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert [cosine_with_warmup(step, total, n_warmup) for step in range(total)] == pytest.approx(
        reference, abs=1e-12
    )


def test_train_follows_the_schedule(tiny, arith):
    model = _adapted(tiny)
    config = TrainConfig(lr=1e-3, steps=7, batch_size=4, warmup_ratio=0.3, max_length=96)
    result = train(model, tiny.tokenizer, arith.train, config, progress=False)
    n_warmup = warmup_steps(7, 0.3)
    assert [h["lr"] for h in result.history] == pytest.approx(
        [1e-3 * cosine_with_warmup(step, 7, n_warmup) for step in range(7)]
    )


def test_accumulated_gradient_equals_the_big_batch_gradient(tiny, arith):
    model = _adapted(tiny)
    params = trainable_parameters(model)
    # Make B non-zero so every factor has a gradient.
    with torch.no_grad():
        for name, param in params.items():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    examples = arith.train[:8]
    device = torch.device("cpu")
    big = make_batches(tiny.tokenizer, examples, 8, max_length=96)
    loss_big, tokens_big = accumulate_gradient(model, big, device)
    grad_big = {name: param.grad.clone() for name, param in params.items()}
    model.zero_grad(set_to_none=True)
    micro = make_batches(tiny.tokenizer, examples, 3, max_length=96)  # uneven: 3 + 3 + 2, different widths
    loss_micro, tokens_micro = accumulate_gradient(model, micro, device)
    assert len(micro) == 3 and tokens_micro == tokens_big
    assert loss_micro == pytest.approx(loss_big, rel=1e-6)
    for name, param in params.items():
        torch.testing.assert_close(param.grad, grad_big[name], rtol=1e-5, atol=1e-7)


def test_training_with_micro_batches_equals_training_with_the_whole_batch(tiny, arith):
    histories = []
    for micro in (None, 2):
        model = _adapted(load_tiny())
        config = TrainConfig(lr=1e-2, steps=4, batch_size=6, micro_batch_size=micro, max_length=96)
        histories.append(train(model, tiny.tokenizer, arith.train, config, progress=False).history)
    for first, second in zip(*histories):
        assert first["loss"] == pytest.approx(second["loss"], rel=1e-5)
        assert first["grad_norm"] == pytest.approx(second["grad_norm"], rel=1e-4)


def load_tiny():
    from hessian_lora.inputs.models import load_model

    return load_model("tiny-llama", device="cpu")


def test_clipping_scales_the_gradient_to_max_norm(tiny, arith):
    model = _adapted(tiny)
    params = trainable_parameters(model)
    before = {name: param.detach().clone() for name, param in params.items()}
    # Plain SGD at LR 1 with no warm-up: the update is exactly minus the (clipped) gradient.
    optimizer = torch.optim.SGD(list(params.values()), lr=1.0)
    max_norm = 1e-3
    config = TrainConfig(
        lr=1.0, steps=1, batch_size=4, warmup_ratio=0.0, max_grad_norm=max_norm, max_length=96
    )
    result = train(model, tiny.tokenizer, arith.train, config, optimizer=optimizer, progress=False)
    raw_norm = result.history[0]["grad_norm"]
    assert raw_norm > 10 * max_norm
    update = torch.cat([(before[name] - param.detach()).reshape(-1) for name, param in params.items()])
    assert float(update.norm()) == pytest.approx(max_norm, rel=1e-4)


def test_no_clipping_when_max_grad_norm_is_none(tiny, arith):
    model = _adapted(tiny)
    params = trainable_parameters(model)
    before = {name: param.detach().clone() for name, param in params.items()}
    optimizer = torch.optim.SGD(list(params.values()), lr=1.0)
    config = TrainConfig(lr=1.0, steps=1, batch_size=4, warmup_ratio=0.0, max_grad_norm=None, max_length=96)
    result = train(model, tiny.tokenizer, arith.train, config, optimizer=optimizer, progress=False)
    update = torch.cat([(before[name] - param.detach()).reshape(-1) for name, param in params.items()])
    assert float(update.norm()) == pytest.approx(result.history[0]["grad_norm"], rel=1e-4)


@pytest.mark.parametrize("lr", [1e30, 1e39])
def test_huge_learning_rate_is_reported_as_diverged(tiny, arith, lr):
    # On the random tiny model the loss cannot rise far above its (uniform) start: the RMSNorms bound the logits.
    # A huge LR on all seven projections overflows fp32 (NaN loss); 1e39 overflows Adam's step size itself.
    model = build_adapter(tiny.model, AdapterConfig("lora", rank=4))
    result = train(
        model,
        tiny.tokenizer,
        arith.train,
        TrainConfig(lr=lr, steps=10, batch_size=8, max_length=96),
        progress=False,
    )
    assert result.status == "diverged"
    assert result.steps < 10
    assert "at step" in (result.stop_reason or "")


def test_divergence_rules():
    config = TrainConfig(lr=1e-3, steps=10, divergence_factor=3.0, divergence_window=2)
    assert divergence_reason([2.0], 1.0, config) is None
    assert divergence_reason([2.0, float("nan")], 1.0, config) is not None
    assert divergence_reason([2.0, 1.0], float("inf"), config) is not None
    # one noisy step is smoothed by the window; two in a row are not
    assert divergence_reason([2.0, 1.0, 1.0, 9.0], 1.0, config) is None
    assert "exceeds" in (divergence_reason([2.0, 1.0, 7.0, 9.0], 1.0, config) or "")


def test_training_is_deterministic_and_reduces_the_loss(arith):
    results = []
    for _ in range(2):
        loaded = load_tiny()
        model = _adapted(loaded)
        config = TrainConfig(lr=3e-2, steps=12, batch_size=8, max_length=96, seed=3)
        results.append(train(model, loaded.tokenizer, arith.train, config, progress=False))
    assert results[0].history == results[1].history
    assert results[0].status == "done" and results[0].steps == 12
    assert results[0].train_loss < results[0].initial_loss - 0.2
    assert results[0].tokens == sum(
        batch.loss_tokens
        for step in global_batches(load_tiny().tokenizer, arith.train, config)
        for batch in step
    )


def test_example_stream_visits_every_example_once_per_epoch():
    stream = example_stream(5, seed=1)
    first, second = [next(stream) for _ in range(5)], [next(stream) for _ in range(5)]
    assert sorted(first) == sorted(second) == list(range(5))
    assert first != second  # reshuffled per epoch
    assert steps_for_epochs(10, 4, 1.0) == 3
    assert steps_for_epochs(10, 4, 2.0) == 5


def test_train_config_rejects_bad_values():
    with pytest.raises(UserError):
        TrainConfig(lr=0.0, steps=1)
    with pytest.raises(UserError):
        TrainConfig(lr=1e-3, steps=0)
    with pytest.raises(UserError):
        TrainConfig(lr=1e-3, steps=1, precision="fp16")
    with pytest.raises(UserError):
        TrainConfig(lr=1e-3, steps=1, warmup_ratio=1.5)


def test_bf16_needs_cuda(tiny, arith):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: bf16 is allowed")
    with pytest.raises(UserError, match="CUDA"):
        train(
            _adapted(tiny),
            tiny.tokenizer,
            arith.train,
            TrainConfig(lr=1e-3, steps=1, batch_size=2, precision="bf16"),
            progress=False,
        )


def _checkpointing_on(model) -> bool:
    return any(getattr(module, "gradient_checkpointing", False) is True for module in model.modules())


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny, arith):
    from hessian_lora.training.train import _checkpointing

    model = _adapted(tiny)
    params = trainable_parameters(model)
    with torch.no_grad():  # B ≠ 0: every factor gets a gradient
        for name, param in params.items():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    batches = make_batches(tiny.tokenizer, arith.train[:6], 3, max_length=96)
    device = torch.device("cpu")
    results = []
    for checkpointed in (False, True):
        model.zero_grad(set_to_none=True)
        switch = _checkpointing(model) if checkpointed else None
        model.train()
        assert _checkpointing_on(model) is checkpointed
        loss, tokens = accumulate_gradient(model, batches, device)
        results.append((loss, tokens, {name: param.grad.clone() for name, param in params.items()}))
        if switch is not None:
            switch.close()
        model.eval()
    (loss, tokens, grads), (loss_ckpt, tokens_ckpt, grads_ckpt) = results
    assert tokens == tokens_ckpt and loss_ckpt == pytest.approx(loss, rel=1e-6)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-6, atol=1e-8)
    assert not _checkpointing_on(model)


def test_training_with_gradient_checkpointing_equals_training_without(arith):
    histories = []
    for checkpointing in (False, True):
        loaded = load_tiny()
        model = _adapted(loaded)
        use_cache = model.get_base_model().config.use_cache
        config = TrainConfig(
            lr=1e-2,
            steps=3,
            batch_size=4,
            micro_batch_size=2,
            max_length=96,
            gradient_checkpointing=checkpointing,
        )
        histories.append(train(model, loaded.tokenizer, arith.train, config, progress=False).history)
        assert not _checkpointing_on(model)  # switched off again for Hessian products and generation
        assert model.get_base_model().config.use_cache == use_cache
    for plain, checkpointed in zip(*histories):
        assert checkpointed["loss"] == pytest.approx(plain["loss"], rel=1e-6)
        assert checkpointed["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-5)


def test_gradient_checkpointing_needs_a_transformers_model():
    from hessian_lora.training.train import _checkpointing

    with pytest.raises(UserError, match="gradient_checkpointing: Linear does not support"):
        _checkpointing(torch.nn.Linear(2, 2))
    with pytest.raises(UserError, match="gradient_checkpointing must be true or false"):
        TrainConfig(lr=1e-3, steps=1, gradient_checkpointing="yes")


def test_sharpness_probes_see_the_same_model_with_gradient_checkpointing(arith):
    # The in-run probe runs Hessian products while training has checkpointing on: its λ must not change.
    from hessian_lora.measurement.training_probe import DuringSettings, SharpnessProbe

    runs = []
    for checkpointing in (False, True):
        loaded = load_tiny()
        model = build_adapter(loaded.model, AdapterConfig("lora", rank=4, targets=("q_proj", "v_proj")))
        batches = make_batches(loaded.tokenizer, arith.train[:8], 4, max_length=96)
        probe = SharpnessProbe(
            model, batches, DuringSettings.from_mapping({"every": 2}, source="test"), total_steps=4
        )
        config = TrainConfig(
            lr=1e-2, steps=4, batch_size=4, max_length=96, gradient_checkpointing=checkpointing
        )
        result = train(model, loaded.tokenizer, arith.train, config, progress=False, probe=probe)
        runs.append(([point.lambda_max for point in probe.history], [h["loss"] for h in result.history]))
    assert len(runs[0][0]) == 3 and all(value is not None and value > 0 for value in runs[0][0])
    assert runs[1] == runs[0]
