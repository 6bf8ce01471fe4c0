"""``hessian-lora init``: build an adapter at initialisation and save it as a step-0 checkpoint.

Build METHOD's adapter on MODEL (the starting point of the Hessian analysis) and save a step-0 checkpoint to
--out. LoRA-GA estimates its gradient on a few batches of --task.
"""

from __future__ import annotations

import argparse
import sys
import time

from hessian_lora.cli.commands import add_command
from hessian_lora.cli.commands._prompt import add_prompt_template_argument
from hessian_lora.core.errors import UserError
from hessian_lora.core.paths import check_output_directory
from hessian_lora.inputs.models import load_model
from hessian_lora.inputs.tasks import check_prompt_template, load_task, make_batches
from hessian_lora.methods.registry import METHODS, check_method_rank
from hessian_lora.training.adapters import (
    ADAPTER_NAME,
    DEFAULT_TARGETS,
    AdapterConfig,
    adapter_at_initialisation,
    trainable_parameters,
)
from hessian_lora.training.checkpoint import CheckpointMeta, check_checkpoint_destination, save_checkpoint

DEFAULT_LORAGA_BATCHES = 4
DEFAULT_BATCH_SIZE = 4


HELP = "build an adapter at initialisation and save it as a checkpoint"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "init", HELP, __doc__, run)
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="smollm2-135m (default), tiny-llama, a model directory, a .gguf file or a hub id",
    )
    parser.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank r (default 8)")
    parser.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    parser.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (default 0)")
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help="comma-separated module names to adapt (default: all seven projections)",
    )
    parser.add_argument("--seed", type=int, default=0, help="adapter initialisation seed (default 0)")
    parser.add_argument(
        "--model-seed", type=int, default=0, help="seed of a random base model, tiny-llama (default 0)"
    )
    parser.add_argument(
        "--task", default="arith", help="task whose batches LoRA-GA uses, recorded in the checkpoint"
    )
    parser.add_argument(
        "--pissa-niter",
        type=int,
        default=None,
        help="PiSSA with a randomised SVD of this many iterations (default: exact SVD)",
    )
    parser.add_argument(
        "--loraga-batches",
        type=int,
        default=DEFAULT_LORAGA_BATCHES,
        help=f"batches LoRA-GA estimates its gradient on (default {DEFAULT_LORAGA_BATCHES})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"examples per LoRA-GA batch (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--max-length", type=int, default=512, help="token limit per example (default 512)")
    add_prompt_template_argument(
        parser,
        default="chat",
        purpose="formats LoRA-GA's batches, recorded in the checkpoint when used (default chat)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")


def run(args: argparse.Namespace) -> int:
    targets = tuple(name.strip() for name in args.targets.split(",") if name.strip())
    config = AdapterConfig(
        method=args.method,
        rank=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
        targets=targets,
        seed=args.seed,
        pissa_niter=args.pissa_niter,
    )
    check_method_rank(config.method, config.rank)
    if args.loraga_batches <= 0:
        raise UserError(f"--loraga-batches must be positive, got {args.loraga_batches}.")
    check_prompt_template(args.prompt_template)
    check_output_directory(args.out, "--out", kind="checkpoint directory")
    check_checkpoint_destination(args.out)
    # Model and LoRA-GA data are prepared before the clock starts: the reported build time is the adapter's alone.
    loaded = load_model(args.model, device=args.device, seed=args.model_seed)
    batches = None
    if config.spec.needs_data:
        task = load_task(args.task, seed=args.seed, n_train=args.loraga_batches * args.batch_size, n_eval=0)
        batches = make_batches(
            loaded.tokenizer,
            task.train,
            args.batch_size,
            max_length=args.max_length,
            prompt_template=args.prompt_template,
        )
    started = time.perf_counter()
    peft_model = adapter_at_initialisation(loaded, config, init_batches=batches).model
    built_seconds = time.perf_counter() - started
    extra: dict[str, object] = {"build_seconds": round(built_seconds, 3)}
    if batches is not None:  # the template shaped the initialisation only when init read data
        extra["prompt_template"] = args.prompt_template
    meta = CheckpointMeta.from_config(
        config, base_model=args.model, task=args.task, model_seed=args.model_seed, step=0, extra=extra
    )
    path = save_checkpoint(args.out, peft_model, meta)
    trainable = sum(p.numel() for p in trainable_parameters(peft_model).values())
    peft_config = peft_model.peft_config[ADAPTER_NAME]
    tuner = config.spec.describe_peft(peft_config) if config.spec.describe_peft is not None else ""
    print(
        f"{config.method} r={config.rank} alpha={config.lora_alpha:g}{tuner} on {args.model}: {trainable:,} trainable "
        f"parameters, built in {built_seconds:.2f} s, saved to {path}",
        file=sys.stdout,
    )
    return 0
