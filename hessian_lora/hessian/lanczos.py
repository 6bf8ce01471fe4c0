"""Lanczos with full re-orthogonalisation for the extreme *algebraic* eigenvalues of a symmetric operator.

One kernel, :func:`lanczos_steps`, runs the (block) Lanczos recurrence for every caller: :func:`lanczos` here
and the stochastic Lanczos quadrature of :mod:`hessian_lora.hessian.density`; one function,
:func:`block_tridiagonal`, builds the projected matrix T.

Each step applies the operator to a block of ``p`` orthonormal vectors (``p`` products in one ``matmat`` call:
a :class:`~hessian_lora.hessian.operator.HessianOperator` builds each batch's first-order graph once for all of
them); every new vector is
orthogonalised against the whole basis twice (classical Gram–Schmidt, twice is enough), so T stays faithful
and no ghost copies appear. The residual of a Ritz pair (θ, y = V s) is ‖H y − θ y‖ = ‖B s_last‖ (B the
triangular factor of the last remainder block, s_last the last ``p`` entries of s; |β s_m| for ``p = 1``),
exact under full orthogonality.

Top-k and clusters: a single start vector sees only one direction of each eigenspace, so with repeated or
clustered eigenvalues single-vector Lanczos can certify k values while a wanted copy is missing (on
eigenvalues (5, 5, 5, 1, 0, −2) it returns (5, 1, 0) for k = 3, every residual tiny). :func:`lanczos` therefore
runs *block* Lanczos with block size ``p = k``: a random start block of k vectors has, with probability one, a
full-rank projection on any k-dimensional eigenspace, so every wanted copy is in the Krylov space from the first
step (k = 1 is plain Lanczos). When a block remainder vanishes (an invariant subspace), that column restarts
from a random vector orthogonal to the basis.

Certificates (``certificate``):

- ``"residual"``: every requested value has residual ≤ tol·|θ|. By Weyl's theorem an eigenvalue lies within
  the residual of θ, and the residual certifies the *vector* too. The reported bound is the residual.
- ``"value"`` (values only): the gap bound of Kato–Temple / Kahan–Parlett–Jiang, |λ − θ| ≤ ‖r‖²/δ, where δ is a
  lower bound on the distance from θ to the rest of the spectrum, taken from the neighbouring Ritz values
  *minus their own residual estimates* (θ_max − (θ₂ + r₂) at the top); when that gap is not resolved
  (δ ≤ ‖r‖) the bound falls back to Weyl's ‖r‖. It stops once the bound ≤ tol·|θ|: a value right to tol needs
  only ‖r‖ ≈ √(tol·|θ|·δ), far fewer products when the top eigenvalue is separated.
  Its limit, measured: the gap cannot see eigenvalues hidden *inside* θ's own residual interval. At LoRA
  initialisation λ_max sits in a cluster of r nearly equal eigenvalues (spread ~1 %); with one start vector
  the value certificate stopped inside the cluster with bounds ~7e-4·θ for errors up to 1e-2·θ (tiny-llama,
  r = 4, 7 of 8 seeds; the residual certificate too, 1 of 8, error 3.7e-3 for a residual of 7e-4). With
  ``block_size=r`` both held in 8 of 8. On SmolLM2-135M q_proj blocks at LoRA init (r = 8; bench/hessian.py
  ``--parts certificates``) it broke its bound on 3 of 3 blocks (errors 3.6e-4, 7.5e-3, 7.0e-4 for bounds
  1.1e-4, 5.1e-4, 9.4e-5 relative). So it is opt-in and NOT sound on a clustered top with one start vector:
  use ``"value"`` only where the top eigenvalue is isolated, or with a block at least as wide as the top
  cluster; ``"residual"`` stays the default.

``tol`` is relative in both cases (a round-off floor of 100 ε·‖T‖ of the operator's dtype applies, see
``converged_threshold``). The returned pairs are checked explicitly (``verify``): the Rayleigh quotient of the
computed vector replaces θ and the explicit residual ‖H y − θ y‖ replaces the estimate, with H y assembled from
the products the recurrence already made (H y = Σ s_j H v_j; exact whatever orthogonality was lost), so the
check costs no product (``store_products=False``: one product per pair, and no second copy of the basis).

The stop test *is* that explicit check: when the recurrence's estimates say every requested value is within
tol, the pairs are checked explicitly, and the run stops only if the check passes (else it goes on; the
result counts ``failed_checks``). So ``converged=True`` always means the explicit residuals hold, and a run
that ends unconverged says why in ``stop_reason``: ``max_iter`` (more products may help),
``verification_failed`` (the estimates passed at the last step and the explicit check did not: below the
products' round-off, more products do not help; loosen tol or use float64), ``memory`` (the Krylov basis
filled its memory budget, :mod:`hessian_lora.hessian.storage`), ``exhausted`` (the whole space is spanned) or
``orthogonality_lost`` (a Ritz vector's ‖Vs‖ strayed from 1: the basis lost orthogonality, so no value is
certified as the top).

Every norm and inner product over parameter-sized vectors accumulates in float64
(:mod:`hessian_lora.hessian.reductions`): with torch's float32 CPU reductions T drifted from VᵀHV on blocks of
millions of parameters, and the explicit check failed where the recurrence claimed convergence.

What a λ_max certificate says, precisely: θ ≤ λ_max always (θ is a Rayleigh quotient), and some eigenvalue lies
within the bound of θ. That this eigenvalue is λ_max itself rests on the Krylov space having seen the top of the
spectrum (below); at a clustered top it can be a lower member of the cluster (see ``block_size``).

What every Krylov certificate rests on: that the Ritz values account for the top (bottom) of the spectrum, i.e.
that the random start block did not miss an eigenvalue (true with probability one in exact arithmetic; a user
``start`` vector orthogonal to the top eigenvector defeats it). The value certificate uses that assumption for
its gap too. The starts of :mod:`hessian_lora.hessian.starts` (LoRA's structure at initialisation, the gradient,
the last probe's vectors) therefore always keep a random half (tests/hessian/test_starts.py audits the cases in
which their structured part misses the top).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from hessian_lora.core.errors import UserError
from hessian_lora.hessian._numerics import (
    NOISE_FLOOR_EPS,
    Callback,
    check_solver_arguments,
    converged_threshold,
    random_vector,
)
from hessian_lora.hessian.operator import LinearOperator
from hessian_lora.hessian.reductions import dot, inner, norm
from hessian_lora.hessian.results import EigenResult, IterationRecord
from hessian_lora.hessian.storage import PAGE_ROWS, KrylovMemory, VectorStore, placements
from hessian_lora.settings.solvers import SolveRequest

Which = Literal["largest", "smallest", "both"]
Certificate = Literal["residual", "value"]
WHICH: tuple[str, ...] = get_args(Which)
CERTIFICATES: tuple[str, ...] = get_args(Certificate)
# A remainder column this many machine epsilons times ‖T‖ below is round-off: the Krylov space is invariant.
_INVARIANT_EPS = 10.0
# Daniel–Gragg–Kaufman–Stewart: a re-orthogonalisation pass that leaves less than this share of a vector means
# the vector was (numerically) in the span it was orthogonalised against.
_DGKS = 0.5**0.5
_RESTART_LEFT = 1e-6
# A Ritz vector V s whose norm is this far from ‖s‖ = 1 says V lost orthogonality: T is no longer VᵀHV, and the
# Ritz values no longer account for the spectrum, so no value is certified as the top.
_ORTHOGONALITY_TOL = 1e-3
_RESTART_SEED_STRIDE = 7919
_BLOCK_SEED_STRIDE = 104729


# --- the kernel -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LanczosStep:
    """The state after one (block) step: T's eigen-decomposition and the residual estimate of each Ritz pair.

    ``theta`` ascending (float64), ``ritz`` the eigenvectors of T as columns, ``estimates`` ‖H y − θ y‖ per
    Ritz pair, ``basis`` the orthonormal Krylov vectors as rows (``dim`` of them, a
    :class:`~hessian_lora.hessian.storage.VectorStore`), ``products`` their images H v (rows, while the kernel
    keeps them), ``alpha`` / ``beta`` the last diagonal block's first entry and the last remainder's norm (SLQ
    progress).
    """

    step: int
    dim: int
    hvps: int
    restarts: int
    theta: torch.Tensor
    ritz: torch.Tensor
    estimates: torch.Tensor
    basis: VectorStore
    diagonal: tuple[torch.Tensor, ...]
    off: tuple[torch.Tensor, ...]
    alpha: float
    beta: float
    invariant: bool
    products: VectorStore | None = None
    restarted: bool = (
        False  # a column of the next block is a fresh random direction (the space was invariant)
    )
    operator_scale: float = 0.0  # max ‖H v_j‖ so far, a lower bound on ‖H‖


def block_tridiagonal(
    diagonal: list[torch.Tensor] | tuple[torch.Tensor, ...],
    off: list[torch.Tensor] | tuple[torch.Tensor, ...],
) -> torch.Tensor:
    """T (float64) from its diagonal blocks A_j and sub-diagonal blocks B_j (T[j+1, j] = B_j, T[j, j+1] = B_jᵀ).

    With 1×1 blocks this is the symmetric tridiagonal matrix of α's and β's.
    """
    sizes = [int(block.shape[0]) for block in diagonal]
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    matrix = torch.zeros(offsets[-1], offsets[-1], dtype=torch.float64)
    for j, block in enumerate(diagonal):
        matrix[offsets[j] : offsets[j + 1], offsets[j] : offsets[j + 1]] = block
    for j, block in enumerate(off[: len(diagonal) - 1]):
        rows, cols = slice(offsets[j + 1], offsets[j + 2]), slice(offsets[j], offsets[j + 1])
        matrix[rows, cols] = block
        matrix[cols, rows] = block.T
    return matrix


def lanczos_steps(
    operator: LinearOperator,
    start: torch.Tensor,
    *,
    max_dim: int,
    restart_seed: int | None = 0,
    keep_products: bool = False,
    memory: KrylovMemory | None = None,
) -> Iterator[LanczosStep]:
    """The block Lanczos recurrence with full re-orthogonalisation, one yielded state per step.

    ``start`` is one vector or a ``p × size`` block (rows; orthonormalised here). The next block's products run
    only when the consumer asks for the next state, so breaking out of the loop costs nothing. The kernel ends
    once the basis holds ``max_dim`` vectors (at most the operator size), or, with ``restart_seed=None``, when
    a remainder vanishes (the Krylov space is invariant: no restart keeps T the Gauss quadrature of ``start``,
    which spectral densities rely on). With a seed, a vanished remainder column restarts from a random vector
    orthogonal to the basis (seed ``restart_seed + 7919·restarts``) with a zero coupling in T.
    ``keep_products``: keep H v of every basis vector (as much memory again as the basis), so a Ritz vector's
    image H y = Σ s_j H v_j costs no further product.

    ``memory`` (default: no limit, on the operator's device) places the basis and the kept products
    (:mod:`hessian_lora.hessian.storage`). When the basis needs room the products hold, the products are
    dropped (``state.products`` becomes None); when the basis itself cannot grow, the kernel ends and the last
    state's ``basis.full`` is True. Every inner product and norm accumulates in float64
    (:mod:`hessian_lora.hessian.reductions`).
    """
    size, dtype, device = operator.size, operator.dtype, operator.device
    block = start.to(device=device, dtype=dtype).reshape(-1, size).clone()
    p = int(block.shape[0])
    cap = min(max_dim, size)
    if p > cap:
        raise ValueError(
            f"a start block of {p} vectors does not fit max_dim={max_dim} (operator size {size})"
        )
    memory = memory if memory is not None else KrylovMemory.unlimited(device)
    basis = VectorStore(size, dtype, device, memory, page_rows=max(PAGE_ROWS, p))
    images = VectorStore(size, dtype, device, memory, page_rows=max(PAGE_ROWS, p)) if keep_products else None
    restarts = 0
    for i in range(p):
        block[i] = _orthonormal_or_random(
            block[i], None, block[:i], size, dtype, device, (restart_seed or 0) + 1 + i
        )
    diagonal: list[torch.Tensor] = []
    off: list[torch.Tensor] = []
    dim = 0
    hvps = 0
    previous: torch.Tensor | None = None
    coupling: torch.Tensor | None = None
    step = 0
    # max ‖H v_j‖ over the products made: a lower bound on ‖H‖ that no loss of orthogonality can inflate (T's
    # own Ritz values can), so thresholds scaled by it stay sound.
    operator_scale = 0.0
    while True:
        p = int(block.shape[0])
        if not basis.append(block):
            if images is not None:  # the basis matters more: give it the products' room
                images.drop()
                images = None
            if not basis.append(block):
                basis.full = True
                return
        # The block's p products in one call: a batching operator shares one first-order graph among them.
        products = operator.matmat(block.T).T.contiguous()
        hvps += p
        operator_scale = max([operator_scale] + [norm(row) for row in products])
        if images is not None and not images.append(products):
            images.drop()
            images = None
        a = inner(block, products)
        a = (a + a.T) / 2
        remainder = products - a.to(dtype=dtype, device=device) @ block
        if previous is not None and coupling is not None and bool(coupling.any()):
            remainder = remainder - coupling.to(dtype=dtype, device=device) @ previous
        dim += p
        # First pass of full re-orthogonalisation (the basis holds this block too).
        remainder = remainder - basis.combine(basis.inner(remainder))
        diagonal.append(a)
        step += 1
        theta, ritz = torch.linalg.eigh(block_tridiagonal(diagonal, off))
        threshold = _INVARIANT_EPS * torch.finfo(dtype).eps * max(operator_scale, 1e-300)
        # Gram–Schmidt within the block: remainder = Q B, B upper triangular (B[l, i] = q_l · r_i). Each column is
        # then re-orthogonalised against everything kept (the basis and the block's earlier columns) with the
        # DGKS test: a pass that shrinks the column below 1/√2 of its length means the column was (numerically)
        # in their span, and a second such pass declares it dependent. A column that is dependent or has nothing
        # left (≤ threshold: the Krylov space is invariant in that direction) restarts from a random vector
        # orthogonal to the basis, with a zero coupling in T: repeated eigenvalues, or the part of the spectrum
        # the start block missed, get their own directions. (Normalising such a column instead made V lose
        # orthogonality on rank-deficient operators, and T's Ritz values then meant nothing.)
        following = min(p, cap - dim)  # the next block: a partial one when the cap is not a whole block away
        actual = torch.zeros(p, p, dtype=torch.float64)
        used = torch.zeros(max(following, 0), p, dtype=torch.float64)
        nxt = torch.empty(p, size, dtype=dtype, device=device)
        vanished = restarted = False
        for i in range(p):
            column = remainder[i]
            if i:
                coefficients = inner(nxt[:i], column)
                actual[:i, i] = coefficients
                used[: min(i, following), i] = coefficients[:following]
                column = column - coefficients.to(dtype=dtype, device=device) @ nxt[:i]
            length = norm(column)
            dependent = True
            for _ in range(2):
                refined = column - basis.combine(basis.inner(column))
                if i:
                    refined = refined - inner(nxt[:i], refined).to(dtype=dtype, device=device) @ nxt[:i]
                refined_length = norm(refined)
                shrunk = not refined_length >= _DGKS * length  # NaN counts as shrunk
                column, length = refined, refined_length
                if not shrunk:
                    dependent = False
                    break
            kept = not dependent and length > threshold  # NaN is neither
            actual[i, i] = length if kept or (not dependent and math.isfinite(length)) else 0.0
            if kept:
                if i < following:
                    used[i, i] = length
                nxt[i] = column / length
                continue
            vanished = True
            if restart_seed is None:
                break
            if i >= following:
                continue  # the column is not part of the next (partial) block: nothing to restart
            restarts += 1
            restarted = True
            seed = restart_seed + _RESTART_SEED_STRIDE * restarts
            nxt[i] = _orthonormal_or_random(
                random_vector(size, dtype, device, seed), basis, nxt[:i], size, dtype, device, seed
            )
        estimates = (actual @ ritz[-p:, :]).norm(dim=0)
        yield LanczosStep(
            step,
            dim,
            hvps,
            restarts,
            theta,
            ritz,
            estimates,
            basis,
            tuple(diagonal),
            tuple(off),
            float(a[0, 0]),
            float(actual.norm()),
            vanished,
            images,
            restarted=restarted,
            operator_scale=operator_scale,
        )
        if following <= 0 or (vanished and restart_seed is None):
            return
        off.append(used)
        previous, coupling, block = block, used, nxt[:following]


def _orthonormal_or_random(
    vector: torch.Tensor,
    basis: VectorStore | None,
    block: torch.Tensor,
    size: int,
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
) -> torch.Tensor:
    """``vector`` orthogonalised (twice) against the rows of ``basis`` and ``block`` and normalised; a random
    vector (seeded) instead when nothing is left of it."""
    for attempt in range(3):
        original = norm(vector)
        for _ in range(2):
            if basis is not None and len(basis):
                vector = vector - basis.combine(basis.inner(vector))
            if block.shape[0]:
                vector = vector - inner(block, vector).to(dtype=dtype, device=device) @ block
        length = norm(vector)
        # Less than this share left: (numerically) in the span, so its direction is round-off; draw another.
        if math.isfinite(length) and length > _RESTART_LEFT * original:
            return vector / length
        vector = random_vector(size, dtype, device, seed + 1 + attempt)
    raise ValueError("no vector orthogonal to the basis is left: the basis already spans the space")


# --- the eigen solver --------------------------------------------------------------------------------------------


def lanczos(
    operator: LinearOperator,
    *,
    k: int = 1,
    which: Which = "largest",
    tol: float = 1e-3,
    max_iter: int = 100,
    min_iter: int = 1,
    seed: int = 0,
    start: torch.Tensor | None = None,
    verify: bool = True,
    callback: Callback | None = None,
    certificate: Certificate = "residual",
    block_size: int | None = None,
    store_products: bool = True,
    memory: KrylovMemory | None = None,
) -> EigenResult:
    """The ``k`` largest and/or smallest eigenvalues (``which``) with certificates (see the module docstring).

    ``max_iter`` caps the Krylov dimension (the recurrence's products; a whole number of blocks of ``k``, at
    least one block, at most the operator size); ``min_iter`` is the fewest (block) steps before stopping.
    ``tol`` is relative: the residual (``certificate="residual"``, eigenvectors certified too) or the value
    error bound (``certificate="value"``, for values only) each requested value must reach.

    ``block_size`` (default ``k``) is the number of start vectors. A cluster of more than ``block_size`` nearly
    equal eigenvalues at a wanted end can make *any* Krylov run settle on a lower member of the cluster with
    a small residual (the top member's direction not yet grown out of the start): Weyl's bound then holds for
    that member, not for λ_max. LoRA at initialisation has clusters of size r (the rank): pass
    ``block_size=r`` there when the top member itself matters.

    ``start`` is one vector or a block of rows (``p × size``); the block is filled up with random vectors to
    ``block_size`` (default: ``max(k, rows of start)``). A start should keep a random component
    (:func:`hessian_lora.hessian.starts.with_random`): the certificate's top-ness rests on the Krylov space
    seeing every direction.

    ``verify`` recomputes each returned pair's Rayleigh quotient and residual explicitly. With
    ``store_products`` (default) the image H y comes from the kept products H v_j (linear: H Σ s_j v_j =
    Σ s_j H v_j), which costs memory equal to the basis and no product; without it, one product per pair.
    The run stops only when that explicit check passes (module docstring).

    ``memory`` is where the basis and the kept products may live (default: no limit, on the operator's
    device); when the products need room the basis wants they are dropped (``details["kept_products"]`` 0,
    the check then costs a product per pair) and when the basis cannot grow the run stops (``"memory"``).

    Examples:
        The ends of diag(1, 2, 3, 4, 5), certified:

        >>> import torch
        >>> from hessian_lora.hessian.lanczos import lanczos
        >>> from hessian_lora.hessian.operator import DiagonalOperator
        >>> operator = DiagonalOperator(torch.arange(1.0, 6.0, dtype=torch.float64))
        >>> result = lanczos(operator, k=1, which="both", tol=1e-8)
        >>> round(result.largest[0], 6), round(result.smallest[0], 6), result.converged
        (5.0, 1.0, True)
    """
    check_solver_arguments(tol, max_iter, k)
    if which not in WHICH:
        raise UserError(f"which must be one of {', '.join(WHICH)}, got {which!r}.")
    if certificate not in CERTIFICATES:
        raise UserError(f"certificate must be one of {', '.join(CERTIFICATES)}, got {certificate!r}.")
    began = time.perf_counter()
    size, dtype, device = operator.size, operator.dtype, operator.device
    if block_size is not None and block_size < 1:
        raise UserError(f"block_size must be >= 1, got {block_size}.")
    if k > size:
        raise UserError(f"k={k} eigenvalues per end, but the operator has only {size}: ask for k <= {size}.")
    if block_size is not None and block_size < k:
        raise UserError(
            f"block_size={block_size} is below k={k}: block Lanczos needs a start vector per wanted "
            f"eigenvalue; pass block_size >= {k} (or leave it out)."
        )
    given = [] if start is None else list(start.to(device=device, dtype=dtype).reshape(-1, size).clone())
    if len(given) > size:
        raise UserError(f"a start block of {len(given)} vectors is wider than the operator ({size}).")
    p = min(max(k, block_size or k, len(given)), size)
    # The Krylov dimension reaches min(max_iter, size) exactly: the last block is partial when needed.
    cap = max(min(max_iter, size), p)
    rows = given if given else [random_vector(size, dtype, device, seed)]
    rows += [random_vector(size, dtype, device, seed + _BLOCK_SEED_STRIDE * i) for i in range(len(rows), p)]
    history: list[IterationRecord] = []
    stop_reason = "max_iter"
    state: LanczosStep | None = None
    checked: _Checked | None = None  # the explicit check of the latest state, when one was made
    check_hvps = 0
    failed_checks = 0
    explored_restart = False  # a restart direction has been multiplied at least once
    may_stop = True
    estimated = False
    for state in lanczos_steps(
        operator,
        torch.stack(rows),
        max_dim=cap,
        restart_seed=seed,
        keep_products=verify and store_products,
        memory=memory,
    ):
        wanted = _wanted_indices(state.dim, k, which)
        # An invariant Krylov space is not a converged top: a space spanned by the start block (say, a start on
        # an eigenvector) knows nothing of the rest of the spectrum, so the run may not stop before a restart
        # direction has been multiplied once.
        may_stop = explored_restart or not state.restarted or state.dim >= size
        enough = state.dim >= min(_needed(k, which), size) and may_stop
        explored_restart = explored_restart or state.restarted
        scale = state.operator_scale
        bounds = [
            _bound(certificate, i, float(state.theta[i]), float(state.estimates[i]), state) for i in wanted
        ]
        values = [float(state.theta[i]) for i in wanted]
        estimated = enough and all(
            bound <= converged_threshold(value, scale, tol, dtype) for value, bound in zip(values, bounds)
        )
        checked = None
        if estimated and state.step >= min_iter and verify:
            # The stop test is the explicit check itself: the recurrence's estimate only says when to look.
            # With kept products it costs no product; without, one per pair (counted).
            checked = _check(operator, state, k, which, certificate, tol, estimated=estimated)
            check_hvps += checked.hvps
            if not checked.converged:
                failed_checks += 1
        converged = estimated and (checked.converged if checked is not None else True)
        record = IterationRecord(
            state.step,
            state.hvps + check_hvps,
            time.perf_counter() - began,
            tuple(float(state.theta[i]) for i in wanted),
            tuple(bounds),
        )
        history.append(record)
        if callback is not None:
            callback(record)
        if converged and state.step >= min_iter:
            stop_reason = "converged"
            break
        if state.dim >= cap:
            stop_reason = "max_iter" if cap < size else "exhausted"
            break
    if state is None:  # the basis could not hold even the start block: no step was made
        raise UserError(
            f"the Krylov memory budget cannot hold the {p} start vectors of this block (of "
            f"{size} parameters each): raise --krylov-memory, or lower --block-size."
        )
    if stop_reason != "converged" and state.basis.full:
        stop_reason = "memory"  # the basis could not grow within the Krylov memory budget
    if checked is None:
        checked = _check(operator, state, k, which, certificate, tol, estimated=estimated, verify=verify)
        check_hvps += checked.hvps
    if stop_reason in ("max_iter", "memory") and checked.estimated and not checked.converged:
        stop_reason = "verification_failed"
    if checked.orthogonality_loss > _ORTHOGONALITY_TOL and not checked.converged and stop_reason != "memory":
        stop_reason = "orthogonality_lost"
    top, bottom = checked.top, checked.bottom
    converged = checked.converged and may_stop
    return EigenResult(
        solver="lanczos",
        largest=tuple(top[0]),
        largest_residuals=tuple(top[1]),
        smallest=tuple(bottom[0]),
        smallest_residuals=tuple(bottom[1]),
        converged=converged,
        stop_reason=stop_reason,
        iterations=state.step,
        hvps=state.hvps + check_hvps,
        seconds=time.perf_counter() - began,
        tol=tol,
        max_iter=max_iter,
        size=size,
        history=tuple(history),
        details={
            "restarts": float(state.restarts),
            "block_size": float(p),
            "krylov_dim": float(state.dim),
            "failed_checks": float(failed_checks),
            "orthogonality_loss": checked.orthogonality_loss,
            "kept_products": float(state.products is not None),
            **placements([state.basis, state.products]),
        },
        largest_vectors=top[3],
        smallest_vectors=bottom[3],
        certificate=certificate,
        largest_bounds=tuple(top[2]),
        smallest_bounds=tuple(bottom[2]),
    )


@dataclass(frozen=True)
class _Checked:
    """The returned pairs of one state, checked explicitly (or, without ``verify``, as the recurrence says)."""

    top: tuple[list[float], list[float], list[float], torch.Tensor | None]
    bottom: tuple[list[float], list[float], list[float], torch.Tensor | None]
    converged: bool
    estimated: bool  # the recurrence's estimates alone would have certified every requested value
    hvps: int
    orthogonality_loss: float  # max |‖V s‖ − 1| over the checked Ritz vectors


def solve(operator: LinearOperator, request: SolveRequest) -> EigenResult:
    """The solver table's entry (:mod:`hessian_lora.settings.solvers`): :func:`lanczos` with ``request``'s options.

    Args:
        operator: the symmetric operator.
        request: k, which end(s), tol, max_iter, seed, start rows, block size, callback and Krylov memory.

    Returns:
        :func:`lanczos`'s result.
    """
    return lanczos(
        operator,
        k=request.k,
        which=request.which,
        tol=request.tol,
        max_iter=request.max_iter,
        seed=request.seed,
        start=request.start,
        callback=request.callback,
        block_size=request.block_size,
        memory=request.memory,
    )


def _check(
    operator: LinearOperator,
    state: LanczosStep,
    k: int,
    which: str,
    certificate: str,
    tol: float,
    *,
    estimated: bool,
    verify: bool = True,
) -> _Checked:
    """The returned pairs of ``state`` checked explicitly; ``estimated``: what the recurrence's estimates said."""
    size, dtype = operator.size, operator.dtype
    wanted_top = _wanted_indices(state.dim, k, "largest") if which in ("largest", "both") else []
    wanted_bottom = _wanted_indices(state.dim, k, "smallest") if which in ("smallest", "both") else []
    scale = state.operator_scale
    top = _ritz_pairs(operator, state, wanted_top, verify, certificate)
    bottom = _ritz_pairs(operator, state, wanted_bottom, verify, certificate)
    hvps = (len(wanted_top) + len(wanted_bottom)) if verify and state.products is None else 0
    values = top[0] + bottom[0]
    bounds = top[2] + bottom[2]
    complete = len(top[0]) >= (k if wanted_top else 0) or state.dim == size
    complete = complete and (len(bottom[0]) >= (k if wanted_bottom else 0) or state.dim == size)
    loss = max(top[4], bottom[4])
    converged = (
        complete
        and loss <= _ORTHOGONALITY_TOL
        and all(b <= converged_threshold(v, scale, tol, dtype) for v, b in zip(values, bounds))
    )
    return _Checked(top[:4], bottom[:4], converged, estimated, hvps, loss)


def value_bound(
    index: int, value: float, residual: float, theta: torch.Tensor, estimates: torch.Tensor
) -> float:
    """|λ − θ| ≤ ‖r‖²/δ (Kato–Temple / Kahan–Parlett–Jiang), else Weyl's ‖r‖ when the gap is not resolved.

    ``index`` is θ's position among the ascending Ritz values ``theta``; δ is the distance from ``value`` to the
    nearest neighbouring Ritz value's residual interval [θ_j − e_j, θ_j + e_j] (``estimates`` e_j), a lower
    bound on the distance to the rest of the spectrum when the Ritz values account for it (module docstring).
    """
    if len(theta) < 2:
        return residual  # no neighbour: nothing is known about the rest of the spectrum
    gap = math.inf
    for neighbour in (index - 1, index + 1):
        if 0 <= neighbour < len(theta):
            gap = min(gap, abs(value - float(theta[neighbour])) - float(estimates[neighbour]))
    if gap > residual:
        return min(residual, residual * residual / gap)
    return residual


def _bound(certificate: str, index: int, value: float, residual: float, state: LanczosStep) -> float:
    if certificate == "value":
        return value_bound(index, value, residual, state.theta, state.estimates)
    return residual


def _needed(k: int, which: str) -> int:
    return 2 * k if which == "both" else k


def _wanted_indices(count: int, k: int, which: str) -> list[int]:
    """Positions in ascending Ritz order: the k largest (descending) and/or the k smallest (ascending)."""
    top = list(range(count - 1, max(count - 1 - k, -1), -1))
    bottom = list(range(min(k, count)))
    if which == "largest":
        return top
    if which == "smallest":
        return bottom
    return top + [i for i in bottom if i not in top]


def _ritz_pairs(
    operator: LinearOperator,
    state: LanczosStep,
    indices: list[int],
    verify: bool,
    certificate: str,
) -> tuple[list[float], list[float], list[float], torch.Tensor | None, float]:
    """Values, residuals, value-error bounds (of ``certificate``) and unit vectors of the Ritz pairs at ``indices``,
    and the largest |‖V s‖ − 1| among them (0 under exact orthogonality)."""
    if not indices:
        return [], [], [], None, 0.0
    coefficients = state.ritz[:, indices]
    ritz = state.basis.combine(coefficients)
    lengths = [norm(row) for row in ritz]
    loss = max(abs(length - 1.0) if math.isfinite(length) else math.inf for length in lengths)
    lengths = [length if math.isfinite(length) and length > 0 else 1.0 for length in lengths]
    for row, length in zip(ritz, lengths):
        row /= length
    images = None
    if state.products is not None:
        images = state.products.combine(coefficients)
        for row, length in zip(images, lengths):
            row /= length
    values, residuals, bounds = [], [], []
    # Below the products' own round-off a residual certifies nothing finer: the bound is that floor (the same
    # floor the convergence test allows, so a certified bound always holds).
    floor = NOISE_FLOOR_EPS * torch.finfo(operator.dtype).eps * state.operator_scale
    if verify and images is None:
        images = operator.matmat(ritz.T).T.contiguous()  # no kept products: one batched call for every pair
    for row, index in enumerate(indices):
        if verify:
            assert images is not None  # made above whenever verify is set
            product = images[row]
            value = dot(ritz[row], product)
            residual = norm(product - value * ritz[row])
        else:
            value, residual = float(state.theta[index]), float(state.estimates[index])
        values.append(value)
        residuals.append(residual)
        bounds.append(max(_bound(certificate, index, value, residual, state), floor))
    return values, residuals, bounds, ritz, loss
