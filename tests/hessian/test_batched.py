"""Many directions per pass: HessianOperator.matmat and block_products against single products and the dense
float64 Hessian, and the solvers that now take their products in blocks."""

from __future__ import annotations

import pytest
import torch
from tinylora import operator_for, synthetic_batches, tiny_lora

from hessian_lora.core.errors import UserError
from hessian_lora.hessian import DenseOperator, ScaledOperator, hutchinson, hutchplusplus, lanczos
from hessian_lora.hessian.filters import PerModule


def _matrix(size: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(size, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("batching", ["loop", "vmap"])
@pytest.mark.parametrize("reuse", [False, True])
def test_matmat_is_the_dense_hessian_times_the_matrix(generic_problem, batching: str, reuse: bool) -> None:
    problem = generic_problem
    operator = operator_for(
        problem.model,
        problem.batches,
        problem.block,
        backend="double_backward",
        reuse=reuse,
        batching=batching,
        directions_per_pass=3,
    )
    matrix = _matrix(operator.size, 7)
    product = operator.matmat(matrix)
    expected = problem.dense @ matrix
    assert product.shape == (operator.size, 7)
    assert float((product - expected).norm() / expected.norm()) < 1e-12
    assert operator.calls == 7
    # A second call (kept graphs under reuse) gives the same products, and matches k single products.
    singles = torch.stack([operator.matvec(column) for column in matrix.T], dim=1)
    assert float((singles - product).norm() / product.norm()) < 1e-12
    assert operator.cached_batches == (len(problem.batches) if reuse else 0)


def test_matmat_of_other_backends_and_operators_is_one_product_per_column(generic_problem) -> None:
    problem = generic_problem
    operator = operator_for(problem.model, problem.batches, problem.block, backend="forward_over_reverse")
    matrix = _matrix(operator.size, 3, seed=1)
    assert (
        float((operator.matmat(matrix) - problem.dense @ matrix).norm() / (problem.dense @ matrix).norm())
        < 1e-12
    )
    assert operator.calls == 3
    dense = DenseOperator(problem.dense)
    diagonal = torch.linspace(0.5, 2.0, dense.size, dtype=torch.float64)
    scaled = ScaledOperator(dense, diagonal)
    expected = diagonal[:, None] * (problem.dense @ (diagonal[:, None] * matrix))
    assert float((scaled.matmat(matrix) - expected).norm() / expected.norm()) < 1e-13
    with pytest.raises(ValueError, match="expected"):
        dense.matmat(torch.zeros(dense.size + 1, 2, dtype=torch.float64))
    assert dense.matmat(torch.zeros(dense.size, 0, dtype=torch.float64)).shape == (dense.size, 0)


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_block_products_are_each_blocks_own_hessian(batching: str) -> None:
    """On the whole adapter's operator, block b's answer is H_bb V_b: the block's own dense Hessian (vmap: the
    tangents of all blocks batched, each supported on its own block)."""
    model = tiny_lora(dtype=torch.float64, rank=2)
    batches = synthetic_batches()
    blocks = PerModule().blocks(model)
    assert len(blocks) == 4  # q_proj and v_proj of two layers
    union = operator_for(
        model,
        batches,
        [(n, p) for b in blocks for n, p in zip(b.names, b.parameters)],
        backend="double_backward",
        reuse=False,
        batching=batching,
        directions_per_pass=3,
    )
    where = {id(p): i for i, p in enumerate(union.params)}
    requests = []
    for index, block in enumerate(blocks):
        requests.append(
            ([where[id(p)] for p in block.parameters], _matrix(block.numel, index + 1, seed=index))
        )
    answers = union.block_products(requests)
    assert union.calls == sum(range(1, 5))
    for block, (_, matrix), answer in zip(blocks, requests, answers):
        own = operator_for(model, batches, block, backend="double_backward", reuse=False).to_dense()
        expected = own @ matrix
        assert answer.shape == matrix.shape
        assert float((answer - expected).norm() / expected.norm()) < 1e-12


def test_block_products_need_double_backward(generic_problem) -> None:
    problem = generic_problem
    operator = operator_for(problem.model, problem.batches, problem.block, backend="forward_over_reverse")
    with pytest.raises(UserError, match="double_backward"):
        operator.block_products(
            [([0], torch.zeros(problem.block.parameters[0].numel(), 1, dtype=torch.float64))]
        )


def test_bad_batching_settings_are_user_errors(generic_problem) -> None:
    problem = generic_problem
    with pytest.raises(UserError, match="batching"):
        operator_for(problem.model, problem.batches, problem.block, batching="threads")
    with pytest.raises(UserError, match="directions_per_pass"):
        operator_for(problem.model, problem.batches, problem.block, directions_per_pass=0)


def test_block_lanczos_takes_a_whole_block_per_call(init_rank4_problem) -> None:
    """Block Lanczos at width r makes its r products in one call; the result is the exact λ_max."""
    problem = init_rank4_problem
    operator = operator_for(
        problem.model, problem.batches, problem.block, backend="double_backward", reuse=True
    )
    widths: list[int] = []
    original = operator.matmat

    def counting(matrix: torch.Tensor) -> torch.Tensor:
        widths.append(int(matrix.shape[1]))
        return original(matrix)

    operator.matmat = counting  # type: ignore[method-assign]
    result = lanczos(operator, k=1, block_size=4, tol=1e-5, max_iter=120, which="largest")
    assert result.converged
    assert abs(result.lambda_max - float(problem.eigenvalues[-1])) <= 1e-5 * abs(
        float(problem.eigenvalues[-1])
    )
    assert widths and set(widths[:-1]) <= {4} and sum(widths) == result.hvps


def test_hutchplusplus_and_hutchinson_in_blocks_keep_their_values(generic_problem) -> None:
    problem = generic_problem
    exact = float(torch.trace(problem.dense))
    dense = DenseOperator(problem.dense)
    # Hutch++ with a sketch as large as the space is exact; its products now come in three calls.
    operator = operator_for(
        problem.model, problem.batches, problem.block, backend="double_backward", reuse=True
    )
    calls: list[int] = []
    original = operator.matmat
    operator.matmat = lambda m: (calls.append(int(m.shape[1])), original(m))[1]  # type: ignore[method-assign]
    result = hutchplusplus(operator, hvps=3 * operator.size, seed=0)
    assert abs(result.trace - exact) <= 1e-9 * abs(exact)
    assert len(calls) == 2 and result.hvps == sum(calls)  # sketch + projection (no remainder left)
    # Hutchinson without tol in chunks gives the same estimate as one probe at a time (with tol).
    chunked = hutchinson(dense, samples=20, seed=3)
    single = hutchinson(dense, samples=20, seed=3, tol=1e-30)
    assert chunked.hvps == single.hvps == 20
    assert chunked.trace == pytest.approx(single.trace, rel=1e-14)
