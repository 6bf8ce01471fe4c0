"""``hessian-lora recommend``: a learning rate for a method from one λ_max probe at initialisation.

Measure lambda_max of METHOD's adapter at initialisation on MODEL (the way the calibration sweep measured it)
and predict the optimal learning rate from the calibration (eta* against lambda_max over the sweep's methods),
with a narrow grid to sweep around it. The default calibration ships with the package; --calibration RUN_DIR
fits one on your own sweep. With --save-calibration and no --method, only builds and saves the calibration.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

from hessian_lora.cli.commands import add_command
from hessian_lora.cli.commands._prompt import add_prompt_template_argument
from hessian_lora.cli.commands._threads import add_threads_argument, apply_threads
from hessian_lora.core.errors import UserError
from hessian_lora.core.paths import check_output_file
from hessian_lora.inputs.tasks import check_prompt_template
from hessian_lora.sweep.recommend import calibration_from_run, load_calibration, recommend, save_calibration

HELP = "predict a method's optimal learning rate from one lambda_max probe at initialisation"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "recommend", HELP, __doc__, run)
    parser.add_argument("--method", default=None, help="adapter method to probe (see `hessian-lora methods`)")
    parser.add_argument("--model", default=None, help="base model (default: the calibration's model)")
    parser.add_argument("--task", default=None, help="probe task (default: the calibration's task)")
    parser.add_argument(
        "--calibration",
        default=None,
        help="a sweep RUN_DIR or a calibration .json (default: the shipped calibration)",
    )
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (default: the calibration's)")
    add_prompt_template_argument(
        parser,
        default=None,
        purpose="formats the probe batches (default: the calibration sweep's, else chat)",
    )
    parser.add_argument("--seed", type=int, default=0, help="adapter initialisation seed (default 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    add_threads_argument(parser)
    parser.add_argument(
        "--save-calibration",
        default=None,
        metavar="FILE",
        help="write the calibration (e.g. fitted on --calibration RUN_DIR) to FILE",
    )
    parser.add_argument("--note", default="", help="provenance note stored with --save-calibration")
    parser.add_argument("--json", action="store_true", help="print the recommendation as JSON")


def run(args: argparse.Namespace) -> int:

    apply_threads(args)
    if args.prompt_template is not None:
        check_prompt_template(args.prompt_template)
    if args.save_calibration is not None:
        check_output_file(args.save_calibration, "--save-calibration")
    if args.method is None and args.save_calibration is None:
        raise UserError(
            "pass --method METHOD to get a learning rate (or --save-calibration FILE to save one)."
        )
    if args.calibration is not None and Path(args.calibration).is_dir():
        calibration = calibration_from_run(args.calibration, note=args.note)
    else:
        calibration = load_calibration(args.calibration)
        if args.note:
            calibration = replace(calibration, provenance={**calibration.provenance, "note": args.note})
    if args.save_calibration:
        path = save_calibration(calibration, args.save_calibration)
        error = f"{calibration.log10_error:.2f} decades" if calibration.log10_error is not None else "n/a"
        print(
            f"calibration ({calibration.fit} fit, c = {calibration.c:.3g}, LOMO RMS error {error}, "
            f"{len(calibration.points)} methods with interior optima) written to {path}"
        )
    if args.method is None:
        return 0
    result = recommend(
        args.method,
        model=args.model,
        task=args.task,
        calibration=calibration,
        rank=args.rank,
        seed=args.seed,
        device=args.device,
        prompt_template=args.prompt_template,
    )
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print("\n".join(result.lines()))
    return 0
