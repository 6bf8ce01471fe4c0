"""Plain data to and from the YAML people write: the one place that knows PyYAML's quirks.

PyYAML implements YAML 1.1, which reads ``1e-4`` (no dot) as a *string*; configs are full of such learning rates
and tolerances, so every reader of YAML settings passes values through :func:`numbers_from_strings`. Writing goes
the other way through :func:`plain` (tuples and mappings to lists and dicts YAML can dump). Every settings
block becomes its dataclass through :func:`settings_from_mapping`, so all of them report problems alike.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, cast

from hessian_lora.core.errors import UserError

Settings = TypeVar("Settings")

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


def settings_from_mapping(
    cls: type[Settings], data: Any, *, what: str, source: str, also_known: Sequence[str] = ()
) -> Settings:
    """The settings dataclass ``cls`` from a YAML mapping: the one reader of every settings block.

    Unknown keys are named with the known ones (``also_known``: keys the caller handles itself, listed but not
    passed); a bad value is the dataclass's own one-line error, prefixed by ``source`` (the file) so that every
    message names where to fix it.
    """
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: {what} must be a mapping of settings, got {data!r}.")
    # cast: a TypeVar cannot say "a dataclass type", and every caller passes one
    known = [*also_known, *(field.name for field in dataclasses.fields(cast(Any, cls)))]
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise UserError(
            f"{source}: unknown {what} setting(s) {', '.join(unknown)}: check the spelling "
            f"(known: {', '.join(known)})."
        )
    values = {str(key): value for key, value in data.items() if key not in also_known}
    try:
        return cls(**values)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from exc
    except TypeError as exc:  # a value of a type the dataclass's checks could not even compare
        raise UserError(f"{source}: bad {what} settings ({exc}).") from exc


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
