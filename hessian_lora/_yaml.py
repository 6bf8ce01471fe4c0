"""Plain data to and from the YAML people write: the one place that knows PyYAML's quirks.

PyYAML implements YAML 1.1, which reads ``1e-4`` (no dot) as a *string*; configs are full of such learning rates
and tolerances, so every reader of YAML settings passes values through :func:`numbers_from_strings`. Writing goes
the other way through :func:`plain` (tuples and mappings to lists and dicts YAML can dump).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def numbers_from_strings(value: Any) -> Any:
    """``value`` with every string written like ``1e-4`` read as a float, inside lists and mappings too."""
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [numbers_from_strings(item) for item in value]
    if isinstance(value, Mapping):
        return {key: numbers_from_strings(item) for key, item in value.items()}
    return value


def is_number(value: Any) -> bool:
    """An int or float (booleans are ints to Python, but never numbers in a config)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plain(value: Any) -> Any:
    """``value`` as data YAML and JSON dump as written: mappings to dicts with string keys, tuples to lists."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value
