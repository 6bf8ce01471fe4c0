"""The metrics a run records and whether higher is better (the method registry is
:mod:`hessian_lora.methods.registry`).

Torch- and scipy-free: analysis, the adaptive search and checkpoint retention rank runs by these, and a sweep
worker reads them without the analysis stack.
"""

from __future__ import annotations

from typing import Literal

Metric = Literal[
    "accuracy",
    "eval_loss",
    "train_loss",
    "pass_at_1",
    "gsm8k_acc",
    "math_acc",
    "mbpp_pass_at_1",
    "humaneval_pass_at_1",
]
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "eval_loss": False,
    "train_loss": False,
    # evaluation sets (a sweep's eval_task / HumanEval): fractions solved
    "pass_at_1": True,
    "gsm8k_acc": True,
    "math_acc": True,
    "mbpp_pass_at_1": True,
    "humaneval_pass_at_1": True,
}
# Metrics that are fractions solved: a diverged run without one scores 0 (it solves nothing).
SCORE_METRICS = frozenset(name for name, higher in HIGHER_IS_BETTER.items() if higher)
