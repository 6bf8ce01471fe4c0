"""hessian-lora: which learning rate each LoRA variant needs, and why."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from hessian_lora.measure import eigen as eigen  # the Python face of `hessian-lora eigen`


def __getattr__(name: str) -> Any:
    # Lazy: ``import hessian_lora.cli`` must not pull in torch (seconds during which a Ctrl-C would otherwise
    # end in a traceback, before cli.main's guard runs).
    if name == "eigen":
        # local: `import hessian_lora` (so the CLI's start-up) stays free of torch
        from hessian_lora.measure import eigen

        return eigen
    raise AttributeError(f"module 'hessian_lora' has no attribute {name!r}")
