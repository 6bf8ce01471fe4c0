"""Start vectors for Lanczos that already see the top of a LoRA Hessian, each with a random component kept.

A Krylov run from a random vector needs as many products as the spectrum's gaps demand; a start that already
overlaps the top eigenspace needs fewer. :func:`start_vectors` builds one of these (``kind``):

- ``"random"``: no start (the solver draws its own from ``seed``).
- ``"structured"``: LoRA at initialisation (B = 0). The Hessian over (A, B) is [[0, C], [Cᵀ, H_BB]] with
  C: dB ↦ s·dBᵀG, G = ∂L/∂W the gradient with respect to the module's frozen base weight; its top eigenvectors
  lie near span{(e_j v₁ᵀ, u₁ e_jᵀ)/√2} for G's top singular pair (u₁, v₁) (docs/start-vectors.md). Each module's
  G comes from one first-order pass over the batches with the *base* weights differentiated (as many modules'
  G at once as ``gradient_bytes`` holds: on a large model one at a time); only its top singular pair is kept.
  The start is the combination Σ_j c_j (e_j v₁ᵀ, ±u₁ e_jᵀ) with c = A v₁ (the combination the adapter's own
  gradient picks), "+" for λ_max, the B half alone (equal overlap with both ends) when λ_min is wanted too;
  across the modules of a block, each module weighted by (s·σ₁)², so the module whose cluster is on top leads.
  Parameters that are no LoRA factor (DoRA's magnitude) get only the random component.
- ``"gradient"``: the block's own gradient ∂L/∂θ (one first-order pass, no SVD). At B = 0 it is (0, s·G·Aᵀ),
  whose first product already lands in the structured span; for methods that rewrite the base (PiSSA, ...) it
  is the natural first-order candidate.

Every start returned is mixed with a random unit vector: ``start = √(1 − w)·structured + √w·random`` (unit
vectors, ``w = random_share``, default ½). A start confined to a subspace can miss the true top (the top lies in
H_BB, G = 0) and then a lower eigenvalue can be certified; the random half keeps the Krylov space seeing every
direction, with half the overlap a random start has. When the structured part is zero (G = 0) the start is the
random vector alone. The previous probe's vectors (``previous``) are mixed the same way (:func:`with_random`).

The engine knows nothing of peft: the LoRA factors of a block are found by their parameter names
(``<module>.lora_A.<adapter>.weight`` / ``lora_B``), the base weight as ``<module>.base_layer.weight`` (or
``<module>.weight``) and the scale as the module's ``scaling[adapter]`` when it has one (else 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

import hessian_lora.hessian.distributed as distributed
from hessian_lora.core.errors import UserError
from hessian_lora.hessian._numerics import random_vector
from hessian_lora.hessian.operator import HessianOperator, LinearOperator, only_block_trainable
from hessian_lora.hessian.reductions import dot, norm

StartKind = Literal["random", "structured", "gradient", "previous"]
START_KINDS: tuple[str, ...] = get_args(StartKind)
# How much of the start's squared norm is random: ½ keeps half the overlap a random start has with any direction
# (so a missed top still grows out of the Krylov space nearly as fast as from a random start).
DEFAULT_RANDOM_SHARE = 0.5
# The gradients with respect to base weights held at once (bytes): on a large model this is one module's.
DEFAULT_GRADIENT_BYTES = 1 << 30
_MIX_SEED = 7_368_787
# G's top singular pair: a full SVD up to this side, a randomised one (q columns, power iterations) beyond, where a
# full SVD of a 4096 × 11008 gradient would cost more than the products it saves.
_FULL_SVD_UP_TO = 2048
_LOWRANK_Q = 10
_LOWRANK_ITERATIONS = 6


@dataclass(frozen=True)
class LoraFactor:
    """One LoRA module of a block: the positions of its A (r × in) and B (out × r) among the block's
    parameters, its frozen base weight (out × in) and its scale s."""

    module: str
    a_index: int
    b_index: int
    base_weight: nn.Parameter
    scale: float


@dataclass(frozen=True)
class StartVectors:
    """A start block (rows) and what it was: ``kind``, the random share mixed in, the products' worth of
    first-order passes spent building it (``passes``) and, per LoRA module, s·σ₁(G) (``scaled_sigma``)."""

    kind: str
    rows: torch.Tensor | None
    random_share: float
    passes: int = 0
    scaled_sigma: tuple[tuple[str, float], ...] = ()

    def describe(self) -> dict[str, object]:
        """What a report records about the start."""
        return {
            "kind": self.kind,
            "random_share": self.random_share if self.rows is not None else 1.0,
            "first_order_passes": self.passes,
        }


def lora_factors(model: nn.Module, names: Sequence[str]) -> list[LoraFactor]:
    """The LoRA modules whose A and B are both among ``names`` (a block's parameter names), in block order."""
    position = {name: i for i, name in enumerate(names)}
    factors = []
    for name in names:
        if ".lora_A." not in name:
            continue
        module_name, _, rest = name.partition(".lora_A.")
        partner = f"{module_name}.lora_B.{rest}"
        if partner not in position:
            continue
        adapter = rest.split(".")[0]
        module = model.get_submodule(module_name)
        base = getattr(module, "base_layer", module)
        weight = getattr(base, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.ndim != 2:
            continue  # not a linear layer (an embedding, a convolution): no structured start for it
        scaling = getattr(module, "scaling", None)
        scale = float(scaling.get(adapter, 1.0)) if isinstance(scaling, dict) else 1.0
        factors.append(LoraFactor(module_name, position[name], position[partner], weight, scale))
    return factors


def base_weight_gradients(operator: HessianOperator, weights: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    """∂L/∂W of the token-weighted mean loss for each frozen base weight in ``weights``: one first-order pass."""
    totals = [torch.zeros_like(weight) for weight in weights]
    with only_block_trainable(operator.model, list(weights), eval_mode=True), torch.enable_grad():
        for batch in operator.batches:
            loss = operator.loss_fn(operator.model, batch)
            for total, part in zip(totals, torch.autograd.grad(loss, list(weights))):
                total += part
    return [distributed.all_reduce_sum(total) / operator.total_tokens for total in totals]


def top_singular_pairs(
    operator: HessianOperator, factors: Sequence[LoraFactor], *, gradient_bytes: int = DEFAULT_GRADIENT_BYTES
) -> tuple[list[tuple[torch.Tensor, float, torch.Tensor]], int]:
    """(u₁, σ₁, v₁) of each factor's base-weight gradient G, and the first-order passes it took. The modules
    are taken in groups whose G fit ``gradient_bytes`` together (at least one module per pass), each G dropped
    once its pair is known."""
    pairs: list[tuple[torch.Tensor, float, torch.Tensor]] = []
    passes = 0
    group: list[LoraFactor] = []
    groups: list[list[LoraFactor]] = []
    held = 0
    for factor in factors:
        size = factor.base_weight.numel() * factor.base_weight.element_size()
        if group and held + size > gradient_bytes:
            groups.append(group)
            group, held = [], 0
        group.append(factor)
        held += size
    if group:
        groups.append(group)
    for members in groups:
        gradients = base_weight_gradients(operator, [factor.base_weight for factor in members])
        passes += 1
        while gradients:
            g = gradients.pop(0).double()
            if min(g.shape) > _FULL_SVD_UP_TO:  # a randomised SVD: only the top pair is wanted
                # seeded, and the caller's random state left as it was
                with torch.random.fork_rng(devices=[g.device] if g.device.type == "cuda" else []):
                    torch.manual_seed(0)
                    u, s, v = torch.svd_lowrank(g, q=_LOWRANK_Q, niter=_LOWRANK_ITERATIONS)
                pairs.append((u[:, 0].clone(), float(s[0]), v[:, 0].clone()))
            else:
                u, s, vh = torch.linalg.svd(g, full_matrices=False)
                pairs.append((u[:, 0].clone(), float(s[0]), vh[0].clone()))
            del g, u, s
    return pairs, passes


def structured_pieces(
    operator: HessianOperator, *, which: str = "largest", gradient_bytes: int = DEFAULT_GRADIENT_BYTES
) -> tuple[list[torch.Tensor], int, tuple[tuple[str, float], ...]]:
    """The unmixed structured start of ``operator``'s parameters (module docstring), one float64 piece per
    parameter (zero for parameters that are no LoRA factor), the first-order passes it took, and s·σ₁(G) per
    LoRA module."""
    pieces = [torch.zeros(p.shape, dtype=torch.float64, device=operator.device) for p in operator.params]
    factors = lora_factors(operator.model, operator.names)
    if not factors:
        return pieces, 0, ()
    pairs, passes = top_singular_pairs(operator, factors, gradient_bytes=gradient_bytes)
    sigmas = []
    for factor, (u, sigma, v) in zip(factors, pairs):
        scaled = factor.scale * sigma
        sigmas.append((factor.module, scaled))
        if not (scaled > 0 and math.isfinite(scaled)):
            continue
        a = operator.params[factor.a_index].detach().double()
        combination = a @ v  # c = A v₁: the combination the adapter's gradient s·G·Aᵀ picks
        if not float(combination.norm()) > 0:  # A ⊥ v₁ (or A = 0): any combination is as good
            combination = torch.ones(a.shape[0], dtype=torch.float64, device=a.device)
        combination = combination / float(combination.norm())
        # Modules weighted by (s·σ₁)²: the module whose cluster is on top leads the start.
        weight = scaled**2
        if which == "both":  # the B half alone: equal overlap with the top (+) and the bottom (−) combination
            pieces[factor.b_index] += weight * torch.outer(u, combination)
            continue
        sign = -1.0 if which == "smallest" else 1.0  # (±c v₁ᵀ, u₁ cᵀ)/√2
        pieces[factor.a_index] += sign * weight * torch.outer(combination, v) / math.sqrt(2)
        pieces[factor.b_index] += weight * torch.outer(u, combination) / math.sqrt(2)
    return pieces, passes, tuple(sigmas)


def _row(pieces: Sequence[torch.Tensor], indices: Sequence[int], dtype: torch.dtype) -> torch.Tensor | None:
    """The pieces at ``indices`` as one unit row (None when they are all zero or not finite)."""
    row = torch.cat([pieces[i].reshape(-1) for i in indices])
    length = float(row.double().norm())
    if not (length > 0 and math.isfinite(length)):
        return None
    return (row.double() / length).to(dtype).unsqueeze(0)


def with_random(
    rows: torch.Tensor,
    *,
    size: int,
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
    random_share: float = DEFAULT_RANDOM_SHARE,
) -> torch.Tensor:
    """Each row of ``rows`` normalised and mixed with its own seeded random unit vector orthogonal to it:
    √(1 − w)·row + √w·random (``w = random_share``), a unit vector; a zero row becomes the random vector alone."""
    if not 0.0 < random_share <= 1.0:
        raise UserError(
            f"random_share must lie in (0, 1], got {random_share!r}: a start without a random "
            "component can miss the top and certify a lower eigenvalue."
        )
    block = rows.to(device=device, dtype=dtype).reshape(-1, size)
    mixed = []
    for i, row in enumerate(block):
        noise = random_vector(size, dtype, device, seed + _MIX_SEED * (i + 1))
        length = norm(row)
        if not (length > 0 and math.isfinite(length)):
            mixed.append(noise / norm(noise))
            continue
        row = row / length
        noise = (
            noise - dot(row, noise) * row
        )  # orthogonal to the row: the mix is a unit vector, the share exact
        noise = noise / norm(noise)
        mixed.append(math.sqrt(1.0 - random_share) * row + math.sqrt(random_share) * noise)
    return torch.stack(mixed)


def start_vectors(
    operator: LinearOperator,
    kind: str,
    *,
    which: str = "largest",
    seed: int = 0,
    random_share: float = DEFAULT_RANDOM_SHARE,
    previous: torch.Tensor | None = None,
    gradient_bytes: int = DEFAULT_GRADIENT_BYTES,
) -> StartVectors:
    """The start of ``kind`` (module docstring) for ``operator``'s whole block, mixed with a random component.

    ``previous`` (rows, e.g. the last probe's Ritz vectors) is the start of kind ``"previous"``; one whose
    size does not match the operator's falls back to random. ``"structured"`` and ``"gradient"`` need a
    :class:`HessianOperator` (they run first-order passes on its model and batches).
    """
    if kind not in START_KINDS:
        raise UserError(f"unknown start {kind!r}: use {', '.join(START_KINDS)}.")
    size, dtype, device = operator.size, operator.dtype, operator.device
    if kind == "random":
        return StartVectors("random", None, 1.0)
    if kind == "previous":
        if previous is None or previous.numel() == 0 or previous.numel() % size:
            return StartVectors("random", None, 1.0)
        return StartVectors(
            "previous",
            with_random(
                previous, size=size, dtype=dtype, device=device, seed=seed, random_share=random_share
            ),
            random_share,
        )
    if not isinstance(operator, HessianOperator):
        raise UserError(
            f"start {kind!r} needs a Hessian operator on a model (first-order passes): use start "
            "random or an explicit start vector."
        )
    return block_starts(
        operator,
        kind,
        [range(len(operator.params))],
        which=which,
        seed=seed,
        random_share=random_share,
        gradient_bytes=gradient_bytes,
    )[0]


def block_starts(
    operator: HessianOperator,
    kind: str,
    parts: Sequence[Sequence[int]],
    *,
    which: str = "largest",
    seeds: Sequence[int] | None = None,
    seed: int = 0,
    random_share: float = DEFAULT_RANDOM_SHARE,
    gradient_bytes: int = DEFAULT_GRADIENT_BYTES,
) -> list[StartVectors]:
    """Starts of kind ``"structured"`` or ``"gradient"`` for several blocks of one operator at once (a scan's
    union): ``parts`` are each block's positions among ``operator.params``; the first-order passes are shared.
    Block i's random component is drawn from ``seeds[i]`` (default: ``seed`` for every block)."""
    sigmas: tuple[tuple[str, float], ...] = ()
    if kind == "gradient":
        flat = operator.gradient().double()
        pieces = list(torch.split(flat, [p.numel() for p in operator.params]))
        passes = 1
    elif kind == "structured":
        pieces, passes, sigmas = structured_pieces(operator, which=which, gradient_bytes=gradient_bytes)
    else:
        raise UserError(f"start {kind!r} is not built from first-order passes: use structured or gradient.")
    starts = []
    for i, indices in enumerate(parts):
        row = _row(pieces, indices, operator.dtype)
        size = sum(operator.params[j].numel() for j in indices)
        block_seed = seeds[i] if seeds is not None else seed
        names = {operator.names[j].partition(".lora_")[0] for j in indices}
        mine = tuple((module, value) for module, value in sigmas if module in names)
        if row is None:  # nothing first-order to go on (G = 0, no LoRA factor): the random vector alone
            rows = with_random(
                torch.zeros(1, size),
                size=size,
                dtype=operator.dtype,
                device=operator.device,
                seed=block_seed,
                random_share=1.0,
            )
            starts.append(StartVectors(kind, rows, 1.0, passes, mine))
            continue
        rows = with_random(
            row,
            size=size,
            dtype=operator.dtype,
            device=operator.device,
            seed=block_seed,
            random_share=random_share,
        )
        starts.append(StartVectors(kind, rows, random_share, passes, mine))
    return starts
