"""The memory plan of a Hessian measurement: what the model, one batch's product and the Krylov vectors take,
where the Krylov vectors will live, and a refusal (one line, naming the setting to change) when it cannot fit.

Why: at the paper's scale the Krylov vectors, not the model, decide whether a run fits (80.7 M parameters: 323 MB
a vector; 100 vectors and their products: 65 GB), and a run that dies of memory after an hour of products tells
the user nothing. The plan is made before the first product.

The activation estimate of one double-backward product (float32, a decoder with LoRA on all seven projections)
is a fit to peak-RSS measurements of single products on random Llamas of 13 shapes on the CPU
(``bench/memory_plan.py``: hidden 256–512, 2–8 layers, intermediate 512–2048, vocabularies 2 k–32 k, 128–512
tokens a batch; every fit within 0.85–1.05 of the measurement):

    bytes ≈ 4 · (77·T·L·h + 17.4·T·L·i + 1.4·L·B·H·S² + 8.9·T·V)

with B sequences of S tokens (T = B·S), L layers of width h, MLP width i, H attention heads (the math SDPA
kernel keeps every score) and vocabulary V (the logits and their derivatives, about nine copies). The plan
adds a 25 % margin. It is an estimate from a formula, not a measurement: the rehearsal in ``bench/`` prints
both side by side. With the chunked LM head (:class:`hessian_lora.hessian.loss.ChunkedHeadLoss`, ``head_chunk`` tokens
a chunk) the vocabulary term is charged for one chunk instead of the batch's T tokens: only one chunk's logits
and their derivatives exist at a time.

Batched second backwards (``vmap``, ``directions_per_pass`` directions in one backward) share the batch's
forward and first-order graph but hold each direction's intermediates at once: the plan charges every direction
beyond the first ``VMAP_DIRECTION_SHARE`` = 0.5 of the activation estimate: on the CPU each extra direction
took 0.33 of a single product's peak (``bench/vmap_memory.py``, 2026-12-07: a random Llama of hidden 256 and 4
layers, 4 × 256 tokens, 8 directions); not yet measured on a GPU (``bench/gpu_check.sh`` prints the peak of a
vmap pass beside the loop's). ``batching="auto"`` is ``vmap`` on
CUDA when the batched pass and the Krylov vectors at the iteration cap fit together, else the loop; on the CPU
always the loop, where the batched backward lost (:mod:`hessian_lora.hessian.operator`). :func:`packing_tokens`
turns the same estimate around: the most token slots a packed batch may hold (:func:`hessian_lora.inputs.tasks.
pack_batches`).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import psutil
import torch
from torch import nn

from hessian_lora.core.bounds import (
    krylov_gib as check_krylov_gib,  # the one check, beside the torch-free settings
)
from hessian_lora.core.errors import UserError
from hessian_lora.hessian.storage import KrylovMemory
from hessian_lora.inputs.tasks import TokenBatch
from hessian_lora.settings import solvers

# Floats per unit of each term of the fit above (bench/memory_plan.py prints the fit and its residuals).
ACTIVATION_FLOATS = {
    "token_layer_hidden": 77.0,
    "token_layer_intermediate": 17.4,
    "attention_score": 1.4,
    "token_vocab": 8.9,
}
ACTIVATION_MARGIN = 1.25
# Parameter-sized work vectors a product and a Lanczos step hold besides the basis: v, H v, the remainder, the
# flat sum of the batches' products, the block's first-order gradients with their graph, a Ritz vector.
WORK_VECTORS = 8
# Share of what is left after activations and work vectors that the Krylov vectors may take by default; with
# graph reuse on, the kept first-order graphs take REUSE_SHARE of it (the plan's ``reuse_bytes``, which measure
# hands the operator), so the Krylov vectors get less, and the two together leave 30 % as slack. Before the
# graphs' share came from the plan, the operator took half the free memory on its own, on top of the Krylov
# budget and the activations: the replication's 64-example LoRA-GA probe grew into both and was OOM-killed. With
# a tenth as slack (0.4 + 0.5) a long sweep's probes ran with 1.5-2.0 GB of the 24 GB machine available, and one,
# MiLoRA's seed-2 probe after an hour of runs, was OOM-killed at 24.3 GB: a kept graph costs more than the
# census of its saved tensors once the heap is fragmented, so the graphs now get a smaller share.
KRYLOV_SHARE = 0.8
KRYLOV_SHARE_WITH_REUSE = 0.35
REUSE_SHARE = 0.35
# Share of the host's free memory the Krylov vectors may take when the device is an accelerator.
HOST_SHARE = 0.5
# Each direction of a batched (vmap) second backward beyond the first, as a share of one batch's activation
# estimate (0.33 measured on the CPU, module docstring; the margin is for devices not measured).
VMAP_DIRECTION_SHARE = 0.5
# Share of the memory left after the model and work vectors that a packed batch's batched pass may take by
# default (packing_tokens); the rest stays for the Krylov vectors and kept graphs.
PACKING_SHARE = 0.4
Batching = Literal["loop", "vmap"]
_GIB = 2**30


@dataclass(frozen=True)
class MemoryPlan:
    """What a block's measurement needs and where its Krylov vectors go (bytes; ``None``: unknown)."""

    device: str
    model_bytes: int
    block_parameters: int
    vector_bytes: int
    batches: int
    largest_batch: tuple[int, int]  # (sequences, tokens per sequence) of the largest batch
    activation_bytes: int | None
    free_bytes: int
    krylov_vectors: int  # at the iteration cap, kept products included
    krylov_bytes: int
    budget_bytes: float  # Krylov vectors on the device
    host_bytes: float  # Krylov vectors on the host (accelerators only)
    keep_products: bool
    budget_source: str  # "auto" or "--krylov-memory"
    reuse_bytes: float = 0.0  # kept first-order graphs (reuse="auto"), beside the Krylov vectors
    batching: Batching = "loop"  # how the second backwards of many directions run (choose_batching)
    batching_reason: str = ""
    directions_per_pass: int = 1  # directions of one batched backward (vmap), charged in activation_bytes
    head_chunk: int | None = None  # tokens a chunk of the chunked LM head (None: the plain head)

    @property
    def fits_on_device(self) -> bool:
        """True when every Krylov vector at the iteration cap fits the device budget."""
        return self.krylov_bytes <= self.budget_bytes

    def krylov_memory(self) -> KrylovMemory:
        """A fresh :class:`KrylovMemory` with this plan's budgets (one per solver run)."""
        return KrylovMemory.within(torch.device(self.device), self.budget_bytes, self.host_bytes)

    def vectors_within_budget(self) -> int:
        """How many block-sized vectors the device and host budgets hold together."""
        return int((self.budget_bytes + self.host_bytes) // max(self.vector_bytes, 1))

    def lines(self) -> list[str]:
        """The plan as the console prints it."""
        sequences, length = self.largest_batch
        activations = (
            f"{_gib(self.activation_bytes)} per batch (estimate; largest batch {sequences} × {length} tokens)"
            if self.activation_bytes is not None
            else "unknown (no model config)"
        )
        where = (
            f"all on {self.device}"
            if self.fits_on_device
            else f"{int(self.budget_bytes // self.vector_bytes)} on {self.device}"
            + (f", {int(self.host_bytes // self.vector_bytes)} on the host" if self.host_bytes else "")
            + ("; products dropped first when the basis needs their room" if self.keep_products else "")
        )
        head = (
            f"LM head in chunks of {self.head_chunk:,} tokens"
            if self.head_chunk is not None
            else "plain LM head (every logit of a batch)"
        )
        return [
            f"memory plan on {self.device} ({_gib(self.free_bytes)} free after the model):",
            f"  model {_gib(self.model_bytes)} | block {self.block_parameters:,} parameters, "
            f"{self.vector_bytes / 2**20:.1f} MiB a vector | activations {activations} | {self.batches} batches "
            f"streamed through each product | {head}",
            f"  batching: {self.batching} ({self.batching_reason})"
            if self.batching_reason
            else f"  batching: {self.batching}",
            f"  Krylov vectors: up to {self.krylov_vectors} ({_gib(self.krylov_bytes)}"
            f"{', basis and kept products' if self.keep_products else ''}); budget {_gib(self.budget_bytes)}"
            f"{f' + {_gib(self.host_bytes)} host' if self.host_bytes else ''} ({self.budget_source}): {where}",
        ]

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-able data (infinite budgets as None)."""
        data = asdict(self)
        data["largest_batch"] = list(self.largest_batch)
        for key in ("budget_bytes", "host_bytes"):
            data[key] = None if math.isinf(data[key]) else data[key]
        return data


def activation_bytes(
    model: nn.Module, sequences: int, length: int, *, head_chunk: int | None = None, directions: int = 1
) -> int | None:
    """The fitted estimate (module docstring) of one batch's double-backward product, or None without a config:
    the vocabulary term for at most ``head_chunk`` tokens (the chunked head), and ``directions`` > 1 directions
    of a batched second backward each charged ``VMAP_DIRECTION_SHARE`` more."""
    config = getattr(model, "config", None)
    needed = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "vocab_size")
    if config is None or not all(isinstance(getattr(config, key, None), int) for key in needed):
        return None
    h, layers, i = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    heads, vocab = config.num_attention_heads, config.vocab_size
    tokens = sequences * length
    floats = (
        ACTIVATION_FLOATS["token_layer_hidden"] * tokens * layers * h
        + ACTIVATION_FLOATS["token_layer_intermediate"] * tokens * layers * i
        + ACTIVATION_FLOATS["attention_score"] * layers * sequences * heads * length * length
        + ACTIVATION_FLOATS["token_vocab"]
        * (tokens if head_chunk is None else min(tokens, head_chunk))
        * vocab
    )
    return int(4 * floats * ACTIVATION_MARGIN * (1.0 + VMAP_DIRECTION_SHARE * (max(directions, 1) - 1)))


def choose_batching(
    device: torch.device,
    *,
    free_bytes: int,
    loop_bytes: int | None,
    batched_bytes: int | None,
    krylov_bytes: int = 0,
    directions: int,
) -> tuple[Batching, str]:
    """``vmap`` or ``loop`` for ``batching="auto"``, with the reason the plan prints.

    CUDA: ``vmap`` when a batched pass (``batched_bytes``, its ``directions`` included) and ``krylov_bytes``
    fit ``free_bytes`` together, else the loop (``loop_bytes``, one direction's pass, is what it needs). Other
    devices: the loop, measured faster on the CPU (the batched backward lost 1.7–2.1×)."""
    if device.type != "cuda":
        return "loop", f"the batched backward lost to the loop on the {device.type}"
    if directions <= 1:
        return "loop", "one direction a pass"
    if batched_bytes is None:
        return "loop", "no activation estimate for a batched pass (no model config)"
    if batched_bytes + krylov_bytes <= free_bytes:
        return "vmap", (
            f"{directions} directions a pass: {_gib(batched_bytes)} of activations with the Krylov "
            f"vectors' {_gib(krylov_bytes)} fit {_gib(free_bytes)}"
        )
    loop = f"; the loop needs {_gib(loop_bytes)}" if loop_bytes is not None else ""
    return "loop", (
        f"a batched pass of {directions} directions needs {_gib(batched_bytes)} beside the Krylov "
        f"vectors' {_gib(krylov_bytes)}, more than {_gib(free_bytes)}{loop}"
    )


def packing_tokens(
    model: nn.Module,
    length: int,
    *,
    free_bytes: int,
    head_chunk: int | None = None,
    directions: int = 1,
    share: float = PACKING_SHARE,
) -> int:
    """The most token slots (sequences × ``length``) a packed batch may hold so that its pass (``directions``
    of them batched, the chunked head at ``head_chunk``) takes at most ``share`` of ``free_bytes``; at least
    one sequence. Raises a :class:`UserError` without a model config (give the budget as a number then)."""
    one = activation_bytes(model, 1, length, head_chunk=head_chunk, directions=directions)
    two = activation_bytes(model, 2, length, head_chunk=head_chunk, directions=directions)
    if one is None or two is None:
        raise UserError(
            "the packing token budget 'auto' needs a model config to estimate activations: give "
            "--pack-tokens a number of tokens instead."
        )
    per_sequence = max(two - one, 1)  # the estimate is affine in the number of sequences of one length
    fixed = one - per_sequence  # the chunked head's one chunk of logits
    sequences = max(1, int((share * free_bytes - fixed) // per_sequence))
    return sequences * length


def release_freed_memory(device: torch.device | None = None) -> None:
    """Hand memory this process has freed back to the system, so that free-memory readings are true.

    Why: glibc keeps freed heap memory in the process. After a 64-example λ probe of SmolLM2-135M with LoRA r=64
    on the CPU, RSS stayed at 15.6 GiB with the tensors gone. The host then reported 6.7 GiB available instead
    of 21.7 GiB, so the sweep's next probes were refused by their memory plan, and a later run was killed by the
    kernel. ``malloc_trim(0)`` brought RSS back to 0.46 GiB (measured 2026-12-02). On CUDA the caching allocator's
    unused blocks are released the same way (``empty_cache``).
    """
    gc.collect()
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now (CUDA: the driver's count; CPU: the host's available memory), read after
    :func:`release_freed_memory`."""
    release_freed_memory(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)

    return int(psutil.virtual_memory().available)


def total_memory(device: torch.device) -> int:
    """Bytes of memory ``device`` has in all (CUDA: the card's; CPU: the host's)."""
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        return int(total)
    return int(psutil.virtual_memory().total)


def plan_memory(
    model: nn.Module,
    batches: Sequence[TokenBatch],
    *,
    block_parameters: int,
    dtype: torch.dtype,
    device: torch.device,
    max_iter: int,
    solver: str = solvers.DEFAULT_SOLVER,
    krylov_gib: float | None = None,
    reuse: bool | str = "auto",
    free_bytes: int | None = None,
    host_free_bytes: int | None = None,
    head_chunk: int | None = None,
    batching: str = "auto",
    directions_per_pass: int = 1,
) -> MemoryPlan:
    """The plan for one block; raises a :class:`UserError` naming the setting to change when it cannot work.

    ``krylov_gib`` (``--krylov-memory``) fixes the Krylov vectors' room on the device (accelerators: and as much
    again of pinned host memory at most ``HOST_SHARE`` of the host's free memory); None sizes it from the free
    memory. ``free_bytes`` / ``host_free_bytes`` override the measured free memory (tests). ``head_chunk``: the
    chunked LM head's chunk (None: the plain head). ``solver``: whose kept vectors are charged (the solver
    table's ``keeps``: ``max_iter`` steps of them). ``batching``: ``"auto"`` chooses (:func:`choose_batching`)
    for ``directions_per_pass`` directions a pass; a vmap pass is charged its directions.
    """
    device = torch.device(device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    vector = block_parameters * itemsize
    model_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    shapes = sorted({(int(b.input_ids.shape[0]), int(b.input_ids.shape[1])) for b in batches})
    estimates = {shape: activation_bytes(model, *shape, head_chunk=head_chunk) for shape in shapes}
    largest = (
        max(shapes, key=lambda shape: (estimates[shape] or 0, shape[0] * shape[1])) if shapes else (0, 0)
    )
    activations = estimates.get(largest)
    free = int(free_bytes if free_bytes is not None else free_memory(device))
    host_free = int(
        host_free_bytes
        if host_free_bytes is not None
        else (free_memory(torch.device("cpu")) if device.type != "cpu" else 0)
    )
    # What the solver keeps per iteration, as the solver table says (Lanczos: its basis and the products).
    spec = solvers.get(solver)
    keep_products = spec.keeps == "basis_and_products"
    krylov_vectors = max_iter * spec.vectors_per_step
    work = WORK_VECTORS * vector
    batched = (
        activation_bytes(model, *largest, head_chunk=head_chunk, directions=directions_per_pass)
        if shapes
        else None
    )
    if batching == "auto":
        chosen, reason = choose_batching(
            device,
            free_bytes=free - work,
            loop_bytes=activations,
            batched_bytes=batched,
            krylov_bytes=krylov_vectors * vector,
            directions=directions_per_pass,
        )
    elif batching in ("loop", "vmap"):
        chosen, reason = batching, "as asked"  # type: ignore[assignment]  # checked just above
    else:
        raise UserError(f"unknown batching {batching!r}: use auto, loop, vmap.")
    if chosen == "vmap" and directions_per_pass > 1:
        activations = batched
    left = free - work - (activations or 0)
    if left <= 0:
        what = (
            f"one product needs about {_gib(activations)} of activations (largest batch {largest[0]} × "
            f"{largest[1]} tokens) and {_gib(work)} of work vectors"
            if activations is not None
            else f"the work vectors alone need {_gib(work)}"
        )
        raise UserError(
            f"memory plan: {what} on {device}, but only {_gib(free)} is free: lower --batch-size or "
            "--max-length, measure smaller blocks (--blocks per-module), or use a device with more "
            "memory."
        )
    if krylov_gib is not None:
        gib = check_krylov_gib(krylov_gib)
        total = total_memory(device)
        if gib * _GIB > total:  # a typo (1e12 for 12) would otherwise pass silently, clamped to what is free
            raise UserError(
                f"--krylov-memory {gib:g} GiB is more than all of {device}'s memory ({_gib(total)}): "
                f"give at most what is free ({_gib(left)}), or leave it out to size it from that."
            )
        budget = min(gib * _GIB, float(left))
        host = min(gib * _GIB, HOST_SHARE * host_free) if device.type != "cpu" else 0.0
        source = "--krylov-memory"
    else:
        share = KRYLOV_SHARE_WITH_REUSE if reuse is not False and len(batches) > 0 else KRYLOV_SHARE
        budget = share * left
        host = HOST_SHARE * host_free if device.type != "cpu" else 0.0
        source = "auto"
    needed = min(3, max_iter) * vector  # a Lanczos basis too small to hold three vectors certifies nothing
    if budget + host < needed:
        raise UserError(
            f"memory plan: the Krylov vectors of this block ({vector / 2**20:.1f} MiB each) get "
            f"{_gib(budget + host)} ({source}), less than the {_gib(needed)} of three vectors: raise "
            "--krylov-memory (or free memory on the device), or measure smaller blocks "
            "(--blocks per-module)."
        )
    return MemoryPlan(
        device=str(device),
        model_bytes=model_bytes,
        block_parameters=block_parameters,
        vector_bytes=vector,
        batches=len(batches),
        largest_batch=largest,
        activation_bytes=activations,
        free_bytes=free,
        krylov_vectors=krylov_vectors,
        krylov_bytes=krylov_vectors * vector,
        budget_bytes=budget,
        host_bytes=host,
        keep_products=keep_products,
        budget_source=source,
        reuse_bytes=REUSE_SHARE * left if reuse is not False and len(batches) > 0 else 0.0,
        batching=chosen,
        batching_reason=reason,
        directions_per_pass=directions_per_pass,
        head_chunk=head_chunk,
    )


def _gib(value: float | int | None) -> str:
    if value is None:
        return "?"
    if math.isinf(value):
        return "no limit"
    return f"{value / _GIB:.2f} GiB"
