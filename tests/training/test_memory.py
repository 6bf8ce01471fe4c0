"""The training-memory estimate: its parameter counts against real models, its terms, and no torch import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hessian_lora.training.memory import (
    PAPER_MODELS,
    ModelShape,
    adapter_parameters,
    memory_table,
    model_shape,
    sweep_training_memory,
    training_memory,
)

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
QWEN, GEMMA, LLAMA = (
    PAPER_MODELS[k] for k in ("Qwen/Qwen3-0.6B-Base", "google/gemma-3-1b-pt", "meta-llama/Llama-2-7b-hf")
)


def test_the_module_imports_without_torch():
    code = "import sys, hessian_lora.training.memory as m; m.memory_table(); print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "False"


def test_parameter_counts_match_the_published_sizes():
    # Model cards: Qwen3-0.6B 0.6 B (0.44 B without embeddings), Gemma-3-1B 1 B, Llama-2-7B 6.74 B.
    assert QWEN.parameters == pytest.approx(0.596e9, rel=1e-3)
    assert QWEN.parameters - QWEN.vocab * QWEN.hidden == pytest.approx(0.44e9, rel=1e-2)
    assert GEMMA.parameters == pytest.approx(1.0e9, rel=1e-2)
    assert LLAMA.parameters == pytest.approx(6.738e9, rel=1e-3)
    # Adapter sizes at r = 128 on all seven projections (the and REFERENCE's 80.7 M and ~320 M).
    assert adapter_parameters(QWEN, 128) == 80_740_352
    assert adapter_parameters(LLAMA, 128) == pytest.approx(320e6, rel=1e-3)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-llama:hidden_size=32,layers=3,intermediate_size=96"])
def test_counts_agree_with_the_models_torch_builds(spec):
    from hessian_lora.inputs.models import load_model
    from hessian_lora.training.adapters import AdapterConfig, build_adapter

    model = load_model(spec, device="cpu").model
    shape = model_shape(spec)
    assert shape is not None
    assert shape.parameters == sum(p.numel() for p in model.parameters())
    peft_model = build_adapter(model, AdapterConfig("lora", rank=4))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert adapter_parameters(shape, 4) == trainable


def test_shape_from_a_local_config_json(tmp_path):
    from hessian_lora.inputs.models import load_model

    tiny = load_model("tiny-llama", device="cpu").model
    (tmp_path / "config.json").write_text(json.dumps(tiny.config.to_dict()))
    shape = model_shape(str(tmp_path))
    assert shape is not None and shape.parameters == sum(p.numel() for p in tiny.parameters())
    assert model_shape("someone/unknown-model") is None


def test_the_terms_move_the_way_the_settings_say():
    plain = training_memory(LLAMA, rank=128, micro_batch_size=4, max_length=512)
    bf16 = training_memory(
        LLAMA, rank=128, micro_batch_size=4, max_length=512, base_dtype="bf16", autocast_bf16=True
    )
    checkpointed = training_memory(
        LLAMA,
        rank=128,
        micro_batch_size=4,
        max_length=512,
        base_dtype="bf16",
        autocast_bf16=True,
        gradient_checkpointing=True,
    )
    assert bf16.base_weights * 2 == plain.base_weights == 4 * LLAMA.parameters
    assert bf16.adapter == plain.adapter == 16 * adapter_parameters(LLAMA, 128)
    assert checkpointed.activations < bf16.activations / 10
    assert bf16.build_peak == plain.build_peak  # the adapter is always built on the fp32 base
    doubled = training_memory(
        LLAMA, rank=128, micro_batch_size=8, max_length=512, base_dtype="bf16", autocast_bf16=True
    )
    assert doubled.activations == 2 * bf16.activations and doubled.logits == 2 * bf16.logits
    eager = training_memory(
        LLAMA,
        rank=128,
        micro_batch_size=4,
        max_length=512,
        base_dtype="bf16",
        autocast_bf16=True,
        attention="eager",
    )
    assert eager.activations > bf16.activations
    # Llama-2-7B trains in ~22 GB with checkpointing, but its fp32 build (~29 GB) does not fit 24 GB.
    assert checkpointed.training_peak < 24e9 < checkpointed.build_peak == checkpointed.peak
    assert not checkpointed.fits(24) and checkpointed.fits(48) and bf16.fits(48)
    with pytest.raises(ValueError):
        training_memory(LLAMA, rank=128, micro_batch_size=1, max_length=512, base_dtype="fp16")


def test_estimates_for_the_shipped_configs():
    from hessian_lora.settings.sweep import load_config

    llama = sweep_training_memory(load_config(EXPERIMENTS / "llama2_7b_metamath.yaml"))
    gemma = sweep_training_memory(load_config(EXPERIMENTS / "gemma3_1b_metamath.yaml"))
    assert llama is not None and gemma is not None
    assert llama.base_weights == 2 * LLAMA.parameters and gemma.base_weights == 2 * GEMMA.parameters
    assert gemma.fits(24) and not llama.fits(24) and llama.fits(48)
    assert sweep_training_memory(load_config(EXPERIMENTS / "tiny.yaml")) is not None
    table = memory_table()
    assert table.count("\n") == 1 + 3 * 4 and "Llama-2-7B" in table
    # Gemma-3's config.json keeps the text model's sizes under text_config.
    gemma_json = {
        "text_config": {
            "model_type": "gemma3_text",
            "hidden_size": 1152,
            "num_hidden_layers": 26,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 256,
            "intermediate_size": 6912,
            "vocab_size": 262144,
        }
    }
    assert ModelShape.from_hf_config(gemma_json, name="g").parameters == GEMMA.parameters
