"""The method registry: the one table of adapter methods, in display order, and what the rest of the toolkit asks
of it (labels, colours, order, rank rules, parameter counts, the method a saved peft config names).

**Registering a method is one line** in :data:`PLUGINS`: the name of its module ``hessian_lora/methods/<name>.py``,
which defines ``SPEC`` (a :class:`~hessian_lora.methods.spec.MethodSpec` whose ``name`` is that module name).

Torch-free on purpose, plug-ins included: analysis, tables, plots and the CLI's listings read it without importing
torch or peft. The plug-ins are loaded by name (:func:`importlib.import_module`), not by ``import`` statements:
their hooks import torch, peft and the loss or LoFT's optimizer inside themselves, and a static import here would
make every reader of a label depend on those modules in the import graph (the chain and torch-free contracts of
setup.cfg) although no hook runs on load. A plug-in, for its part, imports only this package's ``spec`` (and other
plug-ins) at load time; ``tests/methods`` checks that loading the table loads no torch.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Mapping
from typing import Any

from hessian_lora.core.errors import UserError
from hessian_lora.methods.spec import MethodSpec, Shape

# One line per method: its module's name under hessian_lora/methods/ (= the method's name). The order is display
# order: every table, legend and listing follows it. Names are recorded in run directories, checkpoints and
# reports: never rename one.
PLUGINS: tuple[str, ...] = (
    "lora",
    "pissa",
    "milora",
    "initab",
    "dora",
    "olora",
    "loraga",
    "gralora",
    "randlora",
    "loft",
    "rslora",
    "loraplus",
    "eva",
)

# The plain method: every method option's default, what a saved peft LoRA config that names no other method is,
# and the reference every comparison (the paper's factors, ratio figures) is made against.
DEFAULT_METHOD = "lora"


def _load(name: str) -> MethodSpec:
    module = importlib.import_module(f"{__package__}.{name}")
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, MethodSpec) or spec.name != name:
        raise TypeError(f"hessian_lora/methods/{name}.py must define SPEC, a MethodSpec named {name!r}")
    return spec


METHODS: dict[str, MethodSpec] = {name: _load(name) for name in PLUGINS}
METHOD_ORDER: tuple[str, ...] = tuple(METHODS)
METHOD_COLORS: dict[str, str] = {name: spec.color for name, spec in METHODS.items()}
METHOD_LABELS: dict[str, str] = {name: spec.label for name, spec in METHODS.items()}
# Methods outside the registry (a user's own) get a stable colour from their name, never one of the above.
_EXTRA_COLORS = ("#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d")

# init_lora_weights values of peft's that rewrite the base weights (W ← W − s·B₀·A₀, or a quantised W for LoftQ)
# but that no registered method is: a saved adapter of theirs is read as plain LoRA on its residual base.
_OTHER_REWRITING_PEFT_INITS = ("corda", "loftq")
# init_lora_weights values (prefixes) whose initialisation rewrote the base weights.
REWRITING_PEFT_INITS: tuple[str, ...] = (
    *(spec.peft_init for spec in METHODS.values() if spec.rewrites_base and spec.peft_init),
    *_OTHER_REWRITING_PEFT_INITS,
)
# The LoraConfig fields holding an initialisation's own settings: cleared with the recipe where factors are final.
PEFT_INIT_CONFIGS: tuple[str, ...] = tuple(
    spec.peft_init_config for spec in METHODS.values() if spec.peft_init_config
)
# ... of which these are deterministic functions of the base weights: peft's init re-run on the original base
# gives the residual the adapter was trained on.
REBUILDABLE_PEFT_INITS: tuple[str, ...] = tuple(
    spec.peft_init for spec in METHODS.values() if spec.rebuildable and spec.peft_init
)


# The reference shape of `hessian-lora methods`' parameter column: Qwen3-0.6B(-Base), the paper's model: 28 layers,
# hidden 1024, 16 query heads and 8 key/value heads of 128, MLP 3072; (out, in) of its seven projections.
REFERENCE_MODEL = "Qwen3-0.6B"
REFERENCE_LAYERS = 28
REFERENCE_SHAPES: dict[str, Shape] = {
    "q_proj": (2048, 1024),
    "k_proj": (1024, 1024),
    "v_proj": (1024, 1024),
    "o_proj": (1024, 2048),
    "gate_proj": (3072, 1024),
    "up_proj": (3072, 1024),
    "down_proj": (1024, 3072),
}


def check_method_rank(method: str, rank: object) -> None:
    """Refuse a rank ``method`` cannot be built with, before any model is loaded (the method's ``check_rank``,
    e.g. GraLoRA's rank a multiple of its block count). Called where a method and rank enter (``init``,
    ``eigen --method``, ``recommend --method``, the sweep YAML) and by the adapter factory. Other problems
    (unknown method, rank < 1) are left to the callers' own checks.

    Args:
        method: a method name (an unknown one is not this function's to refuse).
        rank: the rank as given (a non-integer is not this function's to refuse).

    Raises:
        UserError: the method cannot be built at this rank; the message names ranks it can.
    """
    spec = METHODS.get(method)
    if spec is None or isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        return
    spec.check_rank(rank)


def trainable_parameter_count(method: str, rank: int, shapes: list[Shape]) -> int:
    """Trainable parameters of ``method`` at ``rank`` over target matrices of the given (out, in) shapes.

    Args:
        method: a registered method.
        rank: the adapter's rank.
        shapes: (out, in) of every target matrix.

    Returns:
        The count the method's ``parameter_count`` gives (LoRA: r·(out + in) per matrix).
    """
    return METHODS[method].parameter_count(rank, shapes)


def reference_parameter_count(method: str, rank: int = 128) -> int:
    """``method``'s trainable parameters on the reference model (all seven projections of every layer)."""
    return trainable_parameter_count(method, rank, list(REFERENCE_SHAPES.values()) * REFERENCE_LAYERS)


def method_of_peft_config(peft_config: Mapping[str, Any]) -> str:
    """The method a saved ``adapter_config.json`` is: the one method whose ``recognises`` says so, else the
    default method when its own does (a LoRA config that names no other method).

    Args:
        peft_config: the config as read from the file.

    Returns:
        A registered method's name.

    Raises:
        UserError: no method reads this config, or two do (a registry fault, checked by the method tests).
    """
    named = [
        name for name, spec in METHODS.items() if name != DEFAULT_METHOD and spec.recognises(peft_config)
    ]
    if len(named) > 1:
        raise UserError(
            f"adapter config with peft_type {peft_config.get('peft_type')!r} and init_lora_weights "
            f"{peft_config.get('init_lora_weights')!r} reads as several methods ({', '.join(named)}): "
            "report this, or re-save the adapter with one of them."
        )
    if named:
        return named[0]
    if METHODS[DEFAULT_METHOD].recognises(peft_config):
        return DEFAULT_METHOD
    readable = sorted({spec.peft_type for spec in METHODS.values()})
    raise UserError(
        f"adapter config with peft_type {peft_config.get('peft_type')!r} names no method of this "
        f"toolkit: it reads peft adapters of type {', '.join(readable)}."
    )


def method_sort_key(method: str) -> tuple[int, str]:
    """Sort key that puts registry methods in display order and unknown ones after them, alphabetically."""
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def method_color(method: str) -> str:
    """The method's colour in every figure; methods outside the registry get a stable colour from their name."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return _EXTRA_COLORS[zlib.crc32(method.encode()) % len(_EXTRA_COLORS)]


def method_label(method: str) -> str:
    """The method's display name (``initab`` → ``Init[AB]``); unknown methods keep their name."""
    return METHOD_LABELS.get(method, method)
