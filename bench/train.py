"""Training throughput: the toolkit's trainer vs a plain peft + torch loop, side by side in one run.

Both train the same LoRA adapter on the same global batches with AdamW, cosine warm-up and clipping; the plain
loop uses the model's own HF loss (``labels=``) and no accumulation, progress bar, divergence checks or
history. Rounds alternate (toolkit, plain, toolkit, plain, ...) so machine noise hits both alike; the ratio of
the medians is the overhead. Target: <= 10 %.

    .venv/bin/python bench/train.py                      # SmolLM2-135M, LoRA r=8 on all seven projections
    .venv/bin/python bench/train.py --model tiny-llama --steps 20
    .venv/bin/python bench/train.py --attention eager,sdpa   # also compare attention kernels for training
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from peft import LoraConfig, get_peft_model
from transformers import get_cosine_schedule_with_warmup

from hessian_lora.inputs.models import load_model
from hessian_lora.inputs.tasks import load_task
from hessian_lora.training.adapters import AdapterConfig, build_adapter, make_optimizer
from hessian_lora.training.train import TrainConfig, global_batches, train

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def toolkit_round(model_spec: str, attention: str, examples: list, config: TrainConfig, rank: int) -> float:
    loaded = load_model(model_spec, device="cpu", attn_implementation=attention)
    adapter = AdapterConfig("lora", rank=rank, targets=TARGETS)
    model = build_adapter(loaded.model, adapter)
    optimizer = make_optimizer(model, adapter, config.lr)
    start = time.perf_counter()
    train(
        model, loaded.tokenizer, examples, config, optimizer=optimizer, progress=True, description="toolkit"
    )
    return time.perf_counter() - start


def plain_round(model_spec: str, attention: str, examples: list, config: TrainConfig, rank: int) -> float:
    loaded = load_model(model_spec, device="cpu", attn_implementation=attention)
    torch.manual_seed(0)
    model = get_peft_model(
        loaded.model,
        LoraConfig(
            r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=list(TARGETS), task_type="CAUSAL_LM"
        ),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.999), weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    # Tokenising is part of both loops' cost: the plain loop gets the same batches, collated up front here
    # and timed below only from the first step (a gift to the plain loop, so the overhead is an upper bound).
    steps = [batches[0] for batches in global_batches(loaded.tokenizer, examples, config)]
    model.train()
    start = time.perf_counter()
    for batch in steps:
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per round")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds per loop (after one warm-up round each)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--attention", default="sdpa", help="comma-separated attention implementations to time"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    examples = load_task("arith", seed=0, n_train=args.steps * args.batch_size, n_eval=0).train
    config = TrainConfig(lr=1e-4, steps=args.steps, batch_size=args.batch_size, max_length=128)
    tokenizer = load_model(args.model, device="cpu").tokenizer
    tokens = sum(
        int(b.attention_mask.sum()) for step in global_batches(tokenizer, examples, config) for b in step
    )
    print(
        f"model {args.model}, LoRA r={args.rank} on {len(TARGETS)} projections, {args.steps} steps x "
        f"{args.batch_size} examples = {tokens} tokens per round, {args.threads} thread(s)"
    )
    loops = {"toolkit": toolkit_round, "plain": plain_round}
    results: dict[tuple[str, str], list[float]] = {}
    for attention in args.attention.split(","):
        for loop in loops.values():  # warm-up round (first-call costs, allocator)
            loop(args.model, attention, examples, config, args.rank)
        for _ in range(args.rounds):
            for name, loop in loops.items():
                results.setdefault((attention, name), []).append(
                    loop(args.model, attention, examples, config, args.rank)
                )
    print(f"{'attention':<10} {'loop':<8} {'median s':>9} {'tokens/s':>9}  rounds (s)")
    for (attention, name), seconds in results.items():
        median = statistics.median(seconds)
        rounds = " ".join(f"{s:.2f}" for s in seconds)
        print(f"{attention:<10} {name:<8} {median:9.2f} {tokens / median:9.1f}  {rounds}")
    for attention in args.attention.split(","):
        toolkit = statistics.median(results[(attention, "toolkit")])
        plain = statistics.median(results[(attention, "plain")])
        print(
            f"{attention}: toolkit/plain time ratio {toolkit / plain:.3f} "
            f"(overhead {100 * (toolkit / plain - 1):+.1f} %, target <= +10 %)"
        )
    if len(args.attention.split(",")) > 1:
        first, *others = args.attention.split(",")
        base = statistics.median(results[(first, "toolkit")])
        for other in others:
            print(
                f"toolkit {other}/{first} time ratio {statistics.median(results[(other, 'toolkit')]) / base:.3f}"
            )


if __name__ == "__main__":
    main()
