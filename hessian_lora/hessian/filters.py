"""Typed parameter filters: which parameters a Hessian block is taken over.

A filter turns a model into a list of :class:`ParameterBlock` (name + parameters in model order):

- :class:`WholeAdapter` — one block with every trainable parameter (the adapter as training sees it);
- :class:`PerModule` — one block per adapted module, holding all of that module's trainable adapter parameters
  (LoRA's ``lora_A``, ``lora_B`` and DoRA's ``lora_magnitude_vector``: the paper's blocks; GraLoRA's and
  RandLoRA's own), optionally restricted to module names and layer indices;
- :class:`ByName` — one block of the trainable parameters whose name matches a regular expression.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from hessian_lora.core.errors import UserError

# The block selection's parsers belong to the settings that are validated without torch; re-exported here.
from hessian_lora.settings.measurement import parse_layers as parse_layers
from hessian_lora.settings.measurement import parse_modules as parse_modules

if (
    TYPE_CHECKING
):  # annotations only: reading a report's block names (hessian_lora.measurement.reports) needs no torch
    from torch import nn

ADAPTER_PARTS: tuple[str, ...] = ("lora_A", "lora_B", "lora_magnitude_vector")
# ``layers.<i>`` (Llama, Mistral, ...), ``h.<i>`` (GPT-2), ``blocks.<i>``, ``layer.<i>`` (BERT); "/" separated too.
_LAYER_INDEX = re.compile(r"(?:^|[./])(?:layers|layer|h|blocks)[./](\d+)(?:[./]|$)")
_WRAPPER_PREFIXES = ("base_model.model.model.", "base_model.model.", "model.")


@dataclass(frozen=True)
class ParameterBlock:
    """A named group of parameters; the Hessian block is taken over their concatenation in this order."""

    name: str
    names: tuple[str, ...]
    parameters: tuple[nn.Parameter, ...] = field(compare=False, repr=False)
    module: str | None = None
    layer: int | None = None

    @property
    def numel(self) -> int:
        """Number of parameters in the block (the operator's size)."""
        return sum(p.numel() for p in self.parameters)


class ParameterFilter(Protocol):
    """Anything that turns a model into its Hessian blocks."""

    def blocks(self, model: nn.Module) -> list[ParameterBlock]:
        """The blocks this filter takes from ``model``, in model order."""
        ...


@dataclass(frozen=True)
class WholeAdapter:
    """Every parameter with ``requires_grad`` (for a peft model: the adapter) as one block."""

    name: str = "adapter"

    def blocks(self, model: nn.Module) -> list[ParameterBlock]:
        """The blocks this filter takes from ``model``, in model order."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise UserError(
                "the model has no trainable parameters: wrap it in an adapter (build_adapter) first."
            )
        return [ParameterBlock(self.name, tuple(n for n, _ in named), tuple(p for _, p in named))]


@dataclass(frozen=True)
class PerModule:
    """One block per adapted module: every trainable parameter of that module's adapter, in model order.

    The owner of a parameter is the innermost peft tuner layer (``BaseTunerLayer``: LoRA, DoRA, GraLoRA,
    RandLoRA, ...) it lives in, whatever the tuner calls it (``lora_A``/``lora_B``/``lora_magnitude_vector``,
    ``gralora_A``/``gralora_B``, ``randlora_lambda``/``randlora_gamma``, ...); a model without peft tuner layers
    falls back to the names in ``parts``. Trainable parameters outside any adapted module (peft's
    ``modules_to_save``) belong to no block.

    ``modules`` keeps modules whose own name (e.g. ``q_proj``) is listed; ``layers`` keeps modules inside
    ``layers.<i>`` for the listed indices. ``None`` keeps all.
    """

    modules: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None
    parts: tuple[str, ...] = ADAPTER_PARTS

    def blocks(self, model: nn.Module) -> list[ParameterBlock]:
        """The blocks this filter takes from ``model``, in model order."""
        owners = _tuner_layer_names(model)
        grouped: dict[str, list[tuple[str, nn.Parameter]]] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            prefix = _owner(name, owners) if owners else _adapter_prefix(name, self.parts)
            if prefix is not None:
                grouped.setdefault(prefix, []).append((name, param))
        if not grouped:
            raise UserError(
                "the model has no trainable adapter parameters in adapted modules: build an adapter first."
            )
        found_modules = sorted({prefix.rsplit(".", 1)[-1] for prefix in grouped})
        found_layers = sorted({layer for prefix in grouped if (layer := layer_index(prefix)) is not None})
        if self.modules is not None:
            unknown = [m for m in self.modules if m not in found_modules]
            if unknown:
                raise UserError(
                    f"no adapted module named {', '.join(unknown)}: choose from {', '.join(found_modules)}."
                )
        if self.layers is not None:
            unknown_layers = [i for i in self.layers if i not in found_layers]
            if unknown_layers:
                span = f"{found_layers[0]}..{found_layers[-1]}" if found_layers else "none"
                raise UserError(
                    f"no adapted layer {', '.join(map(str, unknown_layers))}: the model's layers are {span}."
                )
        blocks = []
        for prefix, named in grouped.items():
            module = prefix.rsplit(".", 1)[-1]
            layer = layer_index(prefix)
            if self.modules is not None and module not in self.modules:
                continue
            if self.layers is not None and layer not in self.layers:
                continue
            blocks.append(
                ParameterBlock(
                    short_name(prefix),
                    tuple(n for n, _ in named),
                    tuple(p for _, p in named),
                    module=module,
                    layer=layer,
                )
            )
        return blocks


@dataclass(frozen=True)
class ByName:
    """The trainable parameters whose full name matches ``pattern`` (``re.search``), as one block."""

    pattern: str
    name: str | None = None

    def blocks(self, model: nn.Module) -> list[ParameterBlock]:
        """The blocks this filter takes from ``model``, in model order."""
        try:
            regex = re.compile(self.pattern)
        except re.error as exc:
            raise UserError(
                f"bad parameter pattern {self.pattern!r} ({exc}): give a Python regular expression."
            ) from exc
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and regex.search(n)]
        if not named:
            raise UserError(
                f"no trainable parameter matches {self.pattern!r}: check the names (model.named_parameters())."
            )
        return [
            ParameterBlock(self.name or self.pattern, tuple(n for n, _ in named), tuple(p for _, p in named))
        ]


def _tuner_layer_names(model: nn.Module) -> list[str]:
    """Names of the peft tuner layers (adapted modules) in ``model``, innermost last when nested."""
    try:  # local: the filters load without torch or peft (reading a report's block names needs neither)
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return []
    return [name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer) and name]


def _owner(name: str, owners: list[str]) -> str | None:
    """The longest adapted-module name that contains parameter ``name`` (None outside every adapted module)."""
    best = None
    for owner in owners:
        if name.startswith(owner + ".") and (best is None or len(owner) > len(best)):
            best = owner
    return best


def _adapter_prefix(name: str, parts: Iterable[str]) -> str | None:
    """``...q_proj`` for ``...q_proj.lora_A.default.weight`` when the part is one of ``parts``."""
    components = name.split(".")
    for position, component in enumerate(components):
        if component in parts and position > 0:
            return ".".join(components[:position])
    return None


def short_name(prefix: str) -> str:
    """``layers.3.self_attn.q_proj`` for ``base_model.model.model.layers.3.self_attn.q_proj``."""
    for wrapper in _WRAPPER_PREFIXES:
        if prefix.startswith(wrapper):
            return prefix[len(wrapper) :]
    return prefix


def layer_index(name: str) -> int | None:
    """The decoder-layer index in a module or block name (``model.layers.3.self_attn.q_proj`` → 3); None if absent."""
    match = _LAYER_INDEX.search(name)
    return int(match.group(1)) if match else None
