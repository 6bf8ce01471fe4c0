"""The ``--threads`` option shared by the compute-heavy commands.

On a small shared CPU torch's default thread count oversubscribes the cores (measured here: 20x slower with one
other busy process), so every long-running command lets the user pin it.
"""

from __future__ import annotations

import argparse

import torch

from hessian_lora.core.errors import UserError


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 on a busy machine)",
    )


def apply_threads(args: argparse.Namespace) -> None:
    if args.threads is None:
        return
    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}.")

    torch.set_num_threads(args.threads)
