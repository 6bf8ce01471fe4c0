"""Measuring an adapter's loss Hessian: the application around the engine in :mod:`hessian_lora.hessian`.

:class:`MeasureSettings` says what to measure (blocks, solver, extras) and, when the measurement builds its own
batches, from which data; :func:`measure`, the one entry, runs it on a target
(:mod:`hessian_lora.measurement.targets`: a checkpoint, a plain peft adapter, an adapter at initialisation, a module
of the caller's) and returns an :class:`~hessian_lora.hessian.EigenReport`. With ``out`` the report is written after
every block (atomically) and an existing file resumes the scan: blocks already in it are skipped, provided it was
written with the same settings. :func:`eigen` is ``hessian_lora.eigen``, the Python face of ``hessian-lora eigen``: it
builds the target its keyword arguments name and calls :func:`measure`.

The engine (operators, solvers, results) knows nothing of checkpoints, models or sweeps; this module is where
they meet it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from hessian_lora.core.atomic import write_json_atomic
from hessian_lora.core.errors import UserError
from hessian_lora.hessian import distributed
from hessian_lora.hessian.density import spectral_density
from hessian_lora.hessian.dora import has_dora
from hessian_lora.hessian.filters import ParameterBlock, PerModule, WholeAdapter
from hessian_lora.hessian.loss import ChunkedHeadLoss, loss_sum
from hessian_lora.hessian.memory_plan import free_memory, packing_tokens, plan_memory
from hessian_lora.hessian.operator import (
    DIRECTIONS_PER_PASS,
    HessianOperator,
    LinearOperator,
    LossFunction,
    resolve_backend,
)
from hessian_lora.hessian.preconditioned import preconditioned_sharpness
from hessian_lora.hessian.results import BlockReport, EigenReport, EigenResult, IterationRecord
from hessian_lora.hessian.scan import scan_blocks
from hessian_lora.hessian.starts import StartVectors, block_starts, start_vectors
from hessian_lora.hessian.storage import KrylovMemory
from hessian_lora.hessian.trace import hutchplusplus
from hessian_lora.inputs.models import DEFAULT_MODEL
from hessian_lora.inputs.tasks import (
    DEFAULT_TASK,
    Packing,
    TokenBatch,
    applied_template,
    load_batches,
    make_batches,
    pack_batches,
    packing_of,
)
from hessian_lora.measurement.preconditioning import checkpoint_preconditioner
from hessian_lora.measurement.targets import (
    AdaptedModule,
    AtInitialisation,
    MeasureTarget,
    as_target,
    settings_examples,
)
from hessian_lora.methods.loft_optimizer import preconditioner_note
from hessian_lora.settings import schemas, solvers
from hessian_lora.settings.adapter import AdapterConfig
from hessian_lora.settings.measurement import (
    MeasureSettings,
)

if TYPE_CHECKING:
    from hessian_lora.training.checkpoint import LoadedCheckpoint

_PRODUCT_BAR = "{desc}: {n:.1f} hvps [{elapsed}<{remaining} at most, {rate_fmt}{postfix}]"
# Settings that select blocks rather than change a block's numbers: a resumed scan may differ in them.
_SELECTION_SETTINGS = ("modules", "layers")


def measure(
    target: MeasureTarget,
    settings: MeasureSettings | None = None,
    *,
    batches: Sequence[TokenBatch] | None = None,
    device: str | torch.device | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> EigenReport:
    """Loss-Hessian eigenvalues of ``target``'s adapter, block by block, as ``settings`` say: the one entry every
    measurement goes through (``hessian_lora.eigen``, ``hessian-lora eigen``, the sweep, ``recommend``, the demo).

    Args:
        target: what to measure (:mod:`hessian_lora.measurement.targets`): a :class:`Checkpoint`, a :class:`PeftAdapter`
            (local or hub), an adapter :class:`AtInitialisation` or an :class:`AdaptedModule` (its
            ``requires_grad`` flags are left as they were); :func:`as_target` makes one of a path.
        settings: what to measure (default: :class:`MeasureSettings`' defaults).
        batches: the data; None builds ``settings``' task (default: the task the target records, else arith)
            with the target's tokenizer, a Trainer checkpoint's probe batches when it holds them. Given batches
            are recorded as task ``"batches"``.
        device: where the target's model is loaded (a given module stays where it is).
        out: a JSON report, written after every block and resumed from when it exists.
        progress: show progress bars and the data line.

    Returns:
        The :class:`EigenReport`: the settings, one :class:`BlockReport` per block and ``source`` (what was
        measured, on which data).

    Raises:
        UserError: bad input in one line: a target that is not one (or settings given where batches go), a
            target that cannot be loaded, unusable data, a preconditioned sharpness without an optimizer state,
            a memory plan that cannot fit, or an ``out`` report measured with other settings.
    """
    if not isinstance(target, MeasureTarget):
        raise UserError(
            f"measure() takes a target, got {type(target).__name__}: Checkpoint(path), "
            "PeftAdapter(path), AtInitialisation(method, model=...) or AdaptedModule(module) "
            "(as_target(path) tells a directory's kind)."
        )
    if settings is not None and not isinstance(settings, MeasureSettings):
        raise UserError(
            f"measure()'s settings are a MeasureSettings, got {type(settings).__name__}: pass the data "
            "as batches=..."
        )
    settings = settings if settings is not None else MeasureSettings()
    # Under torchrun each process must own its GPU before anything is built on "cuda" (else every rank would
    # load its model onto GPU 0): init_from_environment sets the device from LOCAL_RANK.
    distributed.init_from_environment()
    loaded = target.load(settings, batches, device)
    checkpoint = loaded.checkpoint
    peft_model, tokenizer, source = loaded.model, loaded.tokenizer, loaded.source
    data_source = "batches"  # given by the caller, formatted already
    task = settings.task or loaded.task or DEFAULT_TASK
    # None: the data's format decides (TRL's formats their own, a prompt/response pair chat), and is noticed
    template = settings.prompt_template or loaded.template
    if batches is None and settings.task is None and loaded.probe_file is not None:
        # A Trainer checkpoint of a run with the SharpnessCallback: its probes' very tokens (integrations.py)
        batches, data_source = load_batches(loaded.probe_file)
        template = None
    if settings.preconditioned and checkpoint is not None:
        note = preconditioner_note(checkpoint.meta.adapter.method)
        if note is not None:  # LoFT: no diagonal Adam preconditioner; the report says so instead of a number
            settings = dataclasses.replace(settings, preconditioned=False)
            source = {**source, "preconditioner_note": note}
    if settings.preconditioned and (checkpoint is None or checkpoint.optimizer_state is None):
        raise UserError(
            "the preconditioned sharpness needs a checkpoint saved with its optimizer state (a training run)."
        )
    default_data = batches is None and settings.task is None and loaded.plain_peft and loaded.task is None
    if default_data and distributed.is_main_process():
        # a plain peft directory records no training data: say so before measuring on a task it never saw
        print(
            f"notice: {loaded.name} records no training data, so it is measured on the default task {task} "
            f"({settings.samples} examples); pass --data FILE.jsonl (or --task) to measure it on your own data.",
            file=sys.stderr,
            flush=True,
        )
    if batches is None:
        examples = settings_examples(dataclasses.replace(settings, task=task))
        guessed = (
            template is None
            and examples[0].format in ("pair", "completion")
            and not default_data
            and loaded.plain_peft
        )
        template = applied_template(examples, template)
        if guessed and distributed.is_main_process():
            # a plain peft directory records how its prompts were formatted nowhere: say which template is assumed
            print(
                f"notice: {loaded.name} records no prompt template, so prompts are formatted as {template}; pass "
                "--prompt-template raw|chat|alpaca|'...{prompt}...' to format them as the adapter was trained.",
                file=sys.stderr,
                flush=True,
            )
        batch_list = make_batches(
            tokenizer, examples, settings.batch_size, max_length=settings.max_length, prompt_template=template
        )
        data_source = task
    else:
        batch_list = list(batches)
        template = None
    settings = dataclasses.replace(settings, prompt_template=template)
    data = measured_data(batch_list, data_source, template, default=default_data)
    if settings.pack_tokens is not None:
        batch_list, packing = packed_batches(peft_model, batch_list, settings)
        data = {**data, "batches": packing.batches, "packing": packing.to_dict()}
    source = {**source, "data": data}
    if progress and distributed.is_main_process():
        print(f"data: {data_line(data)}", file=sys.stderr, flush=True)
    was = {name: param.requires_grad for name, param in peft_model.named_parameters()}
    try:
        return _measure(
            peft_model,
            batch_list,
            settings,
            task=data_source,
            source=source,
            loaded=checkpoint,
            out=out,
            progress=progress,
        )
    finally:
        for name, param in peft_model.named_parameters():
            param.requires_grad_(was[name])


def measured_data(
    batches: Sequence[TokenBatch], source: str, template: str | None, *, default: bool = False
) -> dict[str, Any]:
    """What a measurement averages the loss over, as its report's ``source.data`` records it: the task, file or
    ``"batches"`` (given by the caller), the prompt template (None: the caller's batches were formatted already),
    examples, batches and loss tokens; ``default``: the default task, because nothing named the data."""
    return {
        "source": source,
        "default": default,
        "prompt_template": template,
        "examples": sum(batch.size for batch in batches),
        "batches": len(batches),
        "loss_tokens": sum(batch.loss_tokens for batch in batches),
    }


def data_line(data: Mapping[str, Any]) -> str:
    """``source.data`` in one line (printed by ``eigen`` before the first product)."""
    what = f"{data['source']}" + (" (default task)" if data.get("default") else "")
    template = f", template {data['prompt_template']}" if data.get("prompt_template") else ""
    batches = f"{data['batches']} batch" + ("es" if data["batches"] != 1 else "")
    packing = data.get("packing")
    packed = (
        f" (packed within {packing['token_budget']:,} token slots, {100 * packing['padding_fraction']:.1f} % "
        "padding)"
        if packing
        else ""
    )
    return f"{what}{template}, {data['examples']} examples in {batches}{packed}, {data['loss_tokens']:,} loss tokens"


def packed_batches(
    model: nn.Module, batches: Sequence[TokenBatch], settings: MeasureSettings
) -> tuple[list[TokenBatch], Packing]:
    """``batches`` packed within ``settings.pack_tokens`` token slots (``"auto"``: the memory plan's
    :func:`~hessian_lora.hessian.memory_plan.packing_tokens` for the longest sequence, the chunked head and a
    batched pass counted), with the record the report keeps."""
    budget = settings.pack_tokens
    if budget == "auto":
        device = next(model.parameters()).device
        longest = max(int(batch.attention_mask.sum(dim=1).max()) for batch in batches)
        budget = packing_tokens(
            model,
            longest,
            free_bytes=free_memory(device),
            head_chunk=settings.lm_head_chunk,
            directions=DIRECTIONS_PER_PASS if device.type == "cuda" else 1,
        )
    assert isinstance(budget, int)  # MeasureSettings checked it
    packed = pack_batches(batches, budget)
    return packed, packing_of(packed, budget)


def _loss(settings: MeasureSettings) -> LossFunction:
    return ChunkedHeadLoss(settings.lm_head_chunk) if settings.lm_head_chunk is not None else loss_sum


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
    parameter_filter = (
        WholeAdapter() if settings.blocks == "whole" else PerModule(settings.modules, settings.layers)
    )
    selected = parameter_filter.blocks(peft_model)
    first_param = selected[0].parameters[0]
    recorded = dataclasses.replace(
        settings,
        task=task,
        samples=sum(b.size for b in batches),
        backend=resolve_backend(settings.backend, first_param.device),
    )
    report_settings = {
        **recorded.to_dict(dora=has_dora(peft_model)),
        "dtype": str(first_param.dtype).replace("torch.", ""),
    }
    previous = _resume(out, report_settings, source)
    done = {report.name for report in previous}
    reports = list(previous)
    todo = [block for block in selected if block.name not in done]
    show = progress and distributed.is_main_process()

    order = {block.name: position for position, block in enumerate(selected)}
    with tqdm(
        total=len(selected),
        initial=len(selected) - len(todo),
        desc="eigen blocks",
        unit="block",
        disable=not show,
        dynamic_ncols=True,
    ) as bar:

        def finished(report: BlockReport) -> None:
            reports.append(report)
            reports.sort(key=lambda done_report: order.get(done_report.name, len(order)))  # model order
            if out is not None and distributed.is_main_process():
                write_report(out, EigenReport(report_settings, tuple(reports), source))
            bar.set_postfix(
                block=report.name,
                lambda_max=f"{report.lambda_max:.4g}" if report.lambda_max is not None else "-",
            )
            bar.update(1)

        if _together(settings, todo, first_param.device):
            _scan_together(peft_model, batches, todo, settings, loaded=loaded, show=show, finished=finished)
        else:
            for index, block in enumerate(todo):
                finished(
                    _analyse_block(
                        peft_model, batches, block, settings, loaded=loaded, show=show, print_plan=index == 0
                    )
                )
    return EigenReport(report_settings, tuple(reports), source)


def _together(settings: MeasureSettings, todo: Sequence[ParameterBlock], device: torch.device) -> bool:
    """Whether the remaining per-module blocks are solved side by side (:mod:`hessian_lora.hessian.scan`)."""
    return (
        settings.together
        and settings.blocks == "per-module"
        and len(todo) > 1
        and resolve_backend(settings.backend, device) == "double_backward"
    )


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
    s = settings
    largest = max(blocks, key=lambda block: block.numel)
    first = largest.parameters[0]
    plan = plan_memory(
        model,
        batches,
        block_parameters=largest.numel,
        dtype=first.dtype,
        device=first.device,
        max_iter=s.max_iter,
        solver=s.solver,
        krylov_gib=s.krylov_memory,
        reuse=s.reuse,
        head_chunk=s.lm_head_chunk,
        directions_per_pass=DIRECTIONS_PER_PASS,
    )
    # Every block of a group keeps its own Krylov vectors at once: a group is as many blocks as fit the budget.
    group = max(1, int((plan.budget_bytes + plan.host_bytes) // max(plan.krylov_bytes, 1)))
    groups = [list(blocks[start : start + group]) for start in range(0, len(blocks), group)]
    if show:
        for line in plan.lines():
            tqdm.write(line, file=sys.stderr)
        tqdm.write(
            f"  {len(blocks)} per-module blocks solved together, {len(groups)} group(s) of at most {group} "
            "(each block's Krylov vectors at the largest block's size within the budget); one pass a step "
            "for every block of a group",
            file=sys.stderr,
        )
    for members in groups:
        group_id = _new_scan_group()
        union = [(name, param) for block in members for name, param in zip(block.names, block.parameters)]
        operator = HessianOperator(
            model, batches, union, backend=s.backend, reuse=s.reuse, dora_norm=s.dora_norm, loss_fn=_loss(s)
        )
        operator.follow_plan(plan)
        share = 1.0 / len(members)
        starts = _group_starts(operator, members, s)

        def solve(
            index: int,
            view: LinearOperator,
            members: list[ParameterBlock] = members,
            share: float = share,
            starts: list[_Start] = starts,
        ) -> EigenResult:
            memory = KrylovMemory.within(first.device, plan.budget_bytes * share, plan.host_bytes * share)
            return _solve(view, s, None, memory, block=members[index], start=starts[index])

        with tqdm(
            desc=f"{len(members)} block(s) together (products)",
            unit="hvp",
            leave=False,
            disable=not show,
            dynamic_ncols=True,
        ) as inner:
            per_batch = 1.0 / max(len(operator.batches), 1)

            def on_batch(
                done: int, total: int, directions: int, per_batch: float = per_batch, inner: Any = inner
            ) -> None:
                inner.update(per_batch * directions)

            def on_result(
                index: int,
                result: EigenResult,
                members: list[ParameterBlock] = members,
                group_id: str = group_id,
            ) -> None:
                finished(
                    _analyse_block(
                        model,
                        batches,
                        members[index],
                        s,
                        loaded=loaded,
                        show=False,
                        eigen=result,
                        scan_group=group_id,
                    )
                )

            operator.on_batch = on_batch if show else None
            scan_blocks(operator, members, solve, on_result=on_result)


def write_report(path: str | os.PathLike[str], report: EigenReport) -> None:
    """Write ``report`` as JSON atomically."""
    write_json_atomic(path, report.to_dict())


def read_report(path: str | os.PathLike[str]) -> EigenReport:
    """An eigen report written by :func:`write_report`; anything else is a :class:`UserError`."""
    data = schemas.read_json(path, what="eigen report", fix=schemas.REPORT_FIX)
    schemas.validate_document(schemas.EigenReportDocument, data, source=str(path), fix=schemas.REPORT_FIX)
    try:
        return EigenReport.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(
            f"{path} is not an eigen report ({type(exc).__name__}: {exc}): {schemas.REPORT_FIX}"
        ) from exc


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
    scan_group: str | None = None,
) -> BlockReport:
    """One block's report; ``eigen``: its eigenvalues already solved (a scan, whose group ``scan_group``
    names), so only the extras run here."""
    s = settings
    operator = HessianOperator(
        model, batches, block, backend=s.backend, reuse=s.reuse, dora_norm=s.dora_norm, loss_fn=_loss(s)
    )
    plan = plan_memory(
        model,
        operator.batches,
        block_parameters=operator.size,
        dtype=operator.dtype,
        device=operator.device,
        max_iter=s.max_iter,
        solver=s.solver,
        krylov_gib=s.krylov_memory,
        reuse=operator.reuse,
        head_chunk=operator.head_chunk,
        directions_per_pass=operator.directions_per_pass,
    )
    operator.follow_plan(plan)
    if show and (print_plan or not plan.fits_on_device):
        for line in plan.lines():
            tqdm.write(line, file=sys.stderr)
    memory = plan.krylov_memory()
    # Progress counts products, batch by batch (the paper's 100 batches of 5 make one product minutes long on
    # a large model); the bar's total is the iteration cap, so its ETA is an upper bound.
    per_batch = 1.0 / max(len(operator.batches), 1)
    with tqdm(
        total=s.max_iter,
        desc=f"{block.name} (products, cap {s.max_iter})",
        unit="hvp",
        leave=False,
        disable=not show,
        dynamic_ncols=True,
        bar_format=_PRODUCT_BAR,
    ) as inner:

        def on_batch(done: int, total: int, directions: int) -> None:
            inner.update(per_batch * directions)

        def callback(record: IterationRecord) -> None:
            if record.values:
                residual = f"{record.residuals[0]:.2e}" if record.residuals else "-"
                inner.set_postfix(value=f"{record.values[0]:.5g}", residual=residual, hvps=record.hvps)

        operator.on_batch = on_batch if show else None
        result = (
            eigen
            if eigen is not None
            else _solve(operator, s, callback, memory, block=block, start=_block_start(operator, s))
        )
        trace_result = hutchplusplus(operator, hvps=s.trace_hvps, seed=s.seed) if s.trace else None
        density_result = (
            spectral_density(
                operator, steps=s.density_steps, runs=s.density_runs, seed=s.seed, memory=plan.krylov_memory()
            )
            if s.density
            else None
        )
        preconditioned_result = None
        if s.preconditioned:
            assert loaded is not None  # measure() refuses preconditioning without a checkpoint
            diagonal, adam = checkpoint_preconditioner(loaded, block.names)
            preconditioned_result = preconditioned_sharpness(
                operator,
                diagonal,
                lr=s.lr if s.lr is not None else adam["lr"],
                beta1=adam["beta1"],
                eps=adam["eps"],
                step=int(adam["step"]),
                solver=s.solver,
                tol=s.tol,
                max_iter=s.max_iter,
                seed=s.seed,
                memory=plan.krylov_memory(),
            )
    hvps = result.hvps + sum(part.hvps for part in (trace_result, density_result) if part is not None)
    if preconditioned_result is not None:
        hvps += preconditioned_result.eigen.hvps
    seconds = result.seconds + sum(
        part.seconds for part in (trace_result, density_result) if part is not None
    )
    if preconditioned_result is not None:
        seconds += preconditioned_result.eigen.seconds
    return BlockReport(
        name=block.name,
        parameters=operator.size,
        parameter_names=block.names,
        lambda_max=result.lambda_max,
        lambda_min=result.lambda_min,
        residual=result.residual,
        converged=result.converged,
        hvps=hvps,
        seconds=seconds,
        tokens=operator.total_tokens,
        batches=operator.total_batches,
        eigen=result,
        trace=trace_result,
        density=density_result,
        preconditioned=preconditioned_result,
        scan_group=scan_group,
    )


def _new_scan_group() -> str:
    """A fresh id for the blocks of one shared-pass group: unique across runs, so that a resumed scan's group
    is never merged with the interrupted one's (their seconds do not overlap)."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


@dataclasses.dataclass(frozen=True)
class _Start:
    """A block's built start (None: random) and the seconds building it took (first-order passes, SVDs)."""

    vectors: StartVectors | None
    seconds: float = 0.0


def _which(s: MeasureSettings) -> solvers.Which:
    """Both ends when λ_min is asked for and the solver finds it (else the settings record smallest as off)."""
    return "both" if s.smallest and solvers.get(s.solver).finds_smallest else "largest"


def _builds_start(s: MeasureSettings) -> bool:
    """Whether ``s`` asks for a built start (structured, gradient) its solver takes (the settings refuse others)."""
    return s.start != "random" and solvers.get(s.solver).block_starts


def _block_start(operator: HessianOperator, s: MeasureSettings) -> _Start:
    """The start ``s.start`` asks for on one block's own operator."""
    if not _builds_start(s):
        return _Start(None)
    began = time.perf_counter()
    vectors = start_vectors(operator, s.start, which=_which(s), seed=s.seed)
    return _Start(vectors, time.perf_counter() - began)


def _group_starts(
    operator: HessianOperator, members: Sequence[ParameterBlock], s: MeasureSettings
) -> list[_Start]:
    """Every block's start of a scan group from the union operator's shared first-order passes."""
    if not _builds_start(s):
        return [_Start(None) for _ in members]
    began = time.perf_counter()
    position = {name: i for i, name in enumerate(operator.names)}
    parts = [[position[name] for name in block.names] for block in members]
    vectors = block_starts(operator, s.start, parts, which=_which(s), seed=s.seed)
    seconds = (time.perf_counter() - began) / len(members)  # one pass shared: each block carries its share
    return [_Start(vector, seconds) for vector in vectors]


def _solve(
    operator: LinearOperator,
    s: MeasureSettings,
    callback: Any,
    memory: KrylovMemory,
    *,
    block: ParameterBlock,
    start: _Start | None = None,
) -> EigenResult:
    """``s.solver``'s result on one block, dispatched through the solver table (settings/solvers.py)."""
    spec = solvers.get(s.solver)
    vectors = start.vectors if start is not None else None
    request = solvers.SolveRequest(
        k=s.top_k,
        which=_which(s),
        tol=s.tol,
        max_iter=s.max_iter,
        seed=s.seed,
        callback=callback,
        memory=memory,
        block_size=start_block(s, block),
        start=vectors.rows if vectors is not None else None,
    )
    result = spec.run(operator, request)
    if vectors is None or start is None:
        return result
    # The report says what the start was and what building it cost (its seconds are the block's too).
    details = {
        **result.details,
        "start_random_share": vectors.random_share,
        "start_first_order_passes": float(vectors.passes),
        "start_seconds": start.seconds,
        "start_structured": float(vectors.random_share < 1.0),
    }
    return dataclasses.replace(result, details=details, seconds=result.seconds + start.seconds)


def start_block(settings: MeasureSettings, block: ParameterBlock) -> int | None:
    """Lanczos's start vectors for ``block``: ``block_size``, with ``"rank"`` the largest LoRA rank among the
    block's modules (the rows of its ``lora_A``; ``top_k`` when it has none), never below ``top_k``."""
    if settings.block_size is None:
        return None
    if settings.block_size == "rank":
        ranks = [
            int(param.shape[0])
            for name, param in zip(block.names, block.parameters)
            if ".lora_A." in name and param.ndim == 2
        ]
        return max([settings.top_k, *ranks])
    return max(settings.top_k, int(settings.block_size))


def _resume(
    out: str | os.PathLike[str] | None, settings: dict[str, Any], source: dict[str, Any]
) -> list[BlockReport]:
    if out is None or not Path(out).exists():
        return []
    done = distributed.broadcast_object(read_report(out) if distributed.is_main_process() else None)
    assert done is not None
    written = dict(done.settings)
    if "data" not in done.source:  # a report from before source.data: its data are fixed by the settings
        source = {key: value for key, value in source.items() if key != "data"}
    # a report from before start used random start vectors, which is what a report of a random start omits
    written.setdefault("start", "random")
    settings = {**settings, "start": settings.get("start", "random")}
    if "dora_norm" in settings:
        written.setdefault("dora_norm", "detached")  # a DoRA report from before dora_norm: peft's surrogate
    mismatched = sorted(
        key
        for key in set(settings) | set(written)
        if key not in _SELECTION_SETTINGS and _normalised(settings.get(key)) != _normalised(written.get(key))
    )
    if mismatched or _normalised(source) != _normalised(done.source):
        what = ", ".join(mismatched) if mismatched else "the analysed adapter"
        raise UserError(
            f"{out} was written with other settings ({what}): write to another file, or delete it "
            "to start over."
        )
    return list(done.blocks)


def _normalised(value: Any) -> Any:
    return json.loads(json.dumps(value))


# eigen()'s options that build an adapter at initialisation, by the name eigen takes them under: AdapterConfig's
# fields (its seed as adapter_seed, since seed is the solver's), and the random base's model_seed.
_ADAPTER_OPTIONS = {
    "rank": "rank",
    "alpha": "alpha",
    "dropout": "dropout",
    "targets": "targets",
    "adapter_seed": "seed",
    "loraplus_ratio": "loraplus_ratio",
    "pissa_niter": "pissa_niter",
}


def eigen(
    target: str | os.PathLike[str] | MeasureTarget | None = None,
    *,
    revision: str | None = None,
    settings: MeasureSettings | None = None,
    model: nn.Module | str | None = None,
    method: str | AdapterConfig | None = None,
    batches: Sequence[TokenBatch] | None = None,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    **options: Any,
) -> EigenReport:
    """Loss-Hessian eigenvalues of an adapter, block by block (see ``hessian-lora eigen --help``): the keyword
    form of :func:`measure`, which builds the target the keywords name and measures it.

    Args:
        target: a hessian-lora checkpoint, or a plain peft adapter directory (its base is ``model`` when given,
            else its ``base_model_name_or_path``); either may be a hub repo id, at ``revision``. Or a target
            (:class:`Checkpoint`, :class:`PeftAdapter`, :class:`AtInitialisation`, :class:`AdaptedModule`).
        revision: a hub adapter's branch, tag or commit.
        settings: what to measure; ``options`` naming :class:`MeasureSettings` fields override it, e.g.
            ``eigen(checkpoint, tol=1e-4, blocks="per-module")``.
        model: the base model spec (``smollm2-135m``, ...) for ``method`` or a plain peft ``target``, or an
            ``nn.Module`` whose trainable parameters are the adapter (then pass ``batches`` or ``tokenizer``).
        method: build this adapter at initialisation on ``model``: a method name (with the options ``rank``,
            ``alpha``, ``dropout``, ``targets``, ``adapter_seed``, ``loraplus_ratio``, ``pissa_niter``) or an
            :class:`AdapterConfig`.
        batches: the data; None cuts ``settings.task`` (default: the checkpoint's task, else ``arith``) with the
            checkpoint's prompt template unless ``prompt_template`` says otherwise.
        tokenizer: the tokenizer of an ``nn.Module`` ``model`` when no ``batches`` are given.
        device: where the model runs.
        out: the JSON report, written after every block (and resumed from).
        progress: show progress bars.
        **options: :class:`MeasureSettings` fields, the adapter options above, and ``model_seed`` (the seed of a
            random tiny-llama base); any other name is a :class:`UserError`.

    Returns:
        The :class:`EigenReport`: the settings, one :class:`BlockReport` per block (λ_max, λ_min, the residual,
        ``converged``, products, seconds, the solver's history) and ``source`` (what was measured, on which data).
        A value not certified to ``tol`` is still returned, with ``converged=False`` and its ``stop_reason``.

    Raises:
        UserError: bad input, in one line naming the file or option, the field and the fix: an unknown option,
            keywords that name two adapters or none, a checkpoint or adapter that cannot be read or does not fit
            its base, unusable data, a memory plan that cannot fit, or an ``out`` report measured with other
            settings.
    """
    known = [field.name for field in dataclasses.fields(MeasureSettings)] + [*_ADAPTER_OPTIONS, "model_seed"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UserError(
            f"eigen() got unknown option(s) {', '.join(unknown)}: check the spelling (known: "
            f"{', '.join(known)})."
        )
    model_seed = options.pop("model_seed", 0)
    adapter_options = {
        field: options.pop(name) for name, field in _ADAPTER_OPTIONS.items() if name in options
    }
    settings = MeasureSettings.with_overrides(settings, **options)
    measured = _keyword_target(
        target,
        revision=revision,
        model=model,
        method=method,
        tokenizer=tokenizer,
        model_seed=model_seed,
        adapter_options=adapter_options,
    )
    return measure(measured, settings, batches=batches, device=device, out=out, progress=progress)


def _keyword_target(
    target: str | os.PathLike[str] | MeasureTarget | None,
    *,
    revision: str | None,
    model: nn.Module | str | None,
    method: str | AdapterConfig | None,
    tokenizer: Any,
    model_seed: int,
    adapter_options: dict[str, Any],
) -> MeasureTarget:
    """The target :func:`eigen`'s keywords name: a path or target, a method (at initialisation) or a module."""
    if target is not None:
        if method is not None or isinstance(model, nn.Module):
            raise UserError("give either a checkpoint or a method and model, not both.")
        return as_target(target, base=model, revision=revision, model_seed=model_seed)
    if revision is not None:
        raise UserError("revision picks a hub adapter's version: pass it with a checkpoint repo id.")
    if method is not None:
        # an nn.Module model is refused by AtInitialisation itself, in one line that says what to pass instead
        spec: Any = model if model is not None else DEFAULT_MODEL
        return AtInitialisation(_adapter_config(method, adapter_options), model=spec, model_seed=model_seed)
    if isinstance(model, nn.Module):
        return AdaptedModule(model, tokenizer)
    raise UserError(
        "nothing to analyse: pass a CHECKPOINT directory, or a method (--method) with a model "
        "(--model) to analyse an adapter at initialisation."
    )


def _adapter_config(method: str | AdapterConfig, options: dict[str, Any]) -> AdapterConfig:
    """``method`` with :func:`eigen`'s adapter options (a name), or ``method`` itself (an AdapterConfig)."""
    if isinstance(method, AdapterConfig):
        if options:
            raise UserError(
                f"method is an AdapterConfig: set {', '.join(sorted(options))} in it "
                "instead of passing them to eigen()."
            )
        return method
    if options.get("targets") is None:
        options = {
            key: value for key, value in options.items() if key != "targets"
        }  # None: all seven projections
    return AdapterConfig(method=method, **options)
