"""What a measurement measures: one small type per kind of target, each loading itself into what the engine needs.

:func:`hessian_lora.measurement.measure.measure` takes one of these in place of keyword resolution:

- :class:`Checkpoint`: a hessian-lora checkpoint directory (``hessian_lora.json`` beside the adapter), or a hub
  repo holding one;
- :class:`PeftAdapter`: a plain ``PeftModel.save_pretrained`` directory, local or a hub repo id, on the base its
  ``adapter_config.json`` names (or ``base``);
- :class:`AtInitialisation`: a method's adapter at initialisation, built through the one factory
  :func:`~hessian_lora.training.adapters.adapter_at_initialisation` (LoRA-GA's gradient batches included);
- :class:`AdaptedModule`: the caller's own ``nn.Module`` whose trainable parameters are the adapter.

Each ``load`` gives a :class:`LoadedTarget`: the adapted model, its tokenizer, the facts the report's ``source``
records, the data the target itself records (task, prompt template, a Trainer checkpoint's probe batches) and,
for a checkpoint, the optimizer state the preconditioned sharpness reads. :func:`as_target` tells a checkpoint
from a plain peft directory by the files present, for callers that hold a path.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hessian_lora.core.errors import UserError
from hessian_lora.inputs.models import DEFAULT_MODEL
from hessian_lora.inputs.tasks import (
    DEFAULT_TASK,
    PROBE_BATCHES_FILE,
    Example,
    TokenBatch,
    check_prompt_template,
    load_task,
    make_batches,
)
from hessian_lora.methods.registry import check_method_rank
from hessian_lora.settings.adapter import AdapterConfig
from hessian_lora.settings.measurement import MeasureSettings
from hessian_lora.training.adapters import adapter_at_initialisation
from hessian_lora.training.checkpoint import META_FILE, LoadedCheckpoint, is_checkpoint, load_checkpoint
from hessian_lora.training.peft_adapters import load_peft_directory, peft_step, resolve_adapter
from hessian_lora.training.precision import check_hessian_precision

# Where a target's model is loaded (None: the loader's default, cuda when available).
Device = str | torch.device | None


@dataclasses.dataclass(frozen=True)
class LoadedTarget:
    """A target loaded for measuring.

    Attributes:
        model: the adapted model; its trainable parameters are the adapter.
        tokenizer: its tokenizer (None: the caller's batches are the only data).
        source: what the report says was analysed.
        name: how messages name the target (the path or id it was given as).
        task: the task the target records (None: ``MeasureSettings.task``, else the default task).
        template: the prompt template the target records, checked (None: the data's format decides).
        checkpoint: the loaded checkpoint of a directory target (its metadata and optimizer state).
        probe_file: a Trainer checkpoint's probe batches (the very tokens its logged values were measured on).
        plain_peft: a plain peft directory, which records neither its data nor its prompt template: the
            measurement says which it assumes.
    """

    model: nn.Module
    tokenizer: Any
    source: dict[str, Any]
    name: str
    task: str | None = None
    template: str | None = None
    checkpoint: LoadedCheckpoint | None = None
    probe_file: Path | None = None
    plain_peft: bool = False


class MeasureTarget(abc.ABC):
    """What a measurement measures; each kind loads itself (:meth:`load`)."""

    @abc.abstractmethod
    def load(
        self, settings: MeasureSettings, batches: Sequence[TokenBatch] | None, device: Device
    ) -> LoadedTarget:
        """The adapted model and what the report records of it.

        Args:
            settings: the measurement's settings (a recorded prompt template is checked unless they name one;
                an adapter at initialisation that needs data cuts their task).
            batches: the caller's data, if any.
            device: where a model is loaded (a given module stays where it is).

        Returns:
            The :class:`LoadedTarget`.

        Raises:
            UserError: a target that cannot be loaded, in one line naming the file or field and the fix.
        """


@dataclasses.dataclass(frozen=True)
class Checkpoint(MeasureTarget):
    """A hessian-lora checkpoint (``hessian_lora.json`` beside the adapter): a directory, or a hub repo id at
    ``revision``. It records its base model, task, prompt template and, from a training run, the optimizer state
    the preconditioned sharpness needs.

    Attributes:
        path: the checkpoint's directory, or a hub repo id.
        revision: the hub revision (branch, tag or commit; None: the default branch).
    """

    path: str | os.PathLike[str]
    revision: str | None = None

    def __post_init__(self) -> None:
        _check_path(self.path, type(self).__name__)

    def load(
        self, settings: MeasureSettings, batches: Sequence[TokenBatch] | None, device: Device
    ) -> LoadedTarget:
        """See :meth:`MeasureTarget.load`; the base is loaded in full precision (fp32) on ``device``."""
        directory = resolve_adapter(self.path, revision=self.revision)
        if directory.is_dir() and not is_checkpoint(directory):
            raise UserError(
                f"{os.fspath(self.path)} is not a hessian-lora checkpoint (no {META_FILE}): measure a "
                "plain peft adapter directory as PeftAdapter(path), or let as_target(path) tell."
            )
        loaded = load_checkpoint(directory, device=device, full_precision=True)
        return _directory_target(self.path, directory, loaded, settings)


@dataclasses.dataclass(frozen=True)
class PeftAdapter(MeasureTarget):
    """A plain ``PeftModel.save_pretrained`` directory, local or a hub repo id at ``revision``, on ``base`` (a
    model spec; default: its ``base_model_name_or_path``) in fp32; ``model_seed``: the weights of a random base
    (tiny-llama).

    Attributes:
        path: the adapter's directory, or a hub repo id.
        base: the base model spec (None: the adapter config's ``base_model_name_or_path``).
        revision: the hub revision (None: the default branch).
        model_seed: the seed of a random base's weights (tiny-llama).
    """

    path: str | os.PathLike[str]
    base: str | None = None
    revision: str | None = None
    model_seed: int = 0

    def __post_init__(self) -> None:
        _check_path(self.path, type(self).__name__)
        if self.base is not None and not isinstance(self.base, str):
            raise UserError(
                f"PeftAdapter's base is a model spec such as smollm2-135m or a directory, got "
                f"{type(self.base).__name__}: measure a model you hold as AdaptedModule(module)."
            )

    def load(
        self, settings: MeasureSettings, batches: Sequence[TokenBatch] | None, device: Device
    ) -> LoadedTarget:
        """See :meth:`MeasureTarget.load`."""
        directory = resolve_adapter(self.path, revision=self.revision)
        if is_checkpoint(directory):
            raise (
                _records_its_base(directory)
                if self.base is not None
                else UserError(
                    f"{os.fspath(self.path)} is a hessian-lora checkpoint ({META_FILE}): measure it as "
                    "Checkpoint(path), or let as_target(path) tell."
                )
            )
        loaded = load_peft_directory(directory, model=self.base, model_seed=self.model_seed, device=device)
        return _directory_target(self.path, directory, loaded, settings)


@dataclasses.dataclass(frozen=True)
class AtInitialisation(MeasureTarget):
    """A method's adapter at initialisation on the base ``model`` (a spec; ``model_seed``: the weights of a random
    tiny-llama), built through :func:`~hessian_lora.training.adapters.adapter_at_initialisation`. ``adapter`` is a
    method name (its default rank, alpha and targets) or an :class:`AdapterConfig`. A method that needs data (LoRA-GA)
    estimates its gradient on the very batches the Hessian is measured on.

    Attributes:
        adapter: a method name (its default rank, alpha and targets) or an :class:`AdapterConfig`.
        model: the base model spec.
        model_seed: the seed of a random base's weights (tiny-llama).
    """

    adapter: str | AdapterConfig
    model: str = DEFAULT_MODEL
    model_seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.model, nn.Module):
            raise UserError(
                "a method builds an adapter on a base model spec: pass model as a name such as "
                "smollm2-135m, or measure your adapted nn.Module as AdaptedModule(module) (eigen: "
                "model=module without method)."
            )
        if not isinstance(self.model, str):
            raise UserError(
                f"AtInitialisation's model is a model spec such as smollm2-135m, got "
                f"{type(self.model).__name__}."
            )
        if not isinstance(self.adapter, (str, AdapterConfig)):
            raise UserError(
                f"AtInitialisation's adapter is a method name such as lora or an AdapterConfig, got "
                f"{type(self.adapter).__name__}."
            )
        config = self.config  # an unknown method or a bad option is refused here, before any model loads
        check_method_rank(config.method, config.rank)  # peft would raise a bare ValueError

    @property
    def config(self) -> AdapterConfig:
        """The adapter built: ``adapter`` itself, or a method name's with its defaults."""
        return self.adapter if isinstance(self.adapter, AdapterConfig) else AdapterConfig(method=self.adapter)

    def load(
        self, settings: MeasureSettings, batches: Sequence[TokenBatch] | None, device: Device
    ) -> LoadedTarget:
        """See :meth:`MeasureTarget.load`."""
        config = self.config
        settings = dataclasses.replace(settings, task=settings.task or DEFAULT_TASK)
        built = adapter_at_initialisation(
            self.model,
            config,
            model_seed=self.model_seed,
            device=device,
            init_batches=batches
            if batches is not None
            else (lambda tokenizer: settings_batches(tokenizer, settings)),
        )
        check_hessian_precision(built.model)
        source = {
            "method": config.method,
            "model": self.model,
            "rank": config.rank,
            "alpha": config.lora_alpha,
            "targets": list(config.targets),
            "adapter_seed": config.seed,
            "model_seed": self.model_seed,
            "at": "initialisation",
        }
        return LoadedTarget(model=built.model, tokenizer=built.tokenizer, source=source, name=config.method)


@dataclasses.dataclass(frozen=True, eq=False)
class AdaptedModule(MeasureTarget):
    """The caller's own model: an ``nn.Module`` whose trainable parameters are the adapter (its ``requires_grad``
    flags are put back as they were after the measurement), with the ``tokenizer`` that cuts the settings' task
    when no batches are given. It is measured where it is, in the precision it has (fp32 or float64).

    Attributes:
        module: the model; its trainable parameters are the adapter measured.
        tokenizer: the tokenizer that cuts the settings' task (None: batches must be given).
    """

    module: nn.Module
    tokenizer: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.module, nn.Module):
            raise UserError(
                f"AdaptedModule takes an nn.Module whose trainable parameters are the adapter, got "
                f"{type(self.module).__name__}: measure a directory as Checkpoint(path) or "
                "PeftAdapter(path)."
            )

    def load(
        self, settings: MeasureSettings, batches: Sequence[TokenBatch] | None, device: Device
    ) -> LoadedTarget:
        """See :meth:`MeasureTarget.load`; ``device`` is not used (the module stays where it is)."""
        check_hessian_precision(self.module)  # fp32 (or float64) only: a bf16 base is refused, not measured
        if batches is None and self.tokenizer is None:
            raise UserError("pass batches=... or tokenizer=... (with task=...) along with your model.")
        name = type(self.module).__name__
        return LoadedTarget(model=self.module, tokenizer=self.tokenizer, source={"model": name}, name=name)


