"""Sharpness along training inside TRL's SFTTrainer: λ_max and Adam's preconditioned sharpness every few steps.

    python examples/trainer_callback.py                                 # SmolLM2-135M, 20 steps (minutes on a CPU)
    python examples/trainer_callback.py --model tiny-llama --steps 6    # seconds

Each probe is its own ``log_history`` entry (``sharpness/lambda_max``, ``sharpness/preconditioned``, ...), handed
to every reporter the Trainer has (TensorBoard, wandb); the Trainer's own entries are unchanged.
"""

from __future__ import annotations

import argparse
import tempfile

import datasets
import torch
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

import hessian_lora as h
from hessian_lora.inputs.tasks import load_task


def main() -> None:
    """Parse the command line and run the example."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = h.load_model(args.model, device="cpu")
    task = load_task("arith", seed=0, n_train=64, n_eval=0)  # two-term sums from reasoning-gym
    train = datasets.Dataset.from_list([{"prompt": e.prompt, "completion": e.response} for e in task.train])
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="hessian-lora-sft-"),
        per_device_train_batch_size=4,
        max_steps=args.steps,
        learning_rate=1e-3,
        logging_steps=args.every,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        max_length=96,
        bf16=False,
    )
    trainer = SFTTrainer(
        model=loaded.model,
        args=config,
        train_dataset=train,
        processing_class=loaded.tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    h.SharpnessCallback.install(trainer, every=args.every, settings=h.DuringSettings(tol=1e-2, max_iter=40))
    trainer.train()

    for entry in trainer.state.log_history:
        if "sharpness/lambda_max" in entry:
            pre = entry.get("sharpness/preconditioned")
            print(
                f"step {entry['step']:>3}: λ_max {entry['sharpness/lambda_max']:.4g}"
                + (f", Adam-preconditioned {pre:.4g}" if pre is not None else " (no Adam state yet)")
                + ("" if entry.get("sharpness/converged") else "  not certified")
            )


if __name__ == "__main__":
    main()
