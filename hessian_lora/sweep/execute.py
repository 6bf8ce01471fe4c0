"""One run of a sweep: a pure function of the config and its grid point, shared by every backend.

:func:`execute_run` builds a fresh base model and adapter, optionally measures λ_max at initialisation, trains,
evaluates, saves the checkpoint and optionally measures λ_max at the end. It returns the row's values and the
JSON documents to write; the caller (local loop or Ray driver, through :mod:`hessian_lora.sweep.bookkeeping`)
writes the documents atomically and then marks the row final in one transaction, so a finished row always has
its files. A run that raises becomes :func:`failed_row`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hessian_lora.core.errors import UserError
from hessian_lora.core.rundir import RunLayout, Status
from hessian_lora.hessian.memory_plan import release_freed_memory
from hessian_lora.inputs.tasks import format_prompt, load_task, make_batches
from hessian_lora.measurement.measure import measure
from hessian_lora.measurement.targets import AdaptedModule, Checkpoint
from hessian_lora.measurement.training_probe import SharpnessProbe
from hessian_lora.settings.sweep import RunSpec, SweepConfig
from hessian_lora.sweep.init_reuse import inputs_digest, reuse_identical_report
from hessian_lora.training import evalsets
from hessian_lora.training import evaluate as evaluate_module
from hessian_lora.training import train as train_loop
from hessian_lora.training.adapters import adapter_at_initialisation, make_optimizer
from hessian_lora.training.checkpoint import CheckpointMeta, save_checkpoint
from hessian_lora.training.evaluate import evaluate
from hessian_lora.training.precision import cast_base_weights
from hessian_lora.training.sandbox import code_confinement

# The error column keeps the end of a traceback: that is where the cause is, and rows stay small.
_MAX_ERROR_CHARS = 8000


@dataclass(frozen=True)
class RunOutcome:
    """What one run produced: the row's result columns, and JSON documents (path relative to RUN_DIR → data)."""

    row: dict[str, Any]
    documents: dict[str, Any]


@functools.lru_cache(maxsize=4)
def cached_task(spec: str, seed: int, n_train: int, n_eval: int) -> Any:
    """The sweep's task, loaded once per process: every run (and preflight, and the search's centres) reads it."""
    return load_task(spec, seed=seed, n_train=n_train, n_eval=n_eval)


