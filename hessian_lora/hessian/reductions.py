"""Exact reductions over parameter-sized vectors: every norm, dot product and projection of the engine.

Why: torch's CPU float32 reductions accumulate in float32. Measured here (torch 2.13, one thread,
``x = torch.randn(n) * 0.5``): ``x.norm()`` is off by 1.0e-5 relative at 1 M entries, 9.8e-4 at 19.5 M and
7.9e-3 at 80 M; ``x @ x`` by 7.4e-4 at 20 M (PyTorch issue #169237, open). Lanczos normalises every basis
vector and forms every diagonal entry of T with these, so T drifts from VᵀHV and a Ritz pair that the recurrence
calls converged fails the explicit check (the README's 19.5 M-parameter blocks did, by 2-5×). GPU reductions are
tree-shaped and far better, so CPU and GPU answers disagreed as well.

Here every reduction accumulates in float64: the vectors stay in the operator's dtype (no second copy of a
basis), and each is read in column chunks that are cast to float64 on the fly. The product of two float32
numbers is exact in float64, so the only error left is float64 summation (≈ 1e-16·√n relative). A chunk of
``CHUNK_BYTES`` (float64 rows × columns) stays in cache: on this CPU a 30-row projection over 20 M entries costs
0.28 s, against 0.19 s for the float32 ``B @ y`` it replaces (0.35 s with 65 k-column chunks, 3.1 s with 1 M).

Results are float64 tensors on the CPU (or Python floats); callers cast coefficients back to the vectors' dtype
only to form linear combinations, whose per-entry sums run over a handful of terms, not over the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# float64 bytes of one chunk (rows × columns): small enough to stay in a CPU's L2/L3 cache.
CHUNK_BYTES = 1 << 22
_MIN_COLUMNS = 1024


def _columns(rows: int) -> int:
    return max(_MIN_COLUMNS, CHUNK_BYTES // (8 * max(rows, 1)))


def dot(x: torch.Tensor, y: torch.Tensor) -> float:
    """xᵀy of two flat vectors, accumulated in float64."""
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"dot needs two flat vectors of one size, got {tuple(x.shape)} and {tuple(y.shape)}")
    y = y.to(x.device)
    step = _columns(1)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.numel(), step):
        total += torch.dot(x[start : start + step].double(), y[start : start + step].double())
    return float(total)


def norm(x: torch.Tensor) -> float:
    """‖x‖₂ of a flat vector, accumulated in float64 (a float32 entry squared cannot overflow float64)."""
    if x.ndim != 1:
        raise ValueError(f"norm needs a flat vector, got shape {tuple(x.shape)}")
    step = _columns(1)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.numel(), step):
        chunk = x[start : start + step].double()
        total += torch.dot(chunk, chunk)
    return math.sqrt(float(total))


def inner(rows: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``rows @ vectors.T`` in float64 on the CPU: rows (m × n) against one vector (n,) → (m,), or against a block
    (k × n) → (m × k). Neither operand is copied whole; each column chunk is cast on the fly."""
    single = vectors.ndim == 1
    block = vectors.reshape(1, -1) if single else vectors
    if rows.ndim != 2 or block.ndim != 2 or rows.shape[1] != block.shape[1]:
        raise ValueError(
            f"inner needs rows (m × n) and vectors (k × n), got {tuple(rows.shape)} and "
            f"{tuple(vectors.shape)}"
        )
    block = block.to(rows.device)
    m, k = int(rows.shape[0]), int(block.shape[0])
    total = torch.zeros(m, k, dtype=torch.float64, device=rows.device)
    if m and k:
        step = _columns(m + k)
        for start in range(0, int(rows.shape[1]), step):
            total += rows[:, start : start + step].double() @ block[:, start : start + step].double().T
    total = total.cpu()
    return total[:, 0] if single else total


def inner_many(pages: Sequence[torch.Tensor], vectors: torch.Tensor) -> torch.Tensor:
    """:func:`inner` of the rows of several pages stacked (pages may live on another device than ``vectors``;
    each page's chunks move to the vectors' device)."""
    parts = []
    for page in pages:
        if page.shape[0] == 0:
            continue
        if page.device != vectors.device:
            parts.append(_inner_moving(page, vectors))
        else:
            parts.append(inner(page, vectors))
    if not parts:
        k = 1 if vectors.ndim == 1 else int(vectors.shape[0])
        return torch.zeros((0,) if vectors.ndim == 1 else (0, k), dtype=torch.float64)
    return torch.cat(parts)


def _inner_moving(page: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``inner`` of a page held on the host against vectors on an accelerator, chunk by chunk."""
    single = vectors.ndim == 1
    block = vectors.reshape(1, -1) if single else vectors
    m, k = int(page.shape[0]), int(block.shape[0])
    total = torch.zeros(m, k, dtype=torch.float64, device=block.device)
    step = max(_columns(m + k), 1 << 16)  # larger transfers: each chunk crosses the bus once
    for start in range(0, int(page.shape[1]), step):
        chunk = page[:, start : start + step].to(block.device, non_blocking=True)
        total += chunk.double() @ block[:, start : start + step].double().T
    total = total.cpu()
    return total[:, 0] if single else total


def orthonormal_rows(rows: torch.Tensor, *, drop_below: float = 0.0) -> torch.Tensor:
    """An orthonormal basis (rows) of the span of ``rows`` by classical Gram–Schmidt twice, every coefficient and
    norm in float64 (LAPACK's QR would take its column norms in the vectors' precision). A row whose remainder
    is at most ``drop_below`` times its own norm is left out (a dependent direction)."""
    kept: list[torch.Tensor] = []
    for row in rows:
        original = norm(row)
        vector = row
        for _ in range(2):
            if kept:
                stacked = torch.stack(kept)
                vector = vector - inner(stacked, vector).to(device=row.device, dtype=row.dtype) @ stacked
        length = norm(vector)
        if length > 0.0 and length > drop_below * original:
            kept.append(vector / length)
    if not kept:
        return rows.new_zeros(0, rows.shape[1])
    return torch.stack(kept)
