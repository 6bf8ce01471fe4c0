from __future__ import annotations

import pytest
import torch
from tinylora import tiny_lora

from hessian_lora.core.errors import UserError
from hessian_lora.hessian import ByName, PerModule, WholeAdapter
from hessian_lora.hessian.filters import layer_index, parse_layers, parse_modules, short_name


def test_whole_adapter_is_every_trainable_parameter_in_model_order() -> None:
    model = tiny_lora(dtype=torch.float32)
    (block,) = WholeAdapter().blocks(model)
    expected = [n for n, p in model.named_parameters() if p.requires_grad]
    assert list(block.names) == expected and len(expected) == 8  # 2 layers x (q, v) x (A, B)
    assert block.numel == sum(p.numel() for p in block.parameters)


def test_per_module_blocks_hold_each_modules_factors() -> None:
    model = tiny_lora(dtype=torch.float32)
    blocks = PerModule().blocks(model)
    assert [b.name for b in blocks] == [
        "layers.0.self_attn.q_proj",
        "layers.0.self_attn.v_proj",
        "layers.1.self_attn.q_proj",
        "layers.1.self_attn.v_proj",
    ]
    first = blocks[0]
    assert [n.split(".")[-3] for n in first.names] == ["lora_A", "lora_B"]
    assert first.module == "q_proj" and first.layer == 0 and first.numel == 32 + 32
    selected = PerModule(modules=("v_proj",), layers=(1,)).blocks(model)
    assert [b.name for b in selected] == ["layers.1.self_attn.v_proj"]


def test_per_module_blocks_include_the_dora_magnitude() -> None:
    model = tiny_lora(dtype=torch.float32, use_dora=True, targets=("q_proj",))
    block = PerModule(layers=(1,)).blocks(model)[0]
    assert [n.split(".")[-3] for n in block.names] == ["lora_A", "lora_B", "lora_magnitude_vector"]


def test_by_name_and_errors() -> None:
    model = tiny_lora(dtype=torch.float32)
    (block,) = ByName(r"lora_B").blocks(model)
    assert all("lora_B" in n for n in block.names) and len(block.names) == 4
    with pytest.raises(UserError, match="no trainable parameter"):
        ByName("nothing").blocks(model)
    with pytest.raises(UserError, match="regular expression"):
        ByName("(").blocks(model)
    with pytest.raises(UserError, match="no adapted module named k_proj"):
        PerModule(modules=("k_proj",)).blocks(model)
    with pytest.raises(UserError, match="no adapted layer 7"):
        PerModule(layers=(7,)).blocks(model)
    base = tiny_lora(dtype=torch.float32).get_base_model()
    for param in base.parameters():
        param.requires_grad_(False)
    with pytest.raises(UserError):
        WholeAdapter().blocks(base)


def test_layer_and_module_parsing() -> None:
    assert parse_layers("2:5") == (2, 3, 4)
    assert parse_layers(":2") == (0, 1)
    assert parse_layers("0,5,10") == (0, 5, 10)
    assert parse_layers("3") == (3,)
    assert parse_layers(None) is None and parse_layers("all") is None
    for bad in ("5:2", "a:b", "-1"):
        with pytest.raises(UserError, match="layers"):
            parse_layers(bad)
    assert parse_modules("q_proj, v_proj") == ("q_proj", "v_proj")
    assert parse_modules(None) is None
    with pytest.raises(UserError):
        parse_modules(",")
    assert short_name("base_model.model.model.layers.3.mlp.up_proj") == "layers.3.mlp.up_proj"
    assert layer_index("model.layers.12.self_attn.q_proj") == 12 and layer_index("lm_head") is None
