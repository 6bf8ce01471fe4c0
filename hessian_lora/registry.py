"""The method registry: what each adapter method is, its display label and colour, and the display order.

Torch-free on purpose: analysis, tables, plots and the CLI's listings read it without importing torch or peft.
``hessian_lora.adapters`` builds the adapters these specs describe.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

from hessian_lora.errors import UserError


@dataclass(frozen=True)
class MethodSpec:
    """What a method is and what it promises.

    ``rewrites_base``: W ← W − s·B₀·A₀ at initialisation (build each run from a fresh base).
    ``preserves_function``: the initial adapted model computes the base model's function.
    ``needs_data``: initialisation reads training batches (LoRA-GA).
    ``peft_native``: peft builds it; otherwise it is initialised here on a peft LoRA model.
    ``tuner``: the peft tuner that holds the adapter (``lora``, ``gralora``, ``randlora``).
    ``optimizer``: ``adamw`` (AdamW over the trainable parameters, LoRA+ groups) or ``loft``.
    """

    name: str
    label: str
    color: str
    summary: str
    rewrites_base: bool
    preserves_function: bool
    needs_data: bool = False
    peft_native: bool = True
    tuner: str = "lora"
    optimizer: str = "adamw"


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
        MethodSpec("gralora", "GraLoRA", "#aec7e8",
                   "GraLoRA: W split into k x k sub-blocks, each with its own pair of rank r/k (k = 2 for r <= 32, else 4)",
                   rewrites_base=False, preserves_function=True, tuner="gralora"),
        MethodSpec("randlora", "RandLoRA", "#98df8a",
                   "RandLoRA: fixed random bases with trainable diagonal scalings; its r matches LoRA's parameters",
                   rewrites_base=False, preserves_function=True, tuner="randlora"),
        MethodSpec("loft", "LoFT", "#ff9896",
                   "LoFT: LoRA init, trained by the LoFT optimizer (full-weight AdamW view, alternating A/B)",
                   rewrites_base=False, preserves_function=True, optimizer="loft"),
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


# The reference shape of `hessian-lora methods`' parameter column: Qwen3-0.6B(-Base), the paper's model: 28 layers,
# hidden 1024, 16 query heads and 8 key/value heads of 128, MLP 3072; (out, in) of its seven projections.
REFERENCE_MODEL = "Qwen3-0.6B"
REFERENCE_LAYERS = 28
REFERENCE_SHAPES: dict[str, tuple[int, int]] = {
    "q_proj": (2048, 1024), "k_proj": (1024, 1024), "v_proj": (1024, 1024), "o_proj": (1024, 2048),
    "gate_proj": (3072, 1024), "up_proj": (3072, 1024), "down_proj": (1024, 3072),
}


def randlora_module_parameters(r: int, shape: tuple[int, int]) -> int:
    """RandLoRA's trainable parameters on one (out, in) matrix with basis rank ``r`` (peft 0.21's layout):
    ``n = ceil(min(out, in) / r)`` bases, lambda r x n and gamma n x min(out, in)."""
    smallest = min(shape)
    bases = -(-smallest // r)
    return r * bases + bases * smallest


def randlora_rank(rank: int, shapes: list[tuple[int, int]]) -> int:
    """RandLoRA's basis rank whose trainable-parameter count over ``shapes`` is closest to LoRA's at ``rank``.

    The authors' rule: count the parameters for every candidate r (1 .. the largest min(out, in)) and take the
    closest match; a tie goes to the larger r (fewer bases, less compute).
    """
    if not shapes:
        raise ValueError("no target shapes")
    target = rank * sum(out + inp for out, inp in shapes)
    candidates = range(1, max(min(shape) for shape in shapes) + 1)
    return min(candidates, key=lambda r: (abs(sum(randlora_module_parameters(r, s) for s in shapes) - target), -r))


def gralora_k(rank: int) -> int:
    """GraLoRA's number of sub-blocks per side, as the authors set it: 2 for r <= 32, 4 for r >= 64 (and between)."""
    return 2 if rank <= 32 else 4


def check_method_rank(method: str, rank: object) -> None:
    """Refuse a rank ``method`` cannot be built with, before any model is loaded: GraLoRA splits the rank over
    ``gralora_k`` blocks, so the rank must be a multiple of it (peft raises a bare ValueError otherwise). Called
    where a method and rank enter (``init``, ``eigen --method``, ``recommend --method``, the sweep YAML) and by
    the adapter factory. Other problems (unknown method, rank < 1) are left to the callers' own checks."""
    if method != "gralora" or isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        return
    k = gralora_k(rank)
    if rank % k:
        below, above = rank - rank % k, rank - rank % k + k
        raise UserError(f"gralora splits the rank over k = {k} blocks (k = 2 up to rank 32, else 4), so the rank "
                        f"must be a multiple of {k}, got {rank}: use rank {below or above} or {above}.")


def trainable_parameter_count(method: str, rank: int, shapes: list[tuple[int, int]]) -> int:
    """Trainable parameters of ``method`` at ``rank`` over target matrices of the given (out, in) shapes.

    LoRA and its re-initialisations, rsLoRA, LoRA+, LoFT and GraLoRA (k blocks of r x in/k and out/k x r): r(out + in)
    each; DoRA adds a magnitude per output row; RandLoRA uses the basis rank :func:`randlora_rank` picks.
    """
    if method == "randlora":
        r = randlora_rank(rank, shapes)
        return sum(randlora_module_parameters(r, shape) for shape in shapes)
    count = sum(rank * (out + inp) for out, inp in shapes)
    if method == "dora":
        count += sum(out for out, _ in shapes)
    return count


def reference_parameter_count(method: str, rank: int = 128) -> int:
    """``method``'s trainable parameters on the reference model (all seven projections of every layer)."""
    return trainable_parameter_count(method, rank, list(REFERENCE_SHAPES.values()) * REFERENCE_LAYERS)


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


# The metrics a run records and whether higher is better: analysis, the adaptive search and checkpoint retention
# all rank runs by these (torch- and scipy-free, so a sweep worker reads them without the analysis stack).
Metric = Literal["accuracy", "eval_loss", "train_loss", "pass_at_1", "gsm8k_acc", "math_acc", "mbpp_pass_at_1",
                 "humaneval_pass_at_1"]
HIGHER_IS_BETTER: dict[str, bool] = {"accuracy": True, "eval_loss": False, "train_loss": False,
                                     # evaluation sets (a sweep's eval_task / HumanEval): fractions solved
                                     "pass_at_1": True, "gsm8k_acc": True, "math_acc": True, "mbpp_pass_at_1": True,
                                     "humaneval_pass_at_1": True}
# Metrics that are fractions solved: a diverged run without one scores 0 (it solves nothing).
SCORE_METRICS = frozenset(name for name, higher in HIGHER_IS_BETTER.items() if higher)
