from __future__ import annotations

import pytest
import torch
from tinylora import exact_loss_sum, module_block, operator_for, synthetic_batches, tiny_lora, whole_block
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from hessian_lora.core.errors import UserError
from hessian_lora.hessian import DenseOperator, HessianOperator, ScaledOperator
from hessian_lora.hessian.operator import FD_EPSILON, resolve_backend
from hessian_lora.inputs.tasks import TokenBatch


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def _random(size: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_double_backward_matches_torch_autograd_functional_vhp(generic_problem) -> None:
    """An independent path: autograd.functional.vhp of the token-weighted mean loss of a flat parameter vector."""
    model, batches, block = generic_problem.model, generic_problem.batches, generic_problem.block
    operator = operator_for(model, batches, block, backend="double_backward", reuse=False)
    names, shapes = block.names, [p.shape for p in block.parameters]
    numels = [p.numel() for p in block.parameters]
    tokens = sum(b.loss_tokens for b in batches)

    def mean_loss(flat: torch.Tensor) -> torch.Tensor:
        values = {n: piece.view(s) for n, piece, s in zip(names, flat.split(numels), shapes)}
        return (
            sum(exact_loss_sum(lambda **kw: functional_call(model, values, (), kw), b) for b in batches)
            / tokens
        )

    for seed in (1, 2):
        vector = _random(operator.size, seed)
        with sdpa_kernel([SDPBackend.MATH]):
            _, expected = torch.autograd.functional.vhp(mean_loss, operator.parameter_vector(), vector)
        assert float((operator @ vector - expected).norm() / expected.norm()) < 1e-12


def test_every_backend_matches_double_backward_in_float32() -> None:
    """The production setting: float32, HF's own attention and norms, the real ``loss_sum``."""
    model = tiny_lora(dtype=torch.float32, seed=3)
    batches = synthetic_batches(seed=3)
    reference = operator_for(model, batches, whole_block(model), backend="double_backward", reuse=False)
    for seed in (4, 5):
        vector = _random(reference.size, seed, torch.float32)
        expected = reference @ vector
        for backend in ("forward_over_reverse", "finite_difference"):
            product = operator_for(model, batches, whole_block(model), backend=backend) @ vector
            assert _cosine(product, expected) >= 0.99999, backend
            relative = float((product - expected).norm() / expected.norm())
            assert relative < (1e-5 if backend == "forward_over_reverse" else 1e-3), (backend, relative)
        reused = operator_for(model, batches, whole_block(model), backend="double_backward", reuse=True)
        assert torch.equal(reused @ vector, reused @ vector)
        assert _cosine(reused @ vector, expected) >= 0.99999


def test_finite_difference_epsilon_is_documented_per_dtype() -> None:
    assert FD_EPSILON[torch.float32] == 0.1 and FD_EPSILON[torch.float64] == 1e-3
    assert resolve_backend("auto", torch.device("cpu")) == "double_backward"
    with pytest.raises(UserError, match="unknown HVP backend"):
        resolve_backend("magic", torch.device("cpu"))


class _Quadratic(nn.Module):
    """θ ∈ R³ with a frozen extra parameter; the loss reads θ through forward() so functional calls see it too."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64))
        self.frozen = nn.Parameter(torch.tensor(5.0, dtype=torch.float64), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.theta


_MATRICES = {
    0: torch.tensor([[2.0, 1.0, 0.0], [1.0, 3.0, -1.0], [0.0, -1.0, 1.0]], dtype=torch.float64),
    1: torch.tensor([[-1.0, 0.0, 0.5], [0.0, 4.0, 0.0], [0.5, 0.0, 2.0]], dtype=torch.float64),
}


def _quadratic_batch(tokens: int, marker: int) -> TokenBatch:
    labels = torch.full((1, tokens + 1), -100)
    labels[0, 1:] = 1
    return TokenBatch(
        torch.full((1, tokens + 1), marker), torch.ones(1, tokens + 1, dtype=torch.long), labels
    )


def _quadratic_loss(model: object, batch: TokenBatch) -> torch.Tensor:
    """Per batch, loss_sum = T_b · (½ θᵀ A_b θ + 1ᵀθ): the mean's Hessian is Σ_b T_b A_b / Σ_b T_b."""
    theta = model(batch.input_ids)
    matrix = _MATRICES[int(batch.input_ids[0, 0])]
    return batch.loss_tokens * (0.5 * theta @ matrix @ theta + theta.sum())


@pytest.mark.parametrize("backend", ["double_backward", "forward_over_reverse", "finite_difference"])
def test_closed_form_quadratic_with_token_weighting(backend: str) -> None:
    model = _Quadratic()
    batches = [_quadratic_batch(3, 0), _quadratic_batch(7, 1)]
    operator = HessianOperator(model, batches, [model.theta], backend=backend, loss_fn=_quadratic_loss)
    expected = (3 * _MATRICES[0] + 7 * _MATRICES[1]) / 10
    assert torch.allclose(operator.to_dense(), expected, atol=1e-9)
    sample_weighted = (_MATRICES[0] + _MATRICES[1]) / 2
    assert not torch.allclose(operator.to_dense(), sample_weighted, atol=1e-2)
    assert operator.total_tokens == 10 and operator.total_batches == 2


def test_mean_over_batches_is_token_weighted(generic_problem) -> None:
    model, batches, block = generic_problem.model, generic_problem.batches, generic_problem.block
    vector = _random(block.numel, 7)
    together = operator_for(model, batches, block) @ vector
    parts = [operator_for(model, [b], block) @ vector for b in batches]
    tokens = [b.loss_tokens for b in batches]
    assert tokens[0] != tokens[1]
    weighted = sum(t * p for t, p in zip(tokens, parts)) / sum(tokens)
    assert torch.allclose(together, weighted, atol=1e-13)


def test_reuse_keeps_graphs_and_drops_them_when_parameters_change() -> None:
    model = tiny_lora(dtype=torch.float64, seed=1)
    batches = synthetic_batches(seed=1)
    block = whole_block(model)
    vector = _random(block.numel, 3)
    reused = operator_for(model, batches, block, reuse=True)
    first = reused @ vector
    assert reused.cached_batches == len(batches)
    with torch.no_grad():
        block.parameters[1].mul_(1.5)  # a lora_B: the Hessian changes
    after = reused @ vector
    fresh = operator_for(model, batches, block, reuse=False) @ vector
    assert not torch.allclose(first, after)
    assert torch.allclose(after, fresh, atol=1e-13)
    assert operator_for(model, batches, block, reuse=False).cached_batches == 0


def test_reuse_auto_charges_each_kept_graph_by_what_it_saves_whatever_the_heap(monkeypatch) -> None:
    """The auto budget is charged with the saved tensors' bytes (a census), not the resident set's growth: on a
    warm heap the process can grow by nothing while a graph is kept (the replication's DoRA probe overran its
    budget that way and was OOM-killed). A budget of 1.5 graphs keeps exactly one, every time."""
    import hessian_lora.hessian.operator as operator_module

    model = tiny_lora(dtype=torch.float32, seed=1)
    batches = synthetic_batches(seed=1)
    block = whole_block(model)
    vector = _random(block.numel, 3, torch.float32)
    counted: list[int] = []

    class Recording(operator_module._GraphCensus):
        def bytes(self, gradients):  # type: ignore[no-untyped-def]
            counted.append(super().bytes(gradients))
            return counted[-1]

    monkeypatch.setattr(operator_module, "_GraphCensus", Recording)
    for _ in range(3):  # the heap warms up between operators: the count must not change
        operator_for(model, batches, block, reuse="auto") @ vector
    first, second = counted[:2]
    assert counted == [first, second] * 3
    assert first > sum(
        p.numel() * 4 for p in block.parameters
    )  # at least the gradients, with the activations
    budget = first + 0.5 * second  # room for the first graph, not for the second
    monkeypatch.setattr(
        operator_module, "free_memory", lambda device: int(budget / operator_module.REUSE_MEMORY_FRACTION)
    )
    for _ in range(3):
        auto = operator_for(model, batches, block, reuse="auto")
        auto @ vector
        assert auto.cached_batches == 1
    limited = operator_for(model, batches, block, reuse="auto")
    limited.limit_reuse(budget)  # a memory plan's share, whatever the free memory says
    monkeypatch.setattr(operator_module, "free_memory", lambda device: 10**15)
    limited @ vector
    assert limited.cached_batches == 1
    limited.clear_cache()  # the dropped graph's bytes come back to the budget
    limited @ vector
    assert limited.cached_batches == 1


def test_products_run_in_eval_mode_on_the_block_only_and_restore_the_model() -> None:
    model = tiny_lora(dtype=torch.float64, seed=2, dropout=0.5)
    batches = synthetic_batches(seed=2)
    block = module_block(model, "v_proj", 1)
    model.train()
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    operator = operator_for(model, batches, block)
    vector = _random(block.numel, 1)
    first, second = operator @ vector, operator @ vector
    assert torch.equal(first, second)  # dropout off: deterministic
    assert model.training and all(m.training for m in model.modules())
    assert flags == {name: p.requires_grad for name, p in model.named_parameters()}
    model.eval()
    assert torch.allclose(operator_for(model, batches, block, reuse=False) @ vector, first, atol=1e-14)


def test_dora_magnitude_is_in_the_block_and_the_exact_backends_agree() -> None:
    model = tiny_lora(dtype=torch.float64, seed=4, use_dora=True, targets=("q_proj",))
    batches = synthetic_batches(seed=4)
    block = module_block(model, "q_proj", 0)
    assert any("lora_magnitude_vector" in name for name in block.names)
    vector = _random(block.numel, 2)
    expected = operator_for(model, batches, block, backend="double_backward") @ vector
    magnitude = slice(block.numel - 32, block.numel)  # the magnitude (32 outputs) comes last
    assert float(expected[magnitude].abs().max()) > 0
    forward = operator_for(model, batches, block, backend="forward_over_reverse") @ vector
    assert float((forward - expected).norm() / expected.norm()) < 1e-12
    # peft detaches DoRA's column norm: finite differences would measure another matrix, so they are refused.
    with pytest.raises(UserError, match="DoRA"):
        operator_for(model, batches, block, backend="finite_difference")
    dense = operator_for(model, batches, block).to_dense()
    assert torch.allclose(dense, dense.T, atol=1e-12)  # the surrogate's Hessian is symmetric


def test_gradient_and_loss_are_the_token_weighted_mean(generic_problem) -> None:
    model, batches, block = generic_problem.model, generic_problem.batches, generic_problem.block
    operator = operator_for(model, batches, block)
    tokens = sum(b.loss_tokens for b in batches)
    with sdpa_kernel([SDPBackend.MATH]):
        loss = sum(exact_loss_sum(model, b) for b in batches) / tokens
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(block.parameters))])
    assert torch.allclose(operator.gradient(), expected, atol=1e-14)
    assert operator.loss() == pytest.approx(loss.item(), rel=1e-12)


