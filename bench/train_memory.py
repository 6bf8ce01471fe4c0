"""Training memory: the estimate of ``hessian_lora.training.memory`` against one real training step (CUDA peak).

Random weights with each paper model's shapes (built from its sizes, no download), LoRA r = 128 on all seven
projections built on the fp32 base, the base cast to bf16 (``base_dtype: bf16``), then one optimizer step of one
micro-batch of ``--micro`` × ``--length`` random tokens under bf16 autocast (``precision: bf16``) with and
without gradient checkpointing. Prints, per case, ``torch.cuda.max_memory_allocated`` for the build and for the
step, next to the estimate without its 1 GiB allowance (the CUDA context and allocator slack are not in that
counter). Not a test: it needs a CUDA device with room for Llama-2-7B's fp32 build (~28 GB; an H200 holds all).

    .venv/bin/python bench/train_memory.py                            # all three models, micro-batch 4 x 512
    .venv/bin/python bench/train_memory.py --models Qwen/Qwen3-0.6B-Base --micro 1
    .venv/bin/python bench/train_memory.py --device cpu --layers 1     # smoke run: no peak on CPU
    .venv/bin/python bench/train_memory.py --saved-count                # CPU: the per-layer term vs autograd

``--saved-count`` is the check quoted in ``hessian_lora.training.memory``: on a 2-layer random Llama it sums the
distinct tensors autograd saves in one forward (``torch.autograd.graph.saved_tensors_hooks``; parameters and the
log-softmax left out) and divides by tokens and layers, next to the formula's per-layer term.
"""

from __future__ import annotations

import argparse
import gc
import time
import warnings

import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, Qwen3Config

from hessian_lora.inputs.tasks import TokenBatch
from hessian_lora.training.adapters import AdapterConfig, build_adapter, make_optimizer
from hessian_lora.training.memory import ALLOWANCE_BYTES, PAPER_MODELS, ModelShape, training_memory
from hessian_lora.training.precision import cast_base_weights
from hessian_lora.training.train import _checkpointing, accumulate_gradient

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def hf_config(spec: str, shape: ModelShape):
    common = dict(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        tie_word_embeddings=shape.tied_embeddings,
        attn_implementation="sdpa",
    )
    if spec.startswith("Qwen/"):
        return Qwen3Config(**common)
    if spec.startswith("google/gemma-3"):
        return Gemma3TextConfig(**common)
    return LlamaConfig(**common)


def peak() -> int:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def one_case(
    spec: str, shape: ModelShape, device: torch.device, micro: int, length: int, checkpointing: bool
) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config(spec, shape), dtype=torch.float32)
    adapter = AdapterConfig("lora", rank=128, targets=TARGETS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = build_adapter(model, adapter)
    build = peak()
    cast_base_weights(peft_model, "bf16")
    optimizer = make_optimizer(peft_model, adapter, 1e-4)
    ids = torch.randint(0, shape.vocab, (micro, length), device=device)
    labels = ids.clone()
    labels[:, : length // 4] = -100  # a prompt part, as in training
    batch = TokenBatch(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    switch = _checkpointing(peft_model) if checkpointing else None
    peft_model.train()
    start = time.perf_counter()
    accumulate_gradient(peft_model, [batch], device, "bf16" if device.type == "cuda" else "fp32")
    optimizer.step()
    seconds = time.perf_counter() - start
    step = peak()
    if switch is not None:
        switch.close()
    estimate = training_memory(
        shape,
        rank=128,
        micro_batch_size=micro,
        max_length=length,
        base_dtype="bf16",
        autocast_bf16=device.type == "cuda",
        gradient_checkpointing=checkpointing,
    )
    print(
        f"{shape.name:16s} layers {shape.layers:2d} micro {micro} x {length} checkpointing {checkpointing!s:5s}  "
        f"build {build / 1e9:6.2f} GB (est. {(estimate.build_peak - ALLOWANCE_BYTES) / 1e9:6.2f})  "
        f"step {step / 1e9:6.2f} GB (est. {(estimate.training_peak - ALLOWANCE_BYTES) / 1e9:6.2f})  "
        f"{seconds:.1f} s",
        flush=True,
    )
    del peft_model, model, optimizer, batch
    gc.collect()


def saved_count(base_dtype: str, attention: str) -> None:
    from transformers import LlamaForCausalLM

    h, layers, heads, kv_heads, head_dim, inter, vocab, rank, micro, length = (
        256,
        2,
        4,
        2,
        64,
        768,
        2000,
        8,
        2,
        256,
    )
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=h,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        tie_word_embeddings=True,
        attn_implementation=attention,
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_adapter(LlamaForCausalLM(config), AdapterConfig("lora", rank=rank, targets=TARGETS))
    cast_base_weights(model, base_dtype)
    model.train()
    ids = torch.randint(0, vocab, (micro, length))
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model(input_ids=ids).logits
        torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), ids[:, 1:].reshape(-1))
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = sum(size for pointer, size in storages.items() if pointer not in parameters)
    saved -= (
        micro * (length - 1) * vocab * 4
    )  # the fp32 log-softmax: the formula's logits term, not a layer's
    shape = ModelShape(
        "count",
        hidden=h,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=inter,
        vocab=vocab,
        tied_embeddings=True,
    )
    estimate = training_memory(
        shape, rank=rank, micro_batch_size=1, max_length=1, base_dtype=base_dtype, attention="sdpa"
    ).activations  # one token of one layer stack, SDPA
    eager = shape.heads * length * ((2 if base_dtype == "bf16" else 4) + 4)
    print(
        f"base {base_dtype} {attention:5s}: saved {saved / (micro * length * layers) / 1e3:5.1f} KB per token "
        f"per layer; formula {estimate / layers / 1e3:5.1f} KB"
        + (f" + eager {eager / 1e3:.1f} KB" if attention == "eager" else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(PAPER_MODELS))
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument(
        "--layers", type=int, default=None, help="fewer layers than the real model (smoke runs)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--saved-count", action="store_true", help="the CPU count behind the formula's check")
    args = parser.parse_args()
    if args.saved_count:
        torch.set_num_threads(1)
        for base_dtype, attention in (("fp32", "sdpa"), ("bf16", "sdpa"), ("fp32", "eager")):
            saved_count(base_dtype, attention)
        return
    device = torch.device(args.device)
    for spec in args.models.split(","):
        shape = PAPER_MODELS[spec]
        if args.layers is not None:
            shape = ModelShape(**{**shape.__dict__, "layers": args.layers})
        for checkpointing in (False, True):
            one_case(spec, shape, device, args.micro, args.length, checkpointing)


if __name__ == "__main__":
    main()
