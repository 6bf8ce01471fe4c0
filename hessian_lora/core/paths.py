"""Output paths, checked before any work starts: one line naming the problem instead of a late OSError.

Every command that takes ``--out``/``--output``/``--save-calibration`` calls :func:`check_output_file` or
:func:`check_output_directory` first. Nothing is created: the nearest existing ancestor is probed with a
temporary directory that is removed at once, so a path that cannot be made (under a regular file, on a
read-only or pseudo file system, without permission) is refused up front.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hessian_lora.core.errors import UserError


def _nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and not current.is_symlink():
        if current.parent == current:
            break
        current = current.parent
    return current


def _check_creatable(path: Path, option: str) -> None:
    """``path`` does not exist: its nearest existing ancestor must be a directory we can create entries in."""
    ancestor = _nearest_existing(path.parent if path.parent != path else path)
    if not ancestor.is_dir():
        raise UserError(
            f"{option} {path}: {ancestor} is a file, not a directory, so nothing can be created "
            "under it: choose another path."
        )
    try:
        probe = tempfile.mkdtemp(prefix=".hessian-lora-probe.", suffix=".tmp", dir=ancestor)
    except OSError as exc:
        raise UserError(
            f"{option} {path}: cannot create anything in {ancestor} ({exc.strerror or exc}): choose a "
            "writable location."
        ) from exc
    shutil.rmtree(probe, ignore_errors=True)


def check_output_file(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """A file to (over)write: not an existing directory, and creatable where it does not exist."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise UserError(
            f"{option} {target} is a directory: pass a file name inside it, e.g. {target / 'out.json'}."
        )
    if target.exists():
        if not os.access(target, os.W_OK):
            raise UserError(f"{option} {target} is not writable: choose another file.")
        return target
    _check_creatable(target, option)
    return target


def check_output_directory(
    path: str | os.PathLike[str], option: str = "--out", *, kind: str = "directory"
) -> Path:
    """A directory to write into: not an existing file, and creatable where it does not exist."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise UserError(f"{option} {target} is a file, not a {kind}: pass a directory path.")
    if target.is_dir():
        if not os.access(target, os.W_OK | os.X_OK):
            raise UserError(f"{option} {target} is not writable: choose another {kind}.")
        return target
    _check_creatable(target, option)
    return target
