"""Vanilla LoRA (Hu et al. 2021): A Kaiming-uniform, B = 0, ΔW = (alpha/r)·B·A; and the helpers every method on
peft's LoRA tuner shares (:func:`peft_lora_config`, :func:`lora_flags`, :func:`peft_init_name`).

Like every plug-in, torch-free at load time (see :mod:`hessian_lora.methods.spec`): peft is imported by the hook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hessian_lora.methods.spec import MethodSpec, Shape

if TYPE_CHECKING:
    from hessian_lora.settings.adapter import AdapterConfig

LORA_PEFT_TYPE = "LORA"


def peft_lora_config(
    config: AdapterConfig,
    task_type: str | None,
    *,
    init: bool | str = True,
    use_dora: bool = False,
    use_rslora: bool = False,
    **extra: Any,
) -> Any:
    """peft's ``LoraConfig`` for ``config`` with one of peft's initialisations and flags.

    Args:
        config: the adapter (rank, alpha, dropout, targets).
        task_type: ``CAUSAL_LM`` for a language model, None for a plain module.
        init: ``init_lora_weights`` (True: Kaiming A, zero B).
        use_dora: DoRA's magnitude/direction split.
        use_rslora: rsLoRA's alpha/√r scale.
        **extra: further LoraConfig fields (LoRA-GA's ``lora_ga_config``, EVA's ``eva_config``).

    Returns:
        The LoraConfig.
    """
    from peft import LoraConfig  # local: plug-ins load without peft (the registry is read by torch-free code)

    return LoraConfig(
        r=config.rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.targets),
        init_lora_weights=init,
        use_dora=use_dora,
        use_rslora=use_rslora,
        task_type=task_type,
        **extra,
    )


def peft_init_name(peft_config: Mapping[str, Any]) -> str | None:
    """A saved LoRA config's ``init_lora_weights`` when it names one of peft's initialisations (lower case, without
    a ``_niter_K`` suffix), else None (True, False: Kaiming or zero A)."""
    init = peft_config.get("init_lora_weights", True)
    return init.lower().split("_niter")[0] if isinstance(init, str) else None


def lora_flags(peft_config: Mapping[str, Any]) -> tuple[bool, bool, bool]:
    """(a LoRA-tuner config, ``use_dora``, ``use_rslora``) of a saved config."""
    return (
        peft_config.get("peft_type") == LORA_PEFT_TYPE,
        bool(peft_config.get("use_dora")),
        bool(peft_config.get("use_rslora")),
    )


def is_peft_init(peft_config: Mapping[str, Any], init: str) -> bool:
    """A saved plain-scaled LoRA config (no DoRA, no rsLoRA flag: those name their own methods) with peft's
    ``init`` initialisation: how a method that is one of peft's inits recognises its adapters."""
    lora, dora, rslora = lora_flags(peft_config)
    return lora and not dora and not rslora and peft_init_name(peft_config) == init


def _peft_config(config: AdapterConfig, task_type: str | None, shapes: Sequence[Shape]) -> Any:
    return peft_lora_config(config, task_type)


def _recognises(peft_config: Mapping[str, Any]) -> bool:
    # The registry asks this last: any LoRA-tuner config no other method claims is plain LoRA.
    return lora_flags(peft_config)[0]


SPEC = MethodSpec(
    "lora",
    "LoRA",
    "#1f77b4",
    "vanilla LoRA: A Kaiming-uniform, B = 0",
    rewrites_base=False,
    peft_config=_peft_config,
    recognises=_recognises,
)
