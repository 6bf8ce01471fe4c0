"""EVA, Explained Variance Adaptation (Paischer et al. 2024, arXiv 2410.07170): A₀ = the top-r right singular
vectors of each target layer's input activations on a few training batches (peft's ``init_lora_weights="eva"``,
``initialize_lora_eva_weights``), B₀ = 0, so the base function is kept and the base weights are not touched.

Not a method of the paper; it is here as a data-driven initialisation peft ships. Two choices differ from peft's
defaults, both so that EVA compares with the other methods at the same rank:

- ``rho = 1``: every layer keeps rank r (peft's default 2 redistributes ranks between layers by explained variance,
  which changes the parameter count per layer and makes "rank r" mean something else than for the other methods);
- ``use_label_mask = False``: the activations of every real token (prompt and response) enter the SVD, not only the
  response's (a short answer gives too few rows for r components; the prompt's activations are what the layer sees).

The batches are the ones LoRA-GA would take (the first global training batch, or ``eigen``/``init``'s ``--task``);
each must hold at least r real tokens, since peft skips a smaller one and, given nothing else, would cycle forever.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hessian_lora.core.errors import UserError
from hessian_lora.methods.lora import is_peft_init, peft_lora_config
from hessian_lora.methods.spec import BuildContext, MethodSpec, Shape

if TYPE_CHECKING:
    from hessian_lora.settings.adapter import AdapterConfig

PEFT_INIT = "eva"


def _peft_config(config: AdapterConfig, task_type: str | None, shapes: Sequence[Shape]) -> Any:
    from peft import EvaConfig  # local: plug-ins load without peft (the registry is read by torch-free code)

    return peft_lora_config(
        config, task_type, init=PEFT_INIT, eva_config=EvaConfig(rho=1.0, use_label_mask=False)
    )


def _recognises(peft_config: Mapping[str, Any]) -> bool:
    return is_peft_init(peft_config, PEFT_INIT)


def initialise(context: BuildContext) -> None:
    """A₀ from the SVD of every target layer's inputs over ``context.batches`` (peft's incremental SVD, repeated
    over the batches until the top r components settle); B₀ stays zero.

    Args:
        context: the peft model, the adapter (its rank) and the training batches.

    Raises:
        UserError: no batches, or a batch with fewer real tokens than the rank.
    """
    from peft.tuners.lora.eva import initialize_lora_eva_weights  # local: plug-ins load without peft

    batches = list(context.batches or [])
    rank = context.config.rank
    tokens = [int(batch.attention_mask.sum()) for batch in batches]
    if not batches or min(tokens) < rank:
        raise UserError(
            f"eva takes the top {rank} components of each layer's inputs, so every batch needs at least "
            f"{rank} tokens (got {min(tokens, default=0)}): use a larger --batch-size, longer examples "
            "or a lower --rank."
        )
    device = next(context.model.parameters()).device
    inputs = [
        {"input_ids": batch.input_ids.to(device), "attention_mask": batch.attention_mask.to(device)}
        for batch in batches
    ]
    initialize_lora_eva_weights(
        context.model, dataloader=inputs, adapter_name=context.adapter_name, show_progress_bar=False
    )


SPEC = MethodSpec(
    "eva",
    "EVA",
    "#c49c94",
    "EVA: A from the top-r right singular vectors of each layer's input activations on a few batches, B = 0",
    rewrites_base=False,
    needs_data=True,
    peft_config=_peft_config,
    recognises=_recognises,
    peft_init=PEFT_INIT,
    peft_init_config="eva_config",
    initialise=initialise,
)
