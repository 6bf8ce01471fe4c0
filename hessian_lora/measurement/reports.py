"""Eigen reports as analysis and plots read them: :meth:`EigenReport.from_dict`, seen through a thin view.

The engine writes one report format (``hessian.results.EigenReport.to_dict``) and this is its one reader on the
application side. :class:`ReportView` adds what analysis needs beyond the raw report: which block is the whole
adapter and which are modules (by name, whatever an older version called them), each block's layer and
projection, and merging the ``_init_<part>`` reports of one adapter into one.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

from hessian_lora.core.errors import UserError
from hessian_lora.hessian.filters import layer_index
from hessian_lora.hessian.results import (
    BlockReport,
    DensityResult,
    EigenReport,
    EigenResult,
    IterationRecord,
    PreconditionedResult,
    TraceResult,
)
from hessian_lora.settings.schemas import read_json

# ----------------------------------------------------------------------------------------------------------
# Eigen reports: EigenReport.from_dict, seen through a view that knows the whole adapter from the modules


def optional_float(value: Any) -> float | None:
    """``value`` as a float, or None when it is None, empty or not a number."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# Names the whole-adapter block has had (WholeAdapter's default is "adapter").
WHOLE_BLOCK_NAMES = frozenset({"whole", "adapter", "all", "whole_adapter", "model", ""})
# The optional parts of a block that plots look for (:meth:`ReportView.first_with`).
BlockPart = Literal["history", "density", "trace", "solver", "precond_sharpness", "precond_history"]
_FACTOR_SUFFIXES = frozenset({"lora_A", "lora_B", "lora_magnitude_vector", "default", "weight", "base_layer"})


def module_kind(name: str) -> str:
    """The projection a block belongs to (``q_proj``, ``down_proj``, ...): the last name part that is not a
    LoRA-factor suffix."""
    parts = [part for part in name.replace("/", ".").split(".") if part]
    for part in reversed(parts):
        if part not in _FACTOR_SUFFIXES and not part.isdigit():
            return part
    return name


def convergence_history(eigen: EigenResult | None) -> tuple[tuple[int, float], ...]:
    """(HVPs so far, top estimate) per iteration: the largest of each ``IterationRecord``'s values (Ritz values
    for Lanczos, the Rayleigh quotient for power iteration); records without values are skipped."""
    points = []
    for index, record in enumerate(eigen.history if eigen is not None else ()):
        values = [float(value) for value in record.values or () if value is not None]
        if values:
            points.append((int(record.hvps or index + 1), max(values)))
    return tuple(points)


def _usable_density(density: DensityResult | None) -> DensityResult | None:
    """The density if its per-run nodes and weights are present and consistent (else there is nothing to draw)."""
    if (
        density is None
        or not density.nodes
        or not density.weights
        or len(density.nodes) != len(density.weights)
    ):
        return None
    if any(len(nodes) != len(weights) or not nodes for nodes, weights in zip(density.nodes, density.weights)):
        return None
    return density


