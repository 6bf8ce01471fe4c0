"""Adam-preconditioned sharpness λ₁(P⁻¹H), P = diag(√v̂ + ε), and the edge-of-stability thresholds.

Adam's update is Δθ = −η P⁻¹ m̂: near a minimum it is gradient descent on the preconditioned problem, stable
while η·λ₁(P⁻¹H) < (2 + 2β₁)/(1 − β₁) (38 at β₁ = 0.9; Cohen et al. 2022, "Adaptive Gradient Methods at the
Edge of Stability"); plain gradient descent needs η·λ_max(H) < 2 (Cohen et al. 2021). P⁻¹H is not symmetric,
but it is similar to P^-1/2 H P^-1/2, which is, with the same eigenvalues: the solvers run on that.

Per-parameter learning rates (LoRA+ trains B at ratio·η) are folded into P: the update of parameter i is
η_i P_i⁻¹ m̂_i = η (η_i/η) P_i⁻¹ m̂_i, so P_i is divided by η_i/η, with η the first parameter group's rate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from hessian_lora.core.errors import UserError
from hessian_lora.hessian._numerics import Callback
from hessian_lora.hessian.operator import LinearOperator, ScaledOperator
from hessian_lora.hessian.results import PreconditionedResult
from hessian_lora.hessian.storage import KrylovMemory
from hessian_lora.hessian.thresholds import adam_thresholds as adam_thresholds  # re-exported: its old home
from hessian_lora.settings import solvers


def adam_preconditioner(
    second_moments: Mapping[str, torch.Tensor],
    names: Sequence[str],
    *,
    eps: float,
    lr_ratios: Mapping[str, float] | None = None,
) -> torch.Tensor:
    """The diagonal of P (flat, in ``names`` order) from bias-corrected second moments v̂ keyed by name."""
    missing = [name for name in names if name not in second_moments]
    if missing:
        raise UserError(
            f"the optimizer state has no second moment for {missing[0]} (and {len(missing) - 1} more): "
            "the checkpoint's optimizer belongs to another adapter."
        )
    pieces = []
    for name in names:
        diagonal = second_moments[name].detach().double().sqrt().add(eps).reshape(-1)
        ratio = (lr_ratios or {}).get(name, 1.0)
        pieces.append(diagonal / ratio)
    return torch.cat(pieces)


def preconditioned_sharpness(
    operator: LinearOperator,
    preconditioner: torch.Tensor,
    *,
    lr: float | None,
    beta1: float,
    eps: float,
    step: int,
    solver: str = solvers.DEFAULT_SOLVER,
    tol: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
    callback: Callback | None = None,
    memory: KrylovMemory | None = None,
) -> PreconditionedResult:
    """λ₁(P⁻¹H) for the diagonal ``preconditioner`` P, on P^-1/2 H P^-1/2, by the solver the table names for
    ``solver`` (:func:`hessian_lora.settings.solvers.preconditioned_solver`: Lanczos for PyHessian's).

    Args:
        operator: H.
        preconditioner: P's diagonal (flat, positive).
        lr: the learning rate of the thresholds (None: no thresholds).
        beta1: Adam's β₁.
        eps: Adam's ε (recorded).
        step: the optimizer step (recorded).
        solver: the measurement's solver.
        tol: the relative residual.
        max_iter: the iteration cap.
        seed: the start vector's seed.
        callback: called with each iteration's record.
        memory: the Krylov vectors' memory.

    Returns:
        The sharpness, the thresholds and the solver's result.

    Raises:
        UserError: a non-positive preconditioner, or a solver the table gives no preconditioned solver.

    Examples:
        H = diag(1, ..., 5) under P = 2·I: λ₁(P⁻¹H) = 5/2, and gradient descent's threshold 2/η at η = 0.1.

        >>> import torch
        >>> from hessian_lora.hessian.operator import DiagonalOperator
        >>> from hessian_lora.hessian.preconditioned import preconditioned_sharpness
        >>> operator = DiagonalOperator(torch.arange(1.0, 6.0, dtype=torch.float64))
        >>> preconditioner = torch.full((5,), 2.0, dtype=torch.float64)
        >>> result = preconditioned_sharpness(
        ...     operator, preconditioner, lr=0.1, beta1=0.9, eps=1e-8, step=1, tol=1e-8
        ... )
        >>> round(result.sharpness, 6), result.eigen.converged, round(result.gd_threshold, 6)
        (2.5, True, 20.0)
    """
    if preconditioner.shape != (operator.size,):
        raise ValueError(
            f"preconditioner has shape {tuple(preconditioner.shape)}, operator size {operator.size}"
        )
    runner = solvers.preconditioned_solver(
        solver
    )  # before any product: an unsupported solver is refused at once
    if bool((preconditioner <= 0).any()):
        raise UserError("the Adam preconditioner has non-positive entries: eps must be > 0.")
    scaled = ScaledOperator(operator, preconditioner.double().rsqrt())
    eigen = runner.run(
        scaled,
        solvers.SolveRequest(
            k=1, which="largest", tol=tol, max_iter=max_iter, seed=seed, callback=callback, memory=memory
        ),
    )
    gd_threshold, adam_threshold = adam_thresholds(lr, beta1)
    return PreconditionedResult(
        sharpness=float(eigen.largest[0]),
        lr=lr,
        beta1=beta1,
        eps=eps,
        step=step,
        gd_threshold=gd_threshold,
        adam_threshold=adam_threshold,
        eigen=eigen,
    )
