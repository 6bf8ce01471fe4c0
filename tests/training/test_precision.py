"""Training with a bf16 base (adapter and optimizer state fp32), and the Hessian's fp32 guarantee."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from hessian_lora.core.errors import UserError
from hessian_lora.inputs.models import load_model
from hessian_lora.inputs.tasks import load_task, make_batches
from hessian_lora.measurement.measure import MeasureSettings, measure
from hessian_lora.measurement.targets import AdaptedModule, Checkpoint
from hessian_lora.training.adapters import AdapterConfig, build_adapter, make_optimizer, trainable_parameters
from hessian_lora.training.checkpoint import (
    CheckpointMeta,
    load_checkpoint,
    read_meta_dict,
    residual_digest,
    save_checkpoint,
)
from hessian_lora.training.peft_adapters import load_adapter
from hessian_lora.training.precision import bf16_supported, cast_base_weights, check_base_dtype
from hessian_lora.training.train import TrainConfig, train

CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(not bf16_supported(CPU), reason="torch reports no native bf16 on this CPU")
TARGETS = ("q_proj", "v_proj", "down_proj")
TINY_YAML = Path(__file__).resolve().parents[2] / "experiments" / "tiny.yaml"


@pytest.fixture(scope="module")
def arith():
    return load_task("arith", seed=0, n_train=32, n_eval=8)


def _fresh(method: str = "lora"):
    loaded = load_model("tiny-llama", device="cpu")
    return build_adapter(loaded.model, AdapterConfig(method, rank=4, targets=TARGETS)), loaded.tokenizer


def _dtypes(model, trainable: bool) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters() if p.requires_grad == trainable}


@needs_bf16
def test_bf16_base_training_keeps_the_adapter_and_adam_in_fp32(arith):
    config = TrainConfig(lr=1e-2, steps=4, batch_size=4, max_length=96)
    reference, tokenizer = _fresh()
    fp32 = train(reference, tokenizer, arith.train, config, progress=False)
    model, _ = _fresh()
    before = {name: p.detach().clone() for name, p in trainable_parameters(model).items()}
    assert cast_base_weights(model, "bf16") > 0
    assert _dtypes(model, trainable=False) == {torch.bfloat16}
    assert _dtypes(model, trainable=True) == {torch.float32}
    # Tied embeddings stay one tensor after the cast.
    inner = model.get_base_model()
    assert inner.lm_head.weight is inner.model.embed_tokens.weight
    optimizer = make_optimizer(model, AdapterConfig("lora", rank=4, targets=TARGETS), 1e-2)
    result = train(model, tokenizer, arith.train, config, optimizer=optimizer, progress=False)
    assert result.steps == 4 and all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert _dtypes(model, trainable=True) == {torch.float32} and _dtypes(model, trainable=False) == {
        torch.bfloat16
    }
    states = [tensor for state in optimizer.state.values() for tensor in state.values() if tensor.ndim > 0]
    assert states and {tensor.dtype for tensor in states} == {torch.float32}
    assert any(not torch.equal(before[name], p) for name, p in trainable_parameters(model).items())
    # bf16 rounding of the base moves the loss by round-off, not more: the same run in fp32 for comparison.
    assert result.initial_loss == pytest.approx(fp32.initial_loss, rel=1e-2)
    assert result.train_loss == pytest.approx(fp32.train_loss, rel=5e-2)
    assert result.initial_loss != fp32.initial_loss  # the bf16 base really took part


def test_cast_leaves_an_fp32_base_alone_and_rejects_unknown_dtypes():
    model, _ = _fresh()
    assert cast_base_weights(model, "fp32") == 0
    assert _dtypes(model, trainable=False) == {torch.float32}
    with pytest.raises(UserError, match="base_dtype must be one of fp32, bf16"):
        cast_base_weights(model, "fp16")


def test_bf16_on_a_device_without_it_is_one_line_naming_the_setting(monkeypatch):
    import hessian_lora.training.precision as precision

    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    with pytest.raises(UserError, match=r"base_dtype bf16: .*set base_dtype: fp32") as caught:
        check_base_dtype("bf16", CPU)
    assert "\n" not in str(caught.value)
    check_base_dtype("fp32", CPU)  # fp32 needs nothing

    from hessian_lora.settings.sweep import config_from_dict
    from hessian_lora.sweep.preflight import preflight

    config = config_from_dict(
        {**yaml.safe_load(TINY_YAML.read_text()), "base_dtype": "bf16"}, source="my.yaml"
    )
    with pytest.raises(UserError, match=r"^my\.yaml: base_dtype bf16"):
        preflight(config, device="cpu", source="my.yaml")


@needs_bf16
def test_measure_refuses_a_bf16_model(arith):
    model, tokenizer = _fresh()
    batches = make_batches(tokenizer, arith.train[:4], 4, max_length=96)
    cast_base_weights(model, "bf16")
    with pytest.raises(UserError, match=r"the Hessian is measured in fp32.*bfloat16"):
        measure(AdaptedModule(model), MeasureSettings(max_iter=5), batches=batches)
    from hessian_lora.measurement.training_probe import SharpnessProbe

    with pytest.raises(UserError, match=r"the training model holds bfloat16 weights"):
        SharpnessProbe(model, batches)


@needs_bf16
def test_a_bf16_trained_rewriting_method_checkpoint_reloads_in_fp32_and_verifies(arith, tmp_path):
    # PiSSA rewrites the base; training rounds that residual to bf16. The checkpoint records the fp32 build and
    # its fp32 fingerprint, so the reload (which eigen measures) is the fp32 residual, verified.
    config = AdapterConfig("pissa", rank=4, targets=TARGETS)
    model, tokenizer = _fresh("pissa")
    fp32_digest = residual_digest(model)
    cast_base_weights(model, "bf16")
    assert residual_digest(model) != fp32_digest
    train(
        model,
        tokenizer,
        arith.train,
        TrainConfig(lr=1e-3, steps=2, batch_size=4, max_length=96),
        progress=False,
    )
    meta = CheckpointMeta.from_config(
        config, base_model="tiny-llama", dtype=torch.float32, step=2, extra={"train_base_dtype": "bf16"}
    )
    save_checkpoint(tmp_path / "ckpt", model, meta)
    assert read_meta_dict(tmp_path / "ckpt")["residual_sha256"] == fp32_digest
    loaded = load_checkpoint(tmp_path / "ckpt", device="cpu")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    trained = trainable_parameters(model)
    for name, param in trainable_parameters(loaded.model).items():
        assert torch.equal(param, trained[name])


@needs_bf16
def test_a_checkpoint_recorded_in_bf16_is_measured_in_fp32(arith, tmp_path):
    loaded = load_model("tiny-llama", dtype=torch.bfloat16, device="cpu")
    config = AdapterConfig("lora", rank=4, targets=("q_proj",))
    model = build_adapter(loaded.model, config)
    with torch.no_grad():  # B ≠ 0, so the Hessian block is not the B = 0 special case
        for name, param in trainable_parameters(model).items():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    save_checkpoint(
        tmp_path / "ckpt",
        model,
        CheckpointMeta.from_config(config, base_model="tiny-llama", dtype=torch.bfloat16),
    )
    as_saved = load_adapter(tmp_path / "ckpt", device="cpu")
    assert torch.bfloat16 in {p.dtype for p in as_saved.model.parameters()}
    full = load_adapter(tmp_path / "ckpt", device="cpu", full_precision=True)
    assert {p.dtype for p in full.model.parameters()} == {torch.float32}
    # The upcast is exact: the fp32 base holds the bf16 values.
    base_bf16 = dict(as_saved.model.named_parameters())
    for name, param in full.model.named_parameters():
        assert torch.equal(param, base_bf16[name].float())
    batches = make_batches(loaded.tokenizer, arith.train[:4], 4, max_length=96)
    report = measure(
        Checkpoint(tmp_path / "ckpt"),
        MeasureSettings(max_iter=8, tol=1e-2, blocks="per-module", modules=("q_proj",)),
        batches=batches,
        progress=False,
    )
    assert report.settings["dtype"] == "float32"
    assert all(block.lambda_max is not None for block in report.blocks)


@needs_bf16
def test_a_sweep_trains_bf16_and_measures_fp32(tmp_path):
    from hessian_lora.core.store import read_rows
    from hessian_lora.settings.sweep import config_from_dict
    from hessian_lora.sweep.runner import run_sweep

    data = {
        **yaml.safe_load(TINY_YAML.read_text()),
        "methods": ["pissa"],
        "lr": [1e-2],
        "ranks": [2],
        "targets": ["q_proj", "v_proj"],
        "steps": 3,
        "base_dtype": "bf16",
        "gradient_checkpointing": True,
        "hessian": {"init": True, "final": True, "samples": 8, "batch_size": 4, "tol": 1e-3, "max_iter": 30},
    }
    config = config_from_dict(data, source="test")
    run_sweep(config, tmp_path, progress=False)
    (row,) = read_rows(tmp_path)
    assert row["status"] == "done" and row["lambda_init"] > 0 and row["lambda_final"] > 0
    meta = read_meta_dict(tmp_path / row["checkpoint"])
    assert meta["dtype"] == "float32" and meta["extra"]["train_base_dtype"] == "bf16"
    final = yaml.safe_load((tmp_path / "hessian" / f"{config.runs()[0].run_id}_final.json").read_text())
    assert final["settings"]["dtype"] == "float32"
    # The same sweep with an fp32 base measures the same λ at initialisation (built and measured before the cast).
    fp32 = config_from_dict({**config.to_dict(), "base_dtype": "fp32"}, source="test")
    run_sweep(fp32, tmp_path / "fp32", progress=False)
    (reference,) = read_rows(tmp_path / "fp32")
    assert reference["lambda_init"] == row["lambda_init"]
    assert dataclasses.replace(config, base_dtype="fp32").shared_settings() == fp32.shared_settings()


@needs_bf16
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_a_gemma3_model_trains_with_a_bf16_base_and_checkpointing(method, arith):
    # The Gemma-3 architecture (its (1 + w) RMSNorms, embedding scale, q/k norms, sliding window), random and tiny.
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from hessian_lora.inputs.models import byte_tokenizer

    tokenizer = byte_tokenizer()
    histories = []
    for checkpointing in (False, True):
        config = Gemma3TextConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            sliding_window=32,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            attn_implementation="eager",
        )
        torch.manual_seed(0)
        adapter = AdapterConfig(method, rank=4)
        model = build_adapter(Gemma3ForCausalLM(config), adapter)
        cast_base_weights(model, "bf16")
        train_config = TrainConfig(
            lr=1e-3,
            steps=2,
            batch_size=4,
            max_length=320,
            prompt_template="alpaca",
            gradient_checkpointing=checkpointing,
        )
        result = train(
            model,
            tokenizer,
            arith.train,
            train_config,
            optimizer=make_optimizer(model, adapter, 1e-3),
            progress=False,
        )
        assert _dtypes(model, trainable=True) == {torch.float32}
        assert _dtypes(model, trainable=False) == {torch.bfloat16}
        histories.append([step["loss"] for step in result.history])
    assert all(loss > 0 for loss in histories[0]) and histories[1] == histories[0]
