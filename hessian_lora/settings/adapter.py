"""An adapter's definition: :class:`AdapterConfig`, the one record of method, rank, alpha and the rest.

The sweep builds each run's from its template (:meth:`hessian_lora.settings.sweep.SweepConfig.adapter_for`), a
checkpoint's metadata stores the one it was built with, and :func:`hessian_lora.training.adapters.build_adapter` turns
it into a peft model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hessian_lora.core.errors import UserError
from hessian_lora.methods.registry import METHODS, MethodSpec

DEFAULT_TARGETS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


@dataclass(frozen=True)
class AdapterConfig:
    """An adapter: method, rank, alpha (None means alpha = rank), dropout, target module names, init seed.

    ``pissa_niter=None`` takes PiSSA's exact SVD; an integer K uses peft's randomised ``pissa_niter_K``.

    Attributes:
        method: the method's name (the method table's).
        rank: the rank r.
        alpha: the scaling's alpha (None: alpha = rank).
        dropout: the adapter's dropout.
        targets: the names of the modules adapted.
        seed: the initialisation's seed.
        loraplus_ratio: LoRA+'s learning-rate ratio of B to A.
        pissa_niter: PiSSA's randomised SVD iterations (None: the exact SVD).
    """

    method: str
    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    seed: int = 0
    loraplus_ratio: float = 16.0
    pissa_niter: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}.")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise UserError(f"rank must be a positive integer, got {self.rank}: pass e.g. --rank 8.")
        if self.alpha is not None and not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise UserError(f"alpha must be positive and finite, got {self.alpha}: omit it for alpha = rank.")
        if not 0.0 <= self.dropout < 1.0:  # NaN fails this too
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}.")
        if not self.targets:
            raise UserError("no target modules: pass e.g. --targets q_proj,v_proj.")
        if not (self.loraplus_ratio > 0 and math.isfinite(self.loraplus_ratio)):
            raise UserError(f"loraplus_ratio must be positive, got {self.loraplus_ratio}.")
        if self.pissa_niter is not None and self.pissa_niter < 1:
            raise UserError(f"pissa_niter must be >= 1 (or None for the exact SVD), got {self.pissa_niter}.")
        object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def spec(self) -> MethodSpec:
        """The method's registry entry (what it rewrites, whether it needs data, its optimizer)."""
        return METHODS[self.method]

    @property
    def lora_alpha(self) -> float:
        """alpha as peft receives it: ``alpha``, or the rank when it is None (the paper's choice)."""
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def scaling(self) -> float:
        """The LoRA scale s in ΔW = s·B·A, as peft computes it (the method's ``scaling``: alpha/r, rsLoRA's
        alpha/√r, RandLoRA's 20)."""
        return self.spec.scaling(self.lora_alpha, self.rank)
