"""Power iteration for the largest *algebraic* eigenvalue, with an honest convergence certificate.

Plain power iteration converges to the eigenvalue of largest magnitude. A loss Hessian is indefinite, and at
LoRA initialisation (B = 0) the block of one module has a spectrum in ± pairs: plain iteration then oscillates
in the plane of the pair and its Rayleigh quotient settles on a meaningless value (PyHessian 0.1 reports 0.068
on a SmolLM2 q_proj block whose λ_max is 1.46). Here:

1. a short *probe* of plain steps estimates the spectral radius ρ from ‖Hv‖ (each ‖Hv‖ with ‖v‖ = 1 is a lower
   bound on ρ, approaching it quickly when outliers dominate) — the cheap bound;
2. the iteration continues on H + σI with σ = ρ̂/2. With ρ̂ ≈ ρ every shifted eigenvalue is ≥ −ρ/2, so
   whenever λ_max > 0 the shifted λ_max + ρ/2 dominates: the ± pair no longer ties. The convergence ratio
   becomes max(λ₂ + σ, |λ_min + σ|)/(λ₁ + σ): e.g. (r + ½)/(1 + ½) for λ₂ = r·λ₁ = r·ρ, a cheaper price than
   σ = ρ's (1 + r)/2;
3. if the Rayleigh quotient of the shifted operator turns negative (σ too small: the negative end still
   dominates) σ grows to max(2σ, |θ|) and the iteration goes on.

Convergence is declared only on the residual, ‖Hv − θv‖ ≤ tol·|θ| (or the dtype's round-off floor): a value
that merely stopped changing is reported with ``converged=False`` and ``stop_reason="max_iter"``.
``shift=None`` runs the classic unshifted iteration (largest |λ|) under the same honest criterion; a float
fixes σ. ``k > 1`` deflates by keeping the iterate orthogonal to the vectors already found; the reported residual
is always the true ‖Hv − θv‖ of the returned vector (not the deflated one, which can understate it by orders of
magnitude), and value, residual and vector belong to the same iterate.
"""

from __future__ import annotations

import time
from typing import Literal

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
from hessian_lora.settings.solvers import SolveRequest