def test_bad_inputs_are_user_errors() -> None:
    model = tiny_lora(dtype=torch.bfloat16)
    with pytest.raises(UserError, match="float32"):
        HessianOperator(model, synthetic_batches(), whole_block(model))
    model = tiny_lora(dtype=torch.float32)
    with pytest.raises(UserError, match="no batches"):
        HessianOperator(model, [], whole_block(model))
    with pytest.raises(UserError, match="reuse"):
        HessianOperator(model, synthetic_batches(), whole_block(model), reuse="sometimes")
    with pytest.raises(ValueError, match="shape"):
        HessianOperator(model, synthetic_batches(), whole_block(model)) @ torch.zeros(3)


def test_dense_and_scaled_operators() -> None:
    matrix = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    diagonal = torch.tensor([0.5, 2.0], dtype=torch.float64)
    scaled = ScaledOperator(DenseOperator(matrix), diagonal)
    assert torch.allclose(scaled.to_dense(), torch.diag(diagonal) @ matrix @ torch.diag(diagonal))
    block = torch.eye(2, dtype=torch.float64)
    assert torch.allclose(DenseOperator(matrix) @ block, matrix)


def test_reuse_sees_writes_that_version_counters_miss() -> None:
    model = tiny_lora(dtype=torch.float64, seed=1)
    batches = synthetic_batches(seed=1)
    block = whole_block(model)
    vector = _random(block.numel, 5)
    reused = operator_for(model, batches, block, reuse=True)
    before = reused @ vector
    # Through .data: the parameter's version counter does not move.
    version = block.parameters[1]._version
    block.parameters[1].data.mul_(1.5)
    assert block.parameters[1]._version == version
    after = reused @ vector
    assert not torch.allclose(before, after)
    assert torch.allclose(after, operator_for(model, batches, block, reuse=False) @ vector, atol=1e-13)
    # A frozen weight outside the block, through vector_to_parameters (new storage).
    frozen = model.get_submodule("base_model.model.model.layers.0.mlp.up_proj").weight
    torch.nn.utils.vector_to_parameters(torch.nn.utils.parameters_to_vector([frozen]) * 0.9, [frozen])
    again = reused @ vector
    assert not torch.allclose(after, again)
    assert torch.allclose(again, operator_for(model, batches, block, reuse=False) @ vector, atol=1e-13)
    # One element, in place through .data.
    block.parameters[0].data[0, 0] += 0.25
    last = reused @ vector
    assert torch.allclose(last, operator_for(model, batches, block, reuse=False) @ vector, atol=1e-13)
    assert not torch.allclose(last, again)


def test_kept_graphs_die_with_their_operator() -> None:
    """Nothing of a kept first-order graph outlives its operator and model: the census that charges it once held
    every saved output in a reference cycle through C++ that gc cannot see, so each λ probe of a process left its
    graphs and the weights they reach alive (about 0.8 GiB a probe on SmolLM2, docs/probe-memory.md)."""
    import gc
    import weakref

    def probe() -> tuple[weakref.ref[torch.Tensor], int]:
        model = tiny_lora(dtype=torch.float32, seed=1)
        block = whole_block(model)
        operator = operator_for(model, synthetic_batches(seed=1), block, reuse="auto")
        operator @ _random(block.numel, 3, torch.float32)
        return weakref.ref(block.parameters[0]), operator.cached_batches

    parameter, kept = probe()
    gc.collect()
    assert kept > 0  # the graphs were kept, and counted by the census
    assert parameter() is None