@dataclass(frozen=True)
class BlockView:
    """One block of an eigen report as analysis and plots see it; ``report`` is the engine's record."""

    report: BlockReport

    @property
    def name(self) -> str:
        """The block's name."""
        return self.report.name

    @property
    def lambda_max(self) -> float:
        """The block's λ_max."""
        return float(self.report.lambda_max)  # type: ignore[arg-type]  # views hold measured blocks only

    @property
    def uncertified_residual(self) -> float | None:
        """The relative residual ‖Hy − θy‖/|θ| of a λ_max its solver did not certify (None when it did): θ is then
        still a lower bound on λ_max and lies within this of an eigenvalue, but not within the requested tol."""
        if self.report.converged or self.report.residual is None:
            return None
        return float(self.report.residual) / abs(self.lambda_max) if self.lambda_max else math.inf

    @property
    def is_whole(self) -> bool:
        """Whether the block is the whole adapter."""
        return self.name.strip().lower() in WHOLE_BLOCK_NAMES

    @property
    def layer(self) -> int | None:
        """The block's decoder-layer index, or None."""
        return layer_index(self.name)

    @property
    def module(self) -> str:
        """The block's module kind (``q_proj``, ...)."""
        return module_kind(self.name)

    @property
    def solver(self) -> str | None:
        """The solver that measured the block, or None."""
        solver = self.report.eigen.solver if self.report.eigen is not None else None
        return solver if isinstance(solver, str) else None

    @property
    def history(self) -> tuple[tuple[int, float], ...]:
        """(products, λ) along the solve."""
        return convergence_history(self.report.eigen)

    @property
    def trace(self) -> float | None:
        """The Hutch++ trace estimate, or None."""
        return optional_float(self.report.trace.trace) if self.report.trace is not None else None

    @property
    def density(self) -> DensityResult | None:
        """The spectral density, or None when not usable."""
        return _usable_density(self.report.density)

    @property
    def precond_sharpness(self) -> float | None:
        """λ₁(P⁻¹H), or None."""
        precond = self.report.preconditioned
        return optional_float(precond.sharpness) if precond is not None else None

    @property
    def precond_history(self) -> tuple[tuple[int, float], ...]:
        """(products, λ) along the preconditioned solve."""
        precond = self.report.preconditioned
        return convergence_history(precond.eigen) if precond is not None else ()


@dataclass(frozen=True)
class ReportView:
    """What analysis and plots need from one eigen report (a ``hessian/*.json`` file)."""

    report: EigenReport
    path: str = ""
    # Blocks merged in from a report measured on another number of examples (an _init_modules.json made with
    # scripts/init_modules.py --samples): their count, since ``settings`` are the primary report's.
    merged_samples: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @cached_property
    def blocks(self) -> tuple[BlockView, ...]:  # built once: ``whole`` and ``modules`` compare by identity
        """The measured blocks."""
        return tuple(BlockView(block) for block in self.report.blocks if block.lambda_max is not None)

    @property
    def settings(self) -> Mapping[str, Any]:
        """The settings the report records."""
        return self.report.settings

    @cached_property
    def whole(self) -> BlockView | None:
        """The whole-adapter block: one named so, else the only block that names no layer (when the others do,
        or when it is alone)."""
        blocks = self.blocks
        named = [block for block in blocks if block.is_whole]
        if named:
            return named[0]
        unlayered = [block for block in blocks if block.layer is None]
        return unlayered[0] if len(unlayered) == 1 else None

    @property
    def modules(self) -> tuple[BlockView, ...]:
        """The per-module blocks (every block but the whole adapter's)."""
        whole = self.whole
        return tuple(block for block in self.blocks if block is not whole)

    @property
    def module_median(self) -> float | None:
        """The median λ_max over the per-module blocks, or None."""
        values = [block.lambda_max for block in self.modules if math.isfinite(block.lambda_max)]
        return float(np.median(values)) if values else None

    @property
    def precond_sharpness(self) -> float | None:
        """λ₁(P⁻¹H) of the whole adapter, or None."""
        block = self.whole
        return block.precond_sharpness if block else None

    def samples_of(self, block: BlockView) -> int | None:
        """The number of training examples ``block``'s λ_max was measured on (None when not recorded)."""
        if block.name in self.merged_samples:
            return self.merged_samples[block.name]
        samples = self.settings.get("samples")
        return samples if isinstance(samples, int) and not isinstance(samples, bool) else None

    def first_with(self, attribute: BlockPart) -> BlockView | None:
        """The whole block if it has ``attribute`` (e.g. ``density``), else the first block that has it."""
        whole = self.whole
        candidates = ([whole] if whole else []) + list(self.blocks)
        return next((block for block in candidates if getattr(block, attribute)), None)


