"""The training and Hessian objective: causal-LM cross-entropy summed over loss tokens.

Summing per batch and dividing by the total count of loss tokens gives the global per-token mean over a list
of batches (the paper's authors weight each batch's mean loss by its share of loss tokens, which is the same).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hessian_lora.data import TokenBatch

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
