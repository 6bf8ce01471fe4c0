"""Reading the data files users train with, through Hugging Face ``datasets``: rows as plain dicts.

What is read (:func:`read_rows`):

- ``.jsonl`` / ``.json`` (a list of objects, JSON lines, or ``{"data": [...]}``), ``.parquet``, ``.csv`` files;
- a directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (its ``train`` split, or the
  one ``split=`` names);
- a hub dataset id (``user/name``), from the local ``datasets`` cache when offline (``HF_HUB_OFFLINE=1``).

``datasets`` (Arrow underneath) is what TRL, the Trainer and most SFT scripts load data with, so a file reads
here as it reads there: the same rows, columns and types. Every failure is one :class:`UserError` line naming the
file and the fix. JSON that Arrow cannot put in one table (a field that is a number in one row and text in the
next) is read again with the standard ``json`` module, which also gives the line of a syntax error.

``datasets`` is imported inside the functions: it takes seconds, and neither the command line's start-up nor the
tasks that read no file need it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hessian_lora.core.errors import UserError

# File suffixes and the ``datasets`` builder that reads them.
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# What a save_to_disk directory holds: a Dataset's state file, or a DatasetDict's split list.
_DATASET_DIR_MARKERS = ("state.json", "dataset_dict.json")
DEFAULT_SPLIT = "train"


def is_data_source(text: str) -> bool:
    """Whether ``text`` names something :func:`read_rows` is for: a file with a known suffix, a directory (a saved
    dataset, or refused by it in one line), or (not being a path here) a hub dataset id ``user/name``."""
    path = Path(text).expanduser()
    if path.suffix.lower() in FILE_BUILDERS or path.is_dir():
        return True
    return looks_like_hub_dataset(text) and not path.exists()


def is_dataset_directory(path: Path) -> bool:
    """A directory written by ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return path.is_dir() and any((path / marker).is_file() for marker in _DATASET_DIR_MARKERS)


