"""DoRA's column norm: the engine's two Hessians against a dense one built without peft's DoRA forward."""

from __future__ import annotations

import pytest
import torch
from tinylora import exact_loss_sum, module_block, operator_for, synthetic_batches, tiny_lora
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from hessian_lora.core.errors import UserError
from hessian_lora.hessian import ParameterBlock, differentiated_dora_norm
from hessian_lora.hessian.dora import dora_layers


@pytest.fixture(scope="module")
def dora_problem() -> tuple[torch.nn.Module, list, ParameterBlock]:
    """Layer 0's q_proj DoRA block (r = 1: A, B, magnitude; 96 parameters) at a generic point, float64: B drawn
    by tiny_lora and every magnitude moved off ‖W‖, so no DoRA module computes its base weight."""
    model = tiny_lora(dtype=torch.float64, seed=4, use_dora=True, targets=("q_proj",))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_magnitude_vector" in name:
                param.mul_(1 + 0.2 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return model, synthetic_batches(seed=4), module_block(model, "q_proj", 0)


def _dora_weight(
    base: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    magnitude: torch.Tensor,
    scaling: float,
    *,
    detach_norm: bool,
) -> torch.Tensor:
    """W' = m ⊙ (W + sBA) / ‖W + sBA‖, the norm of each output row (peft's column norm of Wᵀ, fan_in_fan_out off)."""
    combined = base + scaling * (b @ a)
    norm = torch.linalg.norm(combined, dim=1)
    if detach_norm:
        norm = norm.detach()
    return (magnitude / norm).unsqueeze(1) * combined


def _reference_hessian(
    model: torch.nn.Module, batches: list, block: ParameterBlock, *, detach_norm: bool
) -> torch.Tensor:
    """The dense Hessian of the mean loss over the block, DoRA written out by hand: the adapters are disabled and
    each DoRA module's base weight is replaced by its W' (the block's module as a function of the block, the
    others as constants), so peft's DoRA forward is never called."""
    tokens = sum(b.loss_tokens for b in batches)
    modules = {
        name: module
        for name, module in model.named_modules()
        if hasattr(module, "lora_magnitude_vector") and len(module.lora_magnitude_vector)
    }
    (own,) = {name.split(".lora_", 1)[0] for name in block.names}
    parameters = dict(model.named_parameters())
    shapes, numels = [p.shape for p in block.parameters], [p.numel() for p in block.parameters]

    def weights(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name, module in modules.items():
            a, b, magnitude = (
                values[f"{name}.{key}"] if name == own else parameters[f"{name}.{key}"].detach()
                for key in (
                    "lora_A.default.weight",
                    "lora_B.default.weight",
                    "lora_magnitude_vector.default.weight",
                )
            )
            out[f"{name}.base_layer.weight"] = _dora_weight(
                module.base_layer.weight.detach(),
                a,
                b,
                magnitude,
                module.scaling["default"],
                detach_norm=detach_norm,
            )
        return out

    def mean_loss(flat: torch.Tensor) -> torch.Tensor:
        values = {n: piece.view(s) for n, piece, s in zip(block.names, flat.split(numels), shapes)}
        substituted = weights(values)
        return (
            sum(exact_loss_sum(lambda **kw: functional_call(model, substituted, (), kw), b) for b in batches)
            / tokens
        )

    flat = torch.cat([p.detach().reshape(-1) for p in block.parameters])
    with model.disable_adapter(), sdpa_kernel([SDPBackend.MATH]):
        return torch.autograd.functional.hessian(mean_loss, flat)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_differentiated_is_the_true_loss_hessian_and_detached_peft_surrogate(dora_problem) -> None:
    model, batches, block = dora_problem
    true = _reference_hessian(model, batches, block, detach_norm=False)
    surrogate = _reference_hessian(model, batches, block, detach_norm=True)
    differentiated = operator_for(model, batches, block, dora_norm="differentiated").to_dense()
    detached = operator_for(model, batches, block).to_dense()
    assert _relative(differentiated, true) < 1e-10
    assert _relative(detached, surrogate) < 1e-10
    assert _relative(detached, true) > 1e-2
    top_true, top_surrogate = (
        float(torch.linalg.eigvalsh(true)[-1]),
        float(torch.linalg.eigvalsh(surrogate)[-1]),
    )
    assert abs(top_true - top_surrogate) > 1e-3 * abs(top_true)
    assert torch.allclose(differentiated, differentiated.T, atol=1e-12)  # a true Hessian: symmetric


def test_every_backend_measures_the_true_loss_with_differentiated(dora_problem) -> None:
    model, batches, block = dora_problem
    vector = torch.randn(block.numel, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    expected = (
        operator_for(model, batches, block, backend="double_backward", dora_norm="differentiated") @ vector
    )
    forward = (
        operator_for(model, batches, block, backend="forward_over_reverse", dora_norm="differentiated")
        @ vector
    )
    assert _relative(forward, expected) < 1e-12
    # finite differences see the norm's change, as the true loss does: allowed here (refused when detached)
    finite = (
        operator_for(model, batches, block, backend="finite_difference", dora_norm="differentiated") @ vector
    )
    assert _relative(finite, expected) < 1e-5
    with pytest.raises(UserError, match="DoRA"):
        operator_for(model, batches, block, backend="finite_difference")
    with pytest.raises(UserError, match=r"dora_norm.*detached, differentiated"):
        operator_for(model, batches, block, dora_norm="true")


def test_the_swap_is_undone_on_exit_and_on_errors(dora_problem) -> None:
    model, batches, block = dora_problem
    layers = [layer for _, layer in dora_layers(model)]
    assert len(layers) == 2 and all("forward" not in vars(layer) for layer in layers)

    def output_and_gradient() -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        with sdpa_kernel([SDPBackend.MATH]):
            loss = exact_loss_sum(model, batches[0])
        return loss.detach(), torch.autograd.grad(loss, list(block.parameters))

    before = output_and_gradient()
    with differentiated_dora_norm(model):
        inside = output_and_gradient()
        with differentiated_dora_norm(model):  # nested: harmless
            assert _relative(output_and_gradient()[1][0], inside[1][0]) == 0
        assert all("forward" in vars(layer) for layer in layers)
    after = output_and_gradient()
    assert all("forward" not in vars(layer) for layer in layers)
    assert torch.equal(before[0], after[0]) and all(torch.equal(x, y) for x, y in zip(before[1], after[1]))
    # the same loss either way; the gradient of A and B differs (the norm's path), the magnitude's does not
    assert torch.allclose(inside[0], before[0], rtol=1e-13)
    assert _relative(inside[1][0], before[1][0]) > 1e-3 and _relative(inside[1][1], before[1][1]) > 1e-3
    assert _relative(inside[1][2], before[1][2]) < 1e-12

    with pytest.raises(RuntimeError, match="boom"), differentiated_dora_norm(model):
        raise RuntimeError("boom")
    assert all("forward" not in vars(layer) for layer in layers)
    assert all(torch.equal(x, y) for x, y in zip(before[1], output_and_gradient()[1]))


def test_dora_on_an_embedding_is_refused_with_differentiated() -> None:
    model = tiny_lora(dtype=torch.float64, use_dora=True, targets=("q_proj", "embed_tokens"))
    batches = synthetic_batches()
    block = module_block(model, "q_proj", 0)
    with pytest.raises(UserError, match=r"linear layers only.*DoraEmbeddingLayer"):
        operator_for(model, batches, block, dora_norm="differentiated")
    with pytest.raises(UserError, match="linear layers only"), differentiated_dora_norm(model):
        pass
    assert all("forward" not in vars(layer) for _, layer in dora_layers(model))
    operator_for(model, batches, block)  # detached: as before
