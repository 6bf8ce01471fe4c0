"""Measuring an adapter's loss Hessian: the application around the engine in :mod:`hessian_lora.hessian`.

:class:`MeasureSettings` says what to measure (blocks, solver, extras) and, when the measurement builds its own
batches, from which data; :func:`measure` runs it on an adapted model or a checkpoint directory and returns an
:class:`~hessian_lora.hessian.EigenReport`. With ``out`` the report is written after every block (atomically)
and an existing file resumes the scan: blocks already in it are skipped, provided it was written with the same
settings. :func:`eigen` is ``hessian_lora.eigen``, the Python face of ``hessian-lora eigen``: it takes the
command's keyword arguments and can build a method's adapter at initialisation first.

The engine (operators, solvers, results) knows nothing of checkpoints, models or sweeps; this module is where
they meet it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from torch import nn

from hessian_lora._io import write_json_atomic
from hessian_lora._numbers import tolerance
from hessian_lora._yaml import is_number, numbers_from_strings, plain, settings_from_mapping
from hessian_lora.data import (
    DEFAULT_PROMPT_TEMPLATE,
    DEFAULT_TASK,
    TokenBatch,
    check_prompt_template,
    load_task,
    make_batches,
)
from hessian_lora.errors import UserError
from hessian_lora.hessian import distributed
from hessian_lora.hessian.density import spectral_density
from hessian_lora.hessian.dora import DORA_NORMS, DoraNorm, has_dora
from hessian_lora.hessian.filters import ParameterBlock, PerModule, WholeAdapter, parse_layers, parse_modules
from hessian_lora.hessian.lanczos import lanczos
from hessian_lora.hessian.memory_plan import check_krylov_gib, plan_memory
from hessian_lora.hessian.operator import HessianOperator, LinearOperator, resolve_backend
from hessian_lora.hessian.power import power_iteration
from hessian_lora.hessian.preconditioned import preconditioned_sharpness
from hessian_lora.hessian.pyhessian_compat import pyhessian_power_iteration
from hessian_lora.hessian.results import BlockReport, EigenReport, EigenResult, IterationRecord
from hessian_lora.hessian.scan import scan_blocks
from hessian_lora.hessian.storage import KrylovMemory
from hessian_lora.hessian.trace import hutchplusplus
from hessian_lora.precision import check_hessian_precision

if TYPE_CHECKING:
    from hessian_lora.checkpoint import LoadedCheckpoint

Solver = Literal["lanczos", "power", "pyhessian"]
Blocks = Literal["whole", "per-module"]
Backend = Literal["auto", "double_backward", "forward_over_reverse", "finite_difference"]
SOLVERS: tuple[str, ...] = get_args(Solver)
BLOCKS: tuple[str, ...] = get_args(Blocks)
BACKENDS: tuple[str, ...] = get_args(Backend)
_PRODUCT_BAR = "{desc}: {n:.1f} hvps [{elapsed}<{remaining} at most, {rate_fmt}{postfix}]"
# Settings that select blocks rather than change a block's numbers: a resumed scan may differ in them.
_SELECTION_SETTINGS = ("modules", "layers")


@dataclass(frozen=True)
class MeasureSettings:
    """What a Hessian measurement computes, and from which data when it builds its own batches.

    Data (used when :func:`measure` gets no batches): ``task`` (a task spec or a .json/.jsonl file; None: the
    checkpoint's task, else ``arith``) cut to ``samples`` examples in batches of ``batch_size`` of at most
    ``max_length`` tokens, picked by ``data_seed``, formatted with ``prompt_template`` (None: the one the
    checkpoint records it was trained or initialised with, else ``chat``; a template the adapter never saw
    measures another loss). Blocks: ``whole`` (one block, the whole adapter) or
    ``per-module`` (one per adapted module, optionally only ``modules`` on ``layers``). Solver: ``top_k``
    eigenvalues per end to a relative residual ``tol`` in at most ``max_iter`` iterations from start vectors
    drawn by ``seed``; ``smallest`` also finds λ_min (Lanczos only). Extras: Hutch++ ``trace`` (``trace_hvps``
    products), SLQ ``density`` (``density_steps`` × ``density_runs``), Adam-``preconditioned`` sharpness with the
    thresholds of learning rate ``lr`` (None: the checkpoint's). Engine: the Hessian-vector product ``backend``,
    whether each batch's first-order graph is kept between products (``reuse``) and the GiB the Krylov vectors
    may take on the device (``krylov_memory``; None: sized from the free memory, see
    :mod:`hessian_lora.hessian.memory_plan`; it changes where vectors live and how many products the final
    check costs, never a value, so reports do not record it). DoRA: ``dora_norm``
    ``"detached"`` measures the Hessian of peft's surrogate, whose column norm ‖W + sBA‖ is a constant (what DoRA
    trains with; the paper and PyHessian measure it too), ``"differentiated"`` that of the true loss
    (:mod:`hessian_lora.hessian.dora`); reports of DoRA models record which.

    ``block_size``: Lanczos start vectors per block (None: ``top_k``; ``"rank"``: the block's LoRA rank r, the
    width of the cluster λ_max sits in at initialisation, where fewer start vectors can certify a lower member
    of the cluster; see :func:`~hessian_lora.hessian.lanczos.lanczos`). It costs r products a step: on the CPU
    that is r times the products per step, since batching does not make a product cheaper there
    (bench/batched_products.py), so the default stays ``top_k``; reports record the width used.
    ``together``: per-module blocks advance side by side on one shared operator (:mod:`hessian_lora.hessian.scan`:
    one pass a step for every block; the same products, so the same values to round-off; each block's
    ``seconds`` is then the wall time until it finished, shared with the others); false solves them block after
    block. Neither the grouping nor ``krylov_memory`` changes a value, so reports do not record them.
    """

    task: str | None = None
    samples: int = 64
    batch_size: int = 8
    max_length: int = 512
    data_seed: int = 0
    blocks: Blocks = "whole"
    modules: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None
    solver: Solver = "lanczos"
    top_k: int = 1
    smallest: bool = True
    tol: float = 1e-3
    max_iter: int = 100
    seed: int = 0
    trace: bool = False
    trace_hvps: int = 30
    density: bool = False
    density_steps: int = 30
    density_runs: int = 1
    preconditioned: bool = False
    lr: float | None = None
    backend: Backend = "auto"
    reuse: bool | Literal["auto"] = "auto"
    prompt_template: str | None = None
    dora_norm: DoraNorm = "detached"
    krylov_memory: float | None = None
    block_size: int | Literal["rank"] | None = None
    together: bool = True

    def __post_init__(self) -> None:
        # Normalise the forms a YAML file or a command line gives ("q_proj,v_proj", "0:4", lists) to tuples.
        modules = self.modules
        if isinstance(modules, str) or modules is None:
            modules = parse_modules(modules)
        elif not all(isinstance(name, str) for name in modules):
            raise UserError(f"modules must be module names such as q_proj, got {modules!r}.")
        layers = self.layers
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = (layers,)
        elif isinstance(layers, str) or layers is None:
            layers = parse_layers(layers)
        elif not all(isinstance(layer, int) and not isinstance(layer, bool) for layer in layers):
            raise UserError(f"layers must be layer indices, got {layers!r}.")
        object.__setattr__(self, "modules", tuple(modules) if modules else None)
        object.__setattr__(self, "layers", tuple(layers) if layers else None)
        for name in ("tol", "lr", "krylov_memory"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, numbers_from_strings(value))  # PyYAML reads 1e-3 as a string
        self._check()

    def _check(self) -> None:
        for name, allowed in (("solver", SOLVERS), ("blocks", BLOCKS), ("backend", BACKENDS),
                              ("dora_norm", DORA_NORMS)):
            if getattr(self, name) not in allowed:
                raise UserError(f"unknown {name} {getattr(self, name)!r}: use {', '.join(allowed)}.")
        if self.reuse not in (True, False, "auto"):
            raise UserError(f"reuse must be true, false or 'auto', got {self.reuse!r}.")
        for name in ("samples", "batch_size", "max_length", "top_k", "max_iter", "trace_hvps", "density_steps",
                     "density_runs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be an integer >= 1, got {value!r}.")
        for name in ("data_seed", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserError(f"{name} must be an integer >= 0, got {value!r}.")
        for name in ("smallest", "trace", "density", "preconditioned"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        object.__setattr__(self, "tol", tolerance(self.tol, "tol (the relative residual of a certified λ)"))
        if self.lr is not None and (not is_number(self.lr) or not self.lr > 0):
            raise UserError(f"lr must be a positive number (or left out), got {self.lr!r}.")
        if self.krylov_memory is not None:
            object.__setattr__(self, "krylov_memory", check_krylov_gib(self.krylov_memory))
        if isinstance(self.block_size, str) and self.block_size.strip().isdigit():
            object.__setattr__(self, "block_size", int(self.block_size))  # from a command line
        if self.block_size is not None and self.block_size != "rank" and (
                isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1):
            raise UserError(f"block_size must be a whole number >= 1, 'rank' or left out, got {self.block_size!r}.")
        if self.block_size is not None and self.solver != "lanczos":
            raise UserError("block_size sets Lanczos's start block: use it with solver lanczos.")
        if not isinstance(self.together, bool):
            raise UserError(f"together must be true or false, got {self.together!r}.")
        if self.task is not None and not isinstance(self.task, str):
            raise UserError(f"task must be a task spec or a file name, got {self.task!r}.")
        if self.prompt_template is not None:
            check_prompt_template(self.prompt_template)
        if self.blocks == "whole" and (self.modules or self.layers):
            raise UserError("modules and layers pick per-module blocks: set blocks='per-module' as well.")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "settings") -> MeasureSettings:
        """Settings from plain data (a YAML block); unknown keys and bad values are a :class:`UserError`."""
        return settings_from_mapping(cls, data, what="Hessian", source=source)

    def options(self, relative_to: MeasureSettings | None = None) -> dict[str, Any]:
        """The settings that differ from ``relative_to`` (default: the defaults), as plain YAML-able data.

        ``from_mapping`` of the result, over the same defaults, gives these settings back.
        """
        base = relative_to if relative_to is not None else MeasureSettings()
        return {field.name: plain(getattr(self, field.name)) for field in dataclasses.fields(self)
                if getattr(self, field.name) != getattr(base, field.name)}

    def probe_only(self) -> MeasureSettings:
        """These settings less what does not change λ_max at initialisation: block selection, the extras
        (trace, density, preconditioning) and ``max_length`` (a probe sets its own) back at their defaults."""
        default = MeasureSettings()
        return dataclasses.replace(
            self, blocks=default.blocks, modules=None, layers=None, trace=default.trace,
            trace_hvps=default.trace_hvps, density=default.density, density_steps=default.density_steps,
            density_runs=default.density_runs, preconditioned=default.preconditioned, lr=default.lr,
            max_length=default.max_length)

    def to_dict(self, *, dora: bool = False) -> dict[str, Any]:
        """The ``settings`` of a report (without the model's ``dtype``): settings that are not in effect (λ_min
        by power iteration, the budget of a trace not asked for, ...) are recorded as off or None; ``dora_norm``
        only for a model with DoRA modules (``dora``), so reports of other models are as they always were."""
        return {
            "task": self.task, "samples": self.samples, "batch_size": self.batch_size,
            "max_length": self.max_length, "data_seed": self.data_seed, "blocks": self.blocks,
            "modules": list(self.modules) if self.modules else None,
            "layers": list(self.layers) if self.layers else None,
            "solver": self.solver, "top_k": self.top_k, "smallest": self.smallest and self.solver == "lanczos",
            "tol": self.tol, "max_iter": self.max_iter, "seed": self.seed, "backend": self.backend,
            "trace": self.trace, "trace_hvps": self.trace_hvps if self.trace else None,
            "density": self.density, "density_steps": self.density_steps if self.density else None,
            "density_runs": self.density_runs if self.density else None, "preconditioned": self.preconditioned,
            "lr": self.lr,
            # recorded only when not the default, so reports written before templates existed still resume
            **({"prompt_template": self.prompt_template}
               if self.prompt_template not in (None, DEFAULT_PROMPT_TEMPLATE) else {}),
            **({"dora_norm": self.dora_norm} if dora else {}),
            # recorded only when set, so reports written before it existed still resume
            **({"block_size": self.block_size} if self.block_size is not None else {}),
        }


def measure(
    adapter: nn.Module | str | os.PathLike[str],
    batches: Sequence[TokenBatch] | None = None,
    settings: MeasureSettings | None = None,
    *,
    tokenizer: Any = None,
    source: Mapping[str, Any] | None = None,
    base_model: str | None = None,
    model_seed: int = 0,
    device: str | torch.device | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    revision: str | None = None,
) -> EigenReport:
    """Loss-Hessian eigenvalues of ``adapter``, block by block, as ``settings`` say.

    Args:
        adapter: a checkpoint directory or a plain peft adapter directory (loaded on ``device``; the latter on
            ``base_model``, else its ``base_model_name_or_path``, with ``model_seed`` for a tiny-llama), a hub
            adapter repo id (at ``revision``), or an adapted model whose trainable parameters are the adapter (its
            ``requires_grad`` flags are left as they were).
        batches: the data; None builds ``settings``' task with the checkpoint's tokenizer (or ``tokenizer``,
            for a model). Given batches are recorded as task ``"batches"``.
        source: what the report says was analysed (default: the checkpoint's facts, or the model's class).
        out: a JSON report, written after every block and resumed from when it exists.
    """
    settings = settings if settings is not None else MeasureSettings()
    distributed.init_from_environment()
    loaded = None
    if isinstance(adapter, nn.Module):
        peft_model = adapter
        check_hessian_precision(peft_model)  # fp32 (or float64) only: a bf16 base is refused, not measured
        if batches is None and tokenizer is None:
            raise UserError("pass batches=... or tokenizer=... (with task=...) along with your model.")
        task = settings.task or DEFAULT_TASK
        template = settings.prompt_template or DEFAULT_PROMPT_TEMPLATE
        source = dict(source) if source is not None else {"model": type(adapter).__name__}
    else:
        from hessian_lora.peft_adapters import load_adapter, peft_step, resolve_adapter

        directory = resolve_adapter(adapter, revision=revision)
        # a hub id is recorded as the id at the commit its files came from (the cache's snapshot folder)
        where = ({"checkpoint": os.fspath(adapter), "revision": directory.name}
                 if directory != Path(os.fspath(adapter)) else {"checkpoint": str(directory.resolve())})
        loaded = load_adapter(directory, model=base_model, model_seed=model_seed, device=device,
                              full_precision=True)
        peft_model, tokenizer, meta = loaded.model, loaded.tokenizer, loaded.meta
        task = settings.task or meta.task or DEFAULT_TASK
        template = settings.prompt_template or meta.extra.get("prompt_template") or DEFAULT_PROMPT_TEMPLATE
        if not settings.prompt_template:  # the checkpoint's own: a bad one is that file's fault, not the user's flag
            try:
                check_prompt_template(template)
            except UserError as exc:
                raise UserError(f"{Path(adapter)}: the prompt_template the checkpoint records is unusable: {exc} "
                                "Pass --prompt-template to override it, or re-create the checkpoint.") from exc
        source = dict(source) if source is not None else {
            **where, "method": meta.method, "base_model": meta.base_model,
            "rank": meta.rank, "alpha": meta.alpha, "step": peft_step(meta), "lr": meta.lr,
            **({"format": "peft"} if meta.extra.get("format") == "peft" else {}),
            **({"residual_base": meta.extra["residual_base"]} if meta.extra.get("residual_base") else {})}
    if settings.preconditioned and loaded is not None:
        from hessian_lora.loft import preconditioner_note

        note = preconditioner_note(loaded.meta.method)
        if note is not None:  # LoFT: no diagonal Adam preconditioner; the report says so instead of a number
            settings = dataclasses.replace(settings, preconditioned=False)
            source = {**source, "preconditioner_note": note}
    if settings.preconditioned and (loaded is None or loaded.optimizer_state is None):
        raise UserError("the preconditioned sharpness needs a checkpoint saved with its optimizer state "
                        "(a training run).")
    settings = dataclasses.replace(settings, prompt_template=template)
    default_data = (batches is None and settings.task is None and loaded is not None and loaded.meta.task is None
                    and loaded.meta.extra.get("format") == "peft")
    if default_data and distributed.is_main_process():
        # a plain peft directory records no training data: say so before measuring on a task it never saw
        print(f"notice: {adapter} records no training data, so it is measured on the default task {task} "
              f"({settings.samples} examples); pass --data FILE.jsonl (or --task) to measure it on your own data.",
              file=sys.stderr, flush=True)
    batch_list = list(batches) if batches is not None else settings_batches(tokenizer, dataclasses.replace(
        settings, task=task))
    data = measured_data(batch_list, task if batches is None else "batches",
                         template if batches is None else None, default=default_data)
    source = {**source, "data": data}
    if progress and distributed.is_main_process():
        print(f"data: {data_line(data)}", file=sys.stderr, flush=True)
    was = {name: param.requires_grad for name, param in peft_model.named_parameters()}
    try:
        return _measure(peft_model, batch_list, settings, task=task if batches is None else "batches",
                        source=source, loaded=loaded, out=out, progress=progress)
    finally:
        for name, param in peft_model.named_parameters():
            param.requires_grad_(was[name])


def measured_data(batches: Sequence[TokenBatch], source: str, template: str | None, *,
                  default: bool = False) -> dict[str, Any]:
    """What a measurement averages the loss over, as its report's ``source.data`` records it: the task, file or
    ``"batches"`` (given by the caller), the prompt template (None: the caller's batches were formatted already),
    examples, batches and loss tokens; ``default``: the default task, because nothing named the data."""
    return {"source": source, "default": default, "prompt_template": template,
            "examples": sum(batch.size for batch in batches), "batches": len(batches),
            "loss_tokens": sum(batch.loss_tokens for batch in batches)}


def data_line(data: Mapping[str, Any]) -> str:
    """``source.data`` in one line (printed by ``eigen`` before the first product)."""
    what = f"{data['source']}" + (" (default task)" if data.get("default") else "")
    template = f", template {data['prompt_template']}" if data.get("prompt_template") else ""
    batches = f"{data['batches']} batch" + ("es" if data["batches"] != 1 else "")
    return f"{what}{template}, {data['examples']} examples in {batches}, {data['loss_tokens']:,} loss tokens"


def settings_batches(tokenizer: Any, settings: MeasureSettings) -> list[TokenBatch]:
    """The batches ``settings`` describe: ``samples`` training examples of ``task`` in ``batch_size`` batches."""
    task = settings.task or DEFAULT_TASK
    examples = load_task(task, seed=settings.data_seed, n_train=settings.samples, n_eval=0).train
    if not examples:
        raise UserError(f"task {task} gave no training examples: raise samples or use another task.")
    return make_batches(tokenizer, examples, settings.batch_size, max_length=settings.max_length,
                        prompt_template=settings.prompt_template or DEFAULT_PROMPT_TEMPLATE)


def _measure(
    peft_model: nn.Module,
    batches: list[TokenBatch],
    settings: MeasureSettings,
    *,
    task: str,
    source: dict[str, Any],
    loaded: LoadedCheckpoint | None,
    out: str | os.PathLike[str] | None,
    progress: bool,
) -> EigenReport:
    parameter_filter = (WholeAdapter() if settings.blocks == "whole"
                        else PerModule(settings.modules, settings.layers))
    selected = parameter_filter.blocks(peft_model)
    first_param = selected[0].parameters[0]
    recorded = dataclasses.replace(settings, task=task, samples=sum(b.size for b in batches),
                                   backend=resolve_backend(settings.backend, first_param.device))
    report_settings = {**recorded.to_dict(dora=has_dora(peft_model)),
                       "dtype": str(first_param.dtype).replace("torch.", "")}
    previous = _resume(out, report_settings, source)
    done = {report.name for report in previous}
    reports = list(previous)
    todo = [block for block in selected if block.name not in done]
    show = progress and distributed.is_main_process()
    from tqdm.auto import tqdm

    order = {block.name: position for position, block in enumerate(selected)}
    with tqdm(total=len(selected), initial=len(selected) - len(todo), desc="eigen blocks", unit="block",
              disable=not show, dynamic_ncols=True) as bar:

        def finished(report: BlockReport) -> None:
            reports.append(report)
            reports.sort(key=lambda done_report: order.get(done_report.name, len(order)))  # model order
            if out is not None and distributed.is_main_process():
                write_report(out, EigenReport(report_settings, tuple(reports), source))
            bar.set_postfix(block=report.name, lambda_max=f"{report.lambda_max:.4g}"
                            if report.lambda_max is not None else "-")
            bar.update(1)

        if _together(settings, todo, first_param.device):
            _scan_together(peft_model, batches, todo, settings, loaded=loaded, show=show, finished=finished)
        else:
            for index, block in enumerate(todo):
                finished(_analyse_block(peft_model, batches, block, settings, loaded=loaded, show=show,
                                        print_plan=index == 0))
    return EigenReport(report_settings, tuple(reports), source)


def _together(settings: MeasureSettings, todo: Sequence[ParameterBlock], device: torch.device) -> bool:
    """Whether the remaining per-module blocks are solved side by side (:mod:`hessian_lora.hessian.scan`)."""
    return (settings.together and settings.blocks == "per-module" and len(todo) > 1
            and resolve_backend(settings.backend, device) == "double_backward")


def _scan_together(
    model: nn.Module,
    batches: list[TokenBatch],
    blocks: Sequence[ParameterBlock],
    settings: MeasureSettings,
    *,
    loaded: LoadedCheckpoint | None,
    show: bool,
    finished: Any,
) -> None:
    """Every block's solver side by side on shared passes, in groups whose Krylov vectors fit the budget; each
    block's extras (trace, density, preconditioning) then run on its own operator as block by block."""
    from tqdm.auto import tqdm

    s = settings
    largest = max(blocks, key=lambda block: block.numel)
    first = largest.parameters[0]
    plan = plan_memory(model, batches, block_parameters=largest.numel, dtype=first.dtype, device=first.device,
                       max_iter=s.max_iter, keep_products=s.solver == "lanczos", krylov_gib=s.krylov_memory,
                       reuse=s.reuse)
    # Every block of a group keeps its own Krylov vectors at once: a group is as many blocks as fit the budget.
    group = max(1, int((plan.budget_bytes + plan.host_bytes) // max(plan.krylov_bytes, 1)))
    groups = [list(blocks[start:start + group]) for start in range(0, len(blocks), group)]
    if show:
        for line in plan.lines():
            tqdm.write(line, file=sys.stderr)
        tqdm.write(f"  {len(blocks)} per-module blocks solved together, {len(groups)} group(s) of at most {group} "
                   "(each block's Krylov vectors at the largest block's size within the budget); one pass a step "
                   "for every block of a group", file=sys.stderr)
    for members in groups:
        union = [(name, param) for block in members for name, param in zip(block.names, block.parameters)]
        operator = HessianOperator(model, batches, union, backend=s.backend, reuse=s.reuse, dora_norm=s.dora_norm)
        share = 1.0 / len(members)

        def solve(index: int, view: LinearOperator, members: list[ParameterBlock] = members,
                  share: float = share) -> EigenResult:
            memory = KrylovMemory.within(first.device, plan.budget_bytes * share, plan.host_bytes * share)
            return _solve(view, s, None, memory, block=members[index])

        with tqdm(desc=f"{len(members)} block(s) together (products)", unit="hvp", leave=False, disable=not show,
                  dynamic_ncols=True) as inner:
            per_batch = 1.0 / max(len(operator.batches), 1)

            def on_batch(done: int, total: int, directions: int, per_batch: float = per_batch,
                         inner: Any = inner) -> None:
                inner.update(per_batch * directions)

            def on_result(index: int, result: EigenResult, members: list[ParameterBlock] = members) -> None:
                finished(_analyse_block(model, batches, members[index], s, loaded=loaded, show=False, eigen=result))

            operator.on_batch = on_batch if show else None
            scan_blocks(operator, members, solve, on_result=on_result)


def write_report(path: str | os.PathLike[str], report: EigenReport) -> None:
    """Write ``report`` as JSON atomically."""
    write_json_atomic(path, report.to_dict())


def read_report(path: str | os.PathLike[str]) -> EigenReport:
    """An eigen report written by :func:`write_report`; anything else is a :class:`UserError`."""
    from hessian_lora import schemas

    data = schemas.read_json(path, what="eigen report", fix=schemas.REPORT_FIX)
    schemas.validate_document(schemas.EigenReportDocument, data, source=str(path), fix=schemas.REPORT_FIX)
    try:
        return EigenReport.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{path} is not an eigen report ({type(exc).__name__}: {exc}): "
                        f"{schemas.REPORT_FIX}") from exc


def _analyse_block(
    model: nn.Module,
    batches: list[TokenBatch],
    block: ParameterBlock,
    settings: MeasureSettings,
    *,
    loaded: LoadedCheckpoint | None,
    show: bool,
    print_plan: bool = True,
    eigen: EigenResult | None = None,
) -> BlockReport:
    """One block's report; ``eigen``: its eigenvalues already solved (a scan), so only the extras run here."""
    from tqdm.auto import tqdm

    s = settings
    operator = HessianOperator(model, batches, block, backend=s.backend, reuse=s.reuse, dora_norm=s.dora_norm)
    plan = plan_memory(model, operator.batches, block_parameters=operator.size, dtype=operator.dtype,
                       device=operator.device, max_iter=s.max_iter, keep_products=s.solver == "lanczos",
                       krylov_gib=s.krylov_memory, reuse=operator.reuse)
    if show and (print_plan or not plan.fits_on_device):
        for line in plan.lines():
            tqdm.write(line, file=sys.stderr)
    memory = plan.krylov_memory()
    # Progress counts products, batch by batch (the paper's 100 batches of 5 make one product minutes long on
    # a large model); the bar's total is the iteration cap, so its ETA is an upper bound.
    per_batch = 1.0 / max(len(operator.batches), 1)
    with tqdm(total=s.max_iter, desc=f"{block.name} (products, cap {s.max_iter})", unit="hvp", leave=False,
              disable=not show, dynamic_ncols=True, bar_format=_PRODUCT_BAR) as inner:

        def on_batch(done: int, total: int, directions: int) -> None:
            inner.update(per_batch * directions)

        def callback(record: IterationRecord) -> None:
            if record.values:
                residual = f"{record.residuals[0]:.2e}" if record.residuals else "-"
                inner.set_postfix(value=f"{record.values[0]:.5g}", residual=residual, hvps=record.hvps)

        operator.on_batch = on_batch if show else None
        result = eigen if eigen is not None else _solve(operator, s, callback, memory, block=block)
        trace_result = hutchplusplus(operator, hvps=s.trace_hvps, seed=s.seed) if s.trace else None
        density_result = (spectral_density(operator, steps=s.density_steps, runs=s.density_runs, seed=s.seed,
                                           memory=plan.krylov_memory())
                          if s.density else None)
        preconditioned_result = None
        if s.preconditioned:
            from hessian_lora.preconditioning import checkpoint_preconditioner

            assert loaded is not None  # measure() refuses preconditioning without a checkpoint
            diagonal, adam = checkpoint_preconditioner(loaded, block.names)
            preconditioned_result = preconditioned_sharpness(
                operator, diagonal, lr=s.lr if s.lr is not None else adam["lr"], beta1=adam["beta1"],
                eps=adam["eps"], step=int(adam["step"]), solver="power" if s.solver == "power" else "lanczos",
                tol=s.tol, max_iter=s.max_iter, seed=s.seed, memory=plan.krylov_memory())
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


def _solve(operator: LinearOperator, s: MeasureSettings, callback: Any, memory: KrylovMemory, *,
           block: ParameterBlock) -> EigenResult:
    if s.solver == "lanczos":
        return lanczos(operator, k=s.top_k, which="both" if s.smallest else "largest", tol=s.tol,
                       max_iter=s.max_iter, seed=s.seed, callback=callback, memory=memory,
                       block_size=start_block(s, block))
    if s.solver == "power":
        return power_iteration(operator, k=s.top_k, tol=s.tol, max_iter=s.max_iter, seed=s.seed, callback=callback)
    return pyhessian_power_iteration(operator, max_iter=s.max_iter, tol=s.tol, top_n=s.top_k, seed=s.seed)


def start_block(settings: MeasureSettings, block: ParameterBlock) -> int | None:
    """Lanczos's start vectors for ``block``: ``block_size``, with ``"rank"`` the largest LoRA rank among the
    block's modules (the rows of its ``lora_A``; ``top_k`` when it has none), never below ``top_k``."""
    if settings.block_size is None:
        return None
    if settings.block_size == "rank":
        ranks = [int(param.shape[0]) for name, param in zip(block.names, block.parameters)
                 if ".lora_A." in name and param.ndim == 2]
        return max([settings.top_k, *ranks])
    return max(settings.top_k, int(settings.block_size))


def _resume(out: str | os.PathLike[str] | None, settings: dict[str, Any], source: dict[str, Any]) -> list[BlockReport]:
    if out is None or not Path(out).exists():
        return []
    done = distributed.broadcast_object(read_report(out) if distributed.is_main_process() else None)
    assert done is not None
    written = dict(done.settings)
    if "data" not in done.source:  # a report from before source.data: its data are fixed by the settings
        source = {key: value for key, value in source.items() if key != "data"}
    if "dora_norm" in settings:
        written.setdefault("dora_norm", "detached")  # a DoRA report from before dora_norm: peft's surrogate
    mismatched = sorted(
        key for key in set(settings) | set(written)
        if key not in _SELECTION_SETTINGS and _normalised(settings.get(key)) != _normalised(written.get(key))
    )
    if mismatched or _normalised(source) != _normalised(done.source):
        what = ", ".join(mismatched) if mismatched else "the analysed adapter"
        raise UserError(f"{out} was written with other settings ({what}): write to another file, or delete it "
                        "to start over.")
    return list(done.blocks)


def _normalised(value: Any) -> Any:
    return json.loads(json.dumps(value))


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
    prompt_template: str | None = None,
    dora_norm: str = "detached",
    krylov_memory: float | None = None,
    block_size: int | str | None = None,
    together: bool = True,
    device: str | torch.device | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    revision: str | None = None,
) -> EigenReport:
    """Loss-Hessian eigenvalues of an adapter, block by block (see ``hessian-lora eigen --help``).

    The adapter comes from ``checkpoint`` (a hessian-lora checkpoint, or a plain peft adapter directory whose
    base is ``model`` when given, else its ``base_model_name_or_path``; either may be a hub repo id, at
    ``revision``), or ``method`` (+ ``rank``, ``alpha``, ``targets``,
    ``adapter_seed``) built at initialisation on ``model`` (a spec such as ``smollm2-135m``; ``model_seed`` for
    a random tiny-llama), or ``model`` itself (an ``nn.Module`` with trainable adapter parameters; then pass
    ``batches`` or ``tokenizer``). Data: ``batches``, or ``task`` (a task spec or a .json/.jsonl file; default
    the checkpoint's task, else ``arith``) cut to ``samples`` examples in batches of ``batch_size``, formatted with
    ``prompt_template`` (default: the checkpoint's, else ``chat``). The other
    arguments are :class:`MeasureSettings`.
    """
    settings = MeasureSettings(
        task=task, samples=samples, batch_size=batch_size, max_length=max_length, data_seed=data_seed,
        blocks=blocks, modules=modules, layers=layers, solver=solver, top_k=top_k,  # type: ignore[arg-type]
        smallest=smallest, tol=tol, max_iter=max_iter, seed=seed, trace=trace, trace_hvps=trace_hvps,
        density=density, density_steps=density_steps, density_runs=density_runs, preconditioned=preconditioned,
        lr=lr, backend=backend, reuse=reuse, prompt_template=prompt_template,  # type: ignore[arg-type]
        dora_norm=dora_norm, krylov_memory=krylov_memory, block_size=block_size,  # type: ignore[arg-type]
        together=together,
    )
    # Under torchrun each process must own its GPU before anything is built on "cuda" (else every rank would
    # load its model onto GPU 0): init_from_environment sets the device from LOCAL_RANK.
    distributed.init_from_environment()
    if checkpoint is not None:
        if method is not None or isinstance(model, nn.Module):
            raise UserError("give either a checkpoint or a method and model, not both.")
        return measure(checkpoint, batches, settings, base_model=model, model_seed=model_seed, device=device,
                       out=out, progress=progress, revision=revision)
    if revision is not None:
        raise UserError("revision picks a hub adapter's version: pass it with a checkpoint repo id.")
    if method is not None:
        if isinstance(model, nn.Module):
            raise UserError("a method builds an adapter on a base model spec: pass model as a name such as "
                            "smollm2-135m, or pass your adapted nn.Module without method.")
        return _eigen_at_initialisation(model, method, rank, alpha, targets, adapter_seed, model_seed, device,
                                        batches, settings, out, progress)
    if isinstance(model, nn.Module):
        return measure(model, batches, settings, tokenizer=tokenizer, out=out, progress=progress)
    raise UserError("nothing to analyse: pass a checkpoint directory, or a method with a model.")


def _eigen_at_initialisation(
    model_spec: str | None, method: str, rank: int, alpha: float | None, targets: Sequence[str] | None,
    adapter_seed: int, model_seed: int, device: str | torch.device | None, batches: Sequence[TokenBatch] | None,
    settings: MeasureSettings, out: str | os.PathLike[str] | None, progress: bool,
) -> EigenReport:
    from hessian_lora.adapters import DEFAULT_TARGETS, AdapterConfig, adapter_at_initialisation
    from hessian_lora.models import DEFAULT_MODEL

    spec = model_spec or DEFAULT_MODEL
    config = AdapterConfig(method=method, rank=rank, alpha=alpha, targets=tuple(targets or DEFAULT_TARGETS),
                           seed=adapter_seed)
    settings = dataclasses.replace(settings, task=settings.task or DEFAULT_TASK)
    # LoRA-GA estimates its gradient on the very batches the Hessian is measured on.
    built = adapter_at_initialisation(
        spec, config, model_seed=model_seed, device=device,
        init_batches=batches if batches is not None else (lambda tokenizer: settings_batches(tokenizer, settings)))
    source = {"method": method, "model": spec, "rank": rank, "alpha": config.lora_alpha,
              "targets": list(config.targets), "adapter_seed": adapter_seed, "model_seed": model_seed,
              "at": "initialisation"}
    return measure(built.model, batches, settings, tokenizer=built.tokenizer, source=source, out=out,
                   progress=progress)
