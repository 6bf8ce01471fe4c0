"""``hessian-lora analyze RUN_DIR``: optimal LR per method, sharpness, and the λ_max–η* relation of a sweep.

Read RUN_DIR (results.sqlite and hessian/*.json of `hessian-lora sweep`), find each method's optimal learning
rate (parabola in log-LR around the best grid point; spread over seeds), its peak metric and gap to the best
method, lambda_max at init and at the end, and the relation between lambda_max and the optimal LR (Spearman
rho, log-log slope with a bootstrap CI, c in eta* = c/lambda, the 2/lambda and Adam bounds,
leave-one-method-out prediction error). Prints the markdown table and writes analysis.json and analysis.md.
"""

from __future__ import annotations

import argparse

from hessian_lora.analysis import HIGHER_IS_BETTER, LAMBDA_SOURCES, analyze, markdown_table, write_analysis
from hessian_lora.analysis.ablation import ablation_markdown, analyze_ablation, is_ablation, write_ablation
from hessian_lora.cli.commands import add_command
from hessian_lora.core.errors import UserError
from hessian_lora.core.paths import check_output_directory

HELP = "optimal learning rate per method and its relation to sharpness, from a sweep's run directory"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "analyze", HELP, __doc__, run)
    parser.add_argument(
        "run_dirs",
        metavar="RUN_DIR",
        nargs="+",
        help="the --out directory of a sweep; several (e.g. one per n_train or epochs) are compared "
        "setting by setting, as are several ranks or batch sizes in one sweep",
    )
    add_analysis_options(parser)
    parser.add_argument(
        "--out",
        default=None,
        help="directory for analysis.json/analysis.md, or ablation.json/ablation.md when the runs "
        "hold several settings (default: the first RUN_DIR)",
    )


def add_analysis_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by analyze, plot and recommend --calibration."""
    parser.add_argument(
        "--metric",
        default="auto",
        choices=("auto", *HIGHER_IS_BETTER),
        help="metric that defines the optimum (default auto: accuracy when it varies, else eval loss)",
    )
    parser.add_argument(
        "--lambda-source",
        default="auto",
        choices=LAMBDA_SOURCES,
        help="lambda_max at init used in the relation: the whole adapter's, or the median over "
        "per-module blocks (default auto: whole when every method has it)",
    )
    parser.add_argument(
        "--rank",
        type=int,
        default=None,
        help="analyse only runs of this LoRA rank (default: every rank, one summary each)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="analyse only runs of this batch size (default: every batch size, one summary each)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=2000,
        help="bootstrap resamples for the intervals (η*, peak, gap to the best, slope, ρ)",
    )


def analysis_kwargs(args: argparse.Namespace) -> dict[str, object]:
    if args.bootstrap < 1:
        raise UserError(f"--bootstrap must be at least 1, got {args.bootstrap}.")
    return {
        "metric": args.metric,
        "lambda_source": args.lambda_source,
        "rank": args.rank,
        "batch_size": args.batch_size,
        "bootstrap_samples": args.bootstrap,
    }


def run(args: argparse.Namespace) -> int:
    check_output_directory(args.out or args.run_dirs[0], "--out" if args.out else "RUN_DIR")
    options = analysis_kwargs(args)
    if is_ablation(args.run_dirs, rank=args.rank, batch_size=args.batch_size):
        ablation = analyze_ablation(args.run_dirs, **options)  # type: ignore[arg-type]  # options: the keywords analysis_kwargs names
        json_path, md_path = write_ablation(ablation, args.out)
        print(ablation_markdown(ablation))
    else:
        result = analyze(args.run_dirs[0], **options)  # type: ignore[arg-type]  # options: the keywords analysis_kwargs names
        json_path, md_path = write_analysis(result, args.out)
        print(markdown_table(result))
    print(f"\nwrote {json_path} and {md_path}")
    return 0
