"""What a run's evaluation measures: :class:`EvalConfig` (the ``eval:`` block of a sweep). The evaluation itself
is :func:`hessian_lora.training.evaluate.evaluate`."""

from __future__ import annotations

from dataclasses import dataclass

from hessian_lora.core.bounds import time_limit
from hessian_lora.core.errors import UserError
from hessian_lora.settings.training import Precision


@dataclass(frozen=True)
class EvalConfig:
    """What to measure. Accuracy needs a task with a scorer; HumanEval runs generated code (opt-in).

    Attributes:
        batch_size: examples per evaluation batch.
        max_length: token limit per example.
        max_new_tokens: tokens generated per answer.
        accuracy: whether to score generated answers (the task needs a scorer).
        humaneval: whether to run HumanEval (generated code; opt-in).
        humaneval_timeout: seconds each HumanEval program may run.
        humaneval_max_new_tokens: tokens generated per HumanEval completion.
        humaneval_limit: score only the first N problems (None: all).
        precision: the autocast precision of evaluation.
        allow_unconfined_code: run generated code where no confinement exists (accepting the risk).
    """

    batch_size: int = 16
    max_length: int = 512
    max_new_tokens: int = 16
    accuracy: bool = True
    humaneval: bool = False
    humaneval_timeout: float = 10.0
    humaneval_max_new_tokens: int = 384
    humaneval_limit: int | None = None  # first N problems only
    precision: Precision = "fp32"
    # Generated code runs confined (hessian_lora.training.sandbox); where the machine gives no confinement it is refused
    # unless this accepts the risk (the CLI's --allow-unconfined-code).
    allow_unconfined_code: bool = False

    def __post_init__(self) -> None:
        for name in ("accuracy", "humaneval", "allow_unconfined_code"):
            if not isinstance(getattr(self, name), bool):  # "yes" or "no" would read as true
                raise UserError(f"eval.{name} must be true or false, got {getattr(self, name)!r}.")
        if self.batch_size <= 0 or self.max_length <= 0 or self.max_new_tokens <= 0:
            raise UserError("eval batch_size, max_length and max_new_tokens must be positive.")
        # A NaN limit never expires and inf never ends a program: generated code would run unbounded.
        object.__setattr__(
            self, "humaneval_timeout", time_limit(self.humaneval_timeout, "eval.humaneval_timeout")
        )
        if self.humaneval_limit is not None and self.humaneval_limit < 1:
            raise UserError(
                f"humaneval_limit must be >= 1 (or null for all problems), got {self.humaneval_limit}."
            )
