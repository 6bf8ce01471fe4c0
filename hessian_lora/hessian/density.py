"""Spectral density by stochastic Lanczos quadrature (SLQ; Lin, Saad & Yang 2016; Ghorbani et al. 2019).

m Lanczos steps from a normalised Rademacher vector v give T = S diag(θ) Sᵀ; the nodes θ_i with weights
S[0, i]² are the m-point Gauss quadrature of the measure Σ_j (vᵀu_j)² δ(λ_j), exact for polynomials of degree
≤ 2m − 1: Σ_i w_i θ_i^p = vᵀH^p v. Averaging runs estimates the density (1/n) Σ_j δ(λ_j) (in expectation,
since E[(vᵀu_j)²] = 1/n for normalised Rademacher v). The weights of a run sum to one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from hessian_lora.core.errors import UserError
from hessian_lora.hessian._numerics import Callback, random_vector
from hessian_lora.hessian.lanczos import lanczos_steps
from hessian_lora.hessian.operator import LinearOperator
from hessian_lora.hessian.results import DensityResult, IterationRecord
from hessian_lora.hessian.storage import KrylovMemory


def spectral_density(
    operator: LinearOperator,
    *,
    steps: int = 30,
    runs: int = 1,
    seed: int = 0,
    starts: Sequence[torch.Tensor] | None = None,
    callback: Callback | None = None,
    memory: KrylovMemory | None = None,
) -> DensityResult:
    """``runs`` SLQ runs of ``steps`` products each (fewer if the Krylov space closes early).

    ``starts`` replaces the random Rademacher start vectors (one per run). ``memory``: where each run's basis
    may live (:mod:`hessian_lora.hessian.storage`); a run whose basis cannot grow ends early, with fewer nodes.

    Examples:
        Five steps on diag(1, ..., 5) close the Krylov space: the nodes are the eigenvalues, the weights sum
        to 1 and the first moment is the mean eigenvalue.

        >>> import torch
        >>> from hessian_lora.hessian.density import spectral_density
        >>> from hessian_lora.hessian.operator import DiagonalOperator
        >>> density = spectral_density(DiagonalOperator(torch.arange(1.0, 6.0, dtype=torch.float64)), steps=5)
        >>> [round(node, 6) for node in density.nodes[0]]
        [1.0, 2.0, 3.0, 4.0, 5.0]
        >>> round(density.moment(0), 6), round(density.moment(1), 6)
        (1.0, 3.0)
    """
    if steps < 1 or runs < 1:
        raise UserError(f"density needs steps >= 1 and runs >= 1, got steps={steps}, runs={runs}.")
    if starts is not None and len(starts) != runs:
        raise ValueError(f"{len(starts)} start vectors for {runs} runs")
    began = time.perf_counter()
    all_nodes: list[tuple[float, ...]] = []
    all_weights: list[tuple[float, ...]] = []
    hvps = 0
    for run in range(runs):
        start = (
            starts[run]
            if starts is not None
            else random_vector(operator.size, operator.dtype, operator.device, seed + run, kind="rademacher")
        )
        state = None
        # The shared Lanczos kernel without restarts: it ends early when the Krylov space of the start closes.
        for state in lanczos_steps(operator, start, max_dim=steps, restart_seed=None, memory=memory):
            if callback is not None:
                callback(
                    IterationRecord(
                        state.step, state.hvps, time.perf_counter() - began, (state.alpha,), (state.beta,)
                    )
                )
        assert state is not None
        hvps += state.hvps
        nodes, weights = state.theta, state.ritz[0, :] ** 2
        all_nodes.append(tuple(float(x) for x in nodes))
        all_weights.append(tuple(float(w) for w in weights / weights.sum()))
    return DensityResult(
        tuple(all_nodes), tuple(all_weights), steps, hvps, time.perf_counter() - began, operator.size
    )
