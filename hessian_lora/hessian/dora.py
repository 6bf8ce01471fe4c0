"""DoRA's column norm: the Hessian of peft's surrogate (norm detached) or of the true loss (norm differentiated).

peft's ``DoraLinearLayer.forward`` computes W' = m ⊙ (W + sBA) / ‖W + sBA‖_c with the column norm detached from
the graph (DoRA paper §4.3): autograd then differentiates a surrogate in which ‖W + sBA‖_c is a constant at the
current point. That is what DoRA trains with and what the paper's ``vhp`` and PyHessian measure
(``"detached"``). :func:`differentiated_dora_norm` swaps each DoRA linear layer's forward for peft's own with
neither the low-rank product nor the norm detached, so autograd sees the true loss (``"differentiated"``); the
swap is per instance and undone on exit. Only linear DoRA layers are supported: peft's embedding and
convolution DoRA layers are refused.

peft is imported lazily: importing the engine does not load it.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hessian_lora.core.errors import UserError
from hessian_lora.settings.measurement import DORA_NORMS
from hessian_lora.settings.measurement import DoraNorm as DoraNorm  # one definition, with the settings

_MISSING = object()


def check_dora_norm(value: object) -> DoraNorm:
    """``value`` as a :data:`DoraNorm`, or a :class:`UserError` naming the choices."""
    if value not in DORA_NORMS:
        raise UserError(f"unknown dora_norm {value!r}: use {', '.join(DORA_NORMS)}.")
    return value  # type: ignore[return-value]  # checked against DORA_NORMS above: mypy does not narrow by membership


def dora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The peft DoRA layers of ``model`` (the modules inside its ``lora_magnitude_vector`` dicts), any type."""
    try:
        # local: the engine loads without peft (1.8 s to import); only a DoRA adapter needs it
        from peft.tuners.lora.dora import DoraLinearLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return []
    return [(name, module) for name, module in model.named_modules() if isinstance(module, DoraLinearLayer)]


def has_dora(model: nn.Module) -> bool:
    """True when any module of ``model`` carries a DoRA magnitude vector."""
    return bool(dora_layers(model))


def check_differentiable(model: nn.Module) -> list[nn.Module]:
    """The DoRA layers :func:`differentiated_dora_norm` would swap; a :class:`UserError` if any is not linear."""
    # local: the engine loads without peft (1.8 s to import); only a DoRA adapter needs it
    from peft.tuners.lora.dora import DoraLinearLayer

    layers = dora_layers(model)
    unsupported = [
        f"{name} ({type(layer).__name__})" for name, layer in layers if type(layer) is not DoraLinearLayer
    ]
    if unsupported:
        raise UserError(
            f"dora_norm 'differentiated' supports DoRA on linear layers only, not {', '.join(unsupported)}: "
            "use dora_norm 'detached' for this model."
        )
    return [layer for _, layer in layers]


@contextlib.contextmanager
def differentiated_dora_norm(model: nn.Module) -> Iterator[None]:
    """Within the block, every DoRA linear layer of ``model`` differentiates its column norm (the true loss).

    Nested use is harmless (a layer already swapped is left alone), and every layer's own forward is restored on
    exit, exceptions included. A model without DoRA is left untouched.
    """
    layers = check_differentiable(model)
    swapped: list[tuple[nn.Module, Any]] = []
    try:
        for layer in layers:
            own = vars(layer).get("forward", _MISSING)
            if getattr(own, "__func__", None) is _differentiated_forward:
                continue
            layer.forward = types.MethodType(_differentiated_forward, layer)
            swapped.append((layer, own))
        yield
    finally:
        for layer, own in reversed(swapped):
            if own is _MISSING:
                del layer.forward
            else:
                layer.forward = own


def _differentiated_forward(
    self: Any,
    x: torch.Tensor,
    *,
    lora_A: nn.Module,
    lora_B: nn.Module,
    scaling: float,
    base_layer: nn.Module,
    base_result: torch.Tensor | None = None,
    adapter_name: str = "default",
) -> torch.Tensor:
    """peft 0.x's ``DoraLinearLayer.forward`` without its two ``detach`` calls.

    ``get_lora_weight`` and ``get_weight_norm`` are called without ``adapter_name``, which keeps peft's optional
    DoRA cache (``ENABLE_DORA_CACHING``) out of it: a cached norm would be a stale constant.
    """
    # local: the engine loads without peft (1.8 s to import); only a DoRA adapter needs it
    from peft.utils.integrations import dequantize_module_weight
    from peft.utils.other import transpose  # local: peft, as above

    del adapter_name  # only peft's cache key
    lora_weight = self.get_lora_weight(lora_A=lora_A, lora_B=lora_B)
    lora_weight = lora_weight.to(x.dtype)

    magnitude = self.weight
    weight: torch.Tensor = dequantize_module_weight(base_layer)
    weight = weight.to(x.dtype)
    weight_norm = self.get_weight_norm(weight=weight, lora_weight=lora_weight, scaling=scaling)
    mag_norm_scale = (magnitude / weight_norm).view(1, -1)

    lora_result = lora_B(lora_A(x))

    if base_result is not None:
        bias: torch.Tensor | None = getattr(base_layer, "bias", None)
        if bias is not None:
            base_result = base_result - bias
    else:
        base_result = F.linear(x, transpose(weight, self.fan_in_fan_out))

    result: torch.Tensor = (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling
    return result
