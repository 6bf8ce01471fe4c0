"""Training memory on one device, estimated from a formula: no torch, no weights, no download.

An estimate, not a measurement: it counts the big tensors a LoRA training step keeps and leaves out what
depends on kernels and the allocator (fragmentation, workspace, temporaries inside one op), covered by a fixed
allowance. Use it to choose micro-batch, checkpointing and base dtype before renting a device, then check the
first step's peak (``torch.cuda.max_memory_allocated``).

With P adapter parameters, N base parameters, T = micro_batch_size × max_length tokens per micro-batch, L layers,
hidden h, q = heads × head_dim, kv = kv_heads × head_dim, intermediate i, vocabulary V, rank r and ``a`` the bytes
of one activation (2 under bf16 autocast or a bf16 base, else 4)::

    base weights      N · (2 for bf16, 4 for fp32)
    adapter           16 · P        (fp32 weights 4 + gradients 4 + AdamW exp_avg 4 + exp_avg_sq 4)
    one layer, /token a · (6h + 3q + 3kv + 4i)              RMSNorm in/out, q/k/v/o in/out and rotary copies,
                      + c · Σ in_t + 4 · 7r                 SwiGLU gate/up/act/product; LoRA's saved inputs
                      [+ heads · max_length · (a + 4)]      eager attention's probabilities (softmax in fp32)
                      c = 0 (fp32 base, no autocast), 2 (bf16 autocast), 4 (bf16 base, fp32 compute): peft casts
                      an adapted layer's input to the adapter's fp32 and keeps that copy for lora_A's gradient
    activations       T · L · layer               without checkpointing
                      T · (L · a · h + layer)     with checkpointing (each layer's input, one layer recomputed)
    logits            T · V · (2a + 8)            at the loss's backward: the fp32 log-softmax kept by the
                                                  cross-entropy, its gradient, and that gradient in the
                                                  logits' dtype and shape (twice: the cast and the slice)
    allowance         1 GiB                       CUDA context, allocator slack
    training peak     the sum of the above
    build peak        4 · (N + P) + allowance     the adapter is built on the fp32 base before a bf16 cast
                                                  (hessian_lora.training.precision), so the fp32 base is on the device
                                                  once

The Hessian measurement (fp32 model, Krylov vectors, double-backward activations) is a separate plan.

Checked against a count, not a device: on a 2-layer random Llama (h 256, q 256, kv 128, i 768, V 2000, LoRA r 8 on
all seven projections, 2 × 256 tokens, SDPA), the distinct tensors autograd saves in one forward (a
``saved_tensors_hooks`` count, the log-softmax subtracted) were 19.8 KB per token per layer with an fp32 base and
17.7 KB with a bf16 base (the RMSNorms compute in fp32, peft's fp32 copies of the adapted inputs); the per-layer
term above gives 23.3 KB and 21.0 KB (18-19 % above), and eager attention's extra 5.1 KB against 8.2 KB
(`bench/train_memory.py --saved-count`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GIB = 1 << 30
ALLOWANCE_BYTES = GIB
# The seven projections of the paper (hessian_lora.training.adapters.DEFAULT_TARGETS; repeated so this module needs no
# torch).
PAPER_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEVICE_SIZES_GB: tuple[int, ...] = (24, 48, 80)


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-style decoder (Llama, Qwen3, Gemma-3: q/k/v/o attention and a SwiGLU MLP).

    ``norms_per_layer``: RMSNorm weight vectors of width ``hidden`` per layer (Llama and Qwen3: 2; Gemma-3: 4);
    ``head_norms``: per-head q/k norms (Qwen3 and Gemma-3: 2 of width head_dim).
    """

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    norms_per_layer: int = 2
    head_norms: int = 0

    def projections(self) -> dict[str, tuple[int, int]]:
        """(out, in) of each projection of one layer."""
        h, q, kv, i = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        return {
            "q_proj": (q, h),
            "k_proj": (kv, h),
            "v_proj": (kv, h),
            "o_proj": (h, q),
            "gate_proj": (i, h),
            "up_proj": (i, h),
            "down_proj": (h, i),
        }

    @property
    def parameters(self) -> int:
        """Base parameters, tied embeddings counted once."""
        per_layer = sum(out * inp for out, inp in self.projections().values())
        per_layer += self.norms_per_layer * self.hidden + self.head_norms * self.head_dim
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * per_layer + embeddings + self.hidden  # + the final norm

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any], *, name: str) -> ModelShape:
        """From a transformers ``config.json`` (Gemma-3's text settings may sit under ``text_config``)."""
        data = dict(config.get("text_config") or config)
        heads = int(data["num_attention_heads"])
        hidden = int(data["hidden_size"])
        model_type = str(data.get("model_type", ""))
        return cls(
            name=name,
            hidden=hidden,
            layers=int(data["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(data.get("num_key_value_heads") or heads),
            head_dim=int(data.get("head_dim") or hidden // heads),
            intermediate=int(data["intermediate_size"]),
            vocab=int(data["vocab_size"]),
            tied_embeddings=bool(data.get("tie_word_embeddings", True)),
            norms_per_layer=4 if model_type.startswith("gemma") else 2,
            head_norms=2 if model_type.startswith(("qwen3", "gemma3")) else 0,
        )


# The paper's three models, from their config.json files on the hub (so no download is needed).
PAPER_MODELS: dict[str, ModelShape] = {
    "Qwen/Qwen3-0.6B-Base": ModelShape(
        "Qwen3-0.6B-Base",
        hidden=1024,
        layers=28,
        heads=16,
        kv_heads=8,
        head_dim=128,
        intermediate=3072,
        vocab=151_936,
        tied_embeddings=True,
        head_norms=2,
    ),
    "google/gemma-3-1b-pt": ModelShape(
        "Gemma-3-1B",
        hidden=1152,
        layers=26,
        heads=4,
        kv_heads=1,
        head_dim=256,
        intermediate=6912,
        vocab=262_144,
        tied_embeddings=True,
        norms_per_layer=4,
        head_norms=2,
    ),
    "meta-llama/Llama-2-7b-hf": ModelShape(
        "Llama-2-7B",
        hidden=4096,
        layers=32,
        heads=32,
        kv_heads=32,
        head_dim=128,
        intermediate=11_008,
        vocab=32_000,
        tied_embeddings=False,
    ),
}


def model_shape(spec: str) -> ModelShape | None:
    """The shape of a model spec without loading it: one of :data:`PAPER_MODELS`, a tiny-llama spec, or a local
    model directory's ``config.json``; None for anything else (a hub id not listed here)."""
    if spec in PAPER_MODELS:
        return PAPER_MODELS[spec]
    if spec == "tiny-llama" or spec.startswith("tiny-llama:"):
        options = {"hidden_size": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate_size": 128}
        if ":" in spec:
            for item in spec.split(":", 1)[1].split(","):
                key, _, value = item.partition("=")
                if key.strip() in options and value.strip().isdigit():
                    options[key.strip()] = int(value)
        return ModelShape(
            spec,
            hidden=options["hidden_size"],
            layers=options["layers"],
            heads=options["heads"],
            kv_heads=options["kv_heads"],
            head_dim=options["hidden_size"] // options["heads"],
            intermediate=options["intermediate_size"],
            vocab=259,
            tied_embeddings=True,
        )
    config = Path(spec) / "config.json"
    if config.is_file():
        try:
            return ModelShape.from_hf_config(json.loads(config.read_text(encoding="utf-8")), name=spec)
        except (ValueError, KeyError, TypeError):
            return None
    return None


def adapter_parameters(shape: ModelShape, rank: int, targets: Iterable[str] = PAPER_TARGETS) -> int:
    """LoRA parameters: r · (in + out) per adapted projection per layer (DoRA adds ``out`` per projection)."""
    projections = shape.projections()
    return shape.layers * sum(rank * sum(projections[t]) for t in targets if t in projections)


@dataclass(frozen=True)
class TrainingMemory:
    """Estimated bytes on the training device (see the module's formula); ``peak`` is the larger of the two."""

    base_weights: int
    adapter: int  # weights, gradients and AdamW states, fp32
    activations: int
    logits: int
    allowance: int
    build_peak: int

    @property
    def training_peak(self) -> int:
        """Bytes at the peak of a training step."""
        return self.base_weights + self.adapter + self.activations + self.logits + self.allowance

    @property
    def peak(self) -> int:
        """Bytes at the larger of the training and the build peaks."""
        return max(self.training_peak, self.build_peak)

    def fits(self, device_gb: float) -> bool:
        """Whether the peak fits a device of ``device_gb`` GB (10⁹ bytes, as devices are sold; 80 GB ≈ 74.5 GiB)."""
        return self.peak <= device_gb * 1e9

    def as_dict(self) -> dict[str, int]:
        """The estimate's parts and peaks in bytes."""
        return {**asdict(self), "training_peak": self.training_peak, "peak": self.peak}


def training_memory(
    shape: ModelShape,
    *,
    rank: int,
    micro_batch_size: int,
    max_length: int,
    targets: Sequence[str] = PAPER_TARGETS,
    base_dtype: str = "fp32",
    autocast_bf16: bool = False,
    gradient_checkpointing: bool = False,
    attention: str = "sdpa",
) -> TrainingMemory:
    """The formula of this module's docstring for one configuration (``autocast_bf16``: ``precision: bf16``)."""
    if base_dtype not in ("fp32", "bf16"):
        raise ValueError(f"base_dtype must be fp32 or bf16, got {base_dtype!r}")
    n_base = shape.parameters
    n_adapter = adapter_parameters(shape, rank, targets)
    low = base_dtype == "bf16" or autocast_bf16
    a = 2 if low else 4
    c = 2 if autocast_bf16 else (4 if base_dtype == "bf16" else 0)
    h, i = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    projections = shape.projections()
    adapted = [t for t in targets if t in projections]
    per_layer = a * (6 * h + 3 * q + 3 * kv + 4 * i) + c * sum(projections[t][1] for t in adapted)
    per_layer += 4 * len(adapted) * rank
    if attention == "eager":
        per_layer += shape.heads * max_length * (a + 4)
    tokens = micro_batch_size * max_length
    if gradient_checkpointing:
        activations = tokens * (shape.layers * a * h + per_layer)
    else:
        activations = tokens * shape.layers * per_layer
    return TrainingMemory(
        base_weights=n_base * (2 if base_dtype == "bf16" else 4),
        adapter=16 * n_adapter,
        activations=activations,
        logits=tokens * shape.vocab * (2 * a + 8),
        allowance=ALLOWANCE_BYTES,
        build_peak=4 * (n_base + n_adapter) + ALLOWANCE_BYTES,
    )


def sweep_training_memory(config: Any) -> TrainingMemory | None:
    """:func:`training_memory` for a :class:`~hessian_lora.settings.sweep.SweepConfig` at its largest rank and
    micro-batch (None when :func:`model_shape` does not know its model). Read by attribute: no torch import."""
    shape = model_shape(config.model)
    if shape is None:
        return None
    train = config.train
    micro = train.micro_batch_size or max(config.batch_sizes)
    return training_memory(
        shape,
        rank=max(config.ranks),
        micro_batch_size=min(micro, max(config.batch_sizes)),
        max_length=train.max_length,
        targets=config.adapter.targets,
        base_dtype=config.base_dtype,
        autocast_bf16=train.precision == "bf16",
        gradient_checkpointing=train.gradient_checkpointing,
        attention=config.attention,
    )


def memory_table(
    models: Sequence[str] = tuple(PAPER_MODELS),
    *,
    rank: int = 128,
    micro_batch_sizes: Sequence[int] = (1, 4),
    max_length: int = 512,
    devices_gb: Sequence[int] = DEVICE_SIZES_GB,
) -> str:
    """A Markdown table: estimated training peak (GB) of each model, bf16 base under bf16 autocast and SDPA,
    per micro-batch with and without checkpointing, and which device sizes it fits."""
    head = [
        "model",
        "adapter params",
        "micro-batch",
        "checkpointing",
        "base",
        "adapter+Adam",
        "activations",
        "logits",
        "training peak",
        "build peak",
        *(f"{gb} GB" for gb in devices_gb),
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for spec in models:
        shape = PAPER_MODELS[spec]
        for micro in micro_batch_sizes:
            for checkpointing in (False, True):
                m = training_memory(
                    shape,
                    rank=rank,
                    micro_batch_size=micro,
                    max_length=max_length,
                    base_dtype="bf16",
                    autocast_bf16=True,
                    gradient_checkpointing=checkpointing,
                )
                cells = [
                    shape.name,
                    f"{adapter_parameters(shape, rank) / 1e6:.1f} M",
                    str(micro),
                    "yes" if checkpointing else "no",
                    *(
                        _gb(x)
                        for x in (
                            m.base_weights,
                            m.adapter,
                            m.activations,
                            m.logits,
                            m.training_peak,
                            m.build_peak,
                        )
                    ),
                    *("fits" if m.fits(gb) else "no" for gb in devices_gb),
                ]
                rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _gb(value: int) -> str:
    return f"{value / 1e9:.1f}" if value >= 1e8 else f"{value / 1e9:.2f}"


def _main() -> None:  # python -m hessian_lora.training.memory: the README's table
    print(memory_table())


if __name__ == "__main__":
    _main()
