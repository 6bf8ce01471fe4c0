"""Building adapters: each method's definition, its initial-function promise, determinism, optimizer groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from method_cases import CASES
from torch import nn

from hessian_lora.core.errors import UserError
from hessian_lora.hessian.loss import loss_sum
from hessian_lora.inputs.models import load_model
from hessian_lora.inputs.tasks import Example, TokenBatch, make_batches
from hessian_lora.methods.gralora import gralora_k
from hessian_lora.methods.loraga import estimate_gradients as _estimate_loraga_gradients
from hessian_lora.methods.randlora import randlora_module_parameters, randlora_rank
from hessian_lora.methods.registry import (
    METHODS,
    REFERENCE_SHAPES,
    reference_parameter_count,
    trainable_parameter_count,
)
from hessian_lora.training.adapters import (
    ADAPTER_NAME,
    DEFAULT_TARGETS,
    AdapterConfig,
    _peft_config,
    build_adapter,
    lora_layers,
    make_optimizer,
    residual_weight,
    trainable_parameters,
)
from hessian_lora.training.train import TrainConfig, train

# Function-preservation tolerance: the adapted model's fp32 logits against the base model's. The residual is
# exact to one fp32 rounding per weight, so the logits differ by forward-pass round-off only (seen: ~3e-7).
LOGIT_ATOL = 1e-5
LOGIT_RTOL = 1e-5


class OneLinear(nn.Module):
    """The smallest model an adapter can target: a single projection, weights fixed by a seed."""

    def __init__(self, out_features: int = 5, in_features: int = 7, seed: int = 0) -> None:
        super().__init__()
        self.q_proj = nn.Linear(in_features, out_features, bias=False)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.q_proj.weight.copy_(torch.randn(out_features, in_features, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_proj(x)


def _factors(peft_model: nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    layer = dict(lora_layers(peft_model))[name]
    return (
        layer.lora_A[ADAPTER_NAME].weight.detach(),
        layer.lora_B[ADAPTER_NAME].weight.detach(),
        layer.get_base_layer().weight.detach(),
        layer.scaling[ADAPTER_NAME],
    )


def _tiny_batches(tokenizer, count: int = 2) -> list[TokenBatch]:
    examples = [Example(prompt=f"What is {i} + {2 * i}?", response=str(3 * i)) for i in range(2 * count)]
    return make_batches(tokenizer, examples, 2)


@pytest.fixture(scope="module")
def probe_ids() -> torch.Tensor:
    return torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))


def test_config_defaults_and_scaling() -> None:
    config = AdapterConfig("lora", rank=8)
    assert config.targets == DEFAULT_TARGETS
    assert config.lora_alpha == 8.0 and config.scaling == 1.0
    assert AdapterConfig("lora", rank=8, alpha=32).scaling == 4.0
    assert AdapterConfig("rslora", rank=16, alpha=16).scaling == pytest.approx(16 / math.sqrt(16))
    assert AdapterConfig("lora", targets=["q_proj"]).targets == ("q_proj",)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"method": "nope"}, "unknown method"),
        ({"method": "lora", "rank": 0}, "rank must be a positive"),
        ({"method": "lora", "rank": -3}, "rank must be a positive"),
        ({"method": "lora", "alpha": 0}, "alpha must be positive"),
        ({"method": "lora", "dropout": 1.0}, "dropout"),
        ({"method": "lora", "targets": ()}, "no target modules"),
        ({"method": "pissa", "pissa_niter": 0}, "pissa_niter"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        AdapterConfig(**kwargs)


def test_unknown_target_names_the_available_modules(tiny) -> None:
    with pytest.raises(UserError, match=r"not in the model: choose from .*q_proj"):
        build_adapter(tiny.model, AdapterConfig("lora", rank=2, targets=("q_proj", "qkv")))


def test_svd_methods_refuse_a_rank_beyond_the_matrix(tiny) -> None:
    # tiny-llama's k_proj is 32x64, so at most 32 singular triplets (16 for LoRA-GA's 2r).
    with pytest.raises(UserError, match="lower --rank"):
        build_adapter(tiny.model, AdapterConfig("milora", rank=33))
    with pytest.raises(UserError, match="lower --rank"):
        build_adapter(tiny.model, AdapterConfig("loraga", rank=17), batches=_tiny_batches(tiny.tokenizer))


def test_loraga_without_batches_is_a_user_error(tiny) -> None:
    with pytest.raises(UserError, match="pass training batches"):
        build_adapter(tiny.model, AdapterConfig("loraga", rank=2))


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_keeps_the_initial_function(method: str, probe_ids: torch.Tensor) -> None:
    base = load_model("tiny-llama", device="cpu")
    original = {name: p.detach().clone() for name, p in base.model.named_parameters()}
    with torch.no_grad():
        expected = base.model(input_ids=probe_ids).logits
    batches = _tiny_batches(base.tokenizer) if METHODS[method].needs_data else None
    config = AdapterConfig(method, rank=4, alpha=8, seed=3)
    peft_model = build_adapter(base.model, config, batches=batches)
    with torch.no_grad():
        actual = peft_model(input_ids=probe_ids).logits
    torch.testing.assert_close(actual, expected, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)

    # Non-vacuous: rewriting methods carry a non-zero B·A and a changed base; the others a zero update.
    for name, layer in lora_layers(peft_model):
        lora_a, lora_b, weight, scaling = _factors(peft_model, name)
        assert scaling == pytest.approx(config.scaling)  # 2, or 8/sqrt(4) = 4 for rsLoRA
        update = scaling * lora_b @ lora_a
        if CASES[method].rewrites:
            assert update.abs().max() > 1e-6  # LoRA-GA's update is gradient-sized (~1e-4 here)
            assert not torch.equal(weight, original[f"{name}.weight"])
            torch.testing.assert_close(weight + update, original[f"{name}.weight"], atol=1e-5, rtol=1e-5)
        else:
            assert torch.count_nonzero(lora_b) == 0
            assert torch.equal(weight, original[f"{name}.weight"])
        assert layer.lora_dropout[ADAPTER_NAME].__class__ is nn.Identity
    if not CASES[method].rewrites:  # LoRA's B, GraLoRA's B blocks, RandLoRA's lambdas start at zero
        factors = [p for n, p in trainable_parameters(peft_model).items() if CASES[method].zero_part in n]
        assert factors and all(torch.count_nonzero(p) == 0 for p in factors)


@pytest.mark.parametrize("method", ["lora", "initab", "pissa", "dora"])
def test_the_same_seed_gives_the_same_adapter_and_another_seed_differs(method: str) -> None:
    def build(seed: int) -> dict[str, torch.Tensor]:
        model = load_model("tiny-llama", device="cpu").model
        peft_model = build_adapter(model, AdapterConfig(method, rank=4, seed=seed, pissa_niter=2))
        return {name: p.detach().clone() for name, p in peft_model.named_parameters()}

    first, again, other = build(0), build(0), build(1)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    if method in ("lora", "initab", "dora"):
        assert any(not torch.equal(first[name], other[name]) for name in first if "lora_A" in name)


def test_building_leaves_the_global_random_state_alone(tiny) -> None:
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    build_adapter(tiny.model, AdapterConfig("lora", rank=2))
    assert torch.equal(torch.random.get_rng_state(), state)


def _svd64(weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.linalg.svd(weight.detach().double().numpy(), full_matrices=False)


@pytest.mark.parametrize(("method", "take"), [("milora", "bottom"), ("pissa", "top")])
def test_svd_methods_against_numpy(method: str, take: str) -> None:
    module = OneLinear(out_features=5, in_features=7, seed=4)
    weight = module.q_proj.weight.detach().clone()
    rank, alpha = 2, 4.0  # s = 2, so the sqrt(S/s) scaling is exercised
    peft_model = build_adapter(module, AdapterConfig(method, rank=rank, alpha=alpha, targets=("q_proj",)))
    lora_a, lora_b, residual, scaling = _factors(peft_model, "q_proj")
    assert scaling == alpha / rank

    u, s, vt = _svd64(weight)
    picked = slice(len(s) - rank, len(s)) if take == "bottom" else slice(0, rank)
    root = np.sqrt(s[picked] / scaling)
    expected_a = root[:, None] * vt[picked]
    expected_b = u[:, picked] * root[None, :]
    # Singular vectors are defined up to sign: align each triplet on A, then B must follow with the same sign.
    signs = np.sign(np.sum(expected_a * lora_a.double().numpy(), axis=1))
    np.testing.assert_allclose(lora_a.double().numpy() * signs[:, None], expected_a, atol=2e-6)
    np.testing.assert_allclose(lora_b.double().numpy() * signs[None, :], expected_b, atol=2e-6)
    # The singular values the adapter carries are the top (PiSSA) or bottom (MiLoRA) ones of W.
    np.testing.assert_allclose(
        np.linalg.svd(scaling * (lora_b.double() @ lora_a.double()).numpy(), compute_uv=False)[:rank],
        np.sort(s[picked])[::-1],
        rtol=1e-5,
    )
    # The residual is W − s·B·A from the stored (fp32) factors, computed in float64 and rounded once.
    expected_residual = weight.double().numpy() - scaling * (
        lora_b.double().numpy() @ lora_a.double().numpy()
    )
    np.testing.assert_allclose(residual.double().numpy(), expected_residual, rtol=0, atol=1e-6)
    assert residual.dtype == torch.float32


def test_milora_and_pissa_split_the_spectrum_on_tiny_llama(tiny) -> None:
    weights = {
        name: m.weight.detach().clone() for name, m in tiny.model.named_modules() if name.endswith("q_proj")
    }
    rank = 3

    def carried_singular_values(method: str) -> dict[str, np.ndarray]:
        model = load_model("tiny-llama", device="cpu").model
        peft_model = build_adapter(model, AdapterConfig(method, rank=rank, targets=("q_proj",)))
        result = {}
        for name in weights:
            lora_a, lora_b, _, scaling = _factors(peft_model, name)
            result[name] = np.linalg.svd(
                (scaling * lora_b.double() @ lora_a.double()).numpy(), compute_uv=False
            )
        return result

    pissa, milora = carried_singular_values("pissa"), carried_singular_values("milora")
    for name, weight in weights.items():
        s = _svd64(weight)[1]
        np.testing.assert_allclose(pissa[name][:rank], s[:rank], rtol=1e-5)
        np.testing.assert_allclose(milora[name][:rank], s[-rank:], rtol=1e-4)


def test_initab_draws_both_factors_uniformly_within_one_over_sqrt_in() -> None:
    module = OneLinear(out_features=48, in_features=64, seed=2)
    weight = module.q_proj.weight.detach().clone()
    peft_model = build_adapter(
        module, AdapterConfig("initab", rank=16, alpha=32, targets=("q_proj",), seed=5)
    )
    lora_a, lora_b, residual, scaling = _factors(peft_model, "q_proj")
    bound = 1 / math.sqrt(64)
    for factor in (lora_a, lora_b):
        assert factor.abs().max() <= bound
        # Uniform(-b, b): mean 0, standard deviation b/sqrt(3); 768-1024 draws put both within a few percent.
        assert abs(float(factor.mean())) < 0.1 * bound
        assert float(factor.std()) == pytest.approx(bound / math.sqrt(3), rel=0.08)
    expected_residual = weight.double().numpy() - scaling * (
        lora_b.double().numpy() @ lora_a.double().numpy()
    )
    np.testing.assert_allclose(residual.double().numpy(), expected_residual, rtol=0, atol=1e-6)


def test_olora_takes_the_qr_factors(tiny) -> None:
    module = OneLinear(out_features=6, in_features=9, seed=1)
    weight = module.q_proj.weight.detach().clone()
    peft_model = build_adapter(module, AdapterConfig("olora", rank=3, targets=("q_proj",)))
    lora_a, lora_b, _, _ = _factors(peft_model, "q_proj")
    q, r = np.linalg.qr(weight.double().numpy())
    signs = np.sign(np.diag(r)[:3] * np.diag(lora_a.double().numpy()[:, :3]))
    np.testing.assert_allclose(lora_b.double().numpy() * signs, q[:, :3], atol=1e-5)
    np.testing.assert_allclose(lora_a.double().numpy() * signs[:, None], r[:3], atol=1e-5)


def test_residual_weight_is_exact_float64_arithmetic_rounded_once() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 6, generator=generator)
    lora_a, lora_b = torch.randn(3, 6, generator=generator), torch.randn(4, 3, generator=generator)
    result = residual_weight(weight, lora_a, lora_b, 0.5)
    reference = (weight.double() - 0.5 * (lora_b.double() @ lora_a.double())).float()
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, reference, atol=1e-7, rtol=0)
    assert torch.equal(residual_weight(weight, lora_a, lora_b, 0.5), result)


def test_loraga_gradient_is_the_gradient_of_the_global_per_token_mean(tiny) -> None:
    examples = [
        Example(prompt="Say", response="a much longer response here"),
        Example(prompt="Hi", response="x"),
        Example(prompt="Q", response="medium one"),
    ]
    batches = make_batches(tiny.tokenizer, examples, 2)
    assert len(batches) == 2 and batches[0].loss_tokens != batches[1].loss_tokens
    model = tiny.model
    targets = [m for name, m in model.named_modules() if name.endswith("v_proj")]
    total = sum(batch.loss_tokens for batch in batches)
    model.zero_grad()
    (sum(loss_sum(model, batch) for batch in batches) / total).backward()
    expected = [m.weight.grad.detach().clone() for m in targets]
    model.zero_grad()
    _estimate_loraga_gradients(
        model, _peft_config(AdapterConfig("loraga", rank=2, targets=("v_proj",))), batches, loss_sum
    )
    for module, grad in zip(targets, expected):
        torch.testing.assert_close(module._peft_loraga_grad, grad, atol=1e-6, rtol=1e-5)


def test_loraga_aligns_a_with_the_gradient_row_space(tiny) -> None:
    batches = _tiny_batches(tiny.tokenizer, count=3)
    total = sum(batch.loss_tokens for batch in batches)
    model = tiny.model
    model.zero_grad()
    (sum(loss_sum(model, batch) for batch in batches) / total).backward()
    names = [name for name, _ in model.named_modules() if name.endswith("o_proj")]
    gradients = {name: dict(model.named_modules())[name].weight.grad.detach().double() for name in names}
    model.zero_grad()
    rank = 2
    peft_model = build_adapter(
        model, AdapterConfig("loraga", rank=rank, targets=("o_proj",)), batches=batches
    )
    for name, gradient in gradients.items():
        lora_a = _factors(peft_model, name)[0].double()
        top_right = torch.linalg.svd(gradient, full_matrices=False)[2][:rank]
        # A's rows span the gradient's top-r right singular subspace (randomised SVD: close, not exact).
        overlap = torch.linalg.svdvals(top_right @ torch.linalg.qr(lora_a.T)[0])
        assert overlap.min() > 0.99


def test_trainable_parameters_include_dora_magnitudes(tiny) -> None:
    peft_model = build_adapter(tiny.model, AdapterConfig("dora", rank=2, targets=("q_proj", "v_proj")))
    names = list(trainable_parameters(peft_model))
    assert sum("lora_magnitude_vector" in name for name in names) == 4  # 2 layers x 2 targets
    assert sum("lora_A" in name for name in names) == sum("lora_B" in name for name in names) == 4
    assert all(param.requires_grad for param in trainable_parameters(peft_model).values())
    assert not any(p.requires_grad for name, p in peft_model.named_parameters() if "lora_" not in name)


def test_loraplus_optimizer_speeds_up_b_only(tiny) -> None:
    config = AdapterConfig("loraplus", rank=2, loraplus_ratio=8.0)
    peft_model = build_adapter(tiny.model, config)
    optimizer = make_optimizer(peft_model, config, 1e-3, betas=(0.8, 0.99), weight_decay=0.1, eps=1e-6)
    params = trainable_parameters(peft_model)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert len(lr_of) == len(params) == sum(len(g["params"]) for g in optimizer.param_groups)
    for name, param in params.items():
        assert lr_of[id(param)] == pytest.approx(8e-3 if "lora_B" in name else 1e-3)
    assert all(
        g["betas"] == (0.8, 0.99) and g["weight_decay"] == 0.1 and g["eps"] == 1e-6
        for g in optimizer.param_groups
    )


def test_plain_methods_get_one_adamw_group(tiny) -> None:
    config = AdapterConfig("lora", rank=2)
    peft_model = build_adapter(tiny.model, config)
    optimizer = make_optimizer(peft_model, config, 2e-4)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["lr"] == 2e-4
    assert len(optimizer.param_groups[0]["params"]) == len(trainable_parameters(peft_model))
    with pytest.raises(UserError, match="learning rate"):
        make_optimizer(peft_model, config, 0.0)


def test_dropout_reaches_the_lora_layers(tiny) -> None:
    peft_model = build_adapter(tiny.model, AdapterConfig("lora", rank=2, dropout=0.1, targets=("q_proj",)))
    for _, layer in lora_layers(peft_model):
        assert layer.lora_dropout[ADAPTER_NAME].p == 0.1


def test_paper_methods_keep_smollm2_function(smollm2) -> None:
    """The five methods of the paper on SmolLM2-135M (q_proj 576x576 and k_proj 192x576 keep the SVDs quick)."""
    ids = smollm2.tokenizer(["The capital of France is Paris. Two plus two is"], return_tensors="pt")
    with torch.no_grad():
        expected = smollm2.model(**ids).logits
    for method in ("lora", "pissa", "milora", "initab", "dora"):
        fresh = load_model("smollm2-135m", device="cpu").model
        peft_model = build_adapter(fresh, AdapterConfig(method, rank=8, targets=("q_proj", "k_proj")))
        with torch.no_grad():
            actual = peft_model(**ids).logits
        # Logits of a real LM are O(10): the same fp32 tolerance, relative.
        torch.testing.assert_close(
            actual, expected, atol=1e-4, rtol=1e-5, msg=f"{method} changed the function"
        )


def _shapes(model: nn.Module, targets=DEFAULT_TARGETS) -> list[tuple[int, int]]:
    return [
        (m.out_features, m.in_features)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in targets
    ]


@pytest.mark.parametrize("method", list(METHODS))
def test_the_analytic_parameter_count_is_what_peft_builds(method: str) -> None:
    base = load_model("tiny-llama", device="cpu")
    shapes = _shapes(base.model)
    batches = _tiny_batches(base.tokenizer) if METHODS[method].needs_data else None
    peft_model = build_adapter(base.model, AdapterConfig(method, rank=8), batches=batches)
    built = sum(p.numel() for p in trainable_parameters(peft_model).values())
    assert built == trainable_parameter_count(method, 8, shapes)


def test_randlora_rank_matches_loras_parameter_count_best() -> None:
    shapes = [(64, 64), (32, 64), (32, 64), (64, 64), (128, 64), (128, 64), (64, 128)]  # tiny-llama's layer
    lora = trainable_parameter_count("lora", 8, shapes)
    r = randlora_rank(8, shapes)
    gap = abs(sum(randlora_module_parameters(r, s) for s in shapes) - lora)
    assert all(gap <= abs(sum(randlora_module_parameters(c, s) for s in shapes) - lora) for c in range(1, 65))
    assert r == 3 and gap == 52  # 8140 vs 8192 per layer; r = 4 gives 6016
    # The paper's setting, Qwen3-0.6B at r = 128: every min(out, in) is 1024, so the count moves in coarse steps
    # (r = 2: +27 %, r = 3: -15 %); the closest is r = 3.
    assert randlora_rank(128, list(REFERENCE_SHAPES.values())) == 3
    assert reference_parameter_count("randlora") / reference_parameter_count("lora") == pytest.approx(
        0.853, abs=1e-3
    )


def test_randlora_uses_the_matched_rank_alpha_twenty_r_and_the_seed_as_basis_key(tiny) -> None:
    peft_model = build_adapter(tiny.model, AdapterConfig("randlora", rank=8, seed=5))
    config = peft_model.peft_config[ADAPTER_NAME]
    assert config.r == 3 and config.randlora_alpha == 60 and config.projection_prng_key == 5
    assert AdapterConfig("randlora", rank=8).scaling == 20.0


def test_gralora_takes_the_authors_k_and_refuses_indivisible_shapes(tiny) -> None:
    assert (gralora_k(8), gralora_k(32), gralora_k(64), gralora_k(128)) == (2, 2, 4, 4)
    peft_model = build_adapter(tiny.model, AdapterConfig("gralora", rank=8))
    config = peft_model.peft_config[ADAPTER_NAME]
    assert config.gralora_k == 2 and config.hybrid_r == 0 and config.r == 8
    odd = load_model("tiny-llama:hidden_size=132,heads=2,kv_heads=1", device="cpu")  # k_proj is 66 x 132
    with pytest.raises(UserError, match="not divisible by 4"):
        build_adapter(odd.model, AdapterConfig("gralora", rank=64, targets=("k_proj",)))


def test_loft_gets_its_optimizer_and_the_trainer_does_not_clip_it(tiny, monkeypatch) -> None:
    from hessian_lora.methods.loft_optimizer import LoFT
    from hessian_lora.training import train as train_module

    peft_model = build_adapter(tiny.model, AdapterConfig("loft", rank=4))
    optimizer = make_optimizer(peft_model, AdapterConfig("loft", rank=4), 1e-3, max_grad_norm=0.5)
    assert isinstance(optimizer, LoFT) and optimizer.max_grad_norm == 0.5 and optimizer.clips_gradients
    clips: list[float] = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        clips.append(max_norm)
        return real(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(train_module.torch.nn.utils, "clip_grad_norm_", spy)
    examples = [Example(prompt=f"{i}+1", response=str(i + 1), answer=str(i + 1)) for i in range(4)]
    config = TrainConfig(lr=1e-3, steps=2, batch_size=2, max_grad_norm=0.5, warmup_ratio=0.0)
    before = {n: p.detach().clone() for n, p in trainable_parameters(peft_model).items()}
    result = train(peft_model, tiny.tokenizer, examples, config, optimizer=optimizer, progress=False)
    assert result.steps == 2 and clips == [math.inf, math.inf]
    moved = {n for n, p in trainable_parameters(peft_model).items() if not torch.equal(p, before[n])}
    assert any("lora_B" in n for n in moved) and any("lora_A" in n for n in moved)  # B on step 1, A on step 2
    adamw_model = build_adapter(load_model("tiny-llama", device="cpu").model, AdapterConfig("lora", rank=4))
    clips.clear()
    train(adamw_model, tiny.tokenizer, examples, config, progress=False)
    assert clips == [0.5, 0.5]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_builds_on_float64_or_says_why(method: str) -> None:
    """PiSSA/OLoRA on a float64 model: one UserError saying why (peft's own is a raw TypeError)."""
    base = load_model("tiny-llama", device="cpu", dtype=torch.float64)
    batches = None
    if METHODS[method].needs_data:
        from hessian_lora.inputs.tasks import load_task, make_batches

        batches = make_batches(
            base.tokenizer, load_task("arith", n_train=4, n_eval=0).train, 4, max_length=96
        )
    try:
        peft_model = build_adapter(base.model, AdapterConfig(method, rank=4), batches=batches)
    except UserError as exc:
        assert not CASES[method].float64 and "float64" in str(exc)
        return
    assert all(param.dtype == torch.float64 for param in trainable_parameters(peft_model).values())
