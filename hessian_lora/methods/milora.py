"""MiLoRA (Wang et al. 2024): A, B from the bottom-r singular triplets of W (the minor components), split as
PiSSA splits the top ones; the base becomes W − s·B₀·A₀. peft has no such init: this module sets the factors on a
plain peft LoRA model (float64 SVD), and a saved peft directory of it reads as plain LoRA on its residual base.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hessian_lora.methods.lora import peft_lora_config
from hessian_lora.methods.spec import BuildContext, MethodSpec, PaperFigures, Shape

if TYPE_CHECKING:
    from hessian_lora.settings.adapter import AdapterConfig


def _peft_config(config: AdapterConfig, task_type: str | None, shapes: Sequence[Shape]) -> Any:
    return peft_lora_config(config, task_type)


def initialise(context: BuildContext) -> None:
    """A₀ = √(S/s)·V_rᵀ and B₀ = U_r·√(S/s) from the bottom r singular triplets of every adapted weight.

    Args:
        context: the peft model's layers, the adapter's rank, the progress bar.
    """
    import torch  # local: plug-ins load without torch (the registry is read by torch-free code)

    name = context.adapter_name
    with torch.no_grad():
        for _, layer in context.progress(context.layers(), "MiLoRA SVD"):
            weight = layer.get_base_layer().weight
            scaling = layer.scaling[name]
            u, s, vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
            r = context.config.rank
            root = torch.sqrt(s[-r:] / scaling)
            lora_a = root[:, None] * vh[-r:, :]
            lora_b = u[:, -r:] * root[None, :]
            layer.lora_A[name].weight.copy_(lora_a.to(weight.dtype))
            layer.lora_B[name].weight.copy_(lora_b.to(weight.dtype))


SPEC = MethodSpec(
    "milora",
    "MiLoRA",
    "#2ca02c",
    "MiLoRA: A, B from the bottom-r singular triplets of W; base <- W - s*B*A",
    rewrites_base=True,
    peft_native=False,
    peft_config=_peft_config,
    initialise=initialise,
    paper=PaperFigures(lr_factor=3.2, lambda_ratio=2.0),
)
