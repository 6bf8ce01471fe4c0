"""``hessian-lora plot RUN_DIR``: the six figures of a sweep, PNG and PDF.

Write PNG and PDF figures of RUN_DIR: (a) metric vs learning rate per method with peaks, (b) lambda_max vs
optimal LR with the fit, 2/lambda and Adam lines, (c) per-module lambda_max relative to LoRA across layers,
(d) Lanczos/power convergence, (e) spectral density, (f) training loss per LR. Figures whose data the run
lacks are skipped with the reason.
"""

from __future__ import annotations

import argparse

from hessian_lora.analysis.ablation import is_ablation
from hessian_lora.cli.commands import add_command
from hessian_lora.cli.commands.analyze import add_analysis_options, analysis_kwargs
from hessian_lora.core.errors import UserError
from hessian_lora.core.paths import check_output_directory

HELP = (
    "figures of a sweep: metric vs LR, sharpness vs optimal LR, per-module ratios, convergence, density, "
    "loss curves"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "plot", HELP, __doc__, run)
    parser.add_argument(
        "run_dirs",
        metavar="RUN_DIR",
        nargs="+",
        help="the --out directory of a sweep; with several directories, ranks or batch sizes, also "
        "(g) eta* and (h) peak per setting and (i) the setting x LR table, and each setting's "
        "figures in a subfolder",
    )
    parser.add_argument("--out", default=None, help="figure directory (default: the first RUN_DIR/figures)")
    parser.add_argument("--formats", default="png,pdf", help="comma-separated file formats (default png,pdf)")
    add_analysis_options(parser)


def run(args: argparse.Namespace) -> int:
    # local: keeps matplotlib (0.4 s) out of the other commands' start-up
    from hessian_lora.analysis.figures.ablation import ABLATION_FIGURES, plot_ablation
    from hessian_lora.analysis.figures.plots import FIGURE_NAMES, plot_run  # local: matplotlib, as above

    formats = tuple(part.strip().lower() for part in args.formats.split(",") if part.strip())
    known = {"png", "pdf", "svg"}
    if not formats or set(formats) - known:
        raise UserError(
            f"--formats {args.formats!r}: use a comma-separated subset of {', '.join(sorted(known))}."
        )

    if args.out is not None:
        check_output_directory(args.out, "--out")
    options = analysis_kwargs(args)
    if is_ablation(args.run_dirs, rank=args.rank, batch_size=args.batch_size):
        result = plot_ablation(args.run_dirs, args.out, formats=formats, **options)
    else:
        result = plot_run(args.run_dirs[0], args.out, formats=formats, **options)
    names = {**FIGURE_NAMES, **ABLATION_FIGURES}
    for key, paths in result.written.items():
        print(f"({key}) {names.get(key.rpartition('/')[2], key)}: {', '.join(str(path) for path in paths)}")
    for key, reason in result.skipped.items():
        print(f"({key}) {FIGURE_NAMES[key]}: skipped, {reason}")
    return 0
