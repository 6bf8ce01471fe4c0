"""The method registry: what each adapter method is, its display label and colour, and the display order.

Torch-free on purpose: analysis, tables, plots and the CLI's listings read it without importing torch or peft.
``hessian_lora.adapters`` builds the adapters these specs describe.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class MethodSpec:
    """What a method is and what it promises.

    ``rewrites_base``: W ← W − s·B₀·A₀ at initialisation (build each run from a fresh base).
    ``preserves_function``: the initial adapted model computes the base model's function.
    ``needs_data``: initialisation reads training batches (LoRA-GA).
    ``peft_native``: peft builds it; otherwise it is initialised here on a peft LoRA model.
    """

    name: str
    label: str
    color: str
    summary: str
    rewrites_base: bool
    preserves_function: bool
    needs_data: bool = False
    peft_native: bool = True


# Registry order is display order: every table, legend and listing follows it. Colours: tab10, colour-blind aware.
METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("lora", "LoRA", "#1f77b4", "vanilla LoRA: A Kaiming-uniform, B = 0",
                   rewrites_base=False, preserves_function=True),
        MethodSpec("pissa", "PiSSA", "#d62728", "PiSSA: A, B from the top-r singular triplets of W; base <- W - s*B*A",
                   rewrites_base=True, preserves_function=True),
        MethodSpec("milora", "MiLoRA", "#2ca02c",
                   "MiLoRA: A, B from the bottom-r singular triplets of W; base <- W - s*B*A",
                   rewrites_base=True, preserves_function=True, peft_native=False),
        MethodSpec("initab", "Init[AB]", "#ff7f0e", "Init[AB]: A, B both uniform(+-1/sqrt(in)); base <- W - s*B*A",
                   rewrites_base=True, preserves_function=True, peft_native=False),
        MethodSpec("dora", "DoRA", "#9467bd", "DoRA: trainable magnitude times the normalised direction W + s*B*A",
                   rewrites_base=False, preserves_function=True),
        MethodSpec("olora", "OLoRA", "#8c564b",
                   "OLoRA: B, A = first r columns/rows of the QR factors of W; base <- W - s*B*A",
                   rewrites_base=True, preserves_function=True),
        MethodSpec("loraga", "LoRA-GA", "#e377c2",
                   "LoRA-GA: A, B from the SVD of the full-weight gradient on a few batches",
                   rewrites_base=True, preserves_function=True, needs_data=True),
        MethodSpec("rslora", "rsLoRA", "#17becf", "rsLoRA: LoRA with scale alpha/sqrt(r)",
                   rewrites_base=False, preserves_function=True),
        MethodSpec("loraplus", "LoRA+", "#bcbd22", "LoRA+: LoRA whose B learns loraplus_ratio times faster than A",
                   rewrites_base=False, preserves_function=True),
    )
}
METHOD_ORDER: tuple[str, ...] = tuple(METHODS)
METHOD_COLORS: dict[str, str] = {name: spec.color for name, spec in METHODS.items()}
METHOD_LABELS: dict[str, str] = {name: spec.label for name, spec in METHODS.items()}
# Methods outside the registry (a user's own) get a stable colour from their name, never one of the above.
_EXTRA_COLORS = ("#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d")


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
