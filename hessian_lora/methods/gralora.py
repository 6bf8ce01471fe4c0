"""GraLoRA (Jung et al. 2025): W split into k×k sub-blocks, each with its own low-rank pair of rank r/k, on peft's
GraLoRA tuner; k as the authors set it (:func:`gralora_k`), no hybrid part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hessian_lora.core.errors import UserError
from hessian_lora.methods.spec import MethodSpec, Shape

if TYPE_CHECKING:
    from hessian_lora.settings.adapter import AdapterConfig

PEFT_TYPE = "GRALORA"


def gralora_k(rank: int) -> int:
    """GraLoRA's number of sub-blocks per side, as the authors set it: 2 for r <= 32, 4 for r >= 64 (and between)."""
    return 2 if rank <= 32 else 4


def check_rank(rank: int) -> None:
    """The rank is split over ``gralora_k`` blocks, so it must be a multiple of it (peft raises a bare ValueError).

    Raises:
        UserError: the rank is not a multiple of k; the message names the nearest ranks that are.
    """
    k = gralora_k(rank)
    if rank % k:
        below, above = rank - rank % k, rank - rank % k + k
        raise UserError(
            f"gralora splits the rank over k = {k} blocks (k = 2 up to rank 32, else 4), so the rank "
            f"must be a multiple of {k}, got {rank}: use rank {below or above} or {above}."
        )


def check_shapes(rank: int, shapes: Mapping[str, Shape]) -> None:
    """Every target matrix must split into k×k blocks.

    Raises:
        UserError: a target has a dimension not divisible by k; the message names those targets.
    """
    check_rank(rank)
    k = gralora_k(rank)
    odd = sorted({name.rsplit(".", 1)[-1] for name, shape in shapes.items() if shape[0] % k or shape[1] % k})
    if odd:
        raise UserError(
            f"gralora splits each weight into {k}x{k} blocks (k = {k} at rank {rank}), but "
            f"{', '.join(odd)} has a dimension not divisible by {k}: drop those targets."
        )


def _peft_config(config: AdapterConfig, task_type: str | None, shapes: Sequence[Shape]) -> Any:
    # local: plug-ins load without peft (the registry is read by torch-free code)
    from peft import GraloraConfig

    return GraloraConfig(
        r=config.rank,
        alpha=config.lora_alpha,
        gralora_dropout=config.dropout,
        gralora_k=gralora_k(config.rank),
        hybrid_r=0,
        target_modules=list(config.targets),
        task_type=task_type,
    )


def _recognises(peft_config: Mapping[str, Any]) -> bool:
    return peft_config.get("peft_type") == PEFT_TYPE


def saved_scaling(peft_config: Mapping[str, Any], rank: int, alpha: float) -> float:
    """alpha / (r + hybrid_r): a plain peft GraLoRA may have a hybrid part, this toolkit's never do."""
    return alpha / (rank + int(peft_config.get("hybrid_r") or 0))


def _describe(peft_config: Any) -> str:
    return f" (gralora_k {peft_config.gralora_k})"


SPEC = MethodSpec(
    "gralora",
    "GraLoRA",
    "#aec7e8",
    "GraLoRA: W split into k x k sub-blocks, each with its own pair of rank r/k (k = 2 for r <= 32, else 4)",
    rewrites_base=False,
    peft_config=_peft_config,
    recognises=_recognises,
    peft_type=PEFT_TYPE,
    peft_alpha_key="alpha",
    peft_dropout_key="gralora_dropout",
    check_rank=check_rank,
    check_shapes=check_shapes,
    saved_scaling=saved_scaling,
    describe_peft=_describe,
)