def as_target(
    adapter: str | os.PathLike[str] | MeasureTarget,
    *,
    base: str | None = None,
    revision: str | None = None,
    model_seed: int = 0,
) -> MeasureTarget:
    """The target a path or hub repo id names, told by the files present: a :class:`Checkpoint` where
    ``hessian_lora.json`` is, else a :class:`PeftAdapter` (a hub id is fetched, or found in the cache, first).

    Args:
        adapter: a directory, a hub adapter repo id, or a target (returned as it is).
        base: a plain peft adapter's base model spec (default: its ``base_model_name_or_path``).
        revision: a hub adapter's branch, tag or commit.
        model_seed: the weights of a random base (tiny-llama) for a plain peft adapter.

    Returns:
        The :class:`Checkpoint` or :class:`PeftAdapter` (``adapter`` itself when it is a target).

    Raises:
        UserError: a target given with ``base``, ``revision`` or ``model_seed`` (set them in it), a revision for a
            local path, a hub id that cannot be fetched, or ``base`` for a checkpoint (which records its own).
    """
    if isinstance(adapter, MeasureTarget):
        if base is not None or revision is not None or model_seed:
            raise UserError(
                f"{type(adapter).__name__} is a target already: set its base, revision or model_seed "
                "in it rather than beside it."
            )
        return adapter
    _check_path(adapter, "as_target")
    directory = resolve_adapter(adapter, revision=revision)
    if is_checkpoint(directory):
        if base is not None:
            raise _records_its_base(directory)
        return Checkpoint(adapter, revision=revision)
    return PeftAdapter(adapter, base=base, revision=revision, model_seed=model_seed)


def settings_examples(settings: MeasureSettings) -> list[Example]:
    """The ``samples`` training examples of ``settings.task`` (default arith)."""
    task = settings.task or DEFAULT_TASK
    examples = load_task(task, seed=settings.data_seed, n_train=settings.samples, n_eval=0).train
    if not examples:
        raise UserError(f"task {task} gave no training examples: raise samples or use another task.")
    return examples


def settings_batches(tokenizer: Any, settings: MeasureSettings) -> list[TokenBatch]:
    """The batches ``settings`` describe: ``samples`` training examples of ``task`` in ``batch_size`` batches,
    formatted by ``prompt_template`` (None: the data's format's,
    :func:`~hessian_lora.inputs.tasks.applied_template`)."""
    return make_batches(
        tokenizer,
        settings_examples(settings),
        settings.batch_size,
        max_length=settings.max_length,
        prompt_template=settings.prompt_template,
    )


def _check_path(path: object, what: str) -> None:
    if not isinstance(path, (str, os.PathLike)):
        raise UserError(
            f"{what} takes a directory or a hub adapter repo id, got {type(path).__name__}: measure "
            "a model you hold as AdaptedModule(module)."
        )


def _records_its_base(directory: Path) -> UserError:
    return UserError(
        f"{directory} is a hessian-lora checkpoint and records its base model: drop --model (it only "
        "replaces the base of plain peft adapter directories)."
    )


def _directory_target(
    spec: str | os.PathLike[str], directory: Path, loaded: LoadedCheckpoint, settings: MeasureSettings
) -> LoadedTarget:
    """A checkpoint's or plain peft directory's :class:`LoadedTarget`: its facts, its recorded data and template."""
    meta = loaded.meta
    template = meta.extra.get("prompt_template")
    if not settings.prompt_template and template:  # the checkpoint's own: a bad one is that file's fault
        try:
            check_prompt_template(template)
        except UserError as exc:
            raise UserError(
                f"{Path(spec)}: the prompt_template the checkpoint records is unusable: {exc} "
                "Pass --prompt-template to override it, or re-create the checkpoint."
            ) from exc
    # a hub id is recorded as the id at the commit its files came from (the cache's snapshot folder)
    where = (
        {"checkpoint": os.fspath(spec), "revision": directory.name}
        if directory != Path(os.fspath(spec))
        else {"checkpoint": str(directory.resolve())}
    )
    source = {
        **where,
        "method": meta.adapter.method,
        "base_model": meta.base_model,
        "rank": meta.adapter.rank,
        "alpha": meta.adapter.alpha,
        "step": peft_step(meta),
        "lr": meta.lr,
        **({"format": "peft"} if meta.extra.get("format") == "peft" else {}),
        **({"residual_base": meta.extra["residual_base"]} if meta.extra.get("residual_base") else {}),
    }
    probe_file = directory / PROBE_BATCHES_FILE
    return LoadedTarget(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        source=source,
        name=os.fspath(spec),
        task=meta.task,
        template=template,
        checkpoint=loaded,
        probe_file=probe_file if probe_file.is_file() else None,
        plain_peft=meta.extra.get("format") == "peft",
    )
