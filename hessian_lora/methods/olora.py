"""OLoRA (Büyükakyüz 2024): B₀, A₀ = the first r columns/rows of the QR factors of W; the base becomes
W − s·B₀·A₀. peft builds it (``init_lora_weights="olora"``); a saved unconverted adapter's residual is rebuilt by
re-running that init.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hessian_lora.methods.lora import is_peft_init, peft_lora_config
from hessian_lora.methods.spec import MethodSpec, PaperFigures, Shape

if TYPE_CHECKING:
    from hessian_lora.settings.adapter import AdapterConfig

PEFT_INIT = "olora"


def _peft_config(config: AdapterConfig, task_type: str | None, shapes: Sequence[Shape]) -> Any:
    return peft_lora_config(config, task_type, init=PEFT_INIT)


def _recognises(peft_config: Mapping[str, Any]) -> bool:
    return is_peft_init(peft_config, PEFT_INIT)


def converted_half(a0: Any, b0: Any, tol: float) -> bool:
    """Whether the initial half (A₀, B₀) of a peft conversion is OLoRA's: B₀ = Q_r has B₀ᵀB₀ = I (to ``tol``)."""
    import torch  # local: plug-ins load without torch; this runs on tensors read from an adapter file

    gram_b = b0.T @ b0
    if float(gram_b.diagonal().abs().max()) == 0:
        return False
    return float((gram_b - torch.eye(gram_b.shape[0], dtype=gram_b.dtype)).abs().max()) <= tol


SPEC = MethodSpec(
    "olora",
    "OLoRA",
    "#8c564b",
    "OLoRA: B, A = first r columns/rows of the QR factors of W; base <- W - s*B*A",
    rewrites_base=True,
    peft_config=_peft_config,
    recognises=_recognises,
    peft_init=PEFT_INIT,
    float64=False,  # peft's QR init refuses float64 with a raw TypeError
    rebuildable=True,
    converted_half=converted_half,
    paper=PaperFigures(lr_factor=18.2, lambda_ratio=100.0, up_to=True),
)
