from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hessian_lora.core.errors import UserError
from hessian_lora.hessian.loss import ChunkedHeadLoss, loss_sum, mean_loss
from hessian_lora.inputs.tasks import IGNORE_INDEX, TokenBatch


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
            expected -= F.log_softmax(logits[row, position - 1], dim=-1)[
                batch.input_ids[row, position]
            ].item()
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


def _problem(dtype: torch.dtype) -> tuple[torch.nn.Module, list[TokenBatch], object, object]:
    from tinylora import exact_loss_sum, synthetic_batches, tiny_lora, whole_block

    model = tiny_lora(dtype=dtype)
    return (
        model,
        synthetic_batches(),
        whole_block(model),
        exact_loss_sum if dtype == torch.float64 else loss_sum,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk", [1, 5, 10_000])
def test_chunked_head_gives_the_plain_heads_loss_gradient_and_products(
    dtype: torch.dtype, chunk: int
) -> None:
    from hessian_lora.hessian import HessianOperator

    model, batches, block, plain = _problem(dtype)
    chunked = ChunkedHeadLoss(chunk)
    # float64: round-off of float64 (the plain reference keeps the dtype); float32: of float32
    rtol = 1e-12 if dtype == torch.float64 else 2e-6
    for batch in batches:
        expected = float(plain(model, batch).detach())
        assert abs(float(chunked(model, batch)) - expected) <= rtol * abs(expected)
    reference = HessianOperator(model, batches, block, loss_fn=plain, reuse=False)
    operator = HessianOperator(model, batches, block, loss_fn=chunked, reuse=False)
    gradient = reference.gradient()
    assert float((operator.gradient() - gradient).abs().max()) <= 10 * rtol * float(gradient.abs().max())
    directions = torch.randn(block.numel, 3, dtype=dtype, generator=torch.Generator().manual_seed(0))
    expected = reference.matmat(directions)
    for batching in ("loop", "vmap"):  # the batched second backward runs through the custom function too
        operator.batching = batching
        got = operator.matmat(directions)
        assert float((got - expected).abs().max()) <= 10 * rtol * float(expected.abs().max()), batching


def test_chunked_head_refuses_what_it_cannot_stand_in_for() -> None:
    from hessian_lora.hessian import HessianOperator

    model, batches, block, _ = _problem(torch.float32)
    for chunk in (0, -1, 2.5, True):
        with pytest.raises(UserError, match="chunk"):
            ChunkedHeadLoss(chunk)  # type: ignore[arg-type]
    operator = HessianOperator(
        model, batches, block, loss_fn=ChunkedHeadLoss(4), backend="forward_over_reverse"
    )
    with pytest.raises(UserError, match="double_backward"):
        operator.matvec(torch.ones(block.numel))
    model.config.final_logit_softcapping = 30.0
    try:
        with pytest.raises(UserError, match="final_logit_softcapping"):
            ChunkedHeadLoss(4)(model, batches[0])
    finally:
        model.config.final_logit_softcapping = None
