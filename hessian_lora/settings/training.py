"""A training run's settings: :class:`TrainConfig` (the paper's recipe and its knobs) and the step arithmetic a
sweep plans with (:func:`warmup_steps`, :func:`steps_for_epochs`). The loop itself is
:mod:`hessian_lora.training.train`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from hessian_lora.core.errors import UserError
from hessian_lora.settings.prompts import DEFAULT_PROMPT_TEMPLATE, check_prompt_template

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)  # for validation and its messages
# The frozen base weights' dtype in training (hessian_lora.training.precision casts them; the Hessian is fp32 only).
BaseDtype = Literal["fp32", "bf16"]
BASE_DTYPES: tuple[str, ...] = get_args(BaseDtype)
# Adam's (β₁, β₂) of the paper's recipe: the one default every optimizer builder and reader falls back to.
DEFAULT_BETAS: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``steps`` optimizer steps of ``batch_size`` examples (the global batch), each the sum of
    micro-batches of ``micro_batch_size`` (None: the whole global batch at once).

    Attributes:
        lr: the peak learning rate.
        steps: optimizer steps.
        batch_size: examples per optimizer step (the global batch).
        micro_batch_size: examples per forward/backward (None: the whole global batch).
        warmup_ratio: the share of steps spent warming up (linear).
        betas: Adam's (β₁, β₂).
        weight_decay: AdamW's weight decay.
        eps: Adam's ε.
        max_grad_norm: the gradient-clipping norm (None: no clipping).
        max_length: token limit per example.
        seed: the seed of the data order and dropout.
        precision: the autocast precision of the forward pass.
        divergence_factor: the last ``divergence_window`` steps' loss above this many times the first step's is
            divergence.
        divergence_window: the steps over which divergence is judged.
        prompt_template: a prompt template name or a string with ``{prompt}``.
        gradient_checkpointing: recompute each layer's activations in the backward pass (less memory, same
            gradients).
    """

    lr: float
    steps: int
    batch_size: int = 64
    micro_batch_size: int | None = None
    warmup_ratio: float = 0.03
    betas: tuple[float, float] = DEFAULT_BETAS
    weight_decay: float = 0.0
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    max_length: int = 512
    seed: int = 0
    precision: Precision = "fp32"
    divergence_factor: float = 4.0
    divergence_window: int = 5
    prompt_template: str = (
        DEFAULT_PROMPT_TEMPLATE  # a prompts.PROMPT_TEMPLATES name or a string with {prompt}
    )
    # Recompute each decoder layer's activations in the backward pass instead of keeping them (transformers'
    # activation checkpointing, non-reentrant): the same gradients (bit for bit on tiny-llama, tested) for one
    # more forward pass of every layer per backward.
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        check_prompt_template(self.prompt_template)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"learning rate must be a positive number, got {self.lr}.")
        if self.steps <= 0:
            raise UserError(f"steps must be positive, got {self.steps}: raise steps or epochs.")
        if self.batch_size <= 0:
            raise UserError(f"batch_size must be positive, got {self.batch_size}.")
        if self.micro_batch_size is not None and self.micro_batch_size <= 0:
            raise UserError(f"micro_batch_size must be positive, got {self.micro_batch_size}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise UserError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise UserError(
                f"max_grad_norm must be positive (or null for no clipping), got {self.max_grad_norm}."
            )
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")
        if self.divergence_factor <= 1.0:
            raise UserError(f"divergence_factor must be > 1, got {self.divergence_factor}.")
        if self.divergence_window <= 0:
            raise UserError(f"divergence_window must be positive, got {self.divergence_window}.")
        if not isinstance(self.gradient_checkpointing, bool):
            raise UserError(
                f"gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}."
            )

    @property
    def warmup_steps(self) -> int:
        """The linear warm-up's length in optimizer steps."""
        return warmup_steps(self.steps, self.warmup_ratio)

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per optimizer step."""
        micro = self.micro_batch_size or self.batch_size
        return math.ceil(self.batch_size / min(micro, self.batch_size))


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Warm-up length as the HF Trainer computes it from a ratio: ceil(ratio · total)."""
    return math.ceil(warmup_ratio * total_steps)


def steps_for_epochs(n_examples: int, batch_size: int, epochs: float) -> int:
    """Optimizer steps that visit ``epochs`` × the training set once each (the last batch may be partial)."""
    if epochs <= 0:
        raise UserError(f"epochs must be positive, got {epochs}.")
    return max(1, math.ceil(n_examples * epochs / batch_size))
