"""The Hessian engine: loss-Hessian operators over adapter parameters and the solvers that read them.

Data flows operator → solver → result: :class:`HessianOperator` gives Hessian-vector products of the
token-weighted mean loss over a parameter block (chosen by a filter); free-function solvers (:func:`lanczos`,
:func:`power_iteration`, :func:`hutchinson`, :func:`hutchplusplus`, :func:`spectral_density`,
:func:`preconditioned_sharpness`) return frozen result records; :func:`scan_blocks` runs a solver on many
blocks at once over shared passes. The engine knows nothing of checkpoints,
models or sweeps: :mod:`hessian_lora.measure` strings it together for an adapter (``hessian_lora.eigen``).
"""

from __future__ import annotations

from hessian_lora.hessian.density import spectral_density
from hessian_lora.hessian.dora import differentiated_dora_norm
from hessian_lora.hessian.filters import ByName, ParameterBlock, ParameterFilter, PerModule, WholeAdapter
from hessian_lora.hessian.lanczos import lanczos
from hessian_lora.hessian.operator import (
    DenseOperator,
    DiagonalOperator,
    HessianOperator,
    LinearOperator,
    ScaledOperator,
)
from hessian_lora.hessian.power import power_iteration
from hessian_lora.hessian.preconditioned import adam_preconditioner, adam_thresholds, preconditioned_sharpness
from hessian_lora.hessian.pyhessian_compat import pyhessian_power_iteration, run_pyhessian
from hessian_lora.hessian.reductions import dot, inner, norm
from hessian_lora.hessian.results import (
    BlockReport,
    DensityResult,
    EigenReport,
    EigenResult,
    IterationRecord,
    PreconditionedResult,
    TraceResult,
)
from hessian_lora.hessian.scan import BlockView, scan_blocks
from hessian_lora.hessian.storage import KrylovMemory, MemoryTier
from hessian_lora.hessian.trace import hutchinson, hutchplusplus

__all__ = [
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
]
