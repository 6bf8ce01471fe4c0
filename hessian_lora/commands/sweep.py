"""``hessian-lora sweep``: train every method over a grid of learning rates; resumable, crash-safe.

Train every (method, lr, seed, rank, batch size) of CONFIG, evaluate each run and record it in
RUN_DIR/results.sqlite. Re-running the same command skips finished runs and restarts interrupted ones; a run
directory made with other settings is refused (grid changes need --extend).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hessian_lora._paths import check_output_directory
from hessian_lora.commands import add_command
from hessian_lora.commands._prompt import add_prompt_template_argument
from hessian_lora.commands._threads import add_threads_argument, apply_threads
from hessian_lora.errors import UserError

HELP = "run a learning-rate sweep from a YAML config into a resumable run directory"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "sweep", HELP, __doc__, run)
    parser.add_argument("config", help="sweep config, e.g. experiments/smollm2_arith.yaml")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (created or resumed)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="local: one run after another in this process (default); ray: one Ray task per run")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: start a local Ray instance); needs --backend ray")
    parser.add_argument("--extend", action="store_true",
                        help="allow a grid that differs from RUN_DIR's (adds the new runs; other settings must match)")
    parser.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available; local backend)")
    add_prompt_template_argument(parser, default=None, purpose="overrides the config's prompt_template")
    parser.add_argument("--eval-task", default=None,
                        help="override the config's eval_task: comma-separated gsm8k:PATH, math:PATH, mbpp:PATH, humaneval")
    add_threads_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")


def run(args: argparse.Namespace) -> int:
    from hessian_lora.sweep.config import load_config
    from hessian_lora.sweep.runner import run_sweep

    apply_threads(args)
    if args.device is not None and args.backend == "ray":
        raise UserError("--device applies to the local backend; Ray places runs by the config's ray: settings.")
    config = load_config(args.config)
    if args.prompt_template is not None or args.eval_task is not None:
        import dataclasses

        from hessian_lora.data import check_prompt_template
        from hessian_lora.sweep.config import eval_task_specs

        changes: dict[str, object] = {}
        if args.prompt_template is not None:  # the template every run trains with: the training settings'
            changes["train"] = dataclasses.replace(config.train,
                                                   prompt_template=check_prompt_template(args.prompt_template))
        if args.eval_task is not None:
            changes["eval_task"] = eval_task_specs(args.eval_task, source="--eval-task")
        config = dataclasses.replace(config, **changes)
    for spec in config.eval_task:  # the files are the user's: say which one is missing before any run starts
        path = spec.partition(":")[2]
        if path and not Path(path).expanduser().is_file():
            raise UserError(f"eval_task {spec}: no such file {path}; replace the path with your copy of the set.")
    check_output_directory(args.out, "--out", kind="run directory")
    summary = run_sweep(config, args.out, backend=args.backend, address=args.address, extend=args.extend,
                        retry_failed=args.retry_failed, progress=not args.quiet, device=args.device,
                        source=str(args.config))
    print(summary.line(), file=sys.stderr)
    if summary.failed:
        # A sweep with failed runs is not a success: say why, once per distinct error, and exit non-zero.
        print(f"hessian-lora sweep: error: {summary.failed} runs failed; fix the cause and rerun with "
              "--retry-failed:", file=sys.stderr)
        for error, count in sorted(summary.errors.items(), key=lambda item: -item[1]):
            print(f"  {count} x {error}", file=sys.stderr)
        return 1
    return 0