def read_rows(source: str, *, split: str | None = None) -> list[dict[str, Any]]:
    """The rows of a data file, ``save_to_disk`` directory or hub dataset id, as dicts (see the module docstring).

    Args:
        source: the path or hub id.
        split: the split of a DatasetDict directory or hub dataset (default ``train``; a single-split one
            is read whatever its name).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if not is_dataset_directory(path):
            raise UserError(
                f"{path} is a directory but not a saved dataset (no state.json or dataset_dict.json): "
                "pass a directory written by Dataset.save_to_disk, or a .jsonl/.json/.parquet/.csv file."
            )
        return _rows(_load_from_disk(path), path, split)
    suffix = path.suffix.lower()
    if suffix in FILE_BUILDERS:
        if not path.is_file():
            raise UserError(
                f"data file {path} does not exist: pass an existing .jsonl, .json, .parquet or .csv "
                "file (or a saved dataset directory)."
            )
        return _read_file(path, FILE_BUILDERS[suffix])
    if looks_like_hub_dataset(source):
        return _read_hub(source, split)
    raise UserError(
        f"cannot read data {source}: pass a .jsonl, .json, .parquet or .csv file, a directory written "
        "by Dataset.save_to_disk, or a hub dataset id user/name."
    )


def _read_file(path: Path, builder: str) -> list[dict[str, Any]]:
    if builder == "json":
        text = _check_text(path)
        if not text.strip():
            return []
        if not _holds_objects(text, jsonl=path.suffix.lower() == ".jsonl"):
            return _read_json_records(path)  # scalars or lists where examples go: its error names the record
    import datasets  # local: seconds to import (see the module docstring)

    try:
        with _quiet_datasets():
            loaded = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # datasets/pyarrow raise many kinds; every one is this file's fault
        if builder == "json":
            return _read_json_records(
                path
            )  # a precise error (line, record), or rows Arrow could not tabulate
        raise UserError(
            f"cannot read {path} as {builder.upper()} ({_first_line(exc)}): fix or re-export the file."
        ) from exc
    rows = loaded.to_list()
    if builder == "json" and list(loaded.column_names) == ["data"] and len(rows) == 1:
        inner = rows[0]["data"]  # {"data": [...]}: the examples are the list
        return _check_objects(path, inner if isinstance(inner, list) else [inner])
    return rows


def _holds_objects(text: str, *, jsonl: bool) -> bool:
    """Whether a JSON (lines) text starts with an example object: ``datasets`` would read a list of numbers or
    strings as a ``text`` column, which is not what such a file means."""
    head = text.lstrip()
    if jsonl:
        return head.startswith("{")
    return head.startswith("{") or (head.startswith("[") and head[1:].lstrip()[:1] in ("{", "]"))


def _check_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8 JSON.") from exc
    except OSError as exc:
        raise UserError(
            f"cannot read data file {path} ({exc.strerror or exc}): pass a readable file."
        ) from exc


def _read_json_records(path: Path) -> list[dict[str, Any]]:
    """The standard ``json`` reading of a JSON or JSON lines file: one object per example."""
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            loaded = json.loads(text) if text.strip() else []
            if isinstance(loaded, dict) and "data" in loaded:
                loaded = loaded["data"]
            if not isinstance(loaded, list):
                raise UserError(
                    f'{path} must hold a JSON list of example objects (or {{"data": [...]}}), '
                    f"got {type(loaded).__name__}: fix the file."
                )
            records = loaded
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): fix the file.") from exc
    return _check_objects(path, records)


def _check_objects(path: Path, records: list[Any]) -> list[dict[str, Any]]:
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise UserError(
                f"record {index} of {path} is {type(record).__name__}, not an object: the file must "
                "hold JSON objects, one per example."
            )
    return records


def _load_from_disk(path: Path) -> Any:
    import datasets  # local: seconds to import

    try:
        with _quiet_datasets():
            return datasets.load_from_disk(str(path))
    except Exception as exc:  # a damaged or partial directory
        raise UserError(
            f"cannot read the saved dataset {path} ({_first_line(exc)}): save it again with save_to_disk."
        ) from exc


def _read_hub(dataset_id: str, split: str | None) -> list[dict[str, Any]]:
    import datasets  # local: seconds to import

    try:
        with _quiet_datasets():
            loaded = datasets.load_dataset(dataset_id)
    except Exception as exc:  # not found, offline without a cache, gated, ...
        raise UserError(
            f"hub dataset {dataset_id} cannot be loaded ({_first_line(exc)}): check the id and your "
            "network (HF_HUB_OFFLINE=1 reads the local datasets cache), or pass a local file."
        ) from exc
    return _rows(loaded, dataset_id, split)


def _rows(loaded: Any, where: Path | str, split: str | None) -> list[dict[str, Any]]:
    """A Dataset's rows; of a DatasetDict, those of ``split`` (``train`` by default, or its only split)."""
    if hasattr(loaded, "to_list"):
        if split is not None:
            raise UserError(f"{where} is a single dataset, not one with splits: drop split={split}.")
        return list(loaded.to_list())
    names = list(loaded)
    chosen = split or (DEFAULT_SPLIT if DEFAULT_SPLIT in names or len(names) != 1 else names[0])
    if chosen not in names:
        raise UserError(
            f"{where} has no split {chosen!r} (splits: {', '.join(names)}): pick one with "
            f"{where}::split=NAME."
        )
    return list(loaded[chosen].to_list())


def looks_like_hub_dataset(text: str) -> bool:
    """``user/name``: the shape of a hub dataset id (whether it exists is the hub's or the cache's to say)."""
    parts = text.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not text.startswith((".", "~", "/"))
        and not any(char.isspace() for char in text)
    )


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """``datasets``' progress bars and info logs off while data is read (the data line says what was read)."""
    from datasets.utils import logging as datasets_logging  # local: seconds to import

    bars = datasets_logging.is_progress_bar_enabled()
    level = datasets_logging.get_verbosity()
    datasets_logging.disable_progress_bar()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)  # its errors become ours
    try:
        yield
    finally:
        if bars:
            datasets_logging.enable_progress_bar()
        datasets_logging.set_verbosity(level)


def _first_line(exc: BaseException) -> str:
    """The error's first line; of the exception that caused it when ``datasets`` wrapped one (its "an error
    occurred while generating the dataset" says nothing about the file)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
