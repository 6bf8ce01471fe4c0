"""Training: the paper's recipe as one loop.

AdamW (β = 0.9, 0.999, weight decay 0) over the adapter, cosine schedule with linear warm-up over the first 3 %
of the steps (the formula of ``transformers.get_cosine_schedule_with_warmup``, which the authors' HF Trainer
used), gradient-norm clipping at 1.0, and a global batch built by gradient accumulation over micro-batches.

Accumulation is exact: every micro-batch's *summed* token loss is divided by the loss tokens of the whole global
batch, so the accumulated gradient is the gradient of the global batch's per-token mean loss (the same objective
the Hessian engine uses), whatever the micro-batch size.

A run stops early as ``diverged`` when its loss (or gradient norm) is not finite, or when the mean loss of the
last ``divergence_window`` steps exceeds ``divergence_factor`` times the loss of the first step (measured
before any update). The sweep records that and moves on.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hessian_lora.core.errors import UserError
from hessian_lora.core.rundir import Status
from hessian_lora.hessian.loss import loss_sum
from hessian_lora.inputs.tasks import Example, TokenBatch, collate, tokenize_example
from hessian_lora.settings.training import (
    PRECISIONS,
    Precision,
    TrainConfig,
    steps_for_epochs,
    warmup_steps,
)

__all__ = ["PRECISIONS", "Precision", "TrainConfig", "steps_for_epochs", "warmup_steps"]


@dataclass(frozen=True)
class TrainResult:
    """What a run did. ``train_loss`` is the mean loss over the last 10 % of the steps taken (at least one)."""

    status: Status  # Status.DONE or Status.DIVERGED
    steps: int
    tokens: int  # loss tokens seen
    initial_loss: float
    train_loss: float
    wall_seconds: float
    history: tuple[dict[str, float], ...] = field(repr=False)
    stop_reason: str | None = None


def cosine_with_warmup(step: int, total_steps: int, n_warmup: int) -> float:
    """LR multiplier at optimizer step ``step`` (0-based): linear warm-up from 0, then a half cosine to 0.

    The same numbers as ``transformers.get_cosine_schedule_with_warmup`` (so step 0 trains at LR 0 when there is
    any warm-up: Adam's moments still take that step's gradient).
    """
    if step < n_warmup:
        return step / max(1, n_warmup)
    progress = (step - n_warmup) / max(1, total_steps - n_warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def example_stream(n_examples: int, seed: int) -> Iterator[int]:
    """Indices of the training examples, epoch after epoch, each epoch shuffled by (seed, epoch)."""
    if n_examples <= 0:
        raise UserError("the training set is empty: raise n_train.")
    epoch = 0
    while True:
        order = list(range(n_examples))
        random.Random(f"{seed}:{epoch}").shuffle(order)
        yield from order
        epoch += 1


def global_batches(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    config: TrainConfig,
) -> Iterator[list[TokenBatch]]:
    """Per optimizer step, the micro-batches of that step's global batch (tokenised lazily)."""
    stream = example_stream(len(examples), config.seed)
    micro = min(config.micro_batch_size or config.batch_size, config.batch_size)
    for _ in range(config.steps):
        indices = [next(stream) for _ in range(config.batch_size)]
        encoded = [
            tokenize_example(tokenizer, examples[i], config.max_length, config.prompt_template)
            for i in indices
        ]
        yield [collate(tokenizer, encoded[start : start + micro]) for start in range(0, len(encoded), micro)]


