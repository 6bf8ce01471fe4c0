"""``hessian-lora results``: a sweep's rows as a table, CSV or Parquet.

Read RUN_DIR/results.sqlite (one row per run) and print it as an aligned table or CSV, or write a Parquet file
(needs pyarrow: pip install 'hessian-lora[dist]').
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hessian_lora.cli.commands import add_command
from hessian_lora.core.atomic import write_bytes_atomic, write_text_atomic
from hessian_lora.core.errors import UserError
from hessian_lora.core.paths import check_output_file
from hessian_lora.core.store import COLUMN_NAMES, COLUMNS, read_rows

TABLE_COLUMNS = (
    "method",
    "rank",
    "seed",
    "batch_size",
    "lr",
    "status",
    "steps",
    "train_loss",
    "eval_loss",
    "accuracy",
    "pass_at_1",
    "lambda_init",
    "lambda_final",
    "precond_lambda_final",
    "wall_seconds",
)
FORMATS = ("table", "csv", "parquet")


HELP = "show or export a sweep's results (table, CSV, Parquet)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "results", HELP, __doc__, run)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by `hessian-lora sweep`")
    parser.add_argument("--format", choices=FORMATS, default="table", help="table (default), csv or parquet")
    parser.add_argument(
        "--output",
        default=None,
        help="file to write (csv: default stdout; parquet: default RUN_DIR/results.parquet)",
    )
    parser.add_argument(
        "--all-columns",
        action="store_true",
        help="csv/parquet: every column, the per-step history and the error text included",
    )


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory: pass a RUN_DIR written by `hessian-lora sweep`.")
    if args.output and args.format != "table":
        check_output_file(args.output, "--output")

    rows = read_rows(run_dir)
    if args.format == "table":
        if args.output:
            raise UserError("--output is for csv and parquet; redirect the table with > instead.")
        print(format_table(rows))
        return 0
    columns = (
        COLUMN_NAMES
        if args.all_columns
        else tuple(name for name in COLUMN_NAMES if name not in ("history", "error"))
    )
    if args.format == "csv":
        text = to_csv(rows, columns)
        if args.output:
            write_text_atomic(args.output, text)
        else:
            sys.stdout.write(text)
        return 0
    output = Path(args.output) if args.output else run_dir / "results.parquet"
    write_parquet(rows, columns, output)
    print(f"wrote {len(rows)} rows to {output}", file=sys.stderr)
    return 0


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """An aligned text table; columns that are empty in every row are left out."""
    if not rows:
        return "(no runs recorded yet)"
    shown = [name for name in columns if any(row.get(name) is not None for row in rows)]
    cells = [[_cell(row.get(name), name) for name in shown] for row in rows]
    widths = [max(len(name), *(len(line[i]) for line in cells)) for i, name in enumerate(shown)]
    header = "  ".join(name.ljust(width) for name, width in zip(shown, widths))
    lines = [
        "  ".join(
            cell.rjust(width) if _numeric(name) else cell.ljust(width)
            for cell, width, name in zip(line, widths, shown)
        )
        for line in cells
    ]
    return "\n".join([header, "  ".join("-" * width for width in widths), *lines])


def _numeric(name: str) -> bool:
    return name not in ("method", "status", "run_id", "checkpoint")


def _cell(value: Any, name: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if name == "lr":
            return f"{value:.3e}"
        if name == "accuracy" or name == "pass_at_1":
            return f"{value:.3f}"
        if name == "wall_seconds":
            return f"{value:.1f}"
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(name) is None else row.get(name) for name in columns])
    return buffer.getvalue()


def write_parquet(rows: Sequence[dict[str, Any]], columns: Sequence[str], output: Path) -> None:
    try:
        import pyarrow as pa  # local: optional dependency (pyarrow, the dist extra)
        import pyarrow.parquet as pq  # local: optional dependency (pyarrow)
    except ImportError as exc:
        raise UserError(
            "parquet export needs pyarrow: pip install 'hessian-lora[dist]' (or use --format csv)."
        ) from exc

    kinds = dict(COLUMNS)
    arrow_type = {"TEXT": pa.string(), "REAL": pa.float64(), "INTEGER": pa.int64()}
    schema = pa.schema([(name, arrow_type[kinds[name].split()[0]]) for name in columns])
    table = pa.table({name: [row.get(name) for row in rows] for name in columns}, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes_atomic(output, sink.getvalue().to_pybytes())
