"""Helpers the solvers share: seeded start vectors, convergence thresholds, progress callbacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from hessian_lora.core.errors import UserError
from hessian_lora.hessian.results import IterationRecord

Callback = Callable[[IterationRecord], None]

# A residual below this multiple of machine epsilon times the spectral scale is below the products' own
# round-off (float32 HVPs agree with each other to ~3e-6 relative), so it counts as converged.
NOISE_FLOOR_EPS = 100.0


def random_vector(
    size: int,
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
    kind: Literal["normal", "rademacher"] = "normal",
) -> torch.Tensor:
    """A start vector drawn on the CPU from ``seed`` (identical on every device and every rank)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if kind == "normal":
        vector = torch.randn(size, generator=generator, dtype=torch.float64)
    elif kind == "rademacher":
        vector = torch.randint(0, 2, (size,), generator=generator).to(torch.float64) * 2 - 1
    else:
        raise ValueError(f"unknown random vector kind {kind!r}")
    return vector.to(device=device, dtype=dtype)


class ProbeStream:
    """Successive random vectors from one generator seeded by ``seed``: two seeds give independent streams (probes
    drawn as seed, seed + 1, ... made seeds 1000 and 1001 share all but one probe)."""

    def __init__(
        self,
        size: int,
        dtype: torch.dtype,
        device: torch.device,
        seed: int,
        kind: Literal["normal", "rademacher"] = "rademacher",
    ) -> None:
        self.size, self.dtype, self.device, self.kind = size, dtype, device, kind
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def next(self) -> torch.Tensor:
        if self.kind == "normal":
            vector = torch.randn(self.size, generator=self.generator, dtype=torch.float64)
        else:
            vector = torch.randint(0, 2, (self.size,), generator=self.generator).to(torch.float64) * 2 - 1
        return vector.to(device=self.device, dtype=self.dtype)


def converged_threshold(value: float, scale: float, tol: float, dtype: torch.dtype) -> float:
    """The residual that certifies ``value``: tol·|value|, but never below the dtype's round-off floor."""
    return max(tol * abs(value), NOISE_FLOOR_EPS * torch.finfo(dtype).eps * scale)


def check_solver_arguments(tol: float, max_iter: int, k: int) -> None:
    if not tol > 0:
        raise UserError(f"tol must be positive, got {tol}: e.g. tol=1e-3 (relative).")
    if max_iter < 1:
        raise UserError(f"max_iter must be >= 1, got {max_iter}.")
    if k < 1:
        raise UserError(f"k (eigenvalues per end) must be >= 1, got {k}.")
