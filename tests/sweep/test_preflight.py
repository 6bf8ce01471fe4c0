"""The preflight builds every method on a one-layer copy of the model and leaves the model itself untouched."""

from __future__ import annotations

import pytest
import torch
from sweep_helpers import tiny_config

from hessian_lora.core.errors import UserError
from hessian_lora.inputs.models import load_model
from hessian_lora.sweep.preflight import _first_layer_only, preflight


def test_first_layer_only_copies_one_layer_and_keeps_the_model():
    model = load_model("tiny-llama", seed=0).model
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    shrunk = _first_layer_only(model)
    assert len(model.model.layers) == model.config.num_hidden_layers == 2
    assert len(shrunk.model.layers) == shrunk.config.num_hidden_layers == 1
    assert shrunk.model.layers[0] is not model.model.layers[0]
    torch.testing.assert_close(
        shrunk.model.layers[0].self_attn.q_proj.weight, model.model.layers[0].self_attn.q_proj.weight
    )
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    ids = torch.tensor([[1, 5, 9, 2]])
    assert shrunk(input_ids=ids).logits.shape == model(input_ids=ids).logits.shape


def test_a_target_the_model_lacks_still_fails_the_preflight():
    with pytest.raises(
        UserError, match=r"method lora \(rank 4\): target module\(s\) no_such_proj not in the model"
    ):
        preflight(tiny_config(targets=["no_such_proj"]))
