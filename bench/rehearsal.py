"""Scale rehearsal: the whole adapter's λ_max at the paper's size, against the memory plan, on this machine.

A random Llama with Qwen3-0.6B's shapes (hidden 1024, 28 layers, 16 query / 8 key-value heads of 128,
intermediate 3072, vocabulary 151,936, tied embeddings: 0.6 B parameters) and LoRA r = 128 on all seven
projections (80.7 M adapter parameters, 323 MB a float32 vector), with B moved off zero (the paper measures
trained adapters too, and B = 0 makes half the spectrum a ± mirror) or left at initialisation (``--at-init``).
It prints, side by side in one process:

- the memory plan ``eigen`` would print (hessian/memory_plan.py) and the peak memory measured (CPU: peak RSS of
  this process over the Lanczos run, sampled every 5 ms; CUDA: ``torch.cuda.max_memory_allocated``),
- the time of a product over the time of a gradient on the same batches (alternating rounds, median ratio),
- Lanczos to a certified λ_max at tol 1e-3 (whole adapter), with the explicit residual, where its Krylov
  vectors lived and whether the kept products had to be dropped.

    .venv/bin/python bench/rehearsal.py                      # Qwen3-0.6B shapes (CPU: ~25 min on 2 cores, ~15 GB)
    .venv/bin/python bench/rehearsal.py --size tiny          # the same pipeline on a small model, seconds
    .venv/bin/python bench/rehearsal.py --batches 100 --batch-size 5 --length 128   # the paper's data size (GPU)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from typing import Any

import psutil
import torch

from hessian_lora.hessian import HessianOperator, WholeAdapter, lanczos
from hessian_lora.hessian.memory_plan import plan_memory
from hessian_lora.inputs.models import default_device
from hessian_lora.inputs.tasks import TokenBatch

SHAPES: dict[str, dict[str, int]] = {
    "qwen3-0.6b": {
        "hidden_size": 1024,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 3072,
        "vocab_size": 151936,
    },
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 192,
        "vocab_size": 512,
    },
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class PeakMemory:
    """Peak RSS of this process (CPU) or peak allocated CUDA memory, from ``start`` to ``stop``."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        process = psutil.Process()
        self.peak = process.memory_info().rss

        def sample() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, process.memory_info().rss)
                time.sleep(0.005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int:
        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
        return self.peak


def build(size: str, rank: int, at_init: bool, device: torch.device) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **SHAPES[size], tie_word_embeddings=True, max_position_embeddings=4096, attn_implementation="sdpa"
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device)
    model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, lora_dropout=0.0)
    )
    if not at_init:
        generator = torch.Generator(device="cpu").manual_seed(1)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return model


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--at-init", action="store_true", help="B = 0 (LoRA at initialisation)")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--length", type=int, default=48, help="tokens per sequence")
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--max-iter", type=int, default=60)
    parser.add_argument(
        "--krylov-gib", type=float, default=None, help="Krylov budget (default: the plan's auto)"
    )
    parser.add_argument("--ratio-rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="JSON of the measurements")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    began = time.perf_counter()
    model = build(args.size, args.rank, args.at_init, device)
    generator = torch.Generator().manual_seed(2)
    vocab = SHAPES[args.size]["vocab_size"]
    batches = []
    for _ in range(args.batches):
        ids = torch.randint(0, vocab, (args.batch_size, args.length), generator=generator)
        batches.append(TokenBatch(ids, torch.ones_like(ids), ids.clone()))
    block = WholeAdapter().blocks(model)[0]
    operator = HessianOperator(model, batches, block, reuse=False)
    total_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: random Llama with {args.size} shapes, {total_params / 1e9:.3f} B parameters; LoRA r={args.rank} on "
        f"{len(TARGETS)} projections: {operator.size:,} adapter parameters "
        f"({'B = 0' if args.at_init else 'B ~ N(0, 0.02²)'}); {args.batches} batches of {args.batch_size} × "
        f"{args.length} tokens; device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"built in {time.perf_counter() - began:.0f} s"
    )
    plan = plan_memory(
        model,
        operator.batches,
        block_parameters=operator.size,
        dtype=operator.dtype,
        device=operator.device,
        max_iter=args.max_iter,
        krylov_gib=args.krylov_gib,
        reuse=False,
    )
    for line in plan.lines():
        print(line)
    sys.stdout.flush()

    ratios, product_times, gradient_times = [], [], []
    vector = torch.randn(operator.size, generator=torch.Generator().manual_seed(3)).to(device)
    for round_ in range(args.ratio_rounds + 1):
        t0 = time.perf_counter()
        operator.gradient()
        _sync(device)
        t1 = time.perf_counter()
        operator.matvec(vector)
        _sync(device)
        t2 = time.perf_counter()
        if round_:  # the first round warms up
            gradient_times.append(t1 - t0)
            product_times.append(t2 - t1)
            ratios.append((t2 - t1) / (t1 - t0))
    del vector
    print(
        f"product / gradient: {statistics.median(ratios):.2f} (median of {len(ratios)} alternating rounds; "
        f"gradient {statistics.median(gradient_times):.1f} s, product {statistics.median(product_times):.1f} s)"
    )
    sys.stdout.flush()

    base = (
        psutil.Process().memory_info().rss
        if device.type == "cpu"
        else int(torch.cuda.memory_allocated(device))
    )
    peak = PeakMemory(device).start()

    def progress(record: Any) -> None:
        residual = record.residuals[0] if record.residuals else float("nan")
        print(
            f"  step {record.iteration:3d}  products {record.hvps:3d}  θ {record.values[0]:.6g}  estimate "
            f"{residual:.2e}  {record.seconds:7.0f} s",
            flush=True,
        )

    result = lanczos(
        operator,
        which="largest",
        tol=args.tol,
        max_iter=args.max_iter,
        memory=plan.krylov_memory(),
        callback=progress,
    )
    peak_bytes = peak.stop()
    details = result.details
    vectors = int(sum(v for k, v in details.items() if k.startswith("krylov_vectors_")))
    estimate = (
        (plan.model_bytes if device.type == "cuda" else base)
        + (plan.activation_bytes or 0)
        + (8 + vectors) * plan.vector_bytes
    )
    measured_above = peak_bytes - base
    print(
        f"λ_max {result.lambda_max:.6g}: converged {result.converged} ({result.stop_reason}), explicit residual "
        f"{result.residual:.3g} = {result.residual / abs(result.lambda_max):.2e}·θ (tol {args.tol}), "
        f"{result.hvps} products, {result.seconds:.0f} s, {details['failed_checks']:.0f} failed checks"
    )
    print(
        f"Krylov vectors held: {vectors} ("
        f"{', '.join(f'{k[15:]}: {v:.0f}' for k, v in details.items() if k.startswith('krylov_vectors_'))}); "
        f"kept products {'yes' if details['kept_products'] else 'dropped (one product for the check)'}"
    )
    print(
        f"peak memory during Lanczos: {peak_bytes / 2**30:.2f} GiB (before it {base / 2**30:.2f} GiB; "
        f"{measured_above / 2**30:.2f} GiB above) | plan's estimate for the vectors held: "
        f"{estimate / 2**30:.2f} GiB (base + activations {(plan.activation_bytes or 0) / 2**30:.2f} + "
        f"{8 + vectors} vectors × {plan.vector_bytes / 2**20:.0f} MiB); ratio measured/estimate "
        f"{peak_bytes / estimate:.2f}"
    )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "args": vars(args),
                    "plan": plan.to_dict(),
                    "lambda_max": result.lambda_max,
                    "converged": result.converged,
                    "stop_reason": result.stop_reason,
                    "residual": result.residual,
                    "hvps": result.hvps,
                    "seconds": result.seconds,
                    "details": details,
                    "product_over_gradient": statistics.median(ratios),
                    "peak_bytes": peak_bytes,
                    "base_bytes": base,
                    "estimate_bytes": estimate,
                },
                handle,
                indent=1,
            )
    return 0 if result.converged else 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
