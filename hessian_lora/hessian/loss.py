"""The training and Hessian objective: causal-LM cross-entropy summed over loss tokens.

Summing per batch and dividing by the total count of loss tokens gives the global per-token mean over a list
of batches (the paper's authors weight each batch's mean loss by its share of loss tokens, which is the same).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hessian_lora.core.errors import UserError
from hessian_lora.inputs.tasks import TokenBatch

IGNORE_INDEX = -100


def loss_sum(model: nn.Module, batch: TokenBatch) -> torch.Tensor:
    """Summed next-token cross-entropy over the batch's loss tokens (labels != -100), in fp32."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = batch.labels[:, 1:]
    return F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def mean_loss(model: nn.Module, batches: list[TokenBatch]) -> float:
    """Token-weighted mean loss over batches, without gradients."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            total += float(loss_sum(model, batch))
            tokens += batch.loss_tokens
    if tokens == 0:
        raise ValueError("the batches hold no loss tokens")
    return total / tokens


# --- the chunked LM head -------------------------------------------------------------------------------------
# Config fields of heads that do more than a linear map before the softmax: the chunked head refuses them rather
# than computing another loss.
_HEAD_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class ChunkedHeadLoss:
    """``loss_sum`` with the LM head applied ``chunk_tokens`` loss tokens at a time: never every logit at once.

    Why: the plain head holds logits for every position of the batch (Qwen3's 151,936-entry vocabulary: 39 GB
    for the paper's 64 k tokens, before the double backward keeps anything), and ``loss_sum``'s graph keeps the
    softmax of each. Here the decoder's final hidden states of the *loss tokens only* (prompt and padding
    positions never reach the head) go through a custom autograd function whose forward, backward and
    double backward each loop over chunks and recompute that chunk's logits from the hidden states: what stays
    in the graph is the hidden states (tokens × hidden), not tokens × vocabulary. The sum is the same sum of the
    same per-token cross-entropies (to round-off: the summation order changes), and so are its gradient and its
    Hessian-vector products; batched second backwards (``is_grads_batched``, vmap) work through it.

    Logits are computed in the model's dtype, upcast to at least float32 (float64 models stay float64, unlike
    ``loss_sum``'s cast to float32). Needs a peft or Hugging Face causal LM whose head is a frozen
    ``nn.Linear`` (no adapter on ``lm_head``, no logit soft-capping or scaling), and a model called as a module
    (the ``double_backward`` or ``finite_difference`` backend; forward-over-reverse has no rule here).
    """

    def __init__(self, chunk_tokens: int) -> None:
        if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
            raise UserError(
                f"the LM head's chunk must be a whole number of tokens >= 1, got {chunk_tokens!r}."
            )
        self.chunk_tokens = chunk_tokens

    def __repr__(self) -> str:
        return f"ChunkedHeadLoss({self.chunk_tokens})"

    def __call__(self, model: Any, batch: TokenBatch) -> torch.Tensor:
        """Summed next-token cross-entropy over the batch's loss tokens (the number ``loss_sum`` gives)."""
        decoder, head = decoder_and_head(model)
        hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        labels = batch.labels[:, 1:]
        keep = labels != IGNORE_INDEX
        states = hidden[:, :-1][keep]
        targets = labels[keep]
        loss: torch.Tensor = _ChunkedCrossEntropy.apply(
            states,
            head.weight.detach(),
            None if head.bias is None else head.bias.detach(),
            targets,
            self.chunk_tokens,
        )
        return loss


