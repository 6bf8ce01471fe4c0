"""DoRA (Liu et al. 2024): a trainable magnitude per output row times the column-normalised direction W + s·B·A
(peft's ``use_dora``); LoRA's init, so the base function is kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hessian_lora.methods.lora import lora_flags, peft_lora_config
from hessian_lora.methods.spec import MethodSpec, Shape, lora_parameter_count

if TYPE_CHECKING:
    from hessian_lora.settings.adapter import AdapterConfig


def _peft_config(config: AdapterConfig, task_type: str | None, shapes: Sequence[Shape]) -> Any:
    return peft_lora_config(config, task_type, use_dora=True)


def _recognises(peft_config: Mapping[str, Any]) -> bool:
    lora, dora, _ = lora_flags(peft_config)
    return lora and dora  # whatever its init or scale: the magnitude vectors make it DoRA


def parameter_count(rank: int, shapes: Sequence[Shape]) -> int:
    """LoRA's r·(out + in) per matrix plus a magnitude per output row."""
    return lora_parameter_count(rank, shapes) + sum(out for out, _ in shapes)


SPEC = MethodSpec(
    "dora",
    "DoRA",
    "#9467bd",
    "DoRA: trainable magnitude times the normalised direction W + s*B*A",
    rewrites_base=False,
    peft_config=_peft_config,
    recognises=_recognises,
    parameter_count=parameter_count,
)
