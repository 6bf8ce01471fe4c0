"""``hessian-lora info``: what a checkpoint holds.

Describe a checkpoint directory: method, rank, alpha, targets, base model, trainable parameters, step,
learning rate, and whether it holds optimizer state and a residual base. A plain peft adapter directory
(PeftModel.save_pretrained) is described from its adapter_config.json and the header of
adapter_model.safetensors; a truncated weights file is an error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hessian_lora.cli.commands import add_command
from hessian_lora.core.errors import UserError
from hessian_lora.methods.registry import METHODS
from hessian_lora.training import checkpoint, peft_adapters
from hessian_lora.training.peft_adapters import resolve_adapter

HELP = "describe a checkpoint or a plain peft adapter directory"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "info", HELP, __doc__, run)
    parser.add_argument(
        "checkpoint",
        metavar="DIR",
        help="checkpoint or plain peft adapter directory, or a hub adapter repo id such as user/my-lora",
    )
    parser.add_argument("--revision", default=None, help="hub adapter: branch, tag or commit (default main)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")


def describe(directory: str | Path, *, revision: str | None = None) -> dict[str, Any]:
    """The facts ``info`` prints, read from the files (no model is loaded); a hub adapter id is fetched into the
    hub cache first."""
    path = resolve_adapter(directory, revision=revision)
    facts = _describe(path)
    if path != Path(directory):
        facts["checkpoint"] = f"{directory} (hub, commit {path.name})"
    return facts


def _describe(path: Path) -> dict[str, Any]:
    if path.is_dir() and not checkpoint.is_checkpoint(path):
        return _describe_peft(path)
    data = checkpoint.read_meta_dict(path)
    checkpoint.check_checkpoint_files(path)
    if data.get("method") not in METHODS:
        raise UserError(
            f"{path} holds unknown method {data.get('method')!r}: it was written by another version."
        )
    meta = checkpoint.CheckpointMeta.from_dict(data)
    adapter = meta.adapter
    facts: dict[str, Any] = {
        "checkpoint": str(path),
        "method": adapter.method,
        "summary": adapter.spec.summary,
        "rank": adapter.rank,
        "alpha": adapter.alpha,
        "scale": adapter.scaling,  # the scale peft applies (RandLoRA's is fixed, rsLoRA's over sqrt(rank))
        "dropout": adapter.dropout,
        "targets": list(adapter.targets),
        "base_model": meta.base_model,
        "dtype": meta.dtype,
        "model_seed": meta.model_seed,
        "task": meta.task,
        "seed": adapter.seed,
        "step": meta.step,
        "lr": meta.lr,
        "trainable_parameters": data.get("trainable_parameters"),
        "adapter_bytes": _size(path / checkpoint.ADAPTER_WEIGHTS_FILE),
        "residual_base": (
            f"rebuilt from the initial A0, B0 in {checkpoint.INITIAL_ADAPTER_FILE}"
            if adapter.spec.rewrites_base and (path / checkpoint.INITIAL_ADAPTER_FILE).is_file()
            else ("MISSING" if adapter.spec.rewrites_base else "not needed (base weights unchanged)")
        ),
        "optimizer_state": None,
        "extra": meta.extra,
    }
    if (path / checkpoint.OPTIMIZER_FILE).is_file():
        state = checkpoint.read_optimizer_state(path / checkpoint.OPTIMIZER_FILE)
        facts["optimizer_state"] = {
            "step": state.step,
            "betas": list(state.betas),
            "eps": state.eps,
            "parameters": len(state.param_names),
        }
    return facts


def _describe_peft(path: Path) -> dict[str, Any]:
    config = peft_adapters.read_peft_config(path)
    shapes = peft_adapters.check_adapter_weights(path)
    rewriting = peft_adapters.base_rewriting_init(config)
    converted = peft_adapters.converted_init(path, config) if rewriting is None else None
    if converted is not None:  # described as what it trains (load_peft_directory measures it so)
        halved = (2**0.5) if config.get("use_rslora") else 2
        config = {
            **config,
            "r": int(config["r"]) // 2,
            "lora_alpha": float(config.get("lora_alpha") or 0) / halved,
            "init_lora_weights": converted,
        }
        shapes = {
            name: (shape[0] // 2, *shape[1:]) if ".lora_A." in name else (shape[0], shape[1] // 2)
            for name, shape in shapes.items()
        }
    step = peft_adapters.trained_step(path)
    meta = peft_adapters.peft_meta(config, base_model=config.get("base_model_name_or_path") or "-", step=step)
    adapter = meta.adapter
    # Read from peft's own config (the method's saved_scaling), not AdapterConfig.scaling: a plain peft adapter may
    # set use_rslora on DoRA, or GraLoRA's hybrid_r, which this toolkit's adapters never do.
    scale = METHODS[adapter.method].saved_scaling(config, adapter.rank, adapter.lora_alpha)
    return {
        "checkpoint": str(path),
        "format": "peft",
        "method": adapter.method,
        "summary": METHODS[adapter.method].summary,
        "rank": adapter.rank,
        "alpha": adapter.lora_alpha,
        "scale": scale,
        "dropout": adapter.dropout,
        "targets": list(adapter.targets),
        "base_model": meta.base_model,
        "dtype": "-",
        "model_seed": None,
        "task": None,
        "seed": None,
        "step": step,
        "lr": None,
        "trainable_parameters": peft_adapters.trained_parameter_count(shapes),
        "adapter_bytes": _size(path / checkpoint.ADAPTER_WEIGHTS_FILE),
        "residual_base": (
            peft_adapters.residual_base_note(rewriting, converted, given=False)
            or "not needed (a delta on the base model)"
        ),
        "optimizer_state": None,
        "extra": {
            "peft_type": config.get("peft_type"),
            "init_lora_weights": config.get("init_lora_weights", True),
        },
    }


def run(args: argparse.Namespace) -> int:
    facts = describe(args.checkpoint, revision=args.revision)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    optimizer = facts["optimizer_state"]
    lines = [
        ("checkpoint", facts["checkpoint"]),
        ("method", f"{facts['method']} ({facts['summary']})"),
        ("rank", facts["rank"]),
        ("alpha", f"{facts['alpha']:g} (scale {facts['scale']:g})"),
        ("dropout", facts["dropout"]),
        ("targets", ",".join(facts["targets"])),
        (
            "format",
            "plain peft adapter directory" if facts.get("format") == "peft" else "hessian-lora checkpoint",
        ),
        (
            "base model",
            facts["base_model"]
            if facts.get("format") == "peft"
            else f"{facts['base_model']} ({facts['dtype']}, model seed {facts['model_seed']})",
        ),
        ("task", facts["task"] or "-"),
        ("init seed", "-" if facts["seed"] is None else facts["seed"]),
        ("step", "-" if facts["step"] is None else facts["step"]),
        ("lr", "-" if facts["lr"] is None else f"{facts['lr']:g}"),
        (
            "trainable params",
            "-" if facts["trainable_parameters"] is None else f"{facts['trainable_parameters']:,}",
        ),
        ("adapter file", f"{facts['adapter_bytes']:,} bytes"),
        ("residual base", facts["residual_base"]),
        (
            "optimizer state",
            "absent"
            if optimizer is None
            else f"present (AdamW step {optimizer['step']}, betas {optimizer['betas']}, eps {optimizer['eps']:g})",
        ),
    ]
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"{label:<{width}}  {value}")
    return 0


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0
