"""Packed batches (hessian_lora.inputs.tasks.pack_batches) measure the same operator as the streamed ones."""

from __future__ import annotations

import types

import pytest
import torch
from tinylora import loss_for, module_block, tiny_lora, whole_block

from hessian_lora.core.errors import UserError
from hessian_lora.hessian import HessianOperator
from hessian_lora.hessian.loss import ChunkedHeadLoss
from hessian_lora.inputs.tasks import IGNORE_INDEX, TokenBatch, collate, pack_batches, packing_of

_TOKENIZER = types.SimpleNamespace(pad_token_id=258, eos_token_id=1)


def streamed_batches(examples: int = 23, batch_size: int = 5, seed: int = 0) -> list[TokenBatch]:
    """The paper's layout in small: examples of 4–20 tokens with a masked prompt, in batches of ``batch_size``
    in data order (so each batch pads to its longest row)."""
    generator = torch.Generator().manual_seed(seed)
    encoded = []
    for _ in range(examples):
        length = int(torch.randint(4, 21, (1,), generator=generator))
        prompt = int(torch.randint(1, length - 1, (1,), generator=generator))
        ids = torch.randint(0, 256, (length,), generator=generator).tolist()
        encoded.append((ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return [
        collate(_TOKENIZER, encoded[start : start + batch_size]) for start in range(0, examples, batch_size)
    ]


def test_packing_keeps_every_sequence_and_respects_the_budget() -> None:
    streamed = streamed_batches()
    packed = pack_batches(streamed, token_budget=128)
    assert len(packed) < len(streamed)
    assert all(batch.input_ids.numel() <= 128 for batch in packed)
    before, after = packing_of(streamed), packing_of(packed, 128)
    assert (after.examples, after.tokens) == (before.examples, before.tokens) == (23, before.tokens)
    assert after.padding_fraction < before.padding_fraction
    assert sum(b.loss_tokens for b in packed) == sum(b.loss_tokens for b in streamed)
    rows = sorted(
        tuple(b.input_ids[i, : int(b.attention_mask[i].sum())].tolist())
        for b in streamed
        for i in range(b.size)
    )
    assert rows == sorted(
        tuple(b.input_ids[i, : int(b.attention_mask[i].sum())].tolist())
        for b in packed
        for i in range(b.size)
    )
    assert after.to_dict()["token_budget"] == 128 and "packed within 128" in after.line()
    # a sequence longer than the budget gets a batch of its own instead of being cut
    alone = pack_batches(streamed, token_budget=3)
    assert len(alone) == 23 and all(batch.size == 1 for batch in alone)


def test_bad_packing_inputs_are_user_errors() -> None:
    streamed = streamed_batches(examples=4)
    for budget in (0, -5, 2.5, True):
        with pytest.raises(UserError, match="token budget"):
            pack_batches(streamed, token_budget=budget)  # type: ignore[arg-type]
    left = streamed[0]
    flipped = TokenBatch(left.input_ids.flip(1), left.attention_mask.flip(1), left.labels.flip(1))
    with pytest.raises(UserError, match="right-padded"):
        pack_batches([flipped], token_budget=100)


@pytest.mark.parametrize("chunked", [False, True])
def test_packed_products_equal_the_streamed_ones_in_float64(chunked: bool) -> None:
    model = tiny_lora(dtype=torch.float64)
    block = whole_block(model)
    streamed = streamed_batches()
    loss = ChunkedHeadLoss(7) if chunked else loss_for(model)
    reference = HessianOperator(model, streamed, block, loss_fn=loss_for(model), reuse=False)
    packed = HessianOperator(model, pack_batches(streamed, token_budget=80), block, loss_fn=loss, reuse=False)
    assert packed.total_tokens == reference.total_tokens and len(packed.batches) < len(reference.batches)
    directions = torch.randn(block.numel, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected, got = reference.matmat(directions), packed.matmat(directions)
    assert torch.allclose(got, expected, rtol=1e-11, atol=1e-12 * float(expected.abs().max()))
    assert abs(packed.loss() - reference.loss()) < 1e-12 * abs(reference.loss())
    assert torch.allclose(packed.gradient(), reference.gradient(), rtol=1e-11, atol=1e-14)


def test_packed_products_equal_the_streamed_ones_in_float32() -> None:
    # the production dtype and loss: equal to float32 round-off
    model = tiny_lora(dtype=torch.float32)
    block = module_block(model, "v_proj", 1)
    streamed = streamed_batches(seed=3)
    reference = HessianOperator(model, streamed, block, reuse=False)
    packed = HessianOperator(model, pack_batches(streamed, token_budget=200), block, reuse=False)
    vector = torch.randn(block.numel, generator=torch.Generator().manual_seed(2))
    expected, got = reference.matvec(vector), packed.matvec(vector)
    assert float((got - expected).abs().max()) <= 1e-5 * float(expected.abs().max())


def test_sequences_without_loss_tokens_are_left_out_and_cost_nothing() -> None:
    streamed = streamed_batches(examples=6)
    silent = streamed[0]
    labels = silent.labels.clone()
    labels[0] = IGNORE_INDEX  # a prompt cut at max_length: no response token
    packed = pack_batches([TokenBatch(silent.input_ids, silent.attention_mask, labels), *streamed[1:]], 1000)
    assert packing_of(packed).examples == 5
    # the chunked head on a batch without loss tokens: zero loss, zero gradient, zero products
    model = tiny_lora(dtype=torch.float32)
    block = module_block(model)
    empty = TokenBatch(silent.input_ids, silent.attention_mask, torch.full_like(labels, IGNORE_INDEX))
    operator = HessianOperator(model, [empty, *streamed[1:]], block, loss_fn=ChunkedHeadLoss(4), reuse=False)
    alone = HessianOperator(model, streamed[1:], block, loss_fn=ChunkedHeadLoss(4), reuse=False)
    vector = torch.ones(block.numel)
    assert torch.allclose(operator.matvec(vector), alone.matvec(vector), rtol=1e-6)
