"""Atomic writes: the one place that turns "write a file" into "readers see the old file or the whole new one".

Every file the toolkit produces (configs, reports, analyses, figures, checkpoints, caches) goes through here:
a temporary file in the same directory, flushed and fsynced, then ``os.replace``. A kill at any moment leaves
either the old file or the new one, plus at worst a hidden ``.NAME.*.tmp`` file that
:func:`remove_stale_temporaries` clears on the next start.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + ``os.replace``); returns the path.

    The file gets the permissions a plain ``open`` would give it (0666 less the umask), not ``mkstemp``'s 0600,
    so a run directory can be shared on a group machine.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON (with a final newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def temporary_path(target: str | os.PathLike[str], *, directory: bool = False) -> Path:
    """A fresh hidden sibling of ``target`` to stage a file or directory in before :func:`replace_path`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        made = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
        os.chmod(made, 0o777 & ~_umask())
        return Path(made)
    handle, made = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    os.close(handle)
    os.chmod(made, 0o666 & ~_umask())
    return Path(made)


def replace_directory(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move the finished directory ``staging`` to ``target``, replacing what was there.

    ``os.replace`` cannot replace a non-empty directory, so an existing ``target`` is first renamed aside and
    removed only after ``staging`` took its place: a kill in between leaves the old or the new directory under
    ``target`` (or, between the two renames, neither, with the old one kept as a hidden sibling).
    """
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.replace(staging, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", suffix=TEMP_SUFFIX, dir=target.parent))
    os.replace(target, retired / target.name)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(retired / target.name, target)
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)


def remove_stale_temporaries(
    directory: str | os.PathLike[str], *, recursive: bool = False, name: str | None = None
) -> list[Path]:
    """Remove the hidden ``.NAME.*.tmp`` files and directories that killed writes left in ``directory``.

    Call it only while holding the directory (e.g. under a sweep's lock): a concurrent writer's temporary file
    looks the same. With ``name``, only the temporaries of that one target file. Returns what was removed.
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    pattern = f".{name}.*{TEMP_SUFFIX}" if name else f".*{TEMP_SUFFIX}"
    found = root.rglob(pattern) if recursive else root.glob(pattern)
    removed = []
    for leftover in sorted(found):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed
