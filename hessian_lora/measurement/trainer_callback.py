"""Sharpness along training inside any ``transformers.Trainer`` (or TRL ``SFTTrainer``) run on a peft model.

:class:`SharpnessCallback` wraps a :class:`hessian_lora.measurement.training_probe.SharpnessProbe`: every ``every``
optimizer steps (and at step 0) it measures λ_max of the loss Hessian w.r.t. the trainable (adapter) parameters and
Adam's preconditioned sharpness λ₁(P⁻¹H) from the Trainer's live AdamW state, on fixed probe batches (given, or the
first ``probe_batches`` batches of the train dataloader, taken once), and logs

    sharpness/lambda_max, sharpness/preconditioned, sharpness/lr, sharpness/hvps, sharpness/seconds,
    sharpness/adam_ratio (λ̃·η/((2+2β₁)/(1−β₁)); 1 = Adam's edge of stability), sharpness/gd_ratio (λ·η/2),
    sharpness/converged (1.0 when every solve met its tolerance, else 0.0), sharpness/rel_residual and
    sharpness/precond_rel_residual (‖Hv − λv‖/|λ| of the logged value: what certifies it)

plus one warning line for a probe that did not converge.

How the values are logged, and why so: as their own entry at the step they were measured, handed to the
Trainer's ``CallbackHandler.on_log`` (the one dispatch every reporting integration, TensorBoard, W&B, ...,
listens to) and appended to ``trainer.state.log_history``, exactly as ``Trainer.log`` does, with
``control.should_log`` put back afterwards. Calling ``trainer.log`` instead is what the Trainer's own log loses
to: ``on_log`` resets ``control.should_log``, so the Trainer skips its loss log of that step, and a subclass's
``log`` (TRL's ``SFTTrainer``) hands its accumulated ``entropy``/``mean_token_accuracy``/``num_tokens`` to the
sharpness entry. Riding on the Trainer's own log call instead would either move the values to another step or
force a log at the probe step, which changes what the next logged loss averages over. With this callback the
Trainer's entries are the same, key for key and value for value, as in a run without it
(tests/measurement/test_trainer_callback.py).

The handler is found through the trainer (``SharpnessCallback.install(trainer, ...)``, ``attach(trainer)``) or,
for ``Trainer(callbacks=[SharpnessCallback(...)])``, on the call stack of ``on_train_begin``: transformers gives a
callback no handle on its trainer or handler. Both ways log the same entries.

What the probes measured on travels with the run's checkpoints: at each save (``on_save``) the probe batches, token
for token with their labels, are written into the Trainer's ``checkpoint-<step>`` folder
(:data:`~hessian_lora.inputs.tasks.PROBE_BATCHES_FILE`), and ``hessian-lora eigen`` on that folder measures on them
unless ``--data``/``--task`` says otherwise: the same tokens, so the same template and loss mask, as the callback's
values.

The probe never changes training: dropout off and flags restored during the products, RNG states saved and
restored, no ``.grad`` or optimizer state written (see :mod:`hessian_lora.measurement.training_probe`). Under the
Trainer's ``bf16``/``fp16`` mixed precision (accelerate wraps the model's ``forward`` in autocast) the probe measures
the fp32 loss's Hessian, as every other measurement of the toolkit does: the wrapper is bypassed during the products.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hessian_lora.core.errors import UserError
from hessian_lora.inputs.tasks import PROBE_BATCHES_FILE, TokenBatch, save_batches
from hessian_lora.measurement.training_probe import (
    DuringSettings,
    SharpnessPoint,
    SharpnessProbe,
    preserved_rng,
    stability_ratios,
)

PREFIX = "sharpness/"
logger = logging.getLogger(__name__)


class SharpnessCallback(TrainerCallback):
    """Measure λ_max and λ₁(P⁻¹H) every ``every`` steps of a Trainer run and log them (see the module docstring).

    Args:
        every: optimizer steps between probes (a probe also runs at step 0).
        batches: probe batches (:class:`~hessian_lora.inputs.tasks.TokenBatch` or dicts with input_ids, attention_mask,
            labels); None takes the first ``probe_batches`` batches of the train dataloader at the start.
        settings: the rest of the probe's settings (:class:`~hessian_lora.measurement.training_probe.DuringSettings`:
            tol, max_iter, blocks, warm_start, ...); ``every`` overrides theirs.
    """

    def __init__(
        self,
        every: int = 10,
        batches: Iterable[TokenBatch | Mapping[str, torch.Tensor]] | None = None,
        *,
        probe_batches: int = 2,
        settings: DuringSettings | None = None,
        trainer: Any = None,
    ) -> None:
        self.settings = dataclasses.replace(settings or DuringSettings(), every=every)
        self._given = [to_token_batch(batch) for batch in batches] if batches is not None else None
        if probe_batches < 1:
            raise UserError(f"probe_batches must be >= 1, got {probe_batches}.")
        self.probe_batches = probe_batches
        self.trainer = trainer
        self.probe: SharpnessProbe | None = None
        self._handler: Any = None
        self._beta1 = 0.9

    @classmethod
    def install(cls, trainer: Any, every: int = 10, **options: Any) -> SharpnessCallback:
        """Make a callback for ``trainer`` and add it to its callbacks."""
        callback = cls(every, trainer=trainer, **options)
        trainer.add_callback(callback)
        return callback

    def attach(self, trainer: Any) -> SharpnessCallback:
        """Log through ``trainer``'s callback handler (found on the call stack otherwise)."""
        self.trainer = trainer
        return self

    @property
    def history(self) -> list[SharpnessPoint]:
        """The probes taken so far."""
        return self.probe.history if self.probe is not None else []

    # --- Trainer events -------------------------------------------------------------------------------------

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        optimizer: Any = None,
        train_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        """Build the probe on the Trainer's model and data (the Trainer's event)."""
        if model is None:
            raise UserError("SharpnessCallback needs the Trainer's model.")
        self._handler = (
            getattr(self.trainer, "callback_handler", None)
            if self.trainer is not None
            else _calling_handler(self)
        )
        if self._handler is None:
            logger.warning(
                "SharpnessCallback: no Trainer callback handler found; sharpness values go to "
                "state.log_history only (no reporting integration sees them): use "
                "SharpnessCallback.install(trainer, ...)."
            )
        batches = self._given
        if batches is None:
            if train_dataloader is None:
                raise UserError("no probe batches: pass batches=... to SharpnessCallback.")
            batches = []
            with preserved_rng():  # the sampler draws from torch's RNG: training must see the same order
                for batch in train_dataloader:
                    batches.append(to_token_batch(batch))
                    if len(batches) >= self.probe_batches:
                        break
        device = next(p for p in model.parameters() if p.requires_grad).device
        self.probe = SharpnessProbe(
            model, [batch.to(device) for batch in batches], self.settings, total_steps=state.max_steps or None
        )
        betas = getattr(args, "adam_beta1", None)
        self._beta1 = float(betas) if betas is not None else 0.9

    def on_step_begin(
        self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any
    ) -> None:
        """Probe at step 0, before the first update (the Trainer's event)."""
        if state.global_step == 0 and self.probe is not None and not self.probe.history:
            self._probe(args, state, control, optimizer)

    def on_step_end(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        """Probe after the update when one is due (the Trainer's event)."""
        if self.probe is not None:
            self._probe(args, state, control, optimizer)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Write the probe batches into the checkpoint folder just saved (the Trainer's event), so that ``eigen``
        on it measures the tokens the logged values were measured on."""
        if self.probe is None or not getattr(state, "is_world_process_zero", True):
            return
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir():
            save_batches(
                folder / PROBE_BATCHES_FILE,
                self.probe.batches,
                f"the SharpnessCallback's probe batches of {folder}",
            )

    # --- internals ------------------------------------------------------------------------------------------

    def _probe(self, args: Any, state: Any, control: Any, optimizer: Any) -> None:
        assert self.probe is not None
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        lr = float(inner.param_groups[0]["lr"]) if inner is not None else None
        with full_precision_forward(self.probe.model):
            point = self.probe(state.global_step, inner, lr)
        if point is None:
            return
        if not point.converged:
            logger.warning(uncertified_line(point, self.settings))
        self._log(self.values(point), args, state, control)

    def _log(self, values: dict[str, float], args: Any, state: Any, control: Any) -> None:
        # What Trainer.log does, less a subclass's additions, and with the Trainer's own decision to log this
        # step (control.should_log, reset by the handler's on_log) put back: see the module docstring.
        logs = dict(values)
        if state.epoch is not None:
            logs["epoch"] = state.epoch
        state.log_history.append({**logs, "step": state.global_step})
        if self._handler is not None:
            should_log = control.should_log
            self._handler.on_log(args, state, control, logs)
            control.should_log = should_log

    def values(self, point: SharpnessPoint) -> dict[str, float]:
        """The logged values of one probe (absent keys: not measured)."""
        gd_ratio, adam_ratio = stability_ratios(point.to_dict(), beta1=self._beta1)
        raw = {
            "lambda_max": point.lambda_max,
            "preconditioned": point.preconditioned,
            "lr": point.lr,
            "hvps": float(point.hvps + point.precond_hvps),
            "seconds": point.seconds,
            "gd_ratio": gd_ratio,
            "adam_ratio": adam_ratio,
            "converged": 1.0 if point.converged else 0.0,
            "rel_residual": _relative(point.residual, point.lambda_max),
            "precond_rel_residual": _relative(point.precond_residual, point.preconditioned),
        }
        return {PREFIX + key: float(value) for key, value in raw.items() if value is not None}


def uncertified_line(point: SharpnessPoint, settings: DuringSettings) -> str:
    """The one warning line of a probe whose solves did not all meet ``settings.tol``."""
    parts = []
    for name, value, residual in (
        ("lambda_max", point.lambda_max, point.residual),
        ("preconditioned", point.preconditioned, point.precond_residual),
    ):
        if value is not None:
            relative = _relative(residual, value)
            parts.append(
                f"{name} {value:.5g} (relative residual {'-' if relative is None else f'{relative:.3g}'})"
            )
    return (
        f"sharpness probe at step {point.step} not certified to tol {settings.tol:g} within max_iter "
        f"{settings.max_iter}: {', '.join(parts) or 'no value'}; raise DuringSettings.max_iter."
    )


def _relative(residual: float | None, value: float | None) -> float | None:
    if residual is None or value is None:
        return None
    return residual / abs(value) if value != 0 else math.inf


def _calling_handler(callback: TrainerCallback) -> Any:
    """The ``CallbackHandler`` on the call stack that holds ``callback`` (None when called otherwise)."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, CallbackHandler) and any(cb is callback for cb in owner.callbacks):
                return owner
            frame = frame.f_back
        return None
    finally:
        del frame


@contextlib.contextmanager
def full_precision_forward(model: nn.Module) -> Iterator[None]:
    """Run ``model`` without the autocast wrapper accelerate puts on ``forward`` for mixed precision (it keeps the
    unwrapped one as ``_original_forward``); the wrapper is put back afterwards."""
    wrapped = model.__dict__.get("forward")
    original = model.__dict__.get("_original_forward")
    if wrapped is None or original is None:
        yield
        return
    model.forward = original
    try:
        yield
    finally:
        model.forward = wrapped


def to_token_batch(batch: TokenBatch | Mapping[str, torch.Tensor] | Sequence[Any]) -> TokenBatch:
    """A Trainer batch (dict with input_ids, labels and optionally attention_mask) as a :class:`TokenBatch`.

    Labels follow the Hugging Face convention (aligned with input_ids, -100 where there is no loss; the model
    shifts them), which is :class:`TokenBatch`'s too.
    """
    if isinstance(batch, TokenBatch):
        return batch
    if not isinstance(batch, Mapping) or "input_ids" not in batch or "labels" not in batch:
        raise UserError("a probe batch must be a TokenBatch or a dict with input_ids and labels.")
    input_ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    return TokenBatch(input_ids, mask if mask is not None else torch.ones_like(input_ids), batch["labels"])
