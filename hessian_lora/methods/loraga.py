"""LoRA-GA (Wang et al. 2024): A, B from the SVD of the full-weight gradient estimated on a few training batches;
the base becomes W − s·B₀·A₀. peft builds it (``init_lora_weights="lora_ga"``) after :func:`estimate_gradients`
has left each target's gradient on it. Takes 2r singular vectors of the gradient (r for A, r for B).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hessian_lora.core.errors import UserError
from hessian_lora.methods.lora import is_peft_init, peft_lora_config
from hessian_lora.methods.spec import BuildContext, MethodSpec, PaperFigures, Shape

if TYPE_CHECKING:
    from hessian_lora.settings.adapter import AdapterConfig

PEFT_INIT = "lora_ga"


def _peft_config(config: AdapterConfig, task_type: str | None, shapes: Sequence[Shape]) -> Any:
    # local: plug-ins load without peft (the registry is torch-free)
    from peft.tuners.lora import LoraGAConfig

    return peft_lora_config(config, task_type, init=PEFT_INIT, lora_ga_config=LoraGAConfig())


def _recognises(peft_config: Mapping[str, Any]) -> bool:
    return is_peft_init(peft_config, PEFT_INIT)


def estimate_gradients(
    model: Any, lora_config: Any, batches: Sequence[Any], loss_sum: Callable[[Any, Any], Any]
) -> None:
    """Leave on every target module the gradient of the global per-token mean loss over ``batches``, as peft's
    LoRA-GA init reads it.

    Args:
        model: the base model (before peft wraps it).
        lora_config: the LoRA-GA config (its targets).
        batches: training batches (``TokenBatch``).
        loss_sum: the summed token loss of ``model`` on one batch (the factory's ``hessian.loss.loss_sum``).

    Raises:
        UserError: the batches hold no loss tokens.
    """
    from peft.tuners.lora.loraga import preprocess_loraga  # local: plug-ins load without peft

    device = next(model.parameters()).device
    total_tokens = sum(batch.loss_tokens for batch in batches)
    if total_tokens == 0:
        raise UserError("LoRA-GA batches hold no loss tokens: give examples with responses.")

    def train_step() -> None:
        # peft divides the accumulated gradient by the number of backward passes, so each batch's summed loss
        # is weighted by n_batches/total_tokens: the result is the gradient of the global per-token mean loss.
        for batch in batches:
            (loss_sum(model, batch.to(device)) * (len(batches) / total_tokens)).backward()

    with warnings.catch_warnings():
        # The first adapted layer's input (frozen embeddings) needs no gradient; peft's counting hook still fires.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        preprocess_loraga(model, lora_config, train_step)


def _prepare(context: BuildContext) -> None:
    estimate_gradients(context.model, context.peft_config, list(context.batches or []), context.loss)


SPEC = MethodSpec(
    "loraga",
    "LoRA-GA",
    "#e377c2",
    "LoRA-GA: A, B from the SVD of the full-weight gradient on a few batches",
    rewrites_base=True,
    needs_data=True,
    peft_config=_peft_config,
    recognises=_recognises,
    peft_init=PEFT_INIT,
    peft_init_config="lora_ga_config",
    components_per_rank=2,
    prepare=_prepare,
    paper=PaperFigures(lr_factor=18.2, lambda_ratio=100.0, up_to=True),
)
