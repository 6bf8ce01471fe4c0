"""The Hessian engine: loss-Hessian operators over adapter parameters and the solvers that read them.

Data flows operator → solver → result: :class:`HessianOperator` gives Hessian-vector products of the
token-weighted mean loss over a parameter block (chosen by a filter); free-function solvers (:func:`lanczos`,
:func:`power_iteration`, :func:`hutchinson`, :func:`hutchplusplus`, :func:`spectral_density`,
:func:`preconditioned_sharpness`) return frozen result records; :func:`scan_blocks` runs a solver on many
blocks at once over shared passes. The engine knows nothing of checkpoints,
models or sweeps: :mod:`hessian_lora.measurement.measure` strings it together for an adapter (``hessian_lora.eigen``).

Importing the package imports no torch: the result records load at once (reading a report back needs nothing
more: ``hessian_lora.measurement.reports``, the analysis), the filters, operators and solvers on first use (PEP 562).
The filters wait too because they read the settings, which read the solver table (:mod:`.solvers`) in this package:
loaded at once, importing the settings first would come back to them half-made.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from hessian_lora.hessian.results import (
    BlockReport,
    DensityResult,
    EigenReport,
    EigenResult,
    IterationRecord,
    PreconditionedResult,
    TraceResult,
)
from hessian_lora.hessian.thresholds import adam_thresholds, stability_ratios

if TYPE_CHECKING:
    from hessian_lora.hessian.density import spectral_density
    from hessian_lora.hessian.dora import differentiated_dora_norm
    from hessian_lora.hessian.filters import ByName, ParameterBlock, ParameterFilter, PerModule, WholeAdapter
    from hessian_lora.hessian.lanczos import lanczos
    from hessian_lora.hessian.operator import (
        BaseOperator,
        DenseOperator,
        DiagonalOperator,
        HessianOperator,
        LinearOperator,
        ScaledOperator,
    )
    from hessian_lora.hessian.power import power_iteration
    from hessian_lora.hessian.preconditioned import adam_preconditioner, preconditioned_sharpness
    from hessian_lora.hessian.pyhessian_compat import pyhessian_power_iteration, run_pyhessian
    from hessian_lora.hessian.reductions import dot, inner, norm
    from hessian_lora.hessian.scan import BlockView, scan_blocks
    from hessian_lora.hessian.storage import KrylovMemory, MemoryTier
    from hessian_lora.hessian.trace import hutchinson, hutchplusplus

# The torch-bound names (and the filters, see above) and the submodule each is read from on first access.
_LAZY: dict[str, str] = {
    "ByName": "filters",
    "ParameterBlock": "filters",
    "ParameterFilter": "filters",
    "PerModule": "filters",
    "WholeAdapter": "filters",
    "spectral_density": "density",
    "differentiated_dora_norm": "dora",
    "lanczos": "lanczos",
    "BaseOperator": "operator",
    "DenseOperator": "operator",
    "DiagonalOperator": "operator",
    "HessianOperator": "operator",
    "LinearOperator": "operator",
    "ScaledOperator": "operator",
    "power_iteration": "power",
    "adam_preconditioner": "preconditioned",
    "preconditioned_sharpness": "preconditioned",
    "pyhessian_power_iteration": "pyhessian_compat",
    "run_pyhessian": "pyhessian_compat",
    "dot": "reductions",
    "inner": "reductions",
    "norm": "reductions",
    "BlockView": "scan",
    "scan_blocks": "scan",
    "KrylovMemory": "storage",
    "MemoryTier": "storage",
    "hutchinson": "trace",
    "hutchplusplus": "trace",
}


def __getattr__(name: str) -> Any:
    submodule = _LAZY.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """The package's module type: ``lanczos`` names the solver, not its submodule.

    Importing a submodule binds it on its package under its own name, and ``lanczos.py`` holds ``lanczos``. Loaded
    eagerly, the package rebound the function afterwards; loaded lazily, the submodule may be imported first (by
    ``hessian_lora.measurement.measure``, say), which would leave ``from hessian_lora.hessian import lanczos`` the
    module.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "BaseOperator",
    "BlockReport",
    "BlockView",
    "ByName",
    "DenseOperator",
    "DensityResult",
    "DiagonalOperator",
    "EigenReport",
    "EigenResult",
    "HessianOperator",
    "IterationRecord",
    "KrylovMemory",
    "LinearOperator",
    "MemoryTier",
    "ParameterBlock",
    "ParameterFilter",
    "PerModule",
    "PreconditionedResult",
    "ScaledOperator",
    "TraceResult",
    "WholeAdapter",
    "adam_preconditioner",
    "adam_thresholds",
    "differentiated_dora_norm",
    "dot",
    "hutchinson",
    "hutchplusplus",
    "inner",
    "lanczos",
    "norm",
    "power_iteration",
    "preconditioned_sharpness",
    "pyhessian_power_iteration",
    "run_pyhessian",
    "scan_blocks",
    "spectral_density",
    "stability_ratios",
]
