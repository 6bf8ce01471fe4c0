"""LoRA+ (Hayou et al. 2024): LoRA whose B matrices learn ``loraplus_ratio`` times faster than A. Its definition
is its optimizer groups (:func:`make_optimizer`); a saved peft directory of it reads as plain LoRA.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hessian_lora.methods.lora import peft_lora_config
from hessian_lora.methods.spec import MethodSpec, Shape

if TYPE_CHECKING:
    from hessian_lora.settings.adapter import AdapterConfig


def _peft_config(config: AdapterConfig, task_type: str | None, shapes: Sequence[Shape]) -> Any:
    return peft_lora_config(config, task_type)


def is_fast(name: str, param: Any) -> bool:
    """Whether a trainable parameter is in LoRA+'s fast group: a B matrix or a 1-D parameter (peft's split)."""
    return "lora_B" in name or param.ndim == 1


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
    """AdamW with two groups: everything else at ``lr``, then the fast group at ``lr * loraplus_ratio``.

    The split matches ``peft.optimizers.create_loraplus_optimizer`` without its empty embedding group; the fast
    group comes second (what :func:`group_lr_ratios` says). ``max_grad_norm`` is the training loop's.

    Args:
        peft_model: the adapted model.
        config: the adapter (its ``loraplus_ratio``).
        lr: the learning rate of A.
        betas: Adam's betas.
        eps: Adam's epsilon.
        weight_decay: decoupled weight decay.
        max_grad_norm: unused (AdamW's clipping is the training loop's).

    Returns:
        A ``torch.optim.AdamW``.
    """
    import torch  # local: plug-ins load without torch (the registry is read by torch-free code)

    params = {name: p for name, p in peft_model.named_parameters() if p.requires_grad}
    slow = [p for name, p in params.items() if not is_fast(name, p)]
    fast = [p for name, p in params.items() if is_fast(name, p)]
    groups = [{"params": slow, "lr": lr}, {"params": fast, "lr": lr * config.loraplus_ratio}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)


def group_lr_ratios(config: AdapterConfig) -> tuple[float, ...]:
    """(1, loraplus_ratio): the fast group second."""
    return (1.0, float(config.loraplus_ratio))


SPEC = MethodSpec(
    "loraplus",
    "LoRA+",
    "#bcbd22",
    "LoRA+: LoRA whose B learns loraplus_ratio times faster than A",
    rewrites_base=False,
    peft_config=_peft_config,
    make_optimizer=make_optimizer,
    group_lr_ratios=group_lr_ratios,
)
