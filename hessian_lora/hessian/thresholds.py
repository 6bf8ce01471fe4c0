"""The edge-of-stability thresholds and a measured point's distance to them: plain arithmetic, torch-free.

Gradient descent is stable while λ_max·η < 2 (Cohen et al. 2021); Adam while λ̃·η < (2 + 2β₁)/(1 − β₁), 38 at
β₁ = 0.9 (Cohen et al. 2022), with λ̃ = λ₁(P⁻¹H) (:mod:`hessian_lora.hessian.preconditioned`). They live apart from
the solvers so that the analysis and the figures, which read measured points back, import no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def adam_thresholds(lr: float | None, beta1: float) -> tuple[float | None, float | None]:
    """(2/η, (2 + 2β₁)/((1 − β₁)η)): the gradient-descent and Adam edge-of-stability sharpness thresholds."""
    if lr is None or lr <= 0:
        return None, None
    return 2.0 / lr, (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)


def stability_ratios(
    point: Mapping[str, Any], *, beta1: float = 0.9, lr: float | None = None
) -> tuple[float | None, float | None]:
    """(λ_max·η/2, λ̃·η/((2+2β₁)/(1−β₁))) of a history point: 1 means "at the edge of stability". ``lr``
    overrides the point's own learning rate."""
    eta = lr if lr is not None else point.get("lr")
    if eta is None or not eta > 0:
        return None, None
    gd, adam = adam_thresholds(float(eta), beta1)
    lam, pre = point.get("lambda_max"), point.get("preconditioned")
    gd_ratio = float(lam) / gd if lam is not None and gd and math.isfinite(float(lam)) else None
    adam_ratio = float(pre) / adam if pre is not None and adam and math.isfinite(float(pre)) else None
    return gd_ratio, adam_ratio