def power_iteration(
    operator: LinearOperator,
    *,
    k: int = 1,
    tol: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
    start: torch.Tensor | None = None,
    shift: float | Literal["auto"] | None = "auto",
    probe_iter: int = 3,
    callback: Callback | None = None,
) -> EigenResult:
    """The ``k`` largest algebraic eigenvalues (``shift="auto"``), ``max_iter`` products per eigenvalue at most.

    Examples:
        λ_max of [[2, 1], [1, 2]] (eigenvalues 3 and 1):

        >>> import torch
        >>> from hessian_lora.hessian.operator import DenseOperator
        >>> from hessian_lora.hessian.power import power_iteration
        >>> operator = DenseOperator(torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64))
        >>> result = power_iteration(operator, tol=1e-8, max_iter=200)
        >>> round(result.largest[0], 6), result.converged
        (3.0, True)
    """
    check_solver_arguments(tol, max_iter, k)
    if not (shift is None or shift == "auto" or isinstance(shift, (int, float))):
        raise UserError(f"shift must be 'auto', None or a number, got {shift!r}.")
    if probe_iter < 1:
        raise UserError(f"probe_iter must be >= 1, got {probe_iter}.")
    began = time.perf_counter()
    size, dtype, device = operator.size, operator.dtype, operator.device
    found: list[torch.Tensor] = []
    images: list[torch.Tensor] = []  # H of each vector found, as the last product made it
    values: list[float] = []
    residuals: list[float] = []
    history: list[IterationRecord] = []
    all_converged = True
    hvps = 0
    iterations = 0
    spectral_radius = 0.0
    sigma = float(shift) if isinstance(shift, (int, float)) else 0.0
    probing = shift == "auto"
    stop_reason = "converged"
    for index in range(min(k, size)):
        if start is not None and index == 0:
            vector = start.to(device=device, dtype=dtype).clone()
        else:
            vector = random_vector(size, dtype, device, seed + 104729 * index)
        vector = _orthonormal(vector, found)
        value, residual, converged = float("nan"), float("inf"), False
        current = vector  # the iterate that value and residual belong to (returned as the eigenvector)
        for step in range(max_iter):
            raw = operator.matvec(vector)
            hvps += 1
            iterations += 1
            current = vector
            # Value and residual of this very vector against H itself, deflated or not: deflation steers the
            # iteration, but the certificate is ‖H v − θ v‖ (the deflated residual understated it up to 500×).
            value = dot(vector, raw)
            residual = norm(raw - value * vector)
            spectral_radius = max(spectral_radius, norm(raw))
            product = _deflate(raw, found)
            settled = residual <= converged_threshold(value, spectral_radius, tol, dtype)
            # An eigenpair of the iterated operator H + σI is the algebraic maximum only when its shifted value
            # is positive (the dominant one of H + σI); with shift=None or a fixed shift the user chose the target.
            # H v = 0 exactly is an exact eigenvector with eigenvalue 0 (a zero block): residual 0, certified.
            converged = settled and (shift != "auto" or value + sigma > 0 or residual == 0.0)
            record = IterationRecord(iterations, hvps, time.perf_counter() - began, (value,), (residual,))
            history.append(record)
            if callback is not None:
                callback(record)
            if converged:
                break
            if norm(product) == 0.0 and not sigma:
                break  # the deflated iteration has nowhere to go (H v lies in the span of the vectors found)
            if probing and (step + 1 >= probe_iter or settled):
                # Settled on the negative end during the probe: σ = |θ| = ρ maps λ_min to zero exactly.
                sigma = abs(value) if settled else spectral_radius / 2
                probing = False
            if shift == "auto" and not probing and value + sigma <= 0:
                sigma = max(2 * sigma, abs(value))
            shifted = product + sigma * vector if sigma else product
            vector = _orthonormal(shifted, found)
        vector = current
        values.append(value)
        residuals.append(residual)
        all_converged = all_converged and converged
        if not converged:
            stop_reason = "max_iter"
        found.append(vector)
        images.append(raw)
    if len(found) > 1:
        # Rayleigh–Ritz on the span of the vectors found, from the products already made (H of each returned
        # iterate): the error of an earlier vector leaks into the true residual of later ones (≈ 2× the first
        # residual for λ₂ = λ₁/2), and the projection folds that leak back into the span. No extra product.
        stacked, products = torch.stack(found), torch.stack(images)
        projected = inner(stacked, products)
        _, rotation = torch.linalg.eigh((projected + projected.T) / 2)
        rotation = rotation.flip(1)  # descending
        weights = rotation.T.to(device=device, dtype=dtype)
        rotated, rotated_images = weights @ stacked, weights @ products
        values, residuals, found = [], [], []
        for row, image in zip(rotated, rotated_images):
            length = norm(row)
            row, image = row / length, image / length
            value = dot(row, image)
            values.append(value)
            residuals.append(norm(image - value * row))
            found.append(row)
        settled_each = [
            r <= converged_threshold(v, spectral_radius, tol, dtype) for v, r in zip(values, residuals)
        ]
        all_converged = all(settled_each) and (
            shift != "auto" or all(v + sigma > 0 or r == 0.0 for v, r in zip(values, residuals))
        )
        stop_reason = "converged" if all_converged else "max_iter"
    order = sorted(range(len(values)), key=lambda i: -values[i])
    return EigenResult(
        solver="power" if shift is not None else "power_unshifted",
        largest=tuple(values[i] for i in order),
        largest_residuals=tuple(residuals[i] for i in order),
        smallest=(),
        smallest_residuals=(),
        converged=all_converged,
        stop_reason=stop_reason,
        iterations=iterations,
        hvps=hvps,
        seconds=time.perf_counter() - began,
        tol=tol,
        max_iter=max_iter,
        size=size,
        history=tuple(history),
        details={"shift": sigma, "spectral_radius_estimate": spectral_radius},
        largest_vectors=torch.stack([found[i] for i in order]) if found else None,
        # Below the products' round-off a residual certifies nothing finer (the floor the test allows).
        largest_bounds=tuple(
            max(residuals[i], NOISE_FLOOR_EPS * torch.finfo(dtype).eps * spectral_radius) for i in order
        ),
    )


def solve(operator: LinearOperator, request: SolveRequest) -> EigenResult:
    """The solver table's entry (:mod:`hessian_lora.settings.solvers`): shifted :func:`power_iteration` with
    ``request``'s options; a start block's first row is the first iterate (the others are drawn as before).

    Args:
        operator: the symmetric operator.
        request: k, tol, max_iter, seed, start rows and callback (the largest end only).

    Returns:
        :func:`power_iteration`'s result.
    """
    start = request.start.reshape(-1, operator.size)[0] if request.start is not None else None
    return power_iteration(
        operator,
        k=request.k,
        tol=request.tol,
        max_iter=request.max_iter,
        seed=request.seed,
        start=start,
        callback=request.callback,
    )


def _orthonormal(vector: torch.Tensor, found: list[torch.Tensor]) -> torch.Tensor:
    for _ in range(2 if found else 0):
        for other in found:
            vector = vector - dot(other, vector) * other
    length = norm(vector)
    if length == 0.0:
        raise UserError(
            "power iteration hit an exact zero vector (H v = 0): the block's Hessian is zero "
            "on the start vector; try another seed or the lanczos solver."
        )
    return vector / length


def _deflate(product: torch.Tensor, found: list[torch.Tensor]) -> torch.Tensor:
    for other in found:
        product = product - dot(other, product) * other
    return product
