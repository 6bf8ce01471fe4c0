"""Numeric settings whose meaning needs bounds: the one check of every tolerance, timeout and fraction.

A tolerance of ``inf`` certifies every eigenvalue after one product; a timeout of ``nan`` never expires (every
comparison with NaN is false, so ``timeout <= 0`` lets it through) and ``inf`` lets generated code run forever.
Such values pass a plain ``> 0`` check, so every place where a tolerance or a time limit enters (the CLI, the
sweep YAML, the Python API, the sandbox itself) calls one of these helpers instead of comparing by hand.
"""

from __future__ import annotations

import math
from typing import Any

from hessian_lora.core.errors import UserError


def bounded_number(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = True,
    high_open: bool = True,
    fix: str = "",
) -> float:
    """``value`` as a float when it is a finite number (never a bool) inside the given bounds, else a
    :class:`UserError` naming ``name``, the allowed range, what it got and ``fix``."""
    number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    inside = math.isfinite(number)
    if inside and low is not None:
        inside = number > low if low_open else number >= low
    if inside and high is not None:
        inside = number < high if high_open else number <= high
    if not inside:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        interval = (
            f"{left}{'-inf' if low is None else _show(low)}, {'inf' if high is None else _show(high)}{right}"
        )
        advice = f": {fix}" if fix else "."
        raise UserError(f"{name} must be a finite number in {interval}, got {value!r}{advice}")
    return number


def tolerance(value: Any, name: str = "tol", *, fix: str = "use e.g. 1e-3.") -> float:
    """A relative tolerance: finite, in (0, 1). At 1 or above a residual as large as |λ| itself "converges"."""
    return bounded_number(value, name, low=0.0, high=1.0, fix=fix)


def time_limit(value: Any, name: str, *, fix: str = "give a finite number of seconds, e.g. 10.") -> float:
    """A wall-clock limit in seconds: finite and positive (NaN and inf would never expire)."""
    return bounded_number(value, name, low=0.0, fix=fix)


def krylov_gib(value: Any) -> float:
    """The Krylov budget in GiB (``--krylov-memory``, ``MeasureSettings.krylov_memory``): finite and positive."""
    return bounded_number(
        value,
        "krylov_memory (--krylov-memory)",
        low=0.0,
        fix="give the GiB the Krylov vectors may take, e.g. 8, or leave it out.",
    )


def _show(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"
