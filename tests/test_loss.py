from __future__ import annotations

import torch
import torch.nn.functional as F

from hessian_lora.data import IGNORE_INDEX, TokenBatch
from hessian_lora.loss import loss_sum, mean_loss


def _batch(ids: list[list[int]], prompt_lengths: list[int]) -> TokenBatch:
    input_ids = torch.tensor(ids)
    labels = input_ids.clone()
    for row, length in enumerate(prompt_lengths):
        labels[row, :length] = IGNORE_INDEX
    return TokenBatch(input_ids, torch.ones_like(input_ids), labels)


def test_loss_sum_matches_hand_computed_cross_entropy(tiny) -> None:
    model, _, _ = tiny
    batch = _batch([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]], [2, 3])
    logits = model(input_ids=batch.input_ids).logits.double()
    expected = 0.0
    for row, start in enumerate([2, 3]):
        for position in range(start, 5):
            expected -= F.log_softmax(logits[row, position - 1], dim=-1)[batch.input_ids[row, position]].item()
    assert abs(loss_sum(model, batch).item() - expected) < 1e-4 * abs(expected)
    assert batch.loss_tokens == 3 + 2


def test_mean_loss_weights_batches_by_tokens_not_by_count(tiny) -> None:
    model, _, _ = tiny
    short = _batch([[5, 6, 7, 8, 9]], [3])  # 2 loss tokens
    long = _batch([[20, 21, 22, 23, 24, 25, 26, 27]], [1])  # 7 loss tokens
    total = loss_sum(model, short).item() + loss_sum(model, long).item()
    assert abs(mean_loss(model, [short, long]) - total / 9) < 1e-6
    per_batch_mean = (loss_sum(model, short).item() / 2 + loss_sum(model, long).item() / 7) / 2
    assert abs(mean_loss(model, [short, long]) - per_batch_mean) > 1e-4
