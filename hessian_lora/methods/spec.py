"""What a method plug-in declares: :class:`MethodSpec` (its facts and its hooks) and :class:`BuildContext` (what
the adapter factory hands its initialisation hooks).

Torch-free at load time, like every module of this package: the registry loads all plug-ins whenever anyone asks
for a method's label, and analysis, tables, plots and the CLI's listings must not pay for torch or peft. So a
spec's facts are plain values, and its hooks are plain functions that import torch and peft inside themselves
(each such import says ``# local: <reason>``); they run only where a model is being built, trained or read.

The hooks receive what the toolkit owns (the adapted layers, the progress bar, the training batches) through
their arguments, never by importing the adapter factory: a plug-in sits below ``hessian_lora.training.adapters`` in the
chain, and the ``methods`` import contract (setup.cfg) keeps it there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hessian_lora.settings.adapter import AdapterConfig

Shape = tuple[int, int]


@dataclass(frozen=True)
class PaperFigures:
    """A method's figures in the paper (arXiv 2602.04998, Qwen3-0.6B, r = 128), against LoRA.

    ``lr_factor``: η*_LoRA / η*_method; ``lambda_ratio``: λ_max(method) / λ_max(LoRA) per q_proj module;
    ``up_to``: the paper gives both as "up to" (an upper figure, not each method's own).
    """

    lr_factor: float
    lambda_ratio: float
    up_to: bool = False


@dataclass
class BuildContext:
    """What :func:`hessian_lora.training.adapters.build_adapter` hands a method's ``prepare`` and ``initialise`` hooks.

    torch and peft objects are typed ``Any``: this module loads without them.

    Attributes:
        config: the adapter being built.
        model: the base model (``prepare``, before peft wraps it) or the ``PeftModel`` (``initialise``).
        peft_config: the peft config the method's ``peft_config`` hook made.
        batches: training batches (methods that need data), else None.
        layers: a function giving the adapted peft LoRA layers as (module name, layer), in model order.
        adapter_name: the peft adapter's name (its key in each layer's ``lora_A``/``lora_B``).
        progress: wraps a list in a progress bar with a description (a terminal shows it; else a no-op).
        loss: the summed token loss of a model on one batch (``hessian.loss.loss_sum``), for methods that take a
            gradient at initialisation: handed in by the factory, so that no plug-in imports a layer above it.
    """

    config: AdapterConfig
    model: Any
    peft_config: Any
    batches: Sequence[Any] | None
    layers: Callable[[], list[tuple[str, Any]]]
    adapter_name: str
    progress: Callable[[list[Any], str], Iterable[Any]]
    loss: Callable[[Any, Any], Any]


def lora_scaling(alpha: float, rank: int) -> float:
    """LoRA's scale s = alpha / r."""
    return alpha / rank


def saved_lora_scaling(peft_config: Mapping[str, Any], rank: int, alpha: float) -> float:
    """The scale a saved peft LoRA config says: alpha / r, or alpha / √r with ``use_rslora`` (peft's own rule, so a
    plain peft DoRA with ``use_rslora`` reads right too)."""
    return alpha / (math.sqrt(rank) if peft_config.get("use_rslora") else rank)


def lora_parameter_count(rank: int, shapes: Sequence[Shape]) -> int:
    """r·(out + in) per target matrix: A r×in plus B out×r."""
    return sum(rank * (out + inp) for out, inp in shapes)


def no_rank_rule(rank: int) -> None:
    """Every positive rank can be built (the default ``check_rank``)."""


def no_shape_rule(rank: int, shapes: Mapping[str, Shape]) -> None:
    """Every target shape can be built (the default ``check_shapes``)."""


def never(peft_config: Mapping[str, Any]) -> bool:
    """A method a saved peft config cannot name (its adapter is saved as plain LoRA): the default ``recognises``."""
    return False


