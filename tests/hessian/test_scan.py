"""The multi-block scan: every per-module block solved side by side on one shared operator, each exactly as
its own operator would solve it."""

from __future__ import annotations

import pytest
import torch
from tinylora import operator_for, synthetic_batches, tiny_lora

from hessian_lora.core.errors import UserError
from hessian_lora.hessian import lanczos
from hessian_lora.hessian.filters import PerModule
from hessian_lora.hessian.scan import scan_blocks


@pytest.fixture(scope="module")
def four_blocks():
    model = tiny_lora(dtype=torch.float64, rank=2)
    batches = synthetic_batches()
    blocks = PerModule().blocks(model)
    union = [(n, p) for block in blocks for n, p in zip(block.names, block.parameters)]
    return model, batches, blocks, union


def _solve(index, view):
    return lanczos(view, k=1, which="both", tol=1e-6, max_iter=60, seed=3)


def test_each_block_of_a_scan_is_what_its_own_operator_gives(four_blocks) -> None:
    model, batches, blocks, union = four_blocks
    operator = operator_for(model, batches, union, backend="double_backward", reuse=True)
    finished: list[int] = []
    results = scan_blocks(operator, blocks, _solve, on_result=lambda i, r: finished.append(i))
    assert sorted(finished) == [0, 1, 2, 3]
    assert operator.calls == sum(r.hvps for r in results)
    for block, result in zip(blocks, results):
        own = operator_for(model, batches, block, backend="double_backward", reuse=True)
        alone = _solve(0, own)
        dense = torch.linalg.eigvalsh(own.to_dense())
        assert result.converged and alone.converged
        assert result.hvps == alone.hvps  # the same recurrence on the same matrix
        assert result.lambda_max == pytest.approx(alone.lambda_max, rel=1e-10)
        assert result.lambda_min == pytest.approx(alone.lambda_min, rel=1e-10)
        assert abs(result.lambda_max - float(dense[-1])) <= 1e-6 * abs(float(dense[-1]))


def test_blocks_stop_on_their_own_and_the_scan_is_deterministic(four_blocks) -> None:
    model, batches, blocks, union = four_blocks
    operator = operator_for(model, batches, union, backend="double_backward", reuse=False)
    first = scan_blocks(operator, blocks, _solve)
    second = scan_blocks(operator, blocks, _solve)
    assert [r.largest for r in first] == [r.largest for r in second]
    assert len({r.hvps for r in first}) > 1  # different blocks need different counts, each stops on its own


def test_an_error_in_one_block_stops_the_scan_and_is_raised(four_blocks) -> None:
    model, batches, blocks, union = four_blocks
    operator = operator_for(model, batches, union, backend="double_backward", reuse=False)

    def solve(index, view):
        if index == 2:
            view.matvec(torch.zeros(view.size, dtype=view.dtype))
            raise UserError("block two is broken")
        return _solve(index, view)

    with pytest.raises(UserError, match="block two"):
        scan_blocks(operator, blocks, solve)


def test_scans_refuse_overlapping_or_foreign_blocks_and_other_backends(four_blocks) -> None:
    model, batches, blocks, union = four_blocks
    partial = operator_for(model, batches, union[:2], backend="double_backward")
    with pytest.raises(UserError, match="outside the scan's operator"):
        scan_blocks(partial, blocks, _solve)
    whole = operator_for(model, batches, union, backend="double_backward")
    with pytest.raises(UserError, match="shares parameters"):
        scan_blocks(whole, [blocks[0], blocks[0]], _solve)
    forward = operator_for(model, batches, union, backend="forward_over_reverse")
    with pytest.raises(UserError, match="double_backward"):
        scan_blocks(forward, blocks, _solve)
