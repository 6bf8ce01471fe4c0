"""``hessian-lora sweep``: train every method over a grid of learning rates; resumable, crash-safe.

Train every (method, lr, seed, rank, batch size) of CONFIG, evaluate each run and record it in
RUN_DIR/results.sqlite. Re-running the same command skips finished runs and restarts interrupted ones; a run
directory made with other settings is refused (grid changes need --extend).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from hessian_lora.cli.commands import add_command
from hessian_lora.cli.commands._prompt import add_prompt_template_argument
from hessian_lora.cli.commands._threads import add_threads_argument, apply_threads
from hessian_lora.core.errors import UserError
from hessian_lora.core.paths import check_output_directory
from hessian_lora.inputs.tasks import check_prompt_template
from hessian_lora.settings.sweep import eval_task_specs, load_config
from hessian_lora.sweep.adaptive import leave_method_out, search_keys, search_metric
from hessian_lora.sweep.preflight import preflight
from hessian_lora.sweep.runner import plan_run_dir, run_sweep
from hessian_lora.training.sandbox import accept_unconfined_code

HELP = "run a learning-rate sweep from a YAML config into a resumable run directory"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "sweep", HELP, __doc__, run)
    parser.add_argument("config", help="sweep config, e.g. experiments/smollm2_arith.yaml")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (created or resumed)")
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: one run after another in this process (default); ray: one Ray task per run",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: start a local Ray instance); needs --backend ray",
    )
    parser.add_argument(
        "--extend",
        action="store_true",
        help="allow a grid that differs from RUN_DIR's (adds the new runs; other settings must match)",
    )
    parser.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed")
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, ... (default: cuda when available; local backend)"
    )
    add_prompt_template_argument(parser, default=None, purpose="overrides the config's prompt_template")
    parser.add_argument(
        "--eval-task",
        default=None,
        help="override the config's eval_task: comma-separated gsm8k:PATH, math:PATH, mbpp:PATH, humaneval",
    )
    parser.add_argument(
        "--allow-unconfined-code",
        action="store_true",
        help="run the model's generated programs (HumanEval, MBPP) even where the machine cannot "
        "confine them (no user namespaces): they could read, change or delete your files; "
        "same as eval.allow_unconfined_code: true",
    )
    add_threads_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run the preflight (model, task, evaluation sets, calibration, one adapter per method) "
        "and print what the sweep would run; writes nothing",
    )


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    if args.device is not None and args.backend == "ray":
        raise UserError(
            "--device applies to the local backend; Ray places runs by the config's ray: settings."
        )
    config = load_config(args.config)
    if args.prompt_template is not None or args.eval_task is not None or args.allow_unconfined_code:
        changes: dict[str, object] = {}
        if args.allow_unconfined_code:
            changes["eval"] = dataclasses.replace(config.eval, allow_unconfined_code=True)
            accept_unconfined_code()
        if args.prompt_template is not None:  # the template every run trains with: the training settings'
            changes["train"] = dataclasses.replace(
                config.train, prompt_template=check_prompt_template(args.prompt_template)
            )
        if args.eval_task is not None:
            changes["eval_task"] = eval_task_specs(args.eval_task, source="--eval-task")
        config = dataclasses.replace(config, **changes)
    for spec in config.eval_task:  # the files are the user's: say which one is missing before any run starts
        path = spec.partition(":")[2]
        if path and not Path(path).expanduser().is_file():
            raise UserError(
                f"eval_task {spec}: no such file {path}; replace the path with your copy of the set."
            )
    check_output_directory(args.out, "--out", kind="run directory")
    if args.dry_run:
        if Path(args.out).is_dir():  # what the real run checks first: the directory's own settings and grid
            config = plan_run_dir(config, Path(args.out), extend=args.extend)[0]
        for line in dry_run(config, source=str(args.config), device=args.device):
            print(line)
        return 0
    summary = run_sweep(
        config,
        args.out,
        backend=args.backend,
        address=args.address,
        extend=args.extend,
        retry_failed=args.retry_failed,
        progress=not args.quiet,
        device=args.device,
        source=str(args.config),
    )
    print(summary.line(), file=sys.stderr)
    if summary.failed:
        # A sweep with failed runs is not a success: say why, once per distinct error, and exit non-zero.
        print(
            f"hessian-lora sweep: error: {summary.failed} runs failed; fix the cause and rerun with "
            "--retry-failed:",
            file=sys.stderr,
        )
        for error, count in sorted(summary.errors.items(), key=lambda item: -item[1]):
            print(f"  {count} x {error}", file=sys.stderr)
        return 1
    return 0


def dry_run(config: Any, *, source: str, device: str | None = None) -> list[str]:
    """The preflight of ``config`` (every check a sweep makes before it writes anything) and what the sweep would
    run: the grid's runs, or for an adaptive search its metric, fallback, centres' calibration (refitted per
    method with ``leave_method_out``) and the upper bound of its runs. Writes nothing."""
    checked = preflight(config, device=device, source=source, needs_calibration=config.search is not None)
    lines = [
        f"{source}: preflight passed (model {config.model}, task {config.task}, {len(config.methods)} methods, "
        f"seeds {list(config.seeds)}, n_eval {config.n_eval})"
    ]
    if config.hessian.init:
        lines.append(
            f"λ_max at initialisation: {config.hessian.samples} training examples in batches of "
            f"{config.hessian.batch_size}, tol {config.hessian.measure.tol:g}, max_iter "
            f"{config.hessian.measure.max_iter}"
        )
    if config.search is None:
        lines.append(f"grid: {len(config.runs())} runs")
        return lines

    search = config.search
    metric, _ = search_metric(config)
    keys = search_keys(config)
    lines.append(
        f"adaptive search on {search.base:g} · 10^(k/{search.per_decade}) in [{search.min_lr:g}, "
        f"{search.max_lr:g}], resolution {search.resolution:g} decades, by {metric} (fallback "
        f"{search.fallback} when it is flat or missing on a first bracket); at most {search.max_runs} "
        f"points × {len(config.seeds)} seeds × {len(keys)} searches = "
        f"{search.max_runs * len(config.seeds) * len(keys)} runs"
    )
    calibration = checked.calibration
    if calibration is not None:
        where = calibration.provenance.get("sweep") or calibration.provenance.get("run_dir") or "given"
        lines.append(
            f"centres from the calibration {where} ({calibration.fit} fit on "
            f"{', '.join(sorted(calibration.points))}; probe: {calibration.probe.get('model')}, "
            f"rank {calibration.probe.get('rank')}, {calibration.probe.get('samples')} examples)"
        )
        for method in config.methods:
            if search.leave_method_out and method in calibration.points:
                refit = leave_method_out(calibration, method)
                fit = f"slope {refit.slope:.3f}" if refit.fit == "power" else f"c {refit.c:.3g}"
                lines.append(
                    f"  {method}: refitted without its own point on {', '.join(sorted(refit.points))} "
                    f"({refit.fit}, {fit})"
                )
            else:
                lines.append(
                    f"  {method}: the calibration as it is ("
                    f"{'its own point included' if method in calibration.points else 'not in it'})"
                )
    return lines