@dataclass(frozen=True)
class MethodSpec:
    """One adapter method: what it is and promises (torch-free facts) and how it is built (hooks).

    Facts:
        name: the registry key, the method's module name (``hessian_lora/methods/<name>.py``) and what run
            directories, checkpoints and reports record; never renamed (old runs load by it).
        label, color, summary: display name, colour in every figure (tab10, colour-blind aware), one-line summary.
        rewrites_base: W ← W − s·B₀·A₀ at initialisation (build each run from a fresh base; checkpoints store A₀, B₀).
        preserves_function: the initial adapted model computes the base model's function.
        needs_data: initialisation reads training batches (``BuildContext.batches``).
        peft_native: peft builds it; otherwise its ``initialise`` hook sets the factors on a peft LoRA model.
        peft_type: peft's ``PeftType`` of the tuner that holds it (``adapter_config.json``'s ``peft_type``).
        peft_alpha_key, peft_dropout_key: where that tuner's saved config keeps alpha and dropout.
        peft_init: the ``init_lora_weights`` value (a prefix: ``pissa`` covers ``pissa_niter_4``) peft writes for
            it, when the method is one of peft's own initialisations.
        peft_init_config: the LoraConfig field holding that initialisation's own settings (``lora_ga_config``),
            cleared with the recipe where the factors are final (a checkpoint, a residual base given).
        components_per_rank: the method takes this many·r components (singular triplets, QR columns) of each
            target matrix, so it needs that many·r <= min(out, in) (LoRA-GA: 2).
        float64: peft can initialise it on a float64 model (PiSSA's SVD and OLoRA's QR cannot).
        rebuildable: peft's init re-run on the original base gives back the residual base a saved, unconverted
            adapter was trained on (a deterministic function of the base weights).
        paper: its figures in the paper (:class:`PaperFigures`), checked by ``analysis/claims.py``.
        preconditioner_note: why Adam-preconditioned sharpness does not apply to its runs, when it does not.

    Hooks (plain functions; those needing torch import it themselves):
        peft_config: ``(config, task_type, shapes) -> PeftConfig`` for ``get_peft_model`` (shapes: the target
            matrices' (out, in), for a rank rule that depends on them).
        recognises: whether a saved ``adapter_config.json`` (a dict) is this method's (the inverse of
            ``peft_config``); the registry asks every method and refuses a tie.
        scaling: ``(alpha, rank) -> s`` in ΔW = s·B·A, as peft computes it for this toolkit's configs.
        saved_scaling: ``(adapter_config, rank, alpha) -> s`` as peft computes it for a saved config.
        check_rank: refuse a rank before any model loads (a :class:`~hessian_lora.core.errors.UserError`).
        check_shapes: refuse target shapes the method cannot split, once the model is loaded.
        parameter_count: ``(rank, shapes) -> int`` trainable parameters over target matrices of these shapes.
        prepare: runs on the base model before peft wraps it (LoRA-GA's gradient estimate).
        initialise: runs on the peft model after it is built (factors set here, data-driven inits).
        make_optimizer: ``(peft_model, config, lr, betas, eps, weight_decay, max_grad_norm) -> Optimizer`` when
            the method is (partly) its optimizer; None: AdamW over the trainable parameters.
        group_lr_ratios: ``config -> ratios`` of its optimizer's parameter groups' learning rates to the first
            group's, when it has several (what a checkpoint's decayed schedule can no longer tell).
        describe_peft: ``peft_config -> text`` naming the tuner's own settings in ``init``'s summary line.
        converted_half: ``(A₀, B₀, tol) -> bool``: whether the initial half of an adapter saved with peft's
            conversion (``[B, −B₀]·[A; A₀]`` at rank 2r) is this method's, so it is measured as the method's own
            rank-r factors on the residual (PiSSA, OLoRA); None: such conversions cannot be told apart.
    """

    name: str
    label: str
    color: str
    summary: str
    rewrites_base: bool
    peft_config: Callable[[AdapterConfig, str | None, Sequence[Shape]], Any]
    preserves_function: bool = True
    needs_data: bool = False
    peft_native: bool = True
    peft_type: str = "LORA"
    peft_alpha_key: str = "lora_alpha"
    peft_dropout_key: str = "lora_dropout"
    peft_init: str | None = None
    peft_init_config: str | None = None
    components_per_rank: int = 1
    float64: bool = True
    rebuildable: bool = False
    paper: PaperFigures | None = None
    preconditioner_note: str | None = None
    recognises: Callable[[Mapping[str, Any]], bool] = never
    scaling: Callable[[float, int], float] = lora_scaling
    saved_scaling: Callable[[Mapping[str, Any], int, float], float] = saved_lora_scaling
    check_rank: Callable[[int], None] = no_rank_rule
    check_shapes: Callable[[int, Mapping[str, Shape]], None] = no_shape_rule
    parameter_count: Callable[[int, Sequence[Shape]], int] = lora_parameter_count
    prepare: Callable[[BuildContext], None] | None = None
    initialise: Callable[[BuildContext], None] | None = None
    make_optimizer: Callable[..., Any] | None = None
    group_lr_ratios: Callable[[AdapterConfig], tuple[float, ...]] | None = None
    describe_peft: Callable[[Any], str] | None = None
    converted_half: Callable[[Any, Any, float], bool] | None = None
