"""``hessian-lora demo``: sweep, sharpness at initialisation, analysis and figures in one command.

Run experiments/smollm2_arith.yaml (with --quick: experiments/tiny.yaml, about a minute) through the sweep
into --out, measure lambda_max per method at initialisation (whole adapter, spectral density, per-module) and
at the end of each method's best run (raw and Adam-preconditioned), then analyze and plot. Prints the summary
table and where the figures are. Resumable: a rerun skips what is done.
"""

from __future__ import annotations

import argparse

from hessian_lora.cli.commands import add_command
from hessian_lora.cli.commands._threads import add_threads_argument, apply_threads
from hessian_lora.core.paths import check_output_directory

HELP = "the whole pipeline on the embedded default: sweep, lambda_max at init, analyze, plot"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "demo", HELP, __doc__, run)
    parser.add_argument(
        "--quick", action="store_true", help="the tiny model and grid (experiments/tiny.yaml)"
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="run the config's whole LR grid instead of its adaptive search (slower: 42 runs "
        "instead of ~25 for the default)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="run directory (default runs/demo-smollm2, or runs/demo-tiny with --quick)",
    )
    parser.add_argument("--config", default=None, help="another sweep YAML to run instead of the default")
    parser.add_argument(
        "--skip-final",
        action="store_true",
        help="do not measure lambda_max at the end of the best runs (saves one Hessian probe per method)",
    )
    parser.add_argument(
        "--modules",
        default=None,
        help="projections of the per-module scan at init, comma-separated (default q_proj,v_proj "
        "with --quick, else q_proj)",
    )
    parser.add_argument(
        "--layer-samples",
        type=int,
        default=3,
        help="evenly spaced layers the per-module scan covers without --quick (default 3: first, middle, last)",
    )
    parser.add_argument(
        "--density-steps",
        type=int,
        default=None,
        help="SLQ steps of the spectral density at init (default 15 with --quick, 12 with --full, "
        "0 for the default adaptive run; 0: skip)",
    )
    add_threads_argument(parser)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (phase lines stay; bars are off anyway when stderr is not a terminal)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    # local: keeps matplotlib (0.4 s) out of the other commands' start-up
    from hessian_lora.sweep.demo import run_demo

    apply_threads(args)
    if args.out is not None:
        check_output_directory(args.out, "--out", kind="run directory")
    modules = [name.strip() for name in args.modules.split(",") if name.strip()] if args.modules else None
    result = run_demo(
        quick=args.quick,
        out=args.out,
        config=args.config,
        measure_final=not args.skip_final,
        modules=modules,
        layer_samples=args.layer_samples,
        density_steps=args.density_steps,
        progress=not args.quiet,
        device=args.device,
        full=args.full,
        bars=False if args.no_progress else None,
    )
    print(result.summary())
    return 0
