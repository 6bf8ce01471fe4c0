"""``hessian_lora.eigen(...)``: the Python face of ``hessian-lora eigen``, returning the same numbers.

One call loads the adapter (a checkpoint directory, or a method built at initialisation on a base model, or a
model you pass), builds the batches, splits the adapter into blocks and runs the chosen solver on each block's
Hessian, plus the optional trace, spectral density and Adam-preconditioned sharpness. With ``out`` the report
is written after every block (atomically) and an existing file resumes the scan: blocks already in it are
skipped, provided it was written with the same settings.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hessian_lora.data import DEFAULT_TASK, TokenBatch, load_task, make_batches
from hessian_lora.errors import UserError
from hessian_lora.hessian import distributed
from hessian_lora.hessian.density import spectral_density
from hessian_lora.hessian.filters import ParameterBlock, PerModule, WholeAdapter, parse_layers, parse_modules
from hessian_lora.hessian.lanczos import lanczos
from hessian_lora.hessian.operator import HessianOperator, resolve_backend
from hessian_lora.hessian.power import power_iteration
from hessian_lora.hessian.preconditioned import checkpoint_preconditioner, preconditioned_sharpness
from hessian_lora.hessian.pyhessian_compat import pyhessian_power_iteration
from hessian_lora.hessian.results import BlockReport, EigenReport, EigenResult, IterationRecord
from hessian_lora.hessian.trace import hutchplusplus

SOLVERS = ("lanczos", "power", "pyhessian")
BLOCKS = ("whole", "per-module")
# Settings that select blocks rather than change a block's numbers: a resumed scan may differ in them.
_SELECTION_SETTINGS = ("modules", "layers")


def eigen(
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    model: nn.Module | str | None = None,
    method: str | None = None,
    rank: int = 8,
    alpha: float | None = None,
    targets: Sequence[str] | None = None,
    adapter_seed: int = 0,
    model_seed: int = 0,
    tokenizer: Any = None,
    batches: Sequence[TokenBatch] | None = None,
    task: str | None = None,
    samples: int = 64,
    batch_size: int = 8,
    max_length: int = 512,
    data_seed: int = 0,
    blocks: str = "whole",
    modules: str | Sequence[str] | None = None,
    layers: str | Sequence[int] | None = None,
    solver: str = "lanczos",
    top_k: int = 1,
    smallest: bool = True,
    tol: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
    trace: bool = False,
    trace_hvps: int = 30,
    density: bool = False,
    density_steps: int = 30,
    density_runs: int = 1,
    preconditioned: bool = False,
    lr: float | None = None,
    backend: str = "auto",
    reuse: bool | str = "auto",
    device: str | torch.device | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> EigenReport:
    """Loss-Hessian eigenvalues of an adapter, block by block (see ``hessian-lora eigen --help``).

    The adapter comes from ``checkpoint`` (a directory), or ``method`` (+ ``rank``, ``alpha``, ``targets``,
    ``adapter_seed``) built at initialisation on ``model`` (a spec such as ``smollm2-135m``; ``model_seed`` for
    a random tiny-llama), or ``model``
    itself (an ``nn.Module`` with trainable adapter parameters; then pass ``batches`` or ``tokenizer``).
    Data: ``batches``, or ``task`` (a task spec or a .json/.jsonl file; default the checkpoint's task, else
    ``arith``) cut to ``samples`` examples in batches of ``batch_size``.
    """
    _check_choices(solver, blocks, top_k, samples, batch_size)
    distributed.init_from_environment()
    selection_modules = parse_modules(modules) if isinstance(modules, str) or modules is None else tuple(modules)
    selection_layers = parse_layers(layers) if isinstance(layers, str) or layers is None else tuple(layers)
    if blocks == "whole" and (selection_modules or selection_layers):
        raise UserError("--modules/--layers pick per-module blocks: add --blocks per-module.")

    loaded_checkpoint = None
    if checkpoint is not None:
        from hessian_lora.checkpoint import load_checkpoint

        if method is not None or isinstance(model, nn.Module):
            raise UserError("give either a checkpoint or --method/--model, not both.")
        loaded_checkpoint = load_checkpoint(checkpoint, device=device)
        peft_model, tokenizer = loaded_checkpoint.model, loaded_checkpoint.tokenizer
        meta = loaded_checkpoint.meta
        task = task or meta.task or DEFAULT_TASK
        source = {"checkpoint": str(Path(checkpoint).resolve()), "method": meta.method, "base_model": meta.base_model,
                  "rank": meta.rank, "alpha": meta.alpha, "step": meta.step, "lr": meta.lr}
        batch_list = list(batches) if batches is not None else _make_batches(tokenizer, task, samples, batch_size,
                                                                             max_length, data_seed)
    elif method is not None:
        if isinstance(model, nn.Module):
            raise UserError("--method builds an adapter on a base model spec: pass model as a name such as "
                            "smollm2-135m, or pass your adapted nn.Module without method.")
        peft_model, tokenizer, batch_list, source = _adapter_at_initialisation(
            model, method, rank, alpha, targets, adapter_seed, model_seed, device, batches, task, samples,
            batch_size, max_length, data_seed)
        task = task or DEFAULT_TASK
    elif isinstance(model, nn.Module):
        peft_model = model
        if batches is None and tokenizer is None:
            raise UserError("pass batches=... or tokenizer=... (with task=...) along with your model.")
        task = task or DEFAULT_TASK
        batch_list = list(batches) if batches is not None else _make_batches(tokenizer, task, samples, batch_size,
                                                                             max_length, data_seed)
        source = {"model": type(model).__name__}
    else:
        raise UserError("nothing to analyse: pass a CHECKPOINT directory, or --method with --model.")
    if preconditioned and (loaded_checkpoint is None or loaded_checkpoint.optimizer_state is None):
        raise UserError("--preconditioned needs a checkpoint saved with its optimizer state (a training run).")

    parameter_filter = WholeAdapter() if blocks == "whole" else PerModule(selection_modules, selection_layers)
    selected = parameter_filter.blocks(peft_model)
    first_param = selected[0].parameters[0]
    settings: dict[str, Any] = {
        "task": task if batches is None else "batches", "samples": sum(b.size for b in batch_list),
        "batch_size": batch_size, "max_length": max_length, "data_seed": data_seed, "blocks": blocks,
        "modules": list(selection_modules) if selection_modules else None,
        "layers": list(selection_layers) if selection_layers else None,
        "solver": solver, "top_k": top_k, "smallest": smallest and solver == "lanczos", "tol": tol,
        "max_iter": max_iter, "seed": seed, "backend": resolve_backend(backend, first_param.device),
        "trace": trace, "trace_hvps": trace_hvps if trace else None,
        "density": density, "density_steps": density_steps if density else None,
        "density_runs": density_runs if density else None, "preconditioned": preconditioned, "lr": lr,
        "dtype": str(first_param.dtype).replace("torch.", ""),
    }
    previous = _resume(out, settings, source)
    done = {report.name for report in previous}
    reports = list(previous)
    todo = [block for block in selected if block.name not in done]
    show = progress and distributed.is_main_process()
    from tqdm.auto import tqdm

    with tqdm(total=len(selected), initial=len(selected) - len(todo), desc="eigen blocks", unit="block",
              disable=not show, dynamic_ncols=True) as bar:
        for block in todo:
            report = _analyse_block(
                peft_model, batch_list, block, solver=solver, top_k=top_k, smallest=smallest, tol=tol,
                max_iter=max_iter, seed=seed, trace=trace, trace_hvps=trace_hvps, density=density,
                density_steps=density_steps, density_runs=density_runs, preconditioned=preconditioned, lr=lr,
                loaded_checkpoint=loaded_checkpoint, backend=backend, reuse=reuse, show=show)
            reports.append(report)
            if out is not None and distributed.is_main_process():
                write_report(out, EigenReport(settings, tuple(reports), source))
            bar.set_postfix(block=block.name, lambda_max=f"{report.lambda_max:.4g}" if report.lambda_max is not None
                            else "-")
            bar.update(1)
    return EigenReport(settings, tuple(reports), source)


def write_report(path: str | os.PathLike[str], report: EigenReport) -> None:
    """Write ``report`` as JSON atomically (temp file in the same directory, then ``os.replace``)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(report.to_dict(), stream, indent=2)
            stream.write("\n")
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_report(path: str | os.PathLike[str]) -> EigenReport:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return EigenReport.from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not an eigen report ({exc}): pass another --out or delete the file.") from exc