def execute_run(
    config: SweepConfig,
    spec: RunSpec,
    run_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> RunOutcome:
    """Train, evaluate and measure one grid point; write its checkpoint; return its row and documents."""
    start = time.perf_counter()
    # What the previous run or λ probe freed goes back to the system first (glibc keeps it otherwise: a 64-example
    # λ probe left 15.6 GiB of freed heap in the process, and a later run was killed for memory).
    release_freed_memory(torch.device(device) if device is not None else None)
    layout = RunLayout(run_dir)
    task = cached_task(config.task, config.data_seed, config.n_train, config.n_eval)
    if not task.train:
        raise UserError(f"task {config.task!r} has no training examples: raise n_train.")
    train_config = config.train_for(spec.lr, spec.batch_size, spec.seed)
    adapter_config = config.adapter_for(spec.method, spec.rank, spec.seed)
    # LoRA-GA estimates its gradient on the run's own first global batch.
    peft_model, tokenizer, _ = adapter_at_initialisation(
        config.model,
        adapter_config,
        model_seed=config.model_seed,
        attention=config.attention,
        device=device,
        train_examples=task.train,
        train_config=train_config,
    )

    documents: dict[str, Any] = {}
    row: dict[str, Any] = {}
    hessian_batches = None
    if config.hessian.enabled:
        hessian_batches = make_batches(
            tokenizer,
            task.train[: config.hessian.samples],
            config.hessian.batch_size,
            max_length=config.max_length,
            prompt_template=config.prompt_template,
        )
    hessian_seconds = 0.0
    if config.hessian.init:
        clock = time.perf_counter()
        key = spec.init_key
        assert hessian_batches is not None  # hessian.init implies hessian.enabled
        if not (layout.init_report(key).is_file() and layout.init_inputs(key).is_file()):
            # a seed whose adapter at init is bit-identical to another's (PiSSA, MiLoRA, OLoRA) takes its report
            digest = inputs_digest(peft_model, hessian_batches, dataclasses.asdict(config.hessian.measure))
            reuse_identical_report(layout, key, digest)
        report = eigen_report(
            config, peft_model, hessian_batches, out=layout.init_report(key), progress=progress
        )
        row["lambda_init"] = _headline_lambda(report)
        hessian_seconds += time.perf_counter() - clock

    # The adapter was built, and λ_max at initialisation measured, on the fp32 base; from here on the frozen base
    # may train in bf16 (the adapter and its optimizer state stay fp32). The checkpoint records the fp32 build.
    build_dtype = next(peft_model.parameters()).dtype
    cast_base_weights(peft_model, config.base_dtype)
    optimizer = make_optimizer(
        peft_model,
        adapter_config,
        spec.lr,
        betas=train_config.betas,
        weight_decay=train_config.weight_decay,
        eps=train_config.eps,
        max_grad_norm=train_config.max_grad_norm,
    )
    probe = _sharpness_probe(config, peft_model, tokenizer, task.train, train_config, adapter_config)
    result = train_loop.train(
        peft_model,
        tokenizer,
        task.train,
        train_config,
        optimizer=optimizer,
        progress=progress,
        description=spec.run_id,
        probe=probe,
    )
    check_trained_tokens(result.tokens, max_length=config.max_length)
    history = list(result.history)
    documents[layout.relative_document(spec.run_id, "history")] = history
    if probe is not None:
        documents[layout.relative_document(spec.run_id, "sharpness")] = probe.to_dict(
            beta1=train_config.betas[0], peak_lr=spec.lr
        )
        row.update(_sharpness_peaks(probe))
        hessian_seconds += sum(point.seconds for point in probe.history)
    row.update(
        status=result.status,
        train_loss=result.train_loss,
        initial_loss=result.initial_loss,
        steps=result.steps,
        tokens=result.tokens,
        history=history,
        error=result.stop_reason,
        train_seconds=result.wall_seconds,
    )
    if result.status == Status.DONE:
        clock = time.perf_counter()
        evaluation = evaluate(
            peft_model,
            tokenizer,
            task,
            config.eval,
            progress=progress,
            prompt_template=config.prompt_template,
        )
        row.update(
            eval_loss=evaluation.eval_loss,
            accuracy=evaluation.accuracy,
            pass_at_1=evaluation.pass_at_1,
            eval_examples=evaluation.n_examples,
        )
        eval_document: dict[str, Any] = {}
        if evaluation.scores:  # per-example scores: analysis bootstraps over evaluation examples with them
            eval_document.update(metric="accuracy", scores=list(evaluation.scores))
        row.update(score_eval_sets(peft_model, tokenizer, config, progress=progress))
        if runs_code(config):  # how the model's programs were confined, beside the scores they earned
            eval_document["code_confinement"] = code_confinement(
                allow_unconfined=config.eval.allow_unconfined_code, announce=False
            ).to_dict()
        if eval_document:
            documents[layout.relative_document(spec.run_id, "eval_scores")] = eval_document
        row["eval_seconds"] = time.perf_counter() - clock
        keep = config.checkpoints in ("final", "best")  # "best" prunes after the row is final (retention.py)
        if keep or config.hessian.final:
            checkpoint_dir = layout.run(spec.run_id)
            meta = CheckpointMeta.from_config(
                adapter_config,
                base_model=config.model,
                task=config.task,
                model_seed=config.model_seed,
                dtype=build_dtype,
                lr=spec.lr,
                step=result.steps,
                extra={
                    "run_id": spec.run_id,
                    "sweep": config.name,
                    "batch_size": spec.batch_size,
                    "prompt_template": config.prompt_template,  # eigen on this checkpoint formats alike
                    "train_base_dtype": config.base_dtype,
                },
            )
            save_checkpoint(checkpoint_dir, peft_model, meta, optimizer=optimizer)
            if config.hessian.final:
                del peft_model, optimizer  # the measurement reloads the checkpoint
                clock = time.perf_counter()
                report = eigen_report(
                    config,
                    None,
                    hessian_batches,
                    checkpoint=checkpoint_dir,
                    lr=spec.lr,
                    out=layout.final_report(spec.run_id),
                    progress=progress,
                )
                row["lambda_final"] = _headline_lambda(report)
                row["precond_lambda_final"] = _headline_precond(report)
                hessian_seconds += time.perf_counter() - clock
            if keep:
                row["checkpoint"] = layout.relative_run(spec.run_id)
            else:
                shutil.rmtree(checkpoint_dir)  # kept only for the measurement (checkpoints: none)
    if config.hessian.enabled or config.hessian.during is not None:
        row["hessian_seconds"] = hessian_seconds
    row["wall_seconds"] = time.perf_counter() - start
    return RunOutcome(row=row, documents=documents)


def _sharpness_probe(
    config: SweepConfig, model: Any, tokenizer: Any, examples: Any, train_config: Any, adapter_config: Any
) -> Any:
    """The in-loop probe of ``hessian.during`` on the first ``samples`` training examples, or None."""
    during = config.hessian.during
    if during is None:
        return None

    batches = make_batches(
        tokenizer,
        examples[: during.samples],
        during.batch_size,
        max_length=config.max_length,
        prompt_template=config.prompt_template,
    )
    return SharpnessProbe(model, batches, during, total_steps=train_config.steps, meta=adapter_config)


def _sharpness_peaks(probe: Any) -> dict[str, float | None]:
    """The row's summary of a sharpness history: the largest λ_max and λ₁(P⁻¹H) over the probes."""
    lambdas = [p.lambda_max for p in probe.history if p.lambda_max is not None]
    precond = [p.preconditioned for p in probe.history if p.preconditioned is not None]
    return {
        "lambda_max_peak": max(lambdas) if lambdas else None,
        "precond_peak": max(precond) if precond else None,
    }


# The runs-table column of each evaluation set's metric (core/store.py COLUMNS).
EVAL_SET_COLUMNS = {
    "gsm8k": "gsm8k_acc",
    "math": "math_acc",
    "mbpp": "mbpp_pass_at_1",
    "humaneval": "humaneval_pass_at_1",
}


@functools.lru_cache(maxsize=8)
def cached_eval_set(spec: str, code_timeout: float, allow_unconfined: bool = False) -> Any:
    """An ``eval_task`` set, read once per process (preflight reads it first, so a bad file fails before any run)."""
    return evalsets.load_eval_set(spec, code_timeout=code_timeout, allow_unconfined=allow_unconfined)


def runs_code(config: SweepConfig) -> bool:
    """Whether the sweep's evaluation runs generated programs (HumanEval, or an MBPP/HumanEval ``eval_task``)."""
    return config.eval.humaneval or any(
        spec.partition(":")[0].strip().lower() in ("mbpp", "humaneval") for spec in config.eval_task
    )


def score_eval_sets(
    model: Any, tokenizer: Any, config: SweepConfig, *, progress: bool = False
) -> dict[str, float]:
    """Each ``eval_task`` set scored on ``model``: one greedy generation per problem, its metric by column name.

    Math and MBPP prompts go through the sweep's prompt template (the one training used) and generate up to
    ``eval.max_new_tokens``; HumanEval prompts are code to complete, given as they are, with
    ``eval.humaneval_max_new_tokens``. Code runs in :func:`hessian_lora.training.evaluate.run_program`'s sandbox.
    """
    scores: dict[str, float] = {}
    for spec in config.eval_task:
        eval_set = cached_eval_set(spec, config.eval.humaneval_timeout, config.eval.allow_unconfined_code)
        if eval_set.name == "humaneval":
            prompts = [example.prompt for example in eval_set.examples]
            max_new_tokens = config.eval.humaneval_max_new_tokens
        else:
            prompts = [
                format_prompt(tokenizer, example.prompt, config.prompt_template)
                for example in eval_set.examples
            ]
            max_new_tokens = config.eval.max_new_tokens
        texts = evaluate_module.generate_text(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=config.eval.batch_size,
            precision=config.eval.precision,
            progress=progress,
        )
        scores[EVAL_SET_COLUMNS[eval_set.name]] = eval_set.accuracy(texts)
    return scores


def check_trained_tokens(tokens: int, *, max_length: int) -> None:
    """A run that trained on zero loss tokens learned nothing: an error, never ``done``."""
    if tokens <= 0:
        raise UserError(
            f"the run trained on zero loss tokens: max_length {max_length} leaves no response token "
            "after the prompt; raise max_length."
        )


def eigen_report(
    config: SweepConfig,
    model: Any,
    batches: Any,
    *,
    out: Path,
    progress: bool,
    checkpoint: Path | None = None,
    lr: float | None = None,
) -> Any:
    """λ_max through :func:`hessian_lora.measurement.measure.measure`; its report is written to ``out`` (and resumed
    from it if present). No progress bars: the sweep's own bar reports the run."""
    settings = config.hessian.measure
    if checkpoint is not None:
        return measure(
            Checkpoint(checkpoint),
            dataclasses.replace(settings, preconditioned=True, lr=lr),
            batches=batches,
            out=out,
            progress=False,
        )
    return measure(AdaptedModule(model), settings, batches=batches, out=out, progress=False)


def _headline_lambda(report: Any) -> float | None:
    """The row's λ_max: the whole adapter's when measured as one block, else the largest over the blocks."""
    values = [block.lambda_max for block in report.blocks if block.lambda_max is not None]
    return max(values) if values else None


def _headline_precond(report: Any) -> float | None:
    """The row's preconditioned sharpness: the largest over the blocks that have one (None if none do)."""
    values = [block.preconditioned.sharpness for block in report.blocks if block.preconditioned is not None]
    return max(values) if values else None


def failed_row(exc: BaseException, wall_seconds: float) -> dict[str, Any]:
    """The row of a run that raised ``exc``: status failed, and the end of its traceback as the error."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"status": Status.FAILED, "error": text[-_MAX_ERROR_CHARS:], "wall_seconds": wall_seconds}
