"""Lanczos with full re-orthogonalisation for the extreme *algebraic* eigenvalues of a symmetric operator.

Each step costs one product; every new vector is orthogonalised against the whole basis twice (classical
Gram–Schmidt, twice is enough), so the tridiagonal matrix T stays faithful and no ghost copies appear. The
residual of a Ritz pair (θ, y = V s) is ‖H y − θ y‖ = |β_m · s_m| (exact under full orthogonality); the
iteration stops when every requested Ritz value has residual ≤ tol·|θ| (``converged_threshold``), and the
returned pairs are then checked with one explicit product each (``verify``), the Rayleigh quotient of the
computed vector replacing θ. By Weyl's theorem an eigenvalue of H lies within the residual of each value;
that it is *the* largest rests, as for every Krylov method, on the random start vector.

When the Krylov space is invariant (β ≈ 0) before enough values are found, the iteration restarts from a
random vector orthogonal to the basis, so repeated eigenvalues are found too.
"""

from __future__ import annotations

import time

import torch

from hessian_lora.errors import UserError
from hessian_lora.hessian._numerics import (
    Callback,
    check_solver_arguments,
    converged_threshold,
    random_vector,
)
from hessian_lora.hessian.operator import LinearOperator
from hessian_lora.hessian.results import EigenResult, IterationRecord

WHICH = ("largest", "smallest", "both")


def lanczos(
    operator: LinearOperator,
    *,
    k: int = 1,
    which: str = "largest",
    tol: float = 1e-3,
    max_iter: int = 100,
    min_iter: int = 1,
    seed: int = 0,
    start: torch.Tensor | None = None,
    verify: bool = True,
    callback: Callback | None = None,
) -> EigenResult:
    """The ``k`` largest and/or smallest eigenvalues (``which``) with residual certificates.

    ``max_iter`` caps the Lanczos steps (the Krylov dimension; at most the operator size); ``tol`` is the
    relative residual each requested value must reach.
    """
    check_solver_arguments(tol, max_iter, k)
    if which not in WHICH:
        raise UserError(f"which must be one of {', '.join(WHICH)}, got {which!r}.")
    began = time.perf_counter()
    size, dtype, device = operator.size, operator.dtype, operator.device
    steps_cap = min(max_iter, size)
    vector = start.to(device=device, dtype=dtype).clone() if start is not None else random_vector(size, dtype, device, seed)
    vector = _normalised_or_random(vector, size, dtype, device, seed)
    basis = torch.empty(min(steps_cap, 32) + 1, size, dtype=dtype, device=device)
    alphas: list[float] = []
    betas: list[float] = []
    history: list[IterationRecord] = []
    hvps = 0
    restarts = 0
    stop_reason = "max_iter"
    theta = torch.zeros(0, dtype=torch.float64)
    ritz_vectors = torch.zeros(0, 0, dtype=torch.float64)
    for step in range(steps_cap):
        if step >= basis.shape[0]:
            basis = torch.cat([basis, torch.empty_like(basis)])[: steps_cap + 1]
        basis[step] = vector
        product = operator.matvec(vector)
        hvps += 1
        alpha = float(vector @ product)
        product = product - alpha * vector
        if step > 0 and betas[-1] != 0.0:
            product = product - betas[-1] * basis[step - 1]
        active = basis[: step + 1]
        for _ in range(2):
            product = product - active.T @ (active @ product)
        beta = float(product.norm())
        alphas.append(alpha)
        theta, ritz_vectors = _tridiagonal_eigh(alphas, betas)
        scale = float(theta.abs().max())
        estimates = (beta * ritz_vectors[-1, :]).abs()
        wanted = _wanted_indices(len(alphas), k, which)
        enough = len(alphas) >= min(_needed(k, which), size)
        converged = enough and all(
            float(estimates[i]) <= converged_threshold(float(theta[i]), scale, tol, dtype) for i in wanted
        )
        record = IterationRecord(step + 1, hvps, time.perf_counter() - began,
                                 tuple(float(theta[i]) for i in wanted), tuple(float(estimates[i]) for i in wanted))
        history.append(record)
        if callback is not None:
            callback(record)
        if converged and step + 1 >= min_iter:
            stop_reason = "converged"
            break
        invariant = beta <= 10 * torch.finfo(dtype).eps * max(scale, abs(alpha), 1e-300)
        if step + 1 == steps_cap:
            stop_reason = "max_iter" if steps_cap < size else "exhausted"
            break
        if invariant:
            # The Krylov space is invariant: its Ritz values are exact. Restart orthogonally to find more
            # (repeated eigenvalues, or the part of the spectrum the start vector missed).
            restarts += 1
            vector = random_vector(size, dtype, device, seed + 7919 * restarts)
            for _ in range(2):
                vector = vector - active.T @ (active @ vector)
            betas.append(0.0)
            vector = _normalised_or_random(vector, size, dtype, device, seed + 7919 * restarts)
            continue
        betas.append(beta)
        vector = product / beta

    wanted_top = _wanted_indices(len(alphas), k, "largest") if which in ("largest", "both") else []
    wanted_bottom = _wanted_indices(len(alphas), k, "smallest") if which in ("smallest", "both") else []
    active = basis[: len(alphas)]
    estimates = _residual_estimates(alphas, betas, ritz_vectors, beta)
    top = _ritz_pairs(operator, active, theta, ritz_vectors, estimates, wanted_top, verify)
    bottom = _ritz_pairs(operator, active, theta, ritz_vectors, estimates, wanted_bottom, verify)
    hvps += (len(wanted_top) + len(wanted_bottom)) if verify else 0
    scale = float(theta.abs().max()) if len(theta) else 0.0
    values = top[0] + bottom[0]
    residuals = top[1] + bottom[1]
    complete = len(top[0]) >= (k if wanted_top else 0) or len(alphas) == size
    complete = complete and (len(bottom[0]) >= (k if wanted_bottom else 0) or len(alphas) == size)
    converged = complete and all(
        r <= converged_threshold(v, scale, tol, dtype) for v, r in zip(values, residuals)
    )
    if stop_reason == "converged" and not converged:
        stop_reason = "verification_failed"
    return EigenResult(
        solver="lanczos",
        largest=tuple(top[0]),
        largest_residuals=tuple(top[1]),
        smallest=tuple(bottom[0]),
        smallest_residuals=tuple(bottom[1]),
        converged=converged,
        stop_reason=stop_reason,
        iterations=len(alphas),
        hvps=hvps,
        seconds=time.perf_counter() - began,
        tol=tol,
        max_iter=max_iter,
        size=size,
        history=tuple(history),
        details={"restarts": float(restarts)},
        largest_vectors=top[2],
        smallest_vectors=bottom[2],
    )


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


