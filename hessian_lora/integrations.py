"""Sharpness along training inside any ``transformers.Trainer`` (or TRL ``SFTTrainer``) run on a peft model.

:class:`SharpnessCallback` wraps a :class:`hessian_lora.dynamics.SharpnessProbe`: every ``every`` optimizer steps
(and at step 0) it measures λ_max of the loss Hessian w.r.t. the trainable (adapter) parameters and Adam's
preconditioned sharpness λ₁(P⁻¹H) from the Trainer's live AdamW state, on fixed probe batches (given, or the
first ``probe_batches`` batches of the train dataloader, taken once), and logs

    sharpness/lambda_max, sharpness/preconditioned, sharpness/lr, sharpness/hvps, sharpness/seconds,
    sharpness/adam_ratio (λ̃·η/((2+2β₁)/(1−β₁)); 1 = Adam's edge of stability), sharpness/gd_ratio (λ·η/2)

How the values are logged: through the Trainer's own ``Trainer.log`` when the callback knows the trainer
(``SharpnessCallback.install(trainer, ...)`` or ``callback.attach(trainer)``): they land in
``trainer.state.log_history`` and reach every reporting integration (``report_to="tensorboard"``, wandb, ...)
at the probe's step, exactly like the loss. A callback passed as ``Trainer(callbacks=[...])`` without
``attach`` cannot call ``Trainer.log`` (callbacks are not given the trainer), so it asks for a log at the probe's
step (``control.should_log``) and adds its values to that log in ``on_log`` and to its ``log_history`` entry;
reporting callbacks run *before* user callbacks, so they do not see them: use ``install``/``attach`` when you
report to TensorBoard and the like.

The probe never changes training: dropout off and flags restored during the products, RNG states saved and
restored, no ``.grad`` or optimizer state written (see :mod:`hessian_lora.dynamics`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from transformers import TrainerCallback

from hessian_lora.data import TokenBatch
from hessian_lora.dynamics import (
    DuringSettings,
    SharpnessPoint,
    SharpnessProbe,
    preserved_rng,
    stability_ratios,
)
from hessian_lora.errors import UserError

PREFIX = "sharpness/"


class SharpnessCallback(TrainerCallback):
    """Measure λ_max and λ₁(P⁻¹H) every ``every`` steps of a Trainer run and log them (see the module docstring).

    Args:
        every: optimizer steps between probes (a probe also runs at step 0).
        batches: probe batches (:class:`~hessian_lora.data.TokenBatch` or dicts with input_ids, attention_mask,
            labels); None takes the first ``probe_batches`` batches of the train dataloader at the start.
        settings: the rest of the probe's settings (:class:`~hessian_lora.dynamics.DuringSettings`: tol,
            max_iter, blocks, warm_start, ...); ``every`` overrides theirs.
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
        import dataclasses

        self.settings = dataclasses.replace(settings or DuringSettings(), every=every)
        self._given = [to_token_batch(batch) for batch in batches] if batches is not None else None
        if probe_batches < 1:
            raise UserError(f"probe_batches must be >= 1, got {probe_batches}.")
        self.probe_batches = probe_batches
        self.trainer = trainer
        self.probe: SharpnessProbe | None = None
        self._pending: dict[str, float] | None = None
        self._beta1 = 0.9

    @classmethod
    def install(cls, trainer: Any, every: int = 10, **options: Any) -> SharpnessCallback:
        """Make a callback that logs through ``trainer.log`` and add it to ``trainer``."""
        callback = cls(every, trainer=trainer, **options)
        trainer.add_callback(callback)
        return callback

    def attach(self, trainer: Any) -> SharpnessCallback:
        """Log through ``trainer.log`` from now on."""
        self.trainer = trainer
        return self

    @property
    def history(self) -> list[SharpnessPoint]:
        return self.probe.history if self.probe is not None else []

    # --- Trainer events -------------------------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       train_dataloader: Any = None, **kwargs: Any) -> None:
        if model is None:
            raise UserError("SharpnessCallback needs the Trainer's model.")
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
        self.probe = SharpnessProbe(model, [batch.to(device) for batch in batches], self.settings,
                                    total_steps=state.max_steps or None)
        betas = getattr(args, "adam_beta1", None)
        self._beta1 = float(betas) if betas is not None else 0.9

    def on_step_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        if state.global_step == 0 and self.probe is not None and not self.probe.history:
            self._probe(0, optimizer, control, state)

    def on_step_end(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        if self.probe is not None:
            self._probe(state.global_step, optimizer, control, state)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if self._pending is None or logs is None:
            return
        logs.update(self._pending)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._pending)
        self._pending = None

    # --- internals ------------------------------------------------------------------------------------------

    def _probe(self, step: int, optimizer: Any, control: Any, state: Any) -> None:
        assert self.probe is not None
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        lr = float(inner.param_groups[0]["lr"]) if inner is not None else None
        point = self.probe(step, inner, lr)
        if point is None:
            return
        values = self.values(point)
        if self.trainer is not None:
            self.trainer.log(values)
        else:
            self._pending = values
            control.should_log = True

    def values(self, point: SharpnessPoint) -> dict[str, float]:
        """The logged values of one probe (absent keys: not measured)."""
        gd_ratio, adam_ratio = stability_ratios(point.to_dict(), beta1=self._beta1)
        raw = {"lambda_max": point.lambda_max, "preconditioned": point.preconditioned, "lr": point.lr,
               "hvps": float(point.hvps + point.precond_hvps), "seconds": point.seconds,
               "gd_ratio": gd_ratio, "adam_ratio": adam_ratio}
        return {PREFIX + key: float(value) for key, value in raw.items() if value is not None}


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
