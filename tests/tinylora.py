"""Tiny LoRA problems for the Hessian tests: a 2-layer Llama (hidden 32), peft adapters, synthetic batches.

Synthetic token batches (random ids, a masked prompt, one padded row) keep every product in milliseconds while
exercising what matters: several batches of different sizes and loss-token counts, padding, prompt masking.

A float64 model is made float64 *throughout*: HF Llama computes RMSNorm and the eager softmax in float32 even in
a float64 model, and ``loss_sum`` casts logits to float32, which limits products to ~1e-7 relative accuracy and
makes them slightly non-linear in the vector. The float64 problems therefore use SDPA attention (the operator
forces its math kernel, which keeps the input dtype), a float64 RMSNorm, and :func:`exact_loss_sum`.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from hessian_lora.hessian import DenseOperator, HessianOperator, ParameterBlock, PerModule, WholeAdapter
from hessian_lora.inputs.models import load_model
from hessian_lora.inputs.tasks import IGNORE_INDEX, TokenBatch

TINY_SPEC = "tiny-llama:hidden_size=32"


def tiny_lora(
    *,
    dtype: torch.dtype = torch.float64,
    at_init: bool = False,
    seed: int = 0,
    rank: int = 1,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    use_dora: bool = False,
    dropout: float = 0.0,
) -> PeftModel:
    """A peft LoRA model on the tiny Llama; ``at_init`` keeps B = 0, otherwise B is drawn (a generic point)."""
    exact = dtype == torch.float64
    model, _, _ = load_model(
        TINY_SPEC, device="cpu", seed=seed, attn_implementation="sdpa" if exact else "eager"
    )
    if exact:
        for module in model.modules():
            if isinstance(module, LlamaRMSNorm):
                module.forward = types.MethodType(_rms_norm_in_input_dtype, module)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        config = LoraConfig(
            r=rank, lora_alpha=2 * rank, lora_dropout=dropout, target_modules=list(targets), use_dora=use_dora
        )
        peft_model = get_peft_model(model, config)
        if not at_init:
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(param, std=0.3)
    peft_model.eval()
    return peft_model.to(dtype)


def _rms_norm_in_input_dtype(self: LlamaRMSNorm, hidden_states: torch.Tensor) -> torch.Tensor:
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def exact_loss_sum(model: object, batch: TokenBatch) -> torch.Tensor:
    """``loss_sum`` without its cast to float32 (the logits keep the model's dtype)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        batch.labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def loss_for(model: torch.nn.Module) -> object:
    """The loss to use with ``model``: exact in float64, the production ``loss_sum`` otherwise."""
    from hessian_lora.hessian.loss import loss_sum

    return exact_loss_sum if next(model.parameters()).dtype == torch.float64 else loss_sum


def synthetic_batches(
    seed: int = 0, shapes: tuple[tuple[int, int, int], ...] = ((2, 16, 6), (3, 12, 4))
) -> list[TokenBatch]:
    """Batches of (rows, length, prompt length); the first row of each batch ends in 3 padding tokens."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for rows, length, prompt in shapes:
        ids = torch.randint(0, 256, (rows, length), generator=generator)
        mask = torch.ones_like(ids)
        labels = ids.clone()
        labels[:, :prompt] = IGNORE_INDEX
        ids[0, -3:], mask[0, -3:], labels[0, -3:] = 258, 0, IGNORE_INDEX
        batches.append(TokenBatch(ids, mask, labels))
    return batches


def whole_block(model: torch.nn.Module) -> ParameterBlock:
    return WholeAdapter().blocks(model)[0]


def module_block(model: torch.nn.Module, module: str = "q_proj", layer: int = 0) -> ParameterBlock:
    return PerModule(modules=(module,), layers=(layer,)).blocks(model)[0]


def dense_hessian(model: torch.nn.Module, batches: list[TokenBatch], block: ParameterBlock) -> torch.Tensor:
    """The block's Hessian in float64, column by column from exact double-backward products, symmetrised."""
    operator = HessianOperator(
        model, batches, block, backend="double_backward", reuse=True, loss_fn=loss_for(model)
    )
    dense = operator.to_dense().double()
    return (dense + dense.T) / 2


def operator_for(
    model: torch.nn.Module, batches: list[TokenBatch], block: object, **options: object
) -> HessianOperator:
    """A HessianOperator with the loss that suits the model's dtype (:func:`loss_for`)."""
    return HessianOperator(model, batches, block, loss_fn=loss_for(model), **options)  # type: ignore[arg-type]


def spectrum_operator(eigenvalues: list[float], seed: int = 0) -> DenseOperator:
    """A float64 symmetric matrix with exactly these eigenvalues, in a random orthonormal basis."""
    values = torch.tensor(eigenvalues, dtype=torch.float64)
    q, _ = torch.linalg.qr(
        torch.randn(
            len(values), len(values), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
    )
    return DenseOperator(q @ torch.diag(values) @ q.T)