def _tridiagonal_eigh(alphas: list[float], betas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    diagonal = torch.tensor(alphas, dtype=torch.float64)
    matrix = torch.diag(diagonal)
    if len(alphas) > 1:
        off = torch.tensor(betas[: len(alphas) - 1], dtype=torch.float64)
        matrix += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigh(matrix)


def _residual_estimates(alphas: list[float], betas: list[float], vectors: torch.Tensor, last_beta: float) -> torch.Tensor:
    # The step that ended the loop may have restarted (beta 0 appended) or stopped: its own beta is the tail.
    return (last_beta * vectors[-1, :]).abs() if len(alphas) else torch.zeros(0)


def _ritz_pairs(
    operator: LinearOperator,
    basis: torch.Tensor,
    theta: torch.Tensor,
    vectors: torch.Tensor,
    estimates: torch.Tensor,
    indices: list[int],
    verify: bool,
) -> tuple[list[float], list[float], torch.Tensor | None]:
    if not indices:
        return [], [], None
    coefficients = vectors[:, indices].to(device=basis.device, dtype=basis.dtype)
    ritz = (basis.T @ coefficients).T
    ritz = ritz / ritz.norm(dim=1, keepdim=True)
    values, residuals = [], []
    for row, index in enumerate(indices):
        if verify:
            product = operator.matvec(ritz[row])
            value = float(ritz[row] @ product)
            residuals.append(float((product - value * ritz[row]).norm()))
            values.append(value)
        else:
            values.append(float(theta[index]))
            residuals.append(float(estimates[index]))
    return values, residuals, ritz


def _normalised_or_random(
    vector: torch.Tensor, size: int, dtype: torch.dtype, device: torch.device, seed: int
) -> torch.Tensor:
    norm = float(vector.norm())
    if norm == 0.0 or norm != norm:
        vector = random_vector(size, dtype, device, seed + 1)
        norm = float(vector.norm())
    return vector / norm


def tridiagonalize(
    operator: LinearOperator, start: torch.Tensor, steps: int, callback: Callback | None = None
) -> tuple[list[float], list[float]]:
    """``steps`` Lanczos steps from ``start`` (fully re-orthogonalised): the diagonal and off-diagonal of T.

    Stops early, with fewer steps, when the Krylov space becomes invariant: there is no restart, so T keeps
    the Gauss-quadrature property with respect to ``start`` that spectral densities rely on.
    """
    began = time.perf_counter()
    size = operator.size
    steps = min(steps, size)
    vector = start.to(device=operator.device, dtype=operator.dtype)
    vector = vector / vector.norm()
    basis = torch.empty(steps, size, dtype=operator.dtype, device=operator.device)
    alphas: list[float] = []
    betas: list[float] = []
    for step in range(steps):
        basis[step] = vector
        product = operator.matvec(vector)
        alpha = float(vector @ product)
        product = product - alpha * vector - (betas[-1] * basis[step - 1] if step > 0 else 0.0)
        active = basis[: step + 1]
        for _ in range(2):
            product = product - active.T @ (active @ product)
        alphas.append(alpha)
        beta = float(product.norm())
        if callback is not None:
            callback(IterationRecord(step + 1, step + 1, time.perf_counter() - began, (alpha,), (beta,)))
        scale = max(abs(a) for a in alphas)
        if step + 1 == steps or beta <= 10 * torch.finfo(operator.dtype).eps * max(scale, 1e-300):
            break
        betas.append(beta)
        vector = product / beta
    return alphas, betas[: len(alphas) - 1]