def decoder_and_head(model: Any) -> tuple[nn.Module, nn.Linear]:
    """The decoder (returning ``last_hidden_state``) and the LM head of a peft or Hugging Face causal LM, or a
    :class:`UserError` when the chunked head cannot stand in for the model's own."""
    if not isinstance(model, nn.Module):
        raise UserError(
            "the chunked LM head runs on the model itself: use the double_backward or "
            "finite_difference backend, or leave lm_head_chunk out (the plain head)."
        )
    peft_model: Any = model  # a PeftModel hands out its Hugging Face model; nn.Module's typing says Tensor
    base: Any = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else model
    get_decoder = getattr(base, "get_decoder", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None or decoder is base or type(head) is not nn.Linear:
        raise UserError(
            f"the chunked LM head needs a causal LM with a decoder and a plain linear head, not "
            f"{type(base).__name__} (an adapter on lm_head?): leave lm_head_chunk out (the plain head)."
        )
    config = getattr(base, "config", None)
    transforms = [name for name in _HEAD_TRANSFORMS if getattr(config, name, None) not in (None, 1, 1.0)]
    if transforms:
        raise UserError(
            f"the chunked LM head computes plain logits, but the model's config sets "
            f"{', '.join(transforms)}: leave lm_head_chunk out (the plain head)."
        )
    if any(p.requires_grad for p in head.parameters()) and torch.is_grad_enabled():
        raise UserError(
            "the chunked LM head treats lm_head as frozen, but its weights require grad: use "
            "leave lm_head_chunk out (the plain head) for a block that trains the head."
        )
    return decoder, head


def _chunk_logits(states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = states @ weight.T if bias is None else torch.addmm(bias, states, weight.T)
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def _spans(count: int, chunk: int) -> range:
    return range(0, count, chunk)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Σ_n CE(states_n W^T + b, target_n), chunk by chunk; its backward is :class:`_ChunkedCrossEntropyGrad`
    (itself differentiable once more, for Hessian-vector products)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        states: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk: int,
    ) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.promote_types(states.dtype, torch.float32), device=states.device)
        for start in _spans(states.shape[0], chunk):
            logits = _chunk_logits(states[start : start + chunk], weight, bias)
            picked = logits.gather(1, targets[start : start + chunk, None])[:, 0]
            total = total + (torch.logsumexp(logits, dim=1) - picked).sum()
        return total

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        states, weight, bias, targets, chunk = inputs
        ctx.save_for_backward(states, weight, bias, targets)
        ctx.chunk = chunk

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        states, weight, bias, targets = ctx.saved_tensors
        grad_states = _ChunkedCrossEntropyGrad.apply(states, weight, bias, targets, grad_output, ctx.chunk)
        return grad_states, None, None, None, None


class _ChunkedCrossEntropyGrad(torch.autograd.Function):
    """∂/∂states of g · Σ CE: g (softmax(z_n) − e_{t_n}) W for each token n, chunk by chunk; its backward applies
    the softmax Jacobian to W u for a cotangent u, recomputing each chunk's logits (the Hessian-vector product's
    last step through the head)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        states: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        grad_output: torch.Tensor,
        chunk: int,
    ) -> torch.Tensor:
        pieces = []
        for start in _spans(states.shape[0], chunk):
            logits = _chunk_logits(states[start : start + chunk], weight, bias)
            residual = torch.softmax(logits, dim=1).scatter_add(
                1,
                targets[start : start + chunk, None],
                torch.full((logits.shape[0], 1), -1.0, dtype=logits.dtype, device=logits.device),
            )
            pieces.append((residual @ weight.to(residual.dtype)).to(states.dtype))
        if not pieces:  # a batch without loss tokens
            return torch.zeros_like(states)
        return torch.cat(pieces) * grad_output.to(states.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        states, weight, bias, targets, grad_output, chunk = inputs
        ctx.save_for_backward(states, weight, bias, targets, grad_output)
        ctx.chunk = chunk

    @staticmethod
    def backward(ctx: Any, cotangent: torch.Tensor) -> tuple[Any, ...]:
        states, weight, bias, targets, grad_output = ctx.saved_tensors
        wide = weight.to(torch.promote_types(weight.dtype, torch.float32))
        grad_states = []
        grad_scale = torch.zeros((), dtype=wide.dtype, device=states.device)
        for start in _spans(states.shape[0], ctx.chunk):
            probabilities = torch.softmax(
                _chunk_logits(states[start : start + ctx.chunk], weight, bias), dim=1
            )
            projected = cotangent[start : start + ctx.chunk].to(wide.dtype) @ wide.T  # W u for each token
            mean = (probabilities * projected).sum(dim=1, keepdim=True)
            # softmax Jacobian (diag(p) − p pᵀ) applied to W u, back through the head
            grad_states.append(((probabilities * (projected - mean)) @ wide).to(states.dtype))
            if ctx.needs_input_grad[4]:
                picked = projected.gather(1, targets[start : start + ctx.chunk, None])
                grad_scale = grad_scale + (mean - picked).sum()
        grad = (torch.cat(grad_states) if grad_states else torch.zeros_like(states)) * grad_output.to(
            states.dtype
        )
        return (
            grad,
            None,
            None,
            None,
            (grad_scale.to(grad_output.dtype) if ctx.needs_input_grad[4] else None),
            None,
        )
