"""RandLoRA (Albert et al. 2025): fixed random bases with trainable diagonal scalings, on peft's RandLoRA tuner.
Its basis rank is the one whose trainable-parameter count matches LoRA's at the asked rank best
(:func:`randlora_rank`), with the authors' randlora_alpha = 20·r (a scale of 20).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hessian_lora.methods.spec import MethodSpec, Shape

if TYPE_CHECKING:
    from hessian_lora.settings.adapter import AdapterConfig

PEFT_TYPE = "RANDLORA"
# RandLoRA's scale: the authors set randlora_alpha = 20·r (r: RandLoRA's own basis rank), i.e. a scale of 20.
RANDLORA_ALPHA_PER_RANK = 20


def randlora_module_parameters(r: int, shape: Shape) -> int:
    """RandLoRA's trainable parameters on one (out, in) matrix with basis rank ``r`` (peft 0.21's layout):
    ``n = ceil(min(out, in) / r)`` bases, lambda r x n and gamma n x min(out, in)."""
    smallest = min(shape)
    bases = -(-smallest // r)
    return r * bases + bases * smallest


def randlora_rank(rank: int, shapes: Sequence[Shape]) -> int:
    """RandLoRA's basis rank whose trainable-parameter count over ``shapes`` is closest to LoRA's at ``rank``.

    The authors' rule: count the parameters for every candidate r (1 .. the largest min(out, in)) and take the
    closest match; a tie goes to the larger r (fewer bases, less compute).

    Raises:
        ValueError: no shapes.
    """
    if not shapes:
        raise ValueError("no target shapes")
    target = rank * sum(out + inp for out, inp in shapes)
    candidates = range(1, max(min(shape) for shape in shapes) + 1)
    return min(
        candidates, key=lambda r: (abs(sum(randlora_module_parameters(r, s) for s in shapes) - target), -r)
    )


def parameter_count(rank: int, shapes: Sequence[Shape]) -> int:
    """The parameters of the basis rank :func:`randlora_rank` picks."""
    r = randlora_rank(rank, shapes)
    return sum(randlora_module_parameters(r, shape) for shape in shapes)


def _peft_config(config: AdapterConfig, task_type: str | None, shapes: Sequence[Shape]) -> Any:
    # local: plug-ins load without peft (the registry is read by torch-free code)
    from peft import RandLoraConfig

    r = randlora_rank(config.rank, list(shapes))
    return RandLoraConfig(
        r=r,
        randlora_alpha=RANDLORA_ALPHA_PER_RANK * r,
        randlora_dropout=config.dropout,
        target_modules=list(config.targets),
        projection_prng_key=config.seed,
        save_projection=True,
        task_type=task_type,
    )


def _recognises(peft_config: Mapping[str, Any]) -> bool:
    return peft_config.get("peft_type") == PEFT_TYPE


def scaling(alpha: float, rank: int) -> float:
    """20: randlora_alpha / r with randlora_alpha = 20·r, whatever the asked alpha."""
    return float(RANDLORA_ALPHA_PER_RANK)


def _describe(peft_config: Any) -> str:
    return f" (RandLoRA basis rank {peft_config.r}, randlora_alpha {peft_config.randlora_alpha})"


SPEC = MethodSpec(
    "randlora",
    "RandLoRA",
    "#98df8a",
    "RandLoRA: fixed random bases with trainable diagonal scalings; its r matches LoRA's parameters",
    rewrites_base=False,
    peft_config=_peft_config,
    recognises=_recognises,
    peft_type=PEFT_TYPE,
    peft_alpha_key="randlora_alpha",
    peft_dropout_key="randlora_dropout",
    scaling=scaling,
    parameter_count=parameter_count,
    describe_peft=_describe,
)