def report_from_dict(data: Mapping[str, Any], *, path: str = "") -> ReportView:
    """``EigenReport.from_dict`` of a report as any version wrote it, keeping the blocks that hold a λ_max.

    Older reports may key blocks by name, or lack parts later versions write; missing fields read as None (the
    optional parts analysis and plots use are then absent) instead of failing the whole run directory.
    """
    raw_blocks = data.get("blocks")
    if isinstance(raw_blocks, Mapping):
        raw_blocks = [dict(value, name=value.get("name", key)) for key, value in raw_blocks.items()]
    blocks = [
        _complete(BlockReport, dict(item, name=str(item.get("name", "whole"))))
        for item in raw_blocks or []
        if isinstance(item, Mapping) and optional_float(item.get("lambda_max")) is not None
    ]
    settings = data.get("settings")
    try:
        report = EigenReport.from_dict(
            {"settings": dict(settings) if isinstance(settings, Mapping) else {}, "blocks": blocks}
        )
    except (TypeError, ValueError) as exc:  # a field that is there but of the wrong kind ("seconds": "x")
        raise UserError(
            f"eigen report {path or '(given)'} holds a value of the wrong type ({exc}): rerun the "
            "measurement (or delete the file)."
        ) from exc
    return ReportView(report, path)


def _complete(record: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with every required field of ``record`` present (None where missing), nested records likewise."""
    for item in dataclasses.fields(record):
        if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            data.setdefault(item.name, None)
    for key, nested in _NESTED_RECORDS.get(record, {}).items():
        value = data.get(key)
        if key == "history":
            data[key] = [_complete(nested, dict(item)) for item in value or [] if isinstance(item, Mapping)]
        elif value is not None:
            data[key] = _complete(nested, dict(value)) if isinstance(value, Mapping) else None
    return data


_NESTED_RECORDS: dict[type, dict[str, type]] = {
    BlockReport: {
        "eigen": EigenResult,
        "trace": TraceResult,
        "density": DensityResult,
        "preconditioned": PreconditionedResult,
    },
    PreconditionedResult: {"eigen": EigenResult},
    EigenResult: {"history": IterationRecord},
    TraceResult: {"history": IterationRecord},
}


def load_eigen_report(path: str | os.PathLike[str]) -> ReportView:
    """Read one ``hessian/*.json`` report (see :func:`report_from_dict`)."""
    data = read_json(path, what="eigen report", fix="rerun the measurement (or delete the file).")
    if not isinstance(data, Mapping):
        raise UserError(f"{str(path)!r} is not an eigen report (expected a JSON object with 'blocks').")
    return report_from_dict(data, path=str(path))


def merge_reports(primary: ReportView, extra: ReportView) -> ReportView:
    """``primary``'s blocks, completed by ``extra``: blocks it lacks are added, and a block both have keeps
    ``primary``'s numbers with the optional parts (convergence history, solver, trace, density) it lacks taken
    from ``extra``."""

    def key(block: BlockView) -> str:
        return "" if block.is_whole else block.name  # whole-adapter blocks match whatever they are called

    blocks = {key(block): block.report for block in primary.blocks}
    samples = dict(primary.merged_samples)
    for view in extra.blocks:
        kept = blocks.get(key(view))
        if kept is None:
            blocks[key(view)] = view.report
            measured_on = extra.samples_of(view)
            if measured_on is not None and measured_on != primary.settings.get("samples"):
                samples[view.name] = measured_on
            continue
        blocks[key(view)] = _fill_optional_parts(kept, view.report)
    report = dataclasses.replace(primary.report, blocks=tuple(blocks.values()))
    return ReportView(report, primary.path, samples)


def _fill_optional_parts(kept: BlockReport, extra: BlockReport) -> BlockReport:
    fill: dict[str, Any] = {}
    if kept.eigen is None:
        fill["eigen"] = extra.eigen
    elif extra.eigen is not None:
        eigen: dict[str, Any] = {}
        if not convergence_history(kept.eigen) and convergence_history(extra.eigen):
            eigen["history"] = extra.eigen.history
        if not isinstance(kept.eigen.solver, str) and isinstance(extra.eigen.solver, str):
            eigen["solver"] = extra.eigen.solver
        if eigen:
            fill["eigen"] = dataclasses.replace(kept.eigen, **eigen)
    if BlockView(kept).trace is None and BlockView(extra).trace is not None:
        fill["trace"] = extra.trace
    if _usable_density(kept.density) is None and _usable_density(extra.density) is not None:
        fill["density"] = extra.density
    return dataclasses.replace(kept, **fill) if fill else kept
