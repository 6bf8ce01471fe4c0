"""rsLoRA (Kalajdzievski 2023): LoRA with the rank-stabilised scale alpha/√r (peft's ``use_rslora``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hessian_lora.methods.lora import lora_flags, peft_lora_config
from hessian_lora.methods.spec import MethodSpec, Shape

if TYPE_CHECKING:
    from hessian_lora.settings.adapter import AdapterConfig


def _peft_config(config: AdapterConfig, task_type: str | None, shapes: Sequence[Shape]) -> Any:
    return peft_lora_config(config, task_type, use_rslora=True)


def _recognises(peft_config: Mapping[str, Any]) -> bool:
    lora, dora, rslora = lora_flags(peft_config)
    return lora and rslora and not dora  # DoRA with use_rslora is DoRA


def scaling(alpha: float, rank: int) -> float:
    """s = alpha / √r."""
    return alpha / math.sqrt(rank)


SPEC = MethodSpec(
    "rslora",
    "rsLoRA",
    "#17becf",
    "rsLoRA: LoRA with scale alpha/sqrt(r)",
    rewrites_base=False,
    peft_config=_peft_config,
    recognises=_recognises,
    scaling=scaling,
)
