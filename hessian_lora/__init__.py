"""hessian-lora: which learning rate each LoRA variant needs, and why."""

from __future__ import annotations

__version__ = "0.1.0"
from hessian_lora.measure import eigen as eigen  # the Python face of `hessian-lora eigen`
