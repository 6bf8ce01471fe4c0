"""Frozen result records of the Hessian solvers, each with ``to_dict()`` / ``from_dict()`` for JSON files.

Large tensors (eigenvectors) ride along in fields marked ``_TRANSIENT``: kept in memory for the caller (e.g.
deflation, warm starts), never written to JSON.

Importing this module imports no torch: reading a report back (``hessian_lora.measurement.reports``, the analysis) stays
torch-free. Only :meth:`DensityResult.smoothed` computes with torch.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    # ``from_dict`` resolves every field's annotation (typing.get_type_hints), the transient eigenvector fields'
    # too, so the name must exist at run time; they are never read back, so Any loses nothing.
    Tensor = Any

_TRANSIENT = {"transient": True}
_Record = TypeVar("_Record", bound="_Serializable")


class _Serializable:
    """``to_dict`` / ``from_dict`` driven by the dataclass fields and their type hints."""

    def to_dict(self) -> dict[str, Any]:
        return {
            item.name: _encode(getattr(self, item.name))
            for item in dataclasses.fields(self)  # type: ignore[arg-type]  # the mixin is used on frozen dataclasses only
            if not item.metadata.get("transient")
        }

    @classmethod
    def from_dict(cls: type[_Record], data: dict[str, Any]) -> _Record:
        hints = typing.get_type_hints(cls)
        values = {}
        for item in dataclasses.fields(cls):  # type: ignore[arg-type]  # as in to_dict
            if item.metadata.get("transient") or item.name not in data:
                continue
            values[item.name] = _decode(hints[item.name], data[item.name])
        return cls(**values)


def _encode(value: Any) -> Any:
    if isinstance(value, _Serializable):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_encode(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _encode(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; None reads back as "not available"
    return value


def _decode(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _decode(options[0], value) if len(options) == 1 else value
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], item) for item in value)
        return tuple(_decode(arg, item) for arg, item in zip(args, value))
    if origin is dict:
        _, value_hint = typing.get_args(hint)
        return {key: _decode(value_hint, item) for key, item in value.items()}
    if isinstance(hint, type) and issubclass(hint, _Serializable):
        return hint.from_dict(value)
    if hint is float:
        return float(value)
    return value


@dataclass(frozen=True)
class IterationRecord(_Serializable):
    """One solver iteration: the current estimates (Ritz values, Rayleigh quotients or running trace)."""

    iteration: int
    hvps: int
    seconds: float
    values: tuple[float, ...]
    residuals: tuple[float, ...] = ()


@dataclass(frozen=True)
class EigenResult(_Serializable):
    """Extreme eigenvalues of a symmetric operator with their residual certificates.

    ``largest`` is in descending order, ``smallest`` in ascending order; either may be empty when not asked
    for. ``*_residuals[i]`` is ‖H y − θ y‖ for the unit Ritz vector y of that value: by Weyl's theorem some
    eigenvalue lies within it. ``converged`` says every requested value met ``residual ≤ tol·|θ|`` (or the
    round-off floor of the operator's dtype); ``stop_reason`` says why the iteration ended.

    ``certificate`` names what ``converged`` was tested on, and ``*_bounds[i]`` is the bound it gives on the
    value's error, |λ − θ| ≤ bound: ``"residual"`` (Weyl; the bound is the residual, and the residual must meet
    tol), or ``"value"`` (Lanczos only: the gap bound ‖r‖²/δ of Kato–Temple / Kahan–Parlett–Jiang, Weyl's ‖r‖
    where the gap is not resolved; the bound must meet tol·|θ|). Reports written before these fields existed
    read back as ``"residual"`` with no bounds.

    Attributes:
        solver: the solver that ran (its name in the solver table).
        largest: the largest eigenvalues found, descending.
        largest_residuals: ‖H y − θ y‖ of each largest value's unit Ritz vector.
        smallest: the smallest eigenvalues found, ascending.
        smallest_residuals: ‖H y − θ y‖ of each smallest value's unit Ritz vector.
        converged: whether every requested value met its certificate.
        stop_reason: why the iteration ended (e.g. ``converged``, ``max_iter``, ``memory``).
        iterations: the iterations (steps) made.
        hvps: the Hessian-vector products made.
        seconds: the wall time.
        tol: the relative tolerance asked for.
        max_iter: the iteration cap asked for.
        size: the operator's size (parameters).
        history: one record per iteration (products, seconds, current values and residuals).
        details: solver-specific numbers (e.g. the start's random share, the kept products).
        largest_vectors: the largest values' Ritz vectors (not written to reports).
        smallest_vectors: the smallest values' Ritz vectors (not written to reports).
        certificate: what ``converged`` was tested on: ``residual`` or ``value``.
        largest_bounds: the bound on each largest value's error, |λ − θ| ≤ bound.
        smallest_bounds: the bound on each smallest value's error.
    """

    solver: str
    largest: tuple[float, ...]
    largest_residuals: tuple[float, ...]
    smallest: tuple[float, ...]
    smallest_residuals: tuple[float, ...]
    converged: bool
    stop_reason: str
    iterations: int
    hvps: int
    seconds: float
    tol: float
    max_iter: int
    size: int
    history: tuple[IterationRecord, ...] = ()
    details: dict[str, float] = field(default_factory=dict)
    largest_vectors: Tensor | None = field(default=None, compare=False, repr=False, metadata=_TRANSIENT)
    smallest_vectors: Tensor | None = field(default=None, compare=False, repr=False, metadata=_TRANSIENT)
    certificate: str = "residual"
    largest_bounds: tuple[float, ...] = ()
    smallest_bounds: tuple[float, ...] = ()

    @property
    def lambda_max(self) -> float | None:
        """The largest eigenvalue found (None when the largest end was not asked for)."""
        return self.largest[0] if self.largest else None

    @property
    def lambda_min(self) -> float | None:
        """The smallest eigenvalue found (None when the smallest end was not asked for)."""
        return self.smallest[0] if self.smallest else None

    @property
    def residual(self) -> float | None:
        """The residual of λ_max (of λ_min when only the smallest were asked for)."""
        if self.largest_residuals:
            return self.largest_residuals[0]
        return self.smallest_residuals[0] if self.smallest_residuals else None


@dataclass(frozen=True)
class TraceResult(_Serializable):
    """A stochastic trace estimate; ``std_error`` is the standard error of the mean of the sampled terms."""

    method: str
    trace: float
    std_error: float | None
    hvps: int
    seconds: float
    size: int
    history: tuple[IterationRecord, ...] = ()


@dataclass(frozen=True)
class DensityResult(_Serializable):
    """Stochastic Lanczos quadrature: per run, Gauss nodes (Ritz values) and weights (summing to one).

    The spectral density of H (eigenvalue counts divided by the dimension) is approximated by the average of
    the runs' discrete measures; :meth:`smoothed` turns it into a function with Gaussian kernels.
    """

    nodes: tuple[tuple[float, ...], ...]
    weights: tuple[tuple[float, ...], ...]
    steps: int
    hvps: int
    seconds: float
    size: int

    def moment(self, power: int) -> float:
        """∫ λ^power dμ of the averaged quadrature measure (≈ tr(H^power) / size)."""
        per_run = [sum(w * x**power for x, w in zip(xs, ws)) for xs, ws in zip(self.nodes, self.weights)]
        return sum(per_run) / len(per_run)

    def smoothed(self, grid: Sequence[float] | torch.Tensor, sigma: float) -> torch.Tensor:
        """The averaged measure convolved with a Gaussian of width ``sigma``, evaluated on ``grid`` (float64)."""
        import torch  # local: keeps importing the results (reading reports) free of torch

        if sigma <= 0:
            raise ValueError("sigma must be positive")
        points = torch.as_tensor(grid, dtype=torch.float64)
        result = torch.zeros_like(points)
        for xs, ws in zip(self.nodes, self.weights):
            nodes = torch.tensor(xs, dtype=torch.float64)
            weights = torch.tensor(ws, dtype=torch.float64)
            kernel = torch.exp(-0.5 * ((points[:, None] - nodes[None, :]) / sigma) ** 2)
            result += kernel @ weights / (sigma * math.sqrt(2 * math.pi))
        return result / len(self.nodes)


@dataclass(frozen=True)
class PreconditionedResult(_Serializable):
    """λ₁(P⁻¹H) with P = diag(√v̂ + ε) from Adam's state, beside the edge-of-stability thresholds.

    ``lr`` is the learning rate the thresholds use; ``gd_threshold`` = 2/η (gradient descent, Cohen et al.
    2021) compares with the raw λ_max, ``adam_threshold`` = (2 + 2β₁)/((1 − β₁)η) (Cohen et al. 2022) with
    the preconditioned sharpness.
    """

    sharpness: float
    lr: float | None
    beta1: float
    eps: float
    step: int
    gd_threshold: float | None
    adam_threshold: float | None
    eigen: EigenResult


@dataclass(frozen=True)
class BlockReport(_Serializable):
    """Everything measured on one parameter block (the whole adapter or one module's factors).

    Attributes:
        name: the block's name (``whole``, or the module's name).
        parameters: the number of parameters in the block.
        parameter_names: the names of the block's parameters.
        lambda_max: the largest eigenvalue (None when not asked for).
        lambda_min: the smallest eigenvalue (None when not asked for).
        residual: the residual of λ_max's Ritz vector (None without λ_max).
        converged: whether the solver certified every requested value.
        hvps: the Hessian-vector products made on the block.
        seconds: the block's wall time, eigenvalues and extras together.
        tokens: the loss tokens the Hessian averages over.
        batches: the batches those tokens came in.
        eigen: the solver's full result.
        trace: the Hutch++ trace estimate (None when not asked for).
        density: the spectral density (None when not asked for).
        preconditioned: Adam's preconditioned sharpness (None when not asked for).
        scan_group: the id of the blocks solved side by side on shared passes (None: solved on its own).
    """

    name: str
    parameters: int
    parameter_names: tuple[str, ...]
    lambda_max: float | None
    lambda_min: float | None
    residual: float | None
    converged: bool
    hvps: int
    seconds: float
    tokens: int
    batches: int
    eigen: EigenResult
    trace: TraceResult | None = None
    density: DensityResult | None = None
    preconditioned: PreconditionedResult | None = None
    # The id of the blocks whose solvers ran side by side on shared passes (hessian.scan); None: solved on its
    # own. Inside a group each block's eigen seconds run from the group's start, so they overlap: a group's
    # wall time is its longest member's, which is what the analysis's cost counts.
    scan_group: str | None = None

    @property
    def extra_seconds(self) -> float:
        """The seconds after the eigenvalues (trace, density, preconditioning), each block on its own."""
        return max(float(self.seconds) - float(self.eigen.seconds), 0.0)


@dataclass(frozen=True)
class EigenReport(_Serializable):
    """The output of ``hessian-lora eigen`` / :func:`hessian_lora.eigen`: settings, then one report per block.

    Attributes:
        settings: the measurement's settings, as recorded (``MeasureSettings.to_dict``).
        blocks: one report per block, in the order measured.
        source: what was measured: the checkpoint or adapter, the model, the data (``source.data``).
    """

    settings: dict[str, Any]
    blocks: tuple[BlockReport, ...]
    source: dict[str, Any] = field(default_factory=dict)

    def block(self, name: str) -> BlockReport:
        """The report of the block called ``name`` (KeyError when there is none)."""
        for report in self.blocks:
            if report.name == name:
                return report
        raise KeyError(name)

    @property
    def lambda_max(self) -> dict[str, float | None]:
        """λ_max of every block by name (None where the block has none)."""
        return {report.name: report.lambda_max for report in self.blocks}
