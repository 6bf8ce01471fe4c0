"""LoFT (Tastan et al. 2025): LoRA's init, trained by the LoFT optimizer (a full-weight AdamW view, alternating
A/B updates; :mod:`hessian_lora.methods.loft_optimizer`, reached through this spec's ``make_optimizer``). A saved peft
directory of it reads as plain LoRA (the optimizer leaves no trace in the adapter config).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hessian_lora.methods.lora import peft_lora_config
from hessian_lora.methods.spec import MethodSpec, Shape

if TYPE_CHECKING:
    from hessian_lora.settings.adapter import AdapterConfig

PRECONDITIONER_NOTE = (
    "LoFT's preconditioner is not a diagonal Adam one: it divides by a second moment reconstructed on the full "
    "weight from per-row r×r outer products and projects with Gram inverses of the other factor, so the "
    "Adam-preconditioned sharpness λ₁(P⁻¹H), P = diag(√v̂ + ε), and its (2 + 2β₁)/((1 - β₁)η) edge-of-stability "
    "bound do not apply to LoFT runs as is; report raw λ_max for them."
)


def _peft_config(config: AdapterConfig, task_type: str | None, shapes: Sequence[Shape]) -> Any:
    return peft_lora_config(config, task_type)


def make_optimizer(
    peft_model: Any,
    config: AdapterConfig,
    lr: float,
    *,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    max_grad_norm: float | None,
) -> Any:
    """The LoFT optimizer over the model's LoRA pairs; it clips the full-weight view of the gradient itself.

    Args:
        peft_model: the adapted model.
        config: the adapter.
        lr: the learning rate.
        betas: Adam's betas.
        eps: Adam's epsilon.
        weight_decay: decoupled weight decay.
        max_grad_norm: the clipping norm of the full-weight gradient (None: no clipping).

    Returns:
        A :class:`hessian_lora.methods.loft_optimizer.LoFT`.
    """
    # local: the optimizer needs torch; plug-ins load without
    from hessian_lora.methods.loft_optimizer import loft_optimizer

    return loft_optimizer(
        peft_model, lr, betas=betas, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm
    )


SPEC = MethodSpec(
    "loft",
    "LoFT",
    "#ff9896",
    "LoFT: LoRA init, trained by the LoFT optimizer (full-weight AdamW view, alternating A/B)",
    rewrites_base=False,
    peft_config=_peft_config,
    make_optimizer=make_optimizer,
    preconditioner_note=PRECONDITIONER_NOTE,
)