def _analyse_block(
    model: nn.Module,
    batches: list[TokenBatch],
    block: ParameterBlock,
    *,
    solver: str,
    top_k: int,
    smallest: bool,
    tol: float,
    max_iter: int,
    seed: int,
    trace: bool,
    trace_hvps: int,
    density: bool,
    density_steps: int,
    density_runs: int,
    preconditioned: bool,
    lr: float | None,
    loaded_checkpoint: Any,
    backend: str,
    reuse: bool | str,
    show: bool,
) -> BlockReport:
    from tqdm.auto import tqdm

    operator = HessianOperator(model, batches, block, backend=backend, reuse=reuse)
    with tqdm(total=max_iter, desc=block.name, unit="it", leave=False, disable=not show, dynamic_ncols=True) as inner:

        def callback(record: IterationRecord) -> None:
            inner.update(1)
            if record.values:
                residual = f"{record.residuals[0]:.2e}" if record.residuals else "-"
                inner.set_postfix(value=f"{record.values[0]:.5g}", residual=residual, hvps=record.hvps)

        result = _solve(operator, solver, top_k, smallest, tol, max_iter, seed, callback)
        trace_result = hutchplusplus(operator, hvps=trace_hvps, seed=seed) if trace else None
        density_result = (spectral_density(operator, steps=density_steps, runs=density_runs, seed=seed)
                          if density else None)
        preconditioned_result = None
        if preconditioned:
            diagonal, adam = checkpoint_preconditioner(loaded_checkpoint, block.names)
            preconditioned_result = preconditioned_sharpness(
                operator, diagonal, lr=lr if lr is not None else adam["lr"], beta1=adam["beta1"], eps=adam["eps"],
                step=int(adam["step"]), solver="power" if solver == "power" else "lanczos", tol=tol,
                max_iter=max_iter, seed=seed)
    hvps = result.hvps + sum(part.hvps for part in (trace_result, density_result) if part is not None)
    if preconditioned_result is not None:
        hvps += preconditioned_result.eigen.hvps
    seconds = result.seconds + sum(part.seconds for part in (trace_result, density_result) if part is not None)
    if preconditioned_result is not None:
        seconds += preconditioned_result.eigen.seconds
    return BlockReport(
        name=block.name, parameters=operator.size, parameter_names=block.names, lambda_max=result.lambda_max,
        lambda_min=result.lambda_min, residual=result.residual, converged=result.converged, hvps=hvps,
        seconds=seconds, tokens=operator.total_tokens, batches=operator.total_batches, eigen=result,
        trace=trace_result, density=density_result, preconditioned=preconditioned_result,
    )


