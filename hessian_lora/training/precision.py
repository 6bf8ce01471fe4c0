"""The dtype of the frozen base weights during training, and the Hessian's fp32 guarantee.

The paper's authors trained with the base model in bf16 and the LoRA factors in fp32 (HF Trainer ``--bf16``,
peft's ``autocast_adapter_dtype``), and measured the Hessian with everything in fp32, because Lanczos is unstable
in low precision. This toolkit does the same, in this order:

1. the base model is loaded and the adapter built in fp32 (so A₀, B₀, the residual base of the rewriting methods
   and the Hessian at initialisation are exactly those of an fp32 run);
2. :func:`cast_base_weights` rounds the frozen base weights to bf16 in place for training; the trainable adapter
   parameters (lora_A/B, DoRA magnitudes, ...) and every buffer stay as they are, so AdamW's state is fp32 too;
3. a checkpoint records the fp32 build, so anything that measures its Hessian reloads the base in fp32 from the
   base model's own files (not an upcast of the bf16 copy), and :func:`check_hessian_precision` refuses a model
   whose weights are bf16 or fp16.

bf16 on a device that cannot do it natively is an error, not a silent fp32 fallback: the fallback would change
the memory a run needs (Llama-2-7B's base: 13.5 GB in bf16, 27 GB in fp32) and the numbers it produces, and
``base_dtype`` is a setting every run of a sweep must share.
"""

from __future__ import annotations

import torch
from torch import nn

from hessian_lora.core.errors import UserError
from hessian_lora.settings.training import BASE_DTYPES as BASE_DTYPES
from hessian_lora.settings.training import BaseDtype as BaseDtype
from hessian_lora.training import adapters
from hessian_lora.training.adapters import residual_digest

TORCH_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Where cast_base_weights leaves the fingerprint of the fp32 residual base, for save_checkpoint (a checkpoint
# reloads its base in fp32, so the fingerprint it checks is the fp32 one, not the bf16 copy's).
FP32_RESIDUAL_DIGEST_ATTRIBUTE = "hessian_lora_fp32_residual_sha256"
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 natively, as torch reports it.

    CUDA: ``torch.cuda.is_bf16_supported(including_emulation=False)`` (compute capability 8.0 and up: A100,
    A6000, H100, RTX 30xx/40xx; a V100 or T4 would only emulate it). CPU: oneDNN's bf16 support (AVX-512 BF16 /
    AMX, or AVX-512 where torch enables it). MPS: a small bf16 matmul either works or raises.
    """
    if device.type == "cuda":
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(check()) if check is not None else False
    try:
        probe = torch.ones((2, 2), dtype=torch.bfloat16, device=device)
        return bool(torch.isfinite((probe @ probe).float()).all())
    except (RuntimeError, TypeError):
        return False


def check_base_dtype(base_dtype: str, device: torch.device) -> None:
    """A :class:`UserError` when ``base_dtype`` is unknown or ``device`` cannot train in it."""
    if base_dtype not in BASE_DTYPES:
        raise UserError(f"base_dtype must be one of {', '.join(BASE_DTYPES)}, got {base_dtype!r}.")
    if base_dtype == "bf16" and not bf16_supported(device):
        raise UserError(
            f"base_dtype bf16: torch reports no native bf16 on {device} "
            f"({_device_name(device)}): set base_dtype: fp32 (the base then needs twice the memory)."
        )


def cast_base_weights(model: nn.Module, base_dtype: str) -> int:
    """Round the frozen floating-point parameters of ``model`` to ``base_dtype`` in place; the number cast.

    Only parameters with ``requires_grad=False`` change: the adapter's trainable parameters keep their dtype
    (fp32), buffers (rotary frequencies, RandLoRA's bases, ...) are left alone, and parameters shared by several
    modules (tied embeddings) are cast once and stay shared. For a method that rewrote the base, the fingerprint
    of the fp32 residual is kept first (:data:`FP32_RESIDUAL_DIGEST_ATTRIBUTE`) so its checkpoint still reloads
    in fp32 and verifies.
    """
    check_base_dtype(base_dtype, next(model.parameters()).device)
    dtype = TORCH_DTYPES[base_dtype]
    frozen = [
        p for p in model.parameters() if not p.requires_grad and p.is_floating_point() and p.dtype != dtype
    ]
    if not frozen:
        return 0
    config = getattr(model, adapters.CONFIG_ATTRIBUTE, None)
    if (
        config is not None
        and config.spec.rewrites_base
        and not hasattr(model, FP32_RESIDUAL_DIGEST_ATTRIBUTE)
    ):
        setattr(model, FP32_RESIDUAL_DIGEST_ATTRIBUTE, residual_digest(model))
    with torch.no_grad():
        for param in frozen:
            # .data swaps the storage under the same Parameter: modules and ties keep pointing at it, and the
            # fp32 copy is freed parameter by parameter (the peak stays the fp32 model's).
            param.data = param.data.to(dtype)
    return len(frozen)


def check_hessian_precision(model: nn.Module, *, what: str = "the model") -> None:
    """A :class:`UserError` when any floating-point parameter of ``model`` is bf16 or fp16.

    The Hessian is measured in fp32 (or float64): Lanczos is unstable in low precision, and a bf16 base makes
    every Hessian-vector product carry bf16 round-off.
    """
    low = sorted(
        {str(p.dtype).replace("torch.", "") for p in model.parameters() if p.dtype in _LOW_PRECISION}
    )
    if low:
        raise UserError(
            f"the Hessian is measured in fp32, but {what} holds {', '.join(low)} weights: measure a "
            "float32 model (a checkpoint reloads its base in fp32 by itself; a sweep's hessian.during "
            "needs base_dtype: fp32)."
        )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    return device.type
