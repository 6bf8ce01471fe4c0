"""The solver table: every eigen-solver a measurement, an in-run probe or the preconditioned sharpness can run,
each named once with what its callers need to know of it.

Each :class:`SolverSpec` says where the solver is (``entry``: ``"module:function"``, imported on the first run, so
that this table, the settings that take their choices from it and the figures that label by it load without
torch), what it keeps (the memory plan charges its vectors), whether it takes start vectors (warm starts: a
structured start, the previous probe's vector), whether it finds the smallest end (λ_min), which solver measures
the preconditioned sharpness in its place, and its label in figures. The dispatchers (``measure``, the in-run
probe, :func:`~hessian_lora.hessian.preconditioned.preconditioned_sharpness`) read the table instead of testing a
solver's name, and refuse in one line a solver the table does not support there.

An entry is called as ``entry(operator, request)`` with a :class:`SolveRequest` and returns an
:class:`~hessian_lora.hessian.results.EigenResult`; :meth:`SolverSpec.run` checks the request against the
spec's capabilities first, so an entry only reads the options its spec claims. A new solver is one module with
such an entry and one row of :data:`TABLE` (CONTRIBUTING.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from hessian_lora.core.errors import UserError

if TYPE_CHECKING:
    from hessian_lora.hessian.results import EigenResult

# What a solver keeps while it runs, per iteration, for the memory plan: Lanczos keeps its Krylov basis and each
# basis vector's product (restarts and the explicit check reuse them); power iteration and PyHessian's keep only
# their iterates and the vectors found, charged one vector a step (a safe, loose bound: the plan as it was).
Keeps = Literal["basis_and_products", "iterates"]
VECTORS_PER_STEP: dict[str, int] = {"basis_and_products": 2, "iterates": 1}
# Which end(s) of the spectrum a request asks for: the largest, or both (λ_min too).
Which = Literal["largest", "both"]
# The capabilities a caller may require, each with what a solver without it lacks (for the one-line refusal).
Capability = Literal["warm_starts", "finds_smallest", "block_starts", "preconditioned"]
_LACKS: dict[str, str] = {
    "warm_starts": "takes no start vectors (warm starts, a previous probe's vector)",
    "finds_smallest": "does not find the smallest eigenvalue (λ_min)",
    "block_starts": "takes no block of start vectors (block_size, a structured or gradient start)",
    "preconditioned": "has no preconditioned sharpness (no solver for λ₁(P⁻¹H) in the table)",
}


@dataclass(frozen=True)
class SolveRequest:
    """What a dispatcher asks of a solver, in one vocabulary for every entry.

    ``k`` eigenvalues per end, ``which`` end(s), to relative residual ``tol`` in at most ``max_iter`` iterations
    from start vectors drawn by ``seed``; ``start``: start vectors (rows, a ``p × size`` tensor) or None;
    ``block_size``: start vectors per block (None: the solver's default); ``callback``: called with each
    :class:`~hessian_lora.hessian.results.IterationRecord`; ``memory``: the
    :class:`~hessian_lora.hessian.storage.KrylovMemory` the kept vectors live in (None: the device, unbounded).
    Tensors and the memory are typed ``Any`` so that this module stays torch-free.
    """

    k: int = 1
    which: Which = "largest"
    tol: float = 1e-3
    max_iter: int = 100
    seed: int = 0
    start: Any = None
    block_size: int | None = None
    callback: Callable[[Any], None] | None = None
    memory: Any = None


Entry = Callable[[Any, SolveRequest], "EigenResult"]


@dataclass(frozen=True)
class SolverSpec:
    """One solver of the table.

    Attributes:
        name: the name settings, the command line (``--solver``) and reports use.
        entry: ``"package.module:function"`` (imported on the first run) or the function itself, called as
            ``entry(operator, request)``.
        label: how figures name it.
        summary: what it computes, in a few words (the command line's help).
        keeps: what it keeps per iteration (:data:`Keeps`), which the memory plan charges.
        warm_starts: it takes start vectors (``SolveRequest.start``): a warm start, a previous probe's vector.
        finds_smallest: it finds λ_min too (``which="both"``).
        block_starts: it takes a block of start vectors (``block_size``; the structured and gradient starts).
        preconditioned: the solver that measures the preconditioned sharpness λ₁(P⁻¹H) when this one is chosen
            (itself, or another that certifies where it does not); None: refused.
        result_names: other names its results record (``EigenResult.solver``), e.g. a variant's.
    """

    name: str
    entry: str | Entry
    label: str
    summary: str
    keeps: Keeps
    warm_starts: bool
    finds_smallest: bool
    block_starts: bool = False
    preconditioned: str | None = None
    result_names: tuple[str, ...] = ()

    @property
    def vectors_per_step(self) -> int:
        """Block-sized vectors the memory plan charges per iteration."""
        return VECTORS_PER_STEP[self.keeps]

    @property
    def module(self) -> str | None:
        """The dotted module the entry lives in (None for an entry given as a function)."""
        return self.entry.partition(":")[0] if isinstance(self.entry, str) else None

    def supports(self, capability: Capability) -> bool:
        """Whether this solver has ``capability`` (``preconditioned``: names a solver for λ₁(P⁻¹H))."""
        if capability == "preconditioned":
            return self.preconditioned is not None
        return bool(getattr(self, capability))

    def resolve(self) -> Entry:
        """The entry function, imported on first use."""
        if not isinstance(self.entry, str):
            return self.entry
        module, _, function = self.entry.partition(":")
        resolved: Entry = getattr(importlib.import_module(module), function)
        return resolved

    def run(self, operator: Any, request: SolveRequest) -> EigenResult:
        """The solver's result on ``operator`` for ``request``.

        Raises:
            UserError: the request asks for what this solver's spec does not claim (a start, a block of start
                vectors, λ_min), in one line naming the solvers that do.
        """
        asked: list[Capability] = []
        if request.start is not None:
            asked.append("warm_starts")
        if request.block_size is not None:
            asked.append("block_starts")
        if request.which == "both":
            asked.append("finds_smallest")
        for capability in asked:
            check(self, capability, field="solver")
        return self.resolve()(operator, request)


# The table. Order: the default first, then as the command line lists them.
TABLE: dict[str, SolverSpec] = {
    spec.name: spec
    for spec in (
        SolverSpec(
            name="lanczos",
            entry="hessian_lora.hessian.lanczos:solve",
            label="Lanczos",
            summary="λ_max and λ_min",
            keeps="basis_and_products",
            warm_starts=True,
            finds_smallest=True,
            block_starts=True,
            preconditioned="lanczos",
        ),
        SolverSpec(
            name="power",
            entry="hessian_lora.hessian.power:solve",
            label="power iteration",
            summary="shifted, largest algebraic",
            keeps="iterates",
            warm_starts=True,
            finds_smallest=False,
            preconditioned="power",
            result_names=("power_unshifted",),
        ),
        # PyHessian's iteration stops on a relative change, which certifies nothing: λ₁(P⁻¹H) is Lanczos's.
        SolverSpec(
            name="pyhessian",
            entry="hessian_lora.hessian.pyhessian_compat:solve",
            label="PyHessian",
            summary="PyHessian 0.1's power iteration, for comparison",
            keeps="iterates",
            warm_starts=False,
            finds_smallest=False,
            preconditioned="lanczos",
            result_names=("pyhessian_power",),
        ),
    )
}
DEFAULT_SOLVER = "lanczos"


def names() -> tuple[str, ...]:
    """The solvers' names, in the table's order (read at call time: a solver added to the table counts)."""
    return tuple(TABLE)


def having(*capabilities: Capability) -> tuple[str, ...]:
    """The names of the solvers with every one of ``capabilities``."""
    return tuple(name for name, spec in TABLE.items() if all(spec.supports(c) for c in capabilities))


def get(name: str, *, field: str = "solver") -> SolverSpec:
    """The spec of solver ``name``.

    Args:
        name: a solver's name.
        field: the setting that named it, for the message.

    Returns:
        Its :class:`SolverSpec`.

    Raises:
        UserError: ``name`` is no solver of the table, in one line listing them.
    """
    spec = TABLE.get(name) if isinstance(name, str) else None
    if spec is None:
        raise UserError(f"unknown {field} {name!r}: use {', '.join(names())}.")
    return spec


def check(spec: SolverSpec, capability: Capability, *, field: str = "solver", fix: str = "") -> SolverSpec:
    """``spec`` when it has ``capability``.

    Args:
        spec: the solver asked for.
        capability: what the caller needs of it.
        field: the setting that chose the solver (``solver``, ``hessian.during.solver``), for the message.
        fix: another way out besides another solver (e.g. "or leave --start out"), appended to the message.

    Returns:
        ``spec``.

    Raises:
        UserError: ``spec`` lacks ``capability``, in one line naming the solvers that have it.
    """
    if spec.supports(capability):
        return spec
    others = " or ".join(having(capability)) or "none of the table's solvers does"
    raise UserError(f"{field} {spec.name} {_LACKS[capability]}: use {field} {others}{fix}.")


def require(name: str, *capabilities: Capability, field: str = "solver", fix: str = "") -> SolverSpec:
    """The spec of solver ``name``, which must have every one of ``capabilities``.

    Args:
        name: a solver's name.
        *capabilities: what the caller needs of it.
        field: the setting that named it, for the messages.
        fix: another way out besides another solver, appended to a capability's message.

    Returns:
        Its :class:`SolverSpec`.

    Raises:
        UserError: ``name`` is no solver (the message lists those with ``capabilities``), or lacks one of them.
    """
    if not isinstance(name, str) or name not in TABLE:
        raise UserError(f"unknown {field} {name!r}: use {', '.join(having(*capabilities))}.")
    spec = TABLE[name]
    for capability in capabilities:
        check(spec, capability, field=field, fix=fix)
    return spec


def preconditioned_solver(name: str, *, field: str = "solver") -> SolverSpec:
    """The solver that measures λ₁(P⁻¹H) when ``name`` is chosen (its spec's ``preconditioned``).

    Raises:
        UserError: ``name`` is no solver, or names none for the preconditioned sharpness.
    """
    spec = require(name, "preconditioned", field=field, fix=", or leave the preconditioned sharpness out")
    assert spec.preconditioned is not None  # require() checked it
    return get(spec.preconditioned, field=f"{field}'s preconditioned solver")


def spec_of_result(solver: str) -> SolverSpec | None:
    """The spec whose results record ``solver`` (its name or one of its ``result_names``); None when none does
    (a report of a solver the table no longer has)."""
    for spec in TABLE.values():
        if solver == spec.name or solver in spec.result_names:
            return spec
    return None


def label(solver: str) -> str:
    """How figures name the solver a result records (an unknown name as itself)."""
    spec = spec_of_result(solver)
    return spec.label if spec is not None else solver


def all_names() -> frozenset[str]:
    """Every name a solver goes by: the table's names and the names their results record."""
    return frozenset(name for spec in TABLE.values() for name in (spec.name, *spec.result_names))