def _solve(
    operator: HessianOperator, solver: str, top_k: int, smallest: bool, tol: float, max_iter: int, seed: int,
    callback: Any,
) -> EigenResult:
    if solver == "lanczos":
        return lanczos(operator, k=top_k, which="both" if smallest else "largest", tol=tol, max_iter=max_iter,
                       seed=seed, callback=callback)
    if solver == "power":
        return power_iteration(operator, k=top_k, tol=tol, max_iter=max_iter, seed=seed, callback=callback)
    return pyhessian_power_iteration(operator, max_iter=max_iter, tol=tol, top_n=top_k, seed=seed)


def _adapter_at_initialisation(
    model_spec: str | None, method: str, rank: int, alpha: float | None, targets: Sequence[str] | None,
    adapter_seed: int, model_seed: int, device: str | torch.device | None, batches: Sequence[TokenBatch] | None,
    task: str | None,
    samples: int, batch_size: int, max_length: int, data_seed: int,
) -> tuple[nn.Module, Any, list[TokenBatch], dict[str, Any]]:
    from hessian_lora.methods import DEFAULT_TARGETS, AdapterConfig, build_adapter
    from hessian_lora.models import DEFAULT_MODEL, load_model

    spec = model_spec or DEFAULT_MODEL
    config = AdapterConfig(method=method, rank=rank, alpha=alpha, targets=tuple(targets or DEFAULT_TARGETS),
                           seed=adapter_seed)
    base = load_model(spec, device=device, seed=model_seed)
    batch_list = list(batches) if batches is not None else _make_batches(
        base.tokenizer, task or DEFAULT_TASK, samples, batch_size, max_length, data_seed)
    peft_model = build_adapter(base.model, config, batches=batch_list)
    source = {"method": method, "model": spec, "rank": rank, "alpha": config.lora_alpha,
              "targets": list(config.targets), "adapter_seed": adapter_seed, "model_seed": model_seed,
              "at": "initialisation"}
    return peft_model, base.tokenizer, batch_list, source


def _make_batches(
    tokenizer: Any, task: str, samples: int, batch_size: int, max_length: int, data_seed: int
) -> list[TokenBatch]:
    examples = load_task(task, seed=data_seed, n_train=samples, n_eval=0).train
    if not examples:
        raise UserError(f"task {task} gave no training examples: raise --samples or use another task.")
    return make_batches(tokenizer, examples, batch_size, max_length=max_length)


def _resume(out: str | os.PathLike[str] | None, settings: dict[str, Any], source: dict[str, Any]) -> list[BlockReport]:
    if out is None or not Path(out).exists():
        return []
    done = distributed.broadcast_object(read_report(out) if distributed.is_main_process() else None)
    assert done is not None
    mismatched = sorted(
        key for key in set(settings) | set(done.settings)
        if key not in _SELECTION_SETTINGS and _normalised(settings.get(key)) != _normalised(done.settings.get(key))
    )
    if mismatched or _normalised(source) != _normalised(done.source):
        what = ", ".join(mismatched) if mismatched else "the analysed adapter"
        raise UserError(f"{out} was written with other settings ({what}): pass another --out, or delete it "
                        "to start over.")
    return list(done.blocks)


def _normalised(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _check_choices(solver: str, blocks: str, top_k: int, samples: int, batch_size: int) -> None:
    if solver not in SOLVERS:
        raise UserError(f"unknown solver {solver!r}: use {', '.join(SOLVERS)}.")
    if blocks not in BLOCKS:
        raise UserError(f"unknown --blocks {blocks!r}: use whole or per-module.")
    if top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {top_k}.")
    if samples < 1 or batch_size < 1:
        raise UserError(f"--samples and --batch-size must be >= 1, got {samples} and {batch_size}.")
