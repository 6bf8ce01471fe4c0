"""Censored optima: a method whose best learning rate is at an end of its grid has a bound, not a value.

Why this module exists: a best LR at the last grid point says only "η* ≥ that LR" (the curve may keep rising
beyond it), and at the first only "η* ≤ that LR". Fitting a power law, a Spearman ρ or a calibration through such
bounds as if they were values manufactures a relation out of the grid's edges (a sweep whose optima all sit at
the edge used to report slope 0 with CI [0, 0]). So tables print bounds, every statistic across methods uses the
interior optima only and says how many it left out, and the fix, a wider grid, is printed as concrete learning
rates to add.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

Censoring = Literal["low", "high", "single"]
MIN_INTERIOR = 3  # a rank correlation or a slope with an interval needs at least three interior optima
EXTEND_DECADES = 0.5  # how far beyond a censored edge the suggested grid reaches


def censoring(fit_kind: str, eta_grid: float, lrs: Sequence[float]) -> Censoring | None:
    """``high`` (best at the largest LR: η* ≥ it), ``low`` (at the smallest: η* ≤ it), ``single`` (one LR: no
    optimum at all), or None for an interior optimum."""
    if fit_kind == "single" or len(lrs) < 2:
        return "single"
    if fit_kind != "edge":
        return None
    return "high" if eta_grid >= max(lrs) else "low"


def bound_text(censored: Censoring | None, eta: float, spec: str = ".3g") -> str:
    """η* as a table shows it: ``≥ 0.1`` / ``≤ 1e-05`` for a censored optimum, the value otherwise."""
    value = format(eta, spec)
    if censored == "high":
        return f"≥ {value}"
    if censored == "low":
        return f"≤ {value}"
    if censored == "single":
        return f"? (one LR: {value})"
    return value


def extension_lrs(lrs: Sequence[float], side: Literal["low", "high"]) -> list[float]:
    """Learning rates that extend ``lrs`` half a decade beyond its ``side`` end, at the grid's own log spacing
    there (at most half a decade), rounded to 3 significant digits."""
    ordered = sorted(lrs)
    if len(ordered) >= 2:
        pair = ordered[-2:] if side == "high" else ordered[:2]
        step = min(abs(math.log10(pair[1] / pair[0])), EXTEND_DECADES) or EXTEND_DECADES
    else:
        step = EXTEND_DECADES
    count = max(1, math.ceil(EXTEND_DECADES / step - 1e-9))
    edge = ordered[-1] if side == "high" else ordered[0]
    sign = 1 if side == "high" else -1
    return [float(f"{edge * 10 ** (sign * step * k):.3g}") for k in range(1, count + 1)]


def extension_advice(
    censored: Mapping[str, Censoring],
    lrs_by_method: Mapping[str, Sequence[float]],
    run_dir: str,
    *,
    adaptive: bool = False,
) -> str:
    """One sentence: which LRs to add (per censored side) and the command that runs only the new points. An
    adaptive search has no ``lr`` list to edit: it extends past an edge by itself, so the advice is to resume it
    (and where it stopped at its budget, to raise ``max_runs``)."""
    sides = {side for side in censored.values() if side in ("low", "high")}
    if not sides:
        return ""
    if adaptive:
        return (
            f"let the adaptive search extend past the edge: rerun `hessian-lora sweep CONFIG --out {run_dir}` "
            f"(it resumes), and where search.json says it stopped at its run budget, raise `max_runs` under "
            f"`search:` in CONFIG"
        )
    grid = sorted({lr for method in censored for lr in lrs_by_method.get(method, ())})
    added: list[float] = []
    for side in sorted(sides):
        added += extension_lrs(grid, side)
    new_grid = sorted(set(grid) | set(added))
    listed = ", ".join(f"{lr:.3g}" for lr in new_grid)
    return (
        f"extend the grid: add lr {', '.join(f'{lr:.3g}' for lr in sorted(added))} (set `lr: [{listed}]` in "
        f"CONFIG) and run `hessian-lora sweep CONFIG --out {run_dir} --extend`"
    )


def censored_summary(censored: Mapping[str, Censoring], etas: Mapping[str, float], total: int) -> str:
    """``k of n censored: pissa ≥ 0.1, lora ≤ 1e-05``."""
    parts = [f"{name} {bound_text(side, etas[name])}" for name, side in censored.items()]
    return f"{len(censored)} of {total} censored" + (f": {', '.join(parts)}" if parts else "")


def interior(names: Iterable[str], censored: Mapping[str, Censoring]) -> list[str]:
    """``names`` less the censored ones (the methods whose optimum is interior), in their order."""
    return [name for name in names if name not in censored]