def autocast_context(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when asked for; fp32 everywhere else (CPU training stays fp32)."""
    if precision == "bf16":
        if device.type != "cuda":
            raise UserError("precision bf16 needs a CUDA device: use precision fp32 on CPU.")
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def accumulate_gradient(
    model: nn.Module, micro_batches: Sequence[TokenBatch], device: torch.device, precision: Precision = "fp32"
) -> tuple[float, int]:
    """Backward of the global batch's per-token mean loss, micro-batch by micro-batch; (loss, loss tokens)."""
    total_tokens = sum(batch.loss_tokens for batch in micro_batches)
    if total_tokens == 0:
        return 0.0, 0
    loss_total = 0.0
    for batch in micro_batches:
        if batch.loss_tokens == 0:
            continue
        with autocast_context(precision, device):
            summed = loss_sum(model, batch.to(device))
        (summed / total_tokens).backward()
        loss_total += float(summed.detach())
    return loss_total / total_tokens, total_tokens


def train(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    config: TrainConfig,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    progress: bool = True,
    description: str = "train",
    probe: Callable[[int, torch.optim.Optimizer, float], object] | None = None,
) -> TrainResult:
    """Train ``model``'s trainable parameters in place on ``examples`` and return what happened.

    ``optimizer`` defaults to AdamW over the parameters with ``requires_grad`` (pass
    :func:`hessian_lora.training.adapters.make_optimizer`'s for LoRA+ groups). The model is left in eval mode.

    ``probe`` (e.g. a :class:`hessian_lora.measurement.training_probe.SharpnessProbe`) is called as
    ``probe(step, optimizer, lr)`` before the first update (step 0) and after every optimizer step (step = updates
    done), ``lr`` being the first group's rate of the next update; it must leave the training state as it found it.
    """
    device = next(model.parameters()).device
    params = [param for param in model.parameters() if param.requires_grad]
    if not params:
        raise UserError("the model has no trainable parameters: wrap it with build_adapter first.")
    if optimizer is None:
        optimizer = torch.optim.AdamW(
            params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, eps=config.eps
        )
    base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
    n_warmup = config.warmup_steps
    torch.manual_seed(config.seed)  # dropout, when a config asks for it
    history: list[dict[str, float]] = []
    losses: list[float] = []
    tokens_seen = 0
    status, stop_reason = Status.DONE, None
    start = time.perf_counter()
    checkpointed = _checkpointing(model) if config.gradient_checkpointing else None
    model.train()
    bar = tqdm(
        total=config.steps,
        desc=description,
        file=sys.stderr,
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    try:
        if probe is not None:
            probe(0, optimizer, base_lrs[0] * cosine_with_warmup(0, config.steps, n_warmup))
        for step, micro_batches in enumerate(global_batches(tokenizer, examples, config)):
            multiplier = cosine_with_warmup(step, config.steps, n_warmup)
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base_lr * multiplier
            optimizer.zero_grad(set_to_none=True)
            loss, batch_tokens = accumulate_gradient(model, micro_batches, device, config.precision)
            # An optimizer that clips on its own (LoFT: the full-weight view) gets the gradients unclipped.
            clip = (
                math.inf if getattr(optimizer, "clips_gradients", False) else config.max_grad_norm or math.inf
            )
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            tokens_seen += batch_tokens
            losses.append(loss)
            history.append(
                {"step": step + 1, "loss": loss, "lr": base_lrs[0] * multiplier, "grad_norm": grad_norm}
            )
            stop_reason = divergence_reason(losses, grad_norm, config)
            if stop_reason is not None:
                status = Status.DIVERGED
                break
            try:
                optimizer.step()
            except RuntimeError as exc:
                # torch refuses an Adam step size beyond the float range: that LR has diverged by definition.
                if "overflow" not in str(exc):
                    raise
                status, stop_reason = Status.DIVERGED, f"optimizer step overflowed at step {step + 1} ({exc})"
                break
            if probe is not None:
                probe(step + 1, optimizer, base_lrs[0] * cosine_with_warmup(step + 1, config.steps, n_warmup))
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{base_lrs[0] * multiplier:.2e}", refresh=False)
            bar.update(1)
    finally:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
        if checkpointed is not None:
            checkpointed.close()  # off again: Hessian products and generation run on the plain model
        model.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return TrainResult(
        status=status,
        steps=len(losses) if status == Status.DONE else len(losses) - 1,
        tokens=tokens_seen,
        initial_loss=losses[0],
        train_loss=sum(tail) / len(tail),
        wall_seconds=time.perf_counter() - start,
        history=tuple(history),
        stop_reason=stop_reason,
    )


class _Checkpointing:
    """Activation checkpointing switched on for one training run; :meth:`close` switches it off again."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.use_cache = getattr(model.config, "use_cache", None)
        # use_cache is meaningless in training and transformers warns once per run that checkpointing disables it.
        if self.use_cache is not None:
            model.config.use_cache = False
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:  # transformers >= 5.24
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def close(self) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
            disable = getattr(self.model, "activation_checkpointing_disable", None)
            if disable is not None:
                disable()
            else:
                self.model.gradient_checkpointing_disable()
        if self.use_cache is not None:
            self.model.config.use_cache = self.use_cache


def _checkpointing(model: nn.Module) -> _Checkpointing:
    """Checkpointing on the transformers model inside ``model`` (a PeftModel wraps one), else a UserError."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(inner, PreTrainedModel) or not inner.supports_gradient_checkpointing:
        raise UserError(
            f"gradient_checkpointing: {type(inner).__name__} does not support activation "
            "checkpointing: set gradient_checkpointing: false."
        )
    return _Checkpointing(inner)


def divergence_reason(losses: Sequence[float], grad_norm: float, config: TrainConfig) -> str | None:
    """Why the run must stop, or None. ``losses[0]`` is the loss before any update."""
    step = len(losses)
    if not math.isfinite(losses[-1]):
        return f"loss {losses[-1]} at step {step}"
    if not math.isfinite(grad_norm):
        return f"gradient norm {grad_norm} at step {step}"
    window = losses[-config.divergence_window :]
    recent = sum(window) / len(window)
    if len(losses) > 1 and recent > config.divergence_factor * losses[0]:
        return (
            f"mean loss {recent:.4g} over the last {len(window)} steps exceeds "
            f"{config.divergence_factor:g}x the initial {losses[0]:.4g} at step {step}"
        )
    return None
