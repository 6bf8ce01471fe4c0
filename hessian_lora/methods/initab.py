"""Init[AB] (the paper's): A and B both drawn uniform(±1/√in), from a generator seeded by the adapter's seed in
module order; the base becomes W − s·B₀·A₀. Set here on a plain peft LoRA model; a saved peft directory of it
reads as plain LoRA on its residual base.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hessian_lora.methods.lora import peft_lora_config
from hessian_lora.methods.spec import BuildContext, MethodSpec, PaperFigures, Shape

if TYPE_CHECKING:
    from hessian_lora.settings.adapter import AdapterConfig


def _peft_config(config: AdapterConfig, task_type: str | None, shapes: Sequence[Shape]) -> Any:
    return peft_lora_config(config, task_type)


def initialise(context: BuildContext) -> None:
    """A, B ~ uniform(±1/√in) for every adapted layer, drawn in float64 and rounded to the weights' dtype.

    Args:
        context: the peft model's layers and the adapter's seed.
    """
    import torch  # local: plug-ins load without torch (the registry is read by torch-free code)

    # A dedicated generator drawn in module order: the factors depend only on the seed and the model layout.
    generator = torch.Generator(device="cpu").manual_seed(context.config.seed)
    with torch.no_grad():
        for _, layer in context.layers():
            lora_a = layer.lora_A[context.adapter_name].weight
            lora_b = layer.lora_B[context.adapter_name].weight
            bound = 1.0 / math.sqrt(layer.in_features)
            for param in (lora_a, lora_b):
                draw = torch.rand(param.shape, generator=generator, dtype=torch.float64) * (2 * bound) - bound
                param.copy_(draw.to(param.dtype))


SPEC = MethodSpec(
    "initab",
    "Init[AB]",
    "#ff7f0e",
    "Init[AB]: A, B both uniform(+-1/sqrt(in)); base <- W - s*B*A",
    rewrites_base=True,
    peft_native=False,
    peft_config=_peft_config,
    initialise=initialise,
    paper=PaperFigures(lr_factor=1.8, lambda_ratio=2.0),
)
