"""Checkpoints: save → load reproduces the model bit for bit, for every method, with the optimizer state."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from hessian_lora.adapters import AdapterConfig, build_adapter, make_optimizer, trainable_parameters
from hessian_lora.checkpoint import (
    ADAPTER_CONFIG_FILE,
    INITIAL_ADAPTER_FILE,
    META_FILE,
    OPTIMIZER_FILE,
    CheckpointMeta,
    OptimizerState,
    adam_second_moments,
    load_checkpoint,
    load_optimizer_state,
    read_meta_dict,
    save_checkpoint,
)
from hessian_lora.data import Example, make_batches
from hessian_lora.errors import UserError
from hessian_lora.loss import loss_sum
from hessian_lora.models import load_model
from hessian_lora.registry import METHODS

REWRITING = {name for name, spec in METHODS.items() if spec.rewrites_base}
LR = 5e-3


def _batches(tokenizer):
    examples = [Example(prompt=f"{i} plus {i + 3}?", response=f"It is {2 * i + 3}.") for i in range(6)]
    return make_batches(tokenizer, examples, 3)


def _train(peft_model, optimizer, batches, steps: int) -> None:
    peft_model.train()
    for step in range(steps):
        batch = batches[step % len(batches)]
        optimizer.zero_grad()
        (loss_sum(peft_model, batch) / batch.loss_tokens).backward()
        optimizer.step()
    peft_model.eval()


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def probe_ids() -> torch.Tensor:
    return torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(7))


def _trained(method: str, model_seed: int = 0, steps: int = 3):
    loaded = load_model("tiny-llama", device="cpu", seed=model_seed)
    batches = _batches(loaded.tokenizer)
    config = AdapterConfig(method, rank=4, alpha=8, seed=11)
    peft_model = build_adapter(loaded.model, config, batches=batches if method == "loraga" else None)
    optimizer = make_optimizer(peft_model, config, LR, weight_decay=0.01)
    _train(peft_model, optimizer, batches, steps)
    meta = CheckpointMeta.from_config(config, base_model="tiny-llama", task="arith", model_seed=model_seed,
                                      lr=LR, step=steps, extra={"note": "test"})
    return peft_model, optimizer, meta, batches


@pytest.mark.parametrize("method", list(METHODS))
def test_save_load_is_bit_identical_and_training_resumes_exactly(method: str, tmp_path: Path,
                                                                 probe_ids: torch.Tensor) -> None:
    peft_model, optimizer, meta, batches = _trained(method)
    expected = _logits(peft_model, probe_ids)
    save_checkpoint(tmp_path / "ckpt", peft_model, meta, optimizer=optimizer)

    loaded = load_checkpoint(tmp_path / "ckpt", device="cpu")
    assert loaded.meta == meta
    assert not loaded.model.training
    assert torch.equal(_logits(loaded.model, probe_ids), expected)
    saved_params = trainable_parameters(peft_model)
    loaded_params = trainable_parameters(loaded.model)
    assert saved_params.keys() == loaded_params.keys()
    assert all(torch.equal(saved_params[n], loaded_params[n]) for n in saved_params)
    assert (tmp_path / "ckpt" / INITIAL_ADAPTER_FILE).is_file() == (method in REWRITING)

    # Adam's second moments come back per parameter name, with the step count and hyper-parameters
    # (LoFT keeps per-row r×r moments instead: no element-wise second moments to return).
    state = loaded.optimizer_state
    assert state is not None
    if method != "loft":
        assert state.step == 3
        assert state.betas == (0.9, 0.999) and state.eps == 1e-8
        moments = adam_second_moments(loaded)
        assert moments.keys() == saved_params.keys()
        for name, param in saved_params.items():
            assert torch.equal(moments[name], optimizer.state[param]["exp_avg_sq"])

    # One more step from the checkpoint equals one more step of the original run, bit for bit.
    config = loaded.meta.adapter_config()
    resumed = make_optimizer(loaded.model, config, LR, weight_decay=0.01)
    load_optimizer_state(resumed, loaded.model, state)
    _train(peft_model, optimizer, batches[1:], 1)
    _train(loaded.model, resumed, batches[1:], 1)
    assert torch.equal(_logits(loaded.model, probe_ids), _logits(peft_model, probe_ids))


def test_bias_corrected_second_moments(tmp_path: Path) -> None:
    peft_model, optimizer, meta, _ = _trained("lora", steps=2)
    save_checkpoint(tmp_path / "c", peft_model, meta, optimizer=optimizer)
    loaded = load_checkpoint(tmp_path / "c", device="cpu")
    raw, corrected = adam_second_moments(loaded), adam_second_moments(loaded.optimizer_state, bias_corrected=True)
    for name in raw:
        torch.testing.assert_close(corrected[name], raw[name] / (1 - 0.999**2))


def test_checkpoint_without_optimizer_has_no_state(tmp_path: Path) -> None:
    peft_model, _, meta, _ = _trained("pissa", steps=0)
    save_checkpoint(tmp_path / "c", peft_model, meta)
    loaded = load_checkpoint(tmp_path / "c", device="cpu")
    assert loaded.optimizer_state is None and not (tmp_path / "c" / OPTIMIZER_FILE).exists()
    with pytest.raises(UserError, match="no optimizer state"):
        adam_second_moments(loaded)


@pytest.mark.parametrize("method", ["lora", "dora", "rslora"])
def test_peft_loads_the_adapter_of_base_keeping_methods(method: str, tmp_path: Path,
                                                        probe_ids: torch.Tensor) -> None:
    peft_model, optimizer, meta, _ = _trained(method)
    save_checkpoint(tmp_path / "c", peft_model, meta, optimizer=optimizer)
    fresh = load_model("tiny-llama", device="cpu").model
    plain = PeftModel.from_pretrained(fresh, str(tmp_path / "c"))
    assert torch.equal(_logits(plain, probe_ids), _logits(peft_model, probe_ids))


@pytest.mark.parametrize("method", ["milora", "loraga"])
def test_adapter_config_is_a_plain_lora_config_peft_loads_on_the_residual(method: str, tmp_path: Path,
                                                                          probe_ids: torch.Tensor) -> None:
    peft_model, _, meta, _ = _trained(method, steps=1)
    save_checkpoint(tmp_path / "c", peft_model, meta)
    config = json.loads((tmp_path / "c" / ADAPTER_CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA" and config["init_lora_weights"] is True
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["lora_ga_config"] is None
    # The residual base that load_checkpoint rebuilt, stripped of its adapter, takes the adapter back via peft.
    residual_base = load_checkpoint(tmp_path / "c", device="cpu").model.unload()
    plain = PeftModel.from_pretrained(residual_base, str(tmp_path / "c"))
    assert torch.equal(_logits(plain, probe_ids), _logits(peft_model, probe_ids))


def test_a_changed_base_model_is_reported(tmp_path: Path) -> None:
    peft_model, _, meta, _ = _trained("initab", steps=1)
    save_checkpoint(tmp_path / "c", peft_model, meta)
    meta_path = tmp_path / "c" / META_FILE
    data = json.loads(meta_path.read_text())
    data["model_seed"] = 1  # another random tiny-llama: the residual cannot be the saved one
    meta_path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="differs from the one"):
        load_checkpoint(tmp_path / "c", device="cpu")


def test_saving_replaces_a_checkpoint_atomically_and_leaves_no_temp_dirs(tmp_path: Path,
                                                                         probe_ids: torch.Tensor) -> None:
    first, _, meta, _ = _trained("lora", steps=1)
    save_checkpoint(tmp_path / "c", first, meta)
    second, optimizer, meta2, _ = _trained("lora", steps=3)
    save_checkpoint(tmp_path / "c", second, meta2, optimizer=optimizer)
    assert sorted(os.listdir(tmp_path)) == ["c"]
    loaded = load_checkpoint(tmp_path / "c", device="cpu")
    assert loaded.meta.step == 3
    assert torch.equal(_logits(loaded.model, probe_ids), _logits(second, probe_ids))


def test_refuses_to_overwrite_a_directory_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    peft_model, _, meta, _ = _trained("lora", steps=0)
    target = tmp_path / "results"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a hessian-lora checkpoint"):
        save_checkpoint(target, peft_model, meta)
    assert (target / "precious.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["results"]


def test_only_models_from_build_adapter_can_be_saved(tmp_path: Path, tiny) -> None:
    from peft import LoraConfig, get_peft_model

    foreign = get_peft_model(tiny.model, LoraConfig(r=2, target_modules=["q_proj"]))
    meta = CheckpointMeta.from_config(AdapterConfig("lora", rank=2), base_model="tiny-llama")
    with pytest.raises(UserError, match="build_adapter"):
        save_checkpoint(tmp_path / "c", foreign, meta)


def test_meta_round_trips_through_json() -> None:
    config = AdapterConfig("pissa", rank=16, alpha=32, dropout=0.05, targets=("q_proj", "v_proj"), seed=3,
                           pissa_niter=4)
    meta = CheckpointMeta.from_config(config, base_model="smollm2-135m", task="arith", lr=1e-4, step=12,
                                      extra={"history": [1, 2]})
    again = CheckpointMeta.from_dict(json.loads(json.dumps(meta.to_dict())))
    assert again == meta
    assert again.adapter_config() == config


@pytest.mark.parametrize("make", ["missing", "empty", "bad_json"])
def test_bad_checkpoint_paths_are_user_errors(make: str, tmp_path: Path) -> None:
    path = tmp_path / "c"
    if make != "missing":
        path.mkdir()
    if make == "bad_json":
        (path / META_FILE).write_text("{not json")
    with pytest.raises(UserError):
        read_meta_dict(path)
    with pytest.raises(UserError):
        load_checkpoint(path, device="cpu")


def test_optimizer_state_for_other_parameters_is_refused(tmp_path: Path) -> None:
    peft_model, optimizer, _, _ = _trained("lora", steps=1)
    other = build_adapter(load_model("tiny-llama", device="cpu").model,
                          AdapterConfig("lora", rank=4, targets=("q_proj",)))
    state = OptimizerState(optimizer.state_dict(), tuple(trainable_parameters(peft_model)))
    with pytest.raises(UserError, match="other parameters"):
        load_optimizer_state(make_optimizer(other, AdapterConfig("lora", rank=4), LR), other, state)
