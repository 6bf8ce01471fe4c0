"""``hessian-lora eigen``: loss-Hessian eigenvalues of an adapter, per block, with residual certificates.

Estimate the extreme eigenvalues of the Hessian of the token-weighted mean loss with respect to adapter
parameters (all of them, or each module's lora_A/lora_B[/magnitude] block), by Lanczos or power iteration on
exact Hessian-vector products, each value with its residual ||Hv - λv||. Analyse a CHECKPOINT directory
(hessian-lora's, or a plain peft adapter directory on the base model its adapter_config.json names, or
--model), a hub adapter repo id (--revision), or an adapter at initialisation with --method/--model. Before the
first product it prints what it measures on (data, prompt template, examples, loss tokens) and the memory plan
(model, block, activations per batch, Krylov vectors and where they will live; a plan that cannot fit is refused
in one line). A per-module scan written to --out resumes: blocks already in the file are skipped. Under torchrun
the products run data-parallel (each process its share of the batches).

Exit status: 0 when every requested value is certified to --tol, 3 when the report was written but some value
is not (the summary says which and why, and what helps), 2 for bad input, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hessian_lora.cli.commands import add_command
from hessian_lora.cli.commands._prompt import CHOICES_HELP
from hessian_lora.cli.commands._threads import add_threads_argument, apply_threads
from hessian_lora.core.atomic import remove_stale_temporaries
from hessian_lora.core.errors import UserError
from hessian_lora.core.paths import check_output_file
from hessian_lora.hessian import distributed
from hessian_lora.inputs.models import DEFAULT_MODEL
from hessian_lora.inputs.readers import looks_like_hub_dataset
from hessian_lora.measurement import measure
from hessian_lora.measurement.targets import AtInitialisation, MeasureTarget, as_target
from hessian_lora.settings.adapter import DEFAULT_TARGETS, AdapterConfig
from hessian_lora.settings.measurement import CHOICES, MeasureSettings

if TYPE_CHECKING:  # annotations only: the command line starts without torch (the engine loads it)
    from collections.abc import Sequence

    from hessian_lora.hessian.results import BlockReport, EigenReport

HELP = "loss-Hessian eigenvalues (λ_max, λ_min, top-k) of an adapter, whole or per module"
# Exit status when the report was written but a requested value is not certified to --tol (documented in the
# README): scripts can tell "measured and certified" (0) from "measured, read the residuals" (3).
UNCERTIFIED_EXIT = 3
# What helps, by the solver's stop reason (hessian/lanczos.py).
_UNCERTIFIED_HELP = {
    "max_iter": "the iteration cap came first: raise --max-iter (or loosen --tol)",
    "verification_failed": "the recurrence reached --tol but the explicit residual of the returned vector did not, "
    "at the products' round-off: more products do not help; loosen --tol (the report "
    "keeps the explicit residual)",
    "memory": "the Krylov basis filled its memory budget: raise --krylov-memory, free memory on the device, or "
    "measure smaller blocks (--blocks per-module)",
    "relative_change": "PyHessian's stop rule fired on a value whose residual exceeds --tol: use --solver lanczos",
    "other": "read the residual in the report; raise --max-iter or use --solver lanczos",
}


# The option groups of the measurement settings, by the ``group`` their fields name (settings/measurement.py).
_GROUPS = {"data": "data", "blocks": "blocks and solver", "extras": "extra measurements", "engine": "engine"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "eigen", HELP, __doc__, run)
    parser.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        help="checkpoint or plain peft adapter directory, or a "
        "hub adapter repo id such as user/my-lora (omit with --method)",
    )
    parser.add_argument("--revision", default=None, help="hub adapter: branch, tag or commit (default main)")
    source = parser.add_argument_group("adapter at initialisation (instead of CHECKPOINT)")
    source.add_argument("--method", default=None, help="build this method's adapter at initialisation")
    source.add_argument(
        "--model",
        default=None,
        help="base model for --method (default smollm2-135m), or for a "
        "plain peft adapter CHECKPOINT (default: its base_model_name_or_path)",
    )
    source.add_argument("--rank", type=int, default=8, help="LoRA rank for --method (default 8)")
    source.add_argument(
        "--alpha", type=float, default=None, help="LoRA alpha for --method (default: the rank)"
    )
    source.add_argument(
        "--targets", default=None, help="modules to adapt for --method (default: all seven projections)"
    )
    # dest adapter_seed: ``seed`` is the solver's (MeasureSettings.seed, --solver-seed)
    source.add_argument(
        "--seed",
        dest="adapter_seed",
        type=int,
        default=0,
        help="adapter initialisation seed for --method (default 0)",
    )
    source.add_argument(
        "--model-seed", type=int, default=0, help="seed of a random base (tiny-llama) (default 0)"
    )
    groups = {key: parser.add_argument_group(title) for key, title in _GROUPS.items()}
    # --task and --data both name the measurement's task (a spec, or a file of examples): one or the other.
    data_choice = groups["data"].add_mutually_exclusive_group()
    data_choice.add_argument(
        "--data",
        default=None,
        metavar="SOURCE",
        help="the data the adapter was trained on: a "
        ".jsonl/.json/.parquet/.csv file, a save_to_disk directory or a hub dataset id, in "
        "TRL's formats (text, prompt/completion, messages) or prompt/response pairs; "
        "SOURCE::PROMPT,RESPONSE maps other fields, ::loss=all|completion|assistant and "
        "::split=NAME choose the loss tokens and split (docs/data-formats.md)",
    )
    add_settings_arguments(groups, task_group=data_choice)
    groups["engine"].add_argument(
        "--device", default=None, help="cpu, cuda, ... (default: cuda when available)"
    )
    parser.add_argument("--out", required=True, help="JSON report to write (and to resume from)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threads_argument(parser)


def add_settings_arguments(
    groups: dict[str, argparse._ArgumentGroup], *, task_group: argparse._MutuallyExclusiveGroup | None = None
) -> None:
    """One option per :class:`MeasureSettings` field, generated from the field: its flag, help, default and choices
    (dest: the field's name), so the command line cannot drift from the settings."""
    for field in dataclasses.fields(MeasureSettings):
        meta = field.metadata
        group: argparse._ArgumentGroup = groups[meta["group"]]
        if field.name == "task" and task_group is not None:
            group = task_group
        default_text = meta["default_help"] or _default_text(field.default)
        help_text = f"{meta['help']} (default: {default_text})"
        if field.name == "prompt_template":
            help_text = f"{CHOICES_HELP}: {help_text}"
        if meta["off_flag"] is not None:  # a switch that turns a setting off (--no-min, --no-reuse)
            group.add_argument(
                meta["off_flag"],
                dest=field.name,
                action="store_const",
                const=meta["off_value"],
                default=field.default,
                help=meta["help"],
            )
            continue
        flag = meta["flag"] or "--" + field.name.replace("_", "-")
        if isinstance(field.default, bool):
            group.add_argument(
                flag, dest=field.name, action="store_true", default=field.default, help=meta["help"]
            )
            continue
        group.add_argument(
            flag,
            dest=field.name,
            type=_option_type(field),
            default=field.default,
            choices=CHOICES.get(field.name),
            metavar=meta["metavar"],
            help=help_text,
        )


def _option_type(field: dataclasses.Field[Any]) -> Callable[[str], Any]:
    """How a flag's text is read: tuples (modules, layers) as text the settings parse, else by the annotation."""
    annotation = str(field.type)
    if annotation.startswith("tuple") or field.name in CHOICES or "Literal" in annotation:
        return str
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return float
    return str


def _default_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_from_arguments(args: argparse.Namespace) -> MeasureSettings:
    """The :class:`MeasureSettings` the parsed options say (``--data`` is the task when given)."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(MeasureSettings)}
    values["task"] = args.data or args.task
    return MeasureSettings(**values)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    if args.data is not None:
        source = args.data.split("::", 1)[0]
        if not Path(source).expanduser().exists() and not looks_like_hub_dataset(source):
            raise UserError(
                f"--data {args.data}: no such file or directory; pass a .jsonl, .json, .parquet or .csv "
                "file, a save_to_disk directory or a hub dataset id user/name."
            )
    settings = settings_from_arguments(args)  # every check of the settings, before torch loads
    if args.checkpoint is None and args.method is None:
        raise UserError(
            "pass a CHECKPOINT directory, or --method (and --model) to analyse an adapter at initialisation."
        )
    if args.checkpoint is not None and args.method is not None:
        raise UserError(
            f"give either a CHECKPOINT ({args.checkpoint}) or --method {args.method}, not both: --method "
            "builds an adapter at initialisation in place of a checkpoint."
        )
    if args.revision is not None and args.checkpoint is None:
        raise UserError(
            f"--revision {args.revision} picks a hub adapter's version: pass it with a CHECKPOINT repo id."
        )
    target: MeasureTarget | None = None
    if (
        args.method is not None
    ):  # checked here (the rank, say), before the model loads or the report is touched
        targets = tuple(t.strip() for t in args.targets.split(",") if t.strip()) if args.targets else ()
        adapter = AdapterConfig(
            method=args.method,
            rank=args.rank,
            alpha=args.alpha,
            seed=args.adapter_seed,
            targets=targets or DEFAULT_TARGETS,
        )
        target = AtInitialisation(adapter, model=args.model or DEFAULT_MODEL, model_seed=args.model_seed)
    out = check_output_file(args.out, "--out")
    # Temporary files a killed write of this report left; only this report's, since a sweep or another eigen
    # may be writing beside it.
    remove_stale_temporaries(out.parent, name=out.name)
    if target is None:  # a hub id is fetched here, once the report's place is known to be good
        target = as_target(
            args.checkpoint, base=args.model, revision=args.revision, model_seed=args.model_seed
        )
    report = measure.measure(target, settings, device=args.device, out=args.out, progress=not args.quiet)

    if distributed.is_main_process():
        _print_summary(report, args.out)
    return 0 if all(block.converged for block in report.blocks) else UNCERTIFIED_EXIT


def _uncertified_by_reason(blocks: Sequence[BlockReport]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for block in blocks:
        if not block.converged:
            reason = block.eigen.stop_reason if block.eigen is not None else "other"
            grouped.setdefault(reason if reason in _UNCERTIFIED_HELP else "other", []).append(block.name)
    return grouped


def _print_summary(report: EigenReport, out: str) -> None:
    blocks = report.blocks
    width = max([len(b.name) for b in blocks] + [5])
    print(
        f"{'block':<{width}}  {'lambda_max':>11}  {'lambda_min':>11}  {'residual':>9}  conv  {'hvps':>5}  "
        f"{'seconds':>8}",
        file=sys.stdout,
    )
    for block in blocks:
        lambda_min = f"{block.lambda_min:11.5g}" if block.lambda_min is not None else f"{'-':>11}"
        residual = f"{block.residual:9.2e}" if block.residual is not None else f"{'-':>9}"
        extra = ""
        if block.preconditioned is not None:
            p = block.preconditioned
            extra = f"  P^-1H {p.sharpness:.5g}" + (
                f" (Adam EoS {p.adam_threshold:.4g})" if p.adam_threshold else ""
            )
        if block.trace is not None:
            extra += f"  trace {block.trace.trace:.5g}"
        print(
            f"{block.name:<{width}}  {block.lambda_max:11.5g}  {lambda_min}  {residual}  "
            f"{'yes ' if block.converged else 'NO  '}  {block.hvps:5d}  {block.seconds:8.1f}{extra}",
            file=sys.stdout,
        )
    values = [b.lambda_max for b in blocks if b.lambda_max is not None]
    if len(values) > 1:
        print(
            f"median lambda_max over {len(values)} blocks: {statistics.median(values):.5g}", file=sys.stdout
        )
    for reason, names in _uncertified_by_reason(blocks).items():
        print(
            f"not certified ({reason}): {', '.join(names)}: "
            f"{_UNCERTIFIED_HELP.get(reason, _UNCERTIFIED_HELP['other'])}",
            file=sys.stdout,
        )
    note = report.source.get("preconditioner_note")
    if note:
        print(f"preconditioned sharpness not computed: {note}", file=sys.stdout)
    print(f"report: {out}", file=sys.stdout)
