from __future__ import annotations

import pytest
import torch

from hessian_lora.core.errors import UserError
from hessian_lora.inputs.models import HESSIAN_SAFE_ATTENTION, byte_tokenizer, load_model, tiny_llama


def test_tiny_llama_is_deterministic_per_seed() -> None:
    first, _ = tiny_llama(seed=3)
    second, _ = tiny_llama(seed=3)
    other, _ = tiny_llama(seed=4)
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(first.parameters(), other.parameters()))


def test_tiny_llama_does_not_disturb_global_rng() -> None:
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    tiny_llama(seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_spec_options_change_the_architecture() -> None:
    model, _, spec = load_model("tiny-llama:hidden_size=32,layers=1", device="cpu")
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    assert spec == "tiny-llama:hidden_size=32,layers=1"


def test_models_load_in_eval_mode_with_hessian_safe_attention(tiny) -> None:
    model, tokenizer, _ = tiny
    assert not model.training
    assert model.config._attn_implementation == HESSIAN_SAFE_ATTENTION
    assert tokenizer.pad_token is not None


def test_eager_attention_supports_double_backward_and_forward_ad(tiny) -> None:
    model, _, _ = tiny
    ids = torch.randint(0, 200, (2, 12))
    params = dict(model.named_parameters())
    name = "model.layers.0.self_attn.q_proj.weight"
    weight = params[name]

    def loss_of(w: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, {**params, name: w}, (ids,))
        return out.logits.float().pow(2).mean()

    tangent = torch.randn_like(weight)
    grad = torch.autograd.grad(loss_of(weight), weight, create_graph=True)[0]
    hvp_reverse = torch.autograd.grad((grad * tangent).sum(), weight)[0]
    _, hvp_forward = torch.func.jvp(torch.func.grad(loss_of), (weight.detach(),), (tangent,))
    cosine = torch.nn.functional.cosine_similarity(hvp_reverse.flatten(), hvp_forward.flatten(), dim=0)
    assert cosine > 0.99999


def test_byte_tokenizer_round_trips_unicode() -> None:
    tokenizer = byte_tokenizer()
    text = "Calculate 5 - -3 = 8; café ✓"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token_id not in ids


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("no-such-model", "unknown model"),
        ("./missing/dir", "does not exist"),
        ("/tmp/definitely-missing.gguf", "does not exist"),
        ("tiny-llama:hidden_size=abc", "tiny-llama option"),
    ],
)
def test_bad_model_specs_raise_one_line_user_errors(spec: str, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment) as info:
        load_model(spec, device="cpu")
    assert "\n" not in str(info.value)


def test_directory_without_config_is_refused(tmp_path) -> None:
    with pytest.raises(UserError, match=r"config\.json"):
        load_model(str(tmp_path), device="cpu")


def test_smollm2_loads_and_speaks_english(smollm2) -> None:
    from hessian_lora.hessian.loss import mean_loss
    from hessian_lora.inputs.tasks import TokenBatch

    model, tokenizer, _ = smollm2
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    paragraph = (
        "The quick brown fox jumps over the lazy dog. Scientists have long studied how animals move through "
        "their environment, and the results show that even small creatures can travel remarkable distances "
        "when they search for food or shelter."
    )
    ids = tokenizer(paragraph, return_tensors="pt")["input_ids"]
    batch = TokenBatch(ids, torch.ones_like(ids), ids.clone())
    assert mean_loss(model, [batch]) < 4.0


def test_load_tokenizer_builds_no_model() -> None:
    from hessian_lora.inputs.models import load_tokenizer

    tokenizer = load_tokenizer("tiny-llama")
    reference = load_model("tiny-llama", device="cpu").tokenizer
    assert tokenizer.get_vocab() == reference.get_vocab() and tokenizer.pad_token == reference.pad_token
    with pytest.raises(UserError, match="unknown model"):
        load_tokenizer("no-such-model")
