"""Copy a sweep's run directory into the repository without its checkpoints, ready to commit.

    python scripts/ship_run.py /work/runs/smollm2-replication results/smollm2

What is copied: config.yaml, search.json, hessian/*.json and *.inputs, and each run's history.json, eval.json and
sharpness.json (the files `hessian-lora analyze` and `hessian-lora plot` read), plus results.sqlite as one
self-contained file (SQLite's online backup, so a sweep still writing to the source is read at a consistent moment and
no -wal/-shm file travels with it). Checkpoints and the sweep's lock stay behind. Files already in the destination
that the source does not have (STATUS.md) are left as they are. The destination is then analysed in place
(`hessian-lora analyze TARGET`, unless --no-analyze) and its figures drawn as PNG into TARGET/figures
(`hessian-lora plot TARGET --formats png`): analysis.json records TARGET as given, so give it relative to the
repository's root, as tests/analysis/test_replication.py re-analyses it. Then `python scripts/sync_readme.py` copies
the new numbers into the marked blocks of docs/results.md (the measured record the README links to). Every file is
written to a temporary name and renamed, so an interrupted copy leaves each file either old or new. The database is read
first: a source whose results.sqlite is damaged, or a target that is a file or the source itself, is refused in one
line (exit 2) before anything is written.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from pathlib import Path

from hessian_lora.core.atomic import (
    write_bytes_atomic,  # temp file, fsync, rename; a plain file's permissions
)
from hessian_lora.core.errors import UserError

# The documents a shipped run directory keeps (hessian_lora/core/rundir.py names them; checkpoints are left out).
RUN_FILES = ("history.json", "eval.json", "sharpness.json")
TOP_FILES = ("config.yaml", "search.json")


def _backup_database(source: Path) -> tuple[bytes, int]:
    """SQLite's online backup into a single rollback-journal file: its bytes and the number of rows in ``runs``.
    A file that is not a sweep's database is a :class:`UserError`."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / source.name
        try:
            with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as src, sqlite3.connect(copy) as dst:
                src.backup(dst)
                # The copy inherits WAL mode; a committed database file must not need a -wal file beside it.
                dst.execute("PRAGMA journal_mode=DELETE")
                rows = int(dst.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
        except sqlite3.Error as error:
            raise UserError(
                f"{source} is not a readable sweep database ({error}): ship the --out directory of a "
                "sweep whose results.sqlite is intact (rerun the sweep to rebuild it)"
            ) from error
        return copy.read_bytes(), rows


def ship(source: Path, target: Path) -> str:
    """Copy ``source`` (a run directory) into ``target``; returns a one-line summary."""
    if not (source / "results.sqlite").is_file():
        raise UserError(f"{source} has no results.sqlite: give the --out directory of a sweep")
    if target.exists() and not target.is_dir():
        raise UserError(
            f"target {target} is a file: give a directory to copy the run into, e.g. results/smollm2"
        )
    if target.resolve() == source.resolve() or source.resolve() in target.resolve().parents:
        raise UserError(f"target {target} is the source or inside it: give a directory outside {source}")
    database, rows = _backup_database(
        source / "results.sqlite"
    )  # first: a damaged source leaves no copy behind
    target.mkdir(parents=True, exist_ok=True)
    for name in TOP_FILES:
        if (source / name).is_file():
            write_bytes_atomic(target / name, (source / name).read_bytes())
    reports = sorted((source / "hessian").glob("*.json"))
    for path in [*reports, *sorted((source / "hessian").glob("*.inputs"))]:  # reports, and what each measured
        write_bytes_atomic(target / "hessian" / path.name, path.read_bytes())
    documents = 0
    for run in sorted(p for p in (source / "runs").glob("*") if p.is_dir()):
        for name in RUN_FILES:
            if (run / name).is_file():
                write_bytes_atomic(target / "runs" / run.name / name, (run / name).read_bytes())
                documents += 1
    write_bytes_atomic(target / "results.sqlite", database)
    for stale in (target / "results.sqlite-wal", target / "results.sqlite-shm"):
        stale.unlink(missing_ok=True)
    return (
        f"shipped {source} -> {target}: {rows} rows, {len(reports)} eigen reports, {documents} run documents"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the sweep's --out directory")
    parser.add_argument("target", type=Path, help="where to put the shipped copy, e.g. results/smollm2")
    parser.add_argument(
        "--no-analyze", action="store_true", help="leave analysis.json, analysis.md and figures/ as they are"
    )
    args = parser.parse_args(argv)
    try:
        print(ship(args.source, args.target))
    except (UserError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.no_analyze:
        return 0
    from hessian_lora.cli.main import main as cli  # local: the copy itself needs none of the package

    if cli(["analyze", str(args.target)]):
        return 1
    for stale in (args.target / "figures").glob("*.png"):  # a figure the new data no longer supports must go
        stale.unlink()
    return cli(["plot", str(args.target), "--formats", "png"])


if __name__ == "__main__":
    sys.exit(main())
