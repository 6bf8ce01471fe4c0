"""Stochastic trace estimators: Hutchinson and Hutch++ (Meyer, Musco, Musco & Woodruff 2021).

Hutchinson averages zᵀHz over Rademacher vectors z (unbiased; exact when H is diagonal, since z_i² = 1).
Hutch++ spends a third of its products on a sketch Q of H's dominant range, takes tr(QᵀHQ) exactly and applies
Hutchinson only to the deflated remainder (I − QQᵀ)H(I − QQᵀ): far lower variance when a few eigenvalues
dominate, as they do for loss Hessians.
"""

from __future__ import annotations

import math
import time

import torch

from hessian_lora.core.errors import UserError
from hessian_lora.hessian._numerics import Callback, ProbeStream
from hessian_lora.hessian.operator import LinearOperator
from hessian_lora.hessian.reductions import dot, inner, orthonormal_rows
from hessian_lora.hessian.results import IterationRecord, TraceResult

# Probes per operator call in Hutchinson without a stopping tolerance.
PROBES_PER_CALL = 8


def hutchinson(
    operator: LinearOperator,
    *,
    samples: int = 100,
    seed: int = 0,
    tol: float | None = None,
    callback: Callback | None = None,
) -> TraceResult:
    """Mean of zᵀHz over up to ``samples`` Rademacher vectors; stops early once std error ≤ tol·|mean|.

    Without ``tol`` the probes go to the operator in chunks of ``PROBES_PER_CALL`` (one ``matmat`` each: a
    batching operator shares its first-order graphs); with ``tol`` one at a time, so no product is made after
    the stop.

    Examples:
        On a diagonal every Rademacher probe gives the trace exactly (zᵢ² = 1), so the standard error is 0:

        >>> import torch
        >>> from hessian_lora.hessian.operator import DiagonalOperator
        >>> from hessian_lora.hessian.trace import hutchinson
        >>> result = hutchinson(DiagonalOperator(torch.arange(1.0, 6.0, dtype=torch.float64)), samples=16)
        >>> round(result.trace, 6), round(result.std_error, 6)
        (15.0, 0.0)
    """
    if samples < 1:
        raise UserError(f"trace samples must be >= 1, got {samples}.")
    began = time.perf_counter()
    terms: list[float] = []
    history: list[IterationRecord] = []
    probes = ProbeStream(operator.size, operator.dtype, operator.device, seed)
    chunk = 1 if tol is not None else PROBES_PER_CALL
    pending: list[float] = []
    for index in range(samples):
        if not pending:
            block = torch.stack([probes.next() for _ in range(min(chunk, samples - index))])
            images = operator.matmat(block.T).T
            pending = [dot(probe, image) for probe, image in zip(block, images)]
        terms.append(pending.pop(0))
        mean = sum(terms) / len(terms)
        error = _standard_error(terms)
        record = IterationRecord(
            index + 1, index + 1, time.perf_counter() - began, (mean,), (error,) if error is not None else ()
        )
        history.append(record)
        if callback is not None:
            callback(record)
        if tol is not None and error is not None and len(terms) >= 3 and error <= tol * abs(mean):
            break
    return TraceResult(
        "hutchinson",
        sum(terms) / len(terms),
        _standard_error(terms),
        len(terms),
        time.perf_counter() - began,
        operator.size,
        tuple(history),
    )


def hutchplusplus(
    operator: LinearOperator,
    *,
    hvps: int = 99,
    seed: int = 0,
    callback: Callback | None = None,
) -> TraceResult:
    """Hutch++ with a budget of ``hvps`` products (a third each: sketch, projection, deflated Hutchinson).

    When the sketch already spans the whole space (size ≤ hvps/3) the result is the exact trace.

    Examples:
        A 5×5 matrix with a budget of 15 products: the sketch spans the space, the trace is exact.

        >>> import torch
        >>> from hessian_lora.hessian.operator import DenseOperator
        >>> from hessian_lora.hessian.trace import hutchplusplus
        >>> matrix = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64)) + 0.5
        >>> round(hutchplusplus(DenseOperator(matrix), hvps=15).trace, 6)
        17.5
    """
    if hvps < 3:
        raise UserError(f"Hutch++ needs at least 3 products, got {hvps}.")
    began = time.perf_counter()
    size, dtype, device = operator.size, operator.dtype, operator.device
    sketch_size = min(hvps // 3, size)
    history: list[IterationRecord] = []
    used = 0

    def apply_rows(rows: torch.Tensor) -> torch.Tensor:
        nonlocal used
        used += int(rows.shape[0])
        return operator.matmat(rows.T).T.contiguous()

    probes = ProbeStream(size, dtype, device, seed)
    sketch = apply_rows(torch.stack([probes.next() for _ in range(sketch_size)]))
    dependent = 100 * torch.finfo(dtype).eps
    basis = orthonormal_rows(sketch, drop_below=dependent)  # Q as rows
    if basis.shape[0] < sketch_size:
        # Dependent sketch columns (a low-rank H, or Rademacher draws that coincide): complete Q with random
        # directions, as a QR would, so a sketch as large as the space still gives the exact trace.
        fill = ProbeStream(size, dtype, device, seed + 2**31, kind="normal")
        filler = torch.stack([fill.next() for _ in range(sketch_size - basis.shape[0])])
        basis = orthonormal_rows(torch.cat([basis, filler]), drop_below=dependent)
    exact_part = sum(dot(row, image) for row, image in zip(basis, apply_rows(basis)))
    record = IterationRecord(1, used, time.perf_counter() - began, (exact_part,))
    history.append(record)
    if callback is not None:
        callback(record)
    remainder_terms: list[float] = []
    if basis.shape[0] < size:
        projected = torch.stack([probes.next() for _ in range(hvps // 3)])
        projected = torch.stack([probe - inner(basis, probe).to(basis) @ basis for probe in projected])
        before = used
        images = apply_rows(projected)
        for i, (probe, product) in enumerate(zip(projected, images)):
            product = product - inner(basis, product).to(basis) @ basis
            remainder_terms.append(dot(probe, product))
            estimate = exact_part + sum(remainder_terms) / len(remainder_terms)
            record = IterationRecord(i + 2, before + i + 1, time.perf_counter() - began, (estimate,))
            history.append(record)
            if callback is not None:
                callback(record)
    remainder = sum(remainder_terms) / len(remainder_terms) if remainder_terms else 0.0
    error = _standard_error(remainder_terms) if remainder_terms else 0.0
    return TraceResult(
        "hutch++", exact_part + remainder, error, used, time.perf_counter() - began, size, tuple(history)
    )


def _standard_error(terms: list[float]) -> float | None:
    if len(terms) < 2:
        return None
    mean = sum(terms) / len(terms)
    variance = sum((t - mean) ** 2 for t in terms) / (len(terms) - 1)
    return math.sqrt(variance / len(terms))
