"""Start vectors (hessian/starts.py): the structure they rest on, checked against dense float64 Hessians, and
audits in which the structured span misses the top: every run ends certified at the true top or says it did not
converge."""

from __future__ import annotations

import math

import pytest
import torch
from tinylora import dense_hessian, module_block, operator_for, synthetic_batches, tiny_lora
from torch import nn

from hessian_lora.core.errors import UserError
from hessian_lora.hessian import DenseOperator, HessianOperator, lanczos
from hessian_lora.hessian.starts import (
    base_weight_gradients,
    block_starts,
    lora_factors,
    start_vectors,
    structured_pieces,
    with_random,
)
from hessian_lora.inputs.tasks import TokenBatch

# --- a LoRA layer whose loss is chosen so the structured span can be made to miss the top --------------------


class _Lora(nn.Module):
    """y = (W0 + s·B·A) x, with peft's parameter names (``base_layer``, ``lora_A.default``, ``scaling``)."""

    def __init__(self, d_in: int, d_out: int, rank: int, scale: float, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.base_layer = nn.Linear(d_in, d_out, bias=False, dtype=torch.float64)
        self.base_layer.weight.data = (
            torch.randn(d_out, d_in, generator=generator, dtype=torch.float64) / d_in**0.5
        )
        self.base_layer.weight.requires_grad_(False)
        self.lora_A = nn.ModuleDict({"default": nn.Linear(d_in, rank, bias=False, dtype=torch.float64)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(rank, d_out, bias=False, dtype=torch.float64)})
        self.lora_A["default"].weight.data = torch.randn(rank, d_in, generator=generator, dtype=torch.float64)
        self.lora_B["default"].weight.data.zero_()  # LoRA at initialisation
        self.scaling = {"default": scale}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lora = self.lora_B["default"](self.lora_A["default"](x)) * self.scaling["default"]
        return self.base_layer(x) + lora


class _Toy(nn.Module):
    """One LoRA layer on fixed inputs X, loss Σ_i κ_i/2 ‖y_i − T_i‖² over output rows i: a residual T − W0 X
    picks G = ∂L/∂W0 (its singular values), the weights κ pick H_BB's top (block (B, B) of the Hessian)."""

    def __init__(
        self,
        *,
        d_in: int = 7,
        d_out: int = 6,
        rank: int = 2,
        tokens: int = 9,
        seed: int = 0,
        residual: torch.Tensor | None = None,
        kappa: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed + 1)
        self.layer = _Lora(d_in, d_out, rank, scale=2.0, seed=seed)
        self.inputs = torch.randn(d_in, tokens, generator=generator, dtype=torch.float64)
        base = self.layer.base_layer.weight @ self.inputs
        self.residual = (
            residual
            if residual is not None
            else torch.randn(d_out, tokens, generator=generator, dtype=torch.float64)
        )
        self.target = base - self.residual  # G = Σ κ_i r_i xᵀ at B = 0
        self.kappa = kappa if kappa is not None else torch.ones(d_out, dtype=torch.float64)

    def loss(self) -> torch.Tensor:
        output = self.layer(self.inputs.T).T
        return 0.5 * (self.kappa[:, None] * (output - self.target) ** 2).sum()


def _batch() -> TokenBatch:
    ids = torch.zeros(1, 2, dtype=torch.long)
    return TokenBatch(ids, torch.ones_like(ids), ids.clone())  # one loss token: the mean loss is the loss


def _toy_loss(model: object, batch: TokenBatch) -> torch.Tensor:
    assert isinstance(model, _Toy)
    return model.loss()


def _operator(toy: _Toy) -> HessianOperator:
    params = [
        ("layer.lora_A.default.weight", toy.layer.lora_A["default"].weight),
        ("layer.lora_B.default.weight", toy.layer.lora_B["default"].weight),
    ]
    return HessianOperator(toy, [_batch()], params, backend="double_backward", reuse=True, loss_fn=_toy_loss)


def _dense(operator: HessianOperator) -> torch.Tensor:
    dense = operator.to_dense().double()
    return (dense + dense.T) / 2


def _assert_honest(result, exact: torch.Tensor) -> None:
    """Certified means within the bound of the true extreme eigenvalues (both ends when both were asked)."""
    assert all(math.isfinite(v) for v in (*result.largest, *result.smallest))
    if not result.converged:
        assert result.stop_reason != "converged"
        return
    for value, bound, true in zip(result.largest, result.largest_bounds, exact.flip(0)):
        assert abs(value - float(true)) <= bound * (1 + 1e-9) + 1e-12, (value, float(true), bound)
    for value, bound, true in zip(result.smallest, result.smallest_bounds, exact):
        assert abs(value - float(true)) <= bound * (1 + 1e-9) + 1e-12, (value, float(true), bound)


# --- the structure ---------------------------------------------------------------------------------------------


def test_the_base_weight_gradient_is_the_gradient_with_respect_to_the_frozen_weight() -> None:
    toy = _Toy(seed=3)
    operator = _operator(toy)
    (gradient,) = base_weight_gradients(operator, [toy.layer.base_layer.weight])
    expected = (toy.kappa[:, None] * toy.residual) @ toy.inputs.T  # ∂/∂W0 of Σ κ_i/2 ‖(W0 X − T)_i‖²
    assert torch.allclose(gradient, expected, rtol=1e-12, atol=1e-12)
    assert not toy.layer.base_layer.weight.requires_grad  # the flags are put back


def test_the_off_diagonal_block_has_the_singular_values_of_s_times_g_r_times_each() -> None:
    # The derivation the structured start rests on (REFERENCE.md): at B = 0, H = [[0, C], [Cᵀ, H_BB]] with C's
    # singular values s·σ_i(G), each r times; H_AA = 0.
    toy = _Toy(seed=4, rank=3)
    operator = _operator(toy)
    dense = _dense(operator)
    size_a = toy.layer.lora_A["default"].weight.numel()
    (gradient,) = base_weight_gradients(operator, [toy.layer.base_layer.weight])
    sigma = torch.linalg.svdvals(gradient) * 2.0
    assert torch.allclose(
        dense[:size_a, :size_a], torch.zeros(size_a, size_a, dtype=torch.float64), atol=1e-10
    )
    coupling = torch.linalg.svdvals(dense[:size_a, size_a:])
    expected = sigma.repeat_interleave(3)
    assert torch.allclose(coupling[: len(expected)], expected, rtol=1e-9, atol=1e-10)


def test_the_structured_start_overlaps_the_top_of_a_lora_at_initialisation() -> None:
    # tiny Llama, LoRA r = 4 on q_proj at B = 0, float64: the top eigenvector lies near the r-dimensional span.
    model = tiny_lora(dtype=torch.float64, at_init=True, rank=4, targets=("q_proj",))
    batches = synthetic_batches()
    block = module_block(model, "q_proj", 0)
    operator = operator_for(model, batches, block)
    top = torch.linalg.eigh(dense_hessian(model, batches, block))[1][:, -1]
    pieces, passes, sigmas = structured_pieces(operator)
    row = torch.cat([piece.reshape(-1) for piece in pieces])
    row = row / row.norm()
    assert passes == 1 and len(sigmas) == 1 and sigmas[0][1] > 0
    random_overlap = 1 / math.sqrt(operator.size)
    assert abs(float(row @ top)) > 10 * random_overlap
    mixed = start_vectors(operator, "structured", seed=1)
    assert mixed.rows is not None and mixed.rows.shape == (1, operator.size)
    assert float(mixed.rows[0].norm()) == pytest.approx(1.0, rel=1e-6)  # the two unit halves are ~orthogonal
    assert abs(float(mixed.rows[0] @ top)) > 5 * random_overlap


def test_lora_factors_are_found_by_name_and_other_parameters_get_nothing_structured() -> None:
    model = tiny_lora(dtype=torch.float64, at_init=True, rank=2, targets=("q_proj",), use_dora=True)
    block = module_block(model, "q_proj", 0)
    factors = lora_factors(model, block.names)
    assert len(factors) == 1 and factors[0].scale == pytest.approx(2.0)  # alpha = 2r
    operator = operator_for(model, synthetic_batches(), block)
    pieces, _, _ = structured_pieces(operator)
    magnitude = [i for i, name in enumerate(block.names) if "magnitude" in name]
    assert magnitude and all(float(pieces[i].abs().max()) == 0.0 for i in magnitude)


# --- the audits: a structured span that misses the top ---------------------------------------------------------


def _audits() -> dict[str, _Toy]:
    d_out, tokens = 6, 9
    generator = torch.Generator().manual_seed(11)
    # G = 0: the residual vanishes at B = 0, the top lies in H_BB alone and nothing first-order points at it
    zero = _Toy(seed=5, residual=torch.zeros(d_out, tokens, dtype=torch.float64))
    # the top lies in H_BB: G small and along output row 0, H_BB's top along output row 5 (κ_5 = 40)
    small = torch.zeros(d_out, tokens, dtype=torch.float64)
    small[0] = 0.01 * torch.randn(tokens, generator=generator, dtype=torch.float64)
    kappa = torch.ones(d_out, dtype=torch.float64)
    kappa[5] = 40.0
    in_bb = _Toy(seed=6, residual=small, kappa=kappa)
    # a degenerate σ₁: two orthonormal residual rows of equal length, so G's top pair is any of a plane
    plane = torch.linalg.qr(torch.randn(tokens, 2, generator=generator, dtype=torch.float64))[0].T
    degenerate_residual = torch.zeros(d_out, tokens, dtype=torch.float64)
    degenerate_residual[1], degenerate_residual[3] = plane[0] * 3.0, plane[1] * 3.0
    degenerate = _Toy(seed=7, residual=degenerate_residual, d_in=12, tokens=tokens)
    degenerate.inputs = torch.eye(12, tokens, dtype=torch.float64)  # orthonormal inputs keep σ₁ = σ₂ exactly
    degenerate.target = degenerate.layer.base_layer.weight @ degenerate.inputs - degenerate_residual
    return {"G = 0": zero, "top in H_BB": in_bb, "degenerate σ1": degenerate}


@pytest.mark.parametrize("case", ["G = 0", "top in H_BB", "degenerate σ1"])
@pytest.mark.parametrize("kind", ["structured", "gradient"])
@pytest.mark.parametrize("which", ["largest", "both"])
def test_a_start_that_misses_the_top_never_certifies_a_lower_eigenvalue(
    case: str, kind: str, which: str
) -> None:
    toy = _audits()[case]
    operator = _operator(toy)
    exact = torch.linalg.eigvalsh(_dense(operator))
    if case == "degenerate σ1":
        (gradient,) = base_weight_gradients(operator, [toy.layer.base_layer.weight])
        sigma = torch.linalg.svdvals(gradient)
        assert float(sigma[0] - sigma[1]) < 1e-12 * float(sigma[0])
    for seed in range(4):
        start = start_vectors(operator, kind, which=which, seed=seed)
        assert start.rows is not None
        for tol in (1e-3, 1e-8):
            result = lanczos(operator, which=which, tol=tol, max_iter=60, start=start.rows, seed=seed)
            _assert_honest(result, exact)
            assert result.converged  # small problems: the Krylov space reaches the top well within 60
            assert result.lambda_max == pytest.approx(float(exact[-1]), rel=max(tol, 1e-7))


def test_the_structured_span_really_misses_the_top_in_the_audit_where_it_should() -> None:
    # what makes "top in H_BB" adversarial: the unmixed structured start is nearly orthogonal to the top
    operator = _operator(_audits()["top in H_BB"])
    top = torch.linalg.eigh(_dense(operator))[1][:, -1]
    pieces, _, _ = structured_pieces(operator)
    row = torch.cat([piece.reshape(-1) for piece in pieces])
    assert abs(float(row @ top)) / float(row.norm()) < 0.05
    zero = _operator(_audits()["G = 0"])
    start = start_vectors(zero, "structured")
    assert start.random_share == 1.0  # nothing structured to go on: the random vector alone, and it says so


def test_a_start_on_a_lower_eigenvector_with_its_random_half_is_never_a_false_top() -> None:
    # The randomised low-rank search of test_certificates, each run started half on the second eigenvector
    # (an adversarial "structured" start) and half random.
    for seed in range(60):
        generator = torch.Generator().manual_seed(seed)
        n = int(torch.randint(6, 80, (1,), generator=generator))
        rank = int(torch.randint(2, min(7, n) + 1, (1,), generator=generator))
        values = (torch.rand(rank, generator=generator, dtype=torch.float64) * 10 + 0.1).tolist()
        if seed % 2:  # a top cluster just above the start's eigenvalue
            values[0] = values[1] * (1 + 1e-3 * float(torch.rand(1, generator=generator)))
        basis = torch.linalg.qr(torch.randn(n, rank, generator=generator, dtype=torch.float64))[0]
        matrix = (basis * torch.tensor(values, dtype=torch.float64)) @ basis.T
        matrix = (matrix + matrix.T) / 2
        exact, vectors = torch.linalg.eigh(matrix)
        start = with_random(
            vectors[:, -2].unsqueeze(0), size=n, dtype=torch.float64, device=torch.device("cpu"), seed=seed
        )
        for which in ("largest", "both"):
            result = lanczos(
                DenseOperator(matrix), which=which, tol=1e-6, max_iter=200, seed=seed, start=start
            )
            _assert_honest(result, exact)


def test_block_starts_share_one_pass_and_match_each_blocks_own_start() -> None:
    model = tiny_lora(dtype=torch.float64, at_init=True, rank=2, targets=("q_proj", "v_proj"))
    batches = synthetic_batches()
    blocks = [module_block(model, "q_proj", 0), module_block(model, "v_proj", 1)]
    union = [(name, param) for block in blocks for name, param in zip(block.names, block.parameters)]
    operator = operator_for(model, batches, union)
    position = {name: i for i, name in enumerate(operator.names)}
    together = block_starts(operator, "structured", [[position[n] for n in b.names] for b in blocks], seed=3)
    for block, shared in zip(blocks, together):
        alone = start_vectors(operator_for(model, batches, block), "structured", seed=3)
        assert shared.passes == 1 and alone.rows is not None and shared.rows is not None
        assert torch.allclose(shared.rows, alone.rows, rtol=1e-10, atol=1e-12)


def test_bad_starts_are_one_line_errors() -> None:
    operator = DenseOperator(torch.eye(4, dtype=torch.float64))
    with pytest.raises(UserError, match="unknown start"):
        start_vectors(operator, "clever")
    with pytest.raises(UserError, match="needs a Hessian operator"):
        start_vectors(operator, "structured")
    with pytest.raises(UserError, match="random_share"):
        with_random(
            torch.ones(1, 4),
            size=4,
            dtype=torch.float64,
            device=torch.device("cpu"),
            seed=0,
            random_share=0.0,
        )
    assert start_vectors(operator, "random").rows is None
    previous = start_vectors(operator, "previous", previous=torch.ones(4, dtype=torch.float64))
    assert previous.rows is not None and previous.kind == "previous"
    assert start_vectors(operator, "previous", previous=torch.ones(5)).rows is None  # another block's: random


def test_a_large_gradient_gets_the_same_top_pair_from_the_randomised_svd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import hessian_lora.hessian.starts as starts

    toy = _Toy(seed=8, d_in=9, d_out=8)
    operator = _operator(toy)
    factors = lora_factors(toy, operator.names)
    ((u, sigma, v),), _ = starts.top_singular_pairs(operator, factors)
    monkeypatch.setattr(starts, "_FULL_SVD_UP_TO", 2)
    state = torch.random.get_rng_state()
    ((u2, sigma2, v2),), _ = starts.top_singular_pairs(operator, factors)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is untouched
    assert sigma2 == pytest.approx(sigma, rel=1e-8)
    assert abs(float(u @ u2)) == pytest.approx(1.0, abs=1e-8) and abs(float(v @ v2)) == pytest.approx(
        1.0, abs=1e-8
    )
