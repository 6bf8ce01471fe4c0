"""PiSSA (Meng et al. 2024): A, B from the top-r singular triplets of W, B₀ = U_r·√(S_r/s), A₀ = √(S_r/s)·V_rᵀ;
the base becomes W − s·B₀·A₀. peft builds it (``init_lora_weights="pissa"``, or ``pissa_niter_K`` for its
randomised SVD); a saved unconverted adapter's residual is rebuilt by re-running that init (exact SVD only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hessian_lora.methods.lora import is_peft_init, peft_lora_config
from hessian_lora.methods.spec import MethodSpec, PaperFigures, Shape

if TYPE_CHECKING:
    from hessian_lora.settings.adapter import AdapterConfig

PEFT_INIT = "pissa"


def _peft_config(config: AdapterConfig, task_type: str | None, shapes: Sequence[Shape]) -> Any:
    init = PEFT_INIT if config.pissa_niter is None else f"{PEFT_INIT}_niter_{config.pissa_niter}"
    return peft_lora_config(config, task_type, init=init)


def _recognises(peft_config: Mapping[str, Any]) -> bool:
    return is_peft_init(peft_config, PEFT_INIT)


def converted_half(a0: Any, b0: Any, tol: float) -> bool:
    """Whether the initial half (A₀, B₀) of a peft conversion is PiSSA's: B₀ᵀB₀ and A₀A₀ᵀ equal and diagonal
    (both diag(S_r/s)), to ``tol`` relative to their largest entry."""
    import torch  # local: plug-ins load without torch; this runs on tensors read from an adapter file

    gram_a, gram_b = a0 @ a0.T, b0.T @ b0
    scale = float(gram_b.diagonal().abs().max())
    if scale == 0:
        return False
    diagonal = torch.diag(gram_b.diagonal())
    return (
        float((gram_b - diagonal).abs().max()) <= tol * scale
        and float((gram_a - diagonal).abs().max()) <= tol * scale
    )


SPEC = MethodSpec(
    "pissa",
    "PiSSA",
    "#d62728",
    "PiSSA: A, B from the top-r singular triplets of W; base <- W - s*B*A",
    rewrites_base=True,
    peft_config=_peft_config,
    recognises=_recognises,
    peft_init=PEFT_INIT,
    float64=False,  # peft's SVD init refuses float64 with a raw TypeError
    rebuildable=True,
    converted_half=converted_half,
    paper=PaperFigures(lr_factor=10.0, lambda_ratio=10.0),
)
