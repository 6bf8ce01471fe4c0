"""SharpnessCallback inside a real TRL SFTTrainer and a real transformers.Trainer, with TRL's defaults (logging every
10 steps, bf16 where the machine has it, gradient checkpointing): the Trainer's own log is what it is without
the callback, and the logged values equal an offline measurement of the same state."""

from __future__ import annotations

import logging

import datasets
import pytest
import torch
import trl  # the dev extra's: a missing TRL fails here rather than skipping the clients' tests
from transformers import TrainerCallback

from hessian_lora.inputs.tasks import collate, load_task, tokenize_example
from hessian_lora.measurement.trainer_callback import PREFIX, SharpnessCallback, full_precision_forward
from hessian_lora.measurement.training_probe import DuringSettings
from hessian_lora.training.adapters import AdapterConfig, build_adapter

# Keys whose values are wall-clock times: they differ between any two runs.
_TIMING = ("train_runtime", "train_samples_per_second", "train_steps_per_second")


def _bf16() -> bool:
    """TRL's default (bf16 on) where the machine runs bf16 autocast: its CPU does."""
    return torch.amp.is_autocast_available("cpu")


class _Reporter(TrainerCallback):
    """Stands for TensorBoard/W&B: a callback before the sharpness one that records every on_log it is given."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.seen.append({**logs, "step": state.global_step})


def _sft_run(
    tiny,
    tmp_path,
    *,
    mode: str,
    logging_steps: int,
    every: int,
    max_steps: int,
    settings: DuringSettings | None = None,
):
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    task = load_task("arith", seed=0, n_train=32, n_eval=0)
    dataset = datasets.Dataset.from_list([{"prompt": e.prompt, "completion": e.response} for e in task.train])
    # TRL's own defaults are kept on purpose (bf16, gradient_checkpointing); only what a CPU test needs is set.
    args = trl.SFTConfig(
        output_dir=str(tmp_path / mode),
        per_device_train_batch_size=4,
        max_steps=max_steps,
        learning_rate=3e-3,
        logging_steps=logging_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        max_length=96,
        bf16=_bf16(),
    )
    assert isinstance(args, SFTConfig) and args.gradient_checkpointing
    reporter = _Reporter()
    settings = settings or DuringSettings(tol=1e-3, max_iter=60)
    sharpness = SharpnessCallback(every=every, settings=settings) if mode == "callbacks" else None
    trainer = SFTTrainer(
        model=tiny.model,
        args=args,
        train_dataset=dataset,
        processing_class=tiny.tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        callbacks=[reporter] + ([sharpness] if sharpness is not None else []),
    )
    if mode == "install":
        sharpness = SharpnessCallback.install(trainer, every=every, settings=settings)
    trainer.train()
    if sharpness is not None:  # the last probe measured the final state: so does an offline measurement
        from hessian_lora.measurement.measure import MeasureSettings, measure
        from hessian_lora.measurement.targets import AdaptedModule

        with full_precision_forward(trainer.model):
            report = measure(
                AdaptedModule(trainer.model),
                MeasureSettings(smallest=False, tol=1e-6, max_iter=200),
                batches=sharpness.probe.batches,
                progress=False,
            )
        last = next(entry for entry in reversed(trainer.state.log_history) if PREFIX + "lambda_max" in entry)
        assert last["step"] == max_steps
        assert last[PREFIX + "lambda_max"] == pytest.approx(
            report.blocks[0].lambda_max, rel=2 * last[PREFIX + "rel_residual"] + 1e-6
        )
    return trainer.state.log_history, reporter.seen


def _own(entries: list[dict]) -> list[dict]:
    """The Trainer's own entries (no sharpness key), timings left out."""
    return [
        {k: v for k, v in entry.items() if k not in _TIMING}
        for entry in entries
        if not any(key.startswith(PREFIX) for key in entry)
    ]


@pytest.mark.parametrize(("logging_steps", "every", "max_steps"), [(10, 10, 20), (1, 3, 6)])
def test_sft_trainer_logs_are_unchanged_by_the_callback(tiny, tmp_path, logging_steps, every, max_steps):
    from hessian_lora.inputs.models import load_model

    plain, plain_seen = _sft_run(
        tiny, tmp_path, mode="none", logging_steps=logging_steps, every=every, max_steps=max_steps
    )
    for mode in ("install", "callbacks"):
        fresh = load_model("tiny-llama", device="cpu")
        logged, seen = _sft_run(
            fresh, tmp_path, mode=mode, logging_steps=logging_steps, every=every, max_steps=max_steps
        )
        assert any("loss" in entry for entry in _own(plain))
        assert _own(logged) == _own(plain), (
            mode
        )  # every loss, grad_norm, entropy, ... key for key, value for value
        assert _own(seen) == _own(plain_seen), mode  # and so is what a reporter was handed
        probes = [entry for entry in logged if PREFIX + "lambda_max" in entry]
        assert [entry["step"] for entry in probes] == list(range(0, max_steps + 1, every)), mode
        # a reporter sees each probe at the step it was measured, as the Trainer's history says
        assert [entry for entry in seen if PREFIX + "lambda_max" in entry] == probes, mode
        for entry in probes:
            assert entry[PREFIX + "converged"] == 1.0
            assert 0 <= entry[PREFIX + "rel_residual"] <= 1e-3
            assert not any(key in entry for key in ("loss", "entropy", "mean_token_accuracy", "num_tokens"))
        if mode == "install":
            installed = probes
        else:
            assert probes == [
                {**entry, PREFIX + "seconds": new[PREFIX + "seconds"]}
                for entry, new in zip(installed, probes, strict=True)
            ]


def test_an_uncertified_probe_says_so(tiny, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hessian_lora.measurement.trainer_callback"):
        logged, _ = _sft_run(
            tiny,
            tmp_path,
            mode="install",
            logging_steps=10,
            every=10,
            max_steps=10,
            settings=DuringSettings(tol=1e-6, max_iter=2, warm_start=False),
        )
    probes = [entry for entry in logged if PREFIX + "lambda_max" in entry]
    assert [entry[PREFIX + "converged"] for entry in probes] == [0.0, 0.0]
    assert all(entry[PREFIX + "rel_residual"] > 1e-6 for entry in probes)
    lines = [r.getMessage() for r in caplog.records if "not certified" in r.getMessage()]
    assert len(lines) == 2 and "step 0 " in lines[0] and "step 10 " in lines[1]
    assert all("\n" not in line and "relative residual" in line for line in lines)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, batch):
        self.batch = batch

    def __len__(self):
        return int(self.batch.input_ids.shape[0])

    def __getitem__(self, index):
        return {
            "input_ids": self.batch.input_ids[index],
            "attention_mask": self.batch.attention_mask[index],
            "labels": self.batch.labels[index],
        }


def test_callback_logs_equal_offline_measurements(tiny, tmp_path):
    from transformers import Trainer, TrainingArguments

    from hessian_lora.hessian.filters import WholeAdapter
    from hessian_lora.hessian.operator import HessianOperator
    from hessian_lora.hessian.preconditioned import preconditioned_sharpness
    from hessian_lora.measurement.measure import MeasureSettings, measure
    from hessian_lora.measurement.preconditioning import optimizer_preconditioner
    from hessian_lora.measurement.targets import AdaptedModule
    from hessian_lora.training.checkpoint import live_optimizer_state

    task = load_task("arith", seed=0, n_train=16, n_eval=0)
    encoded = [tokenize_example(tiny.tokenizer, example, 96) for example in task.train]
    dataset = _Rows(
        collate(tiny.tokenizer, encoded)
    )  # padded to one length: the default collator stacks rows
    model = build_adapter(tiny.model, AdapterConfig("lora", rank=4, targets=("q_proj", "v_proj")))
    # TRL's defaults on a plain Trainer: log every 10 steps, bf16 autocast, gradient checkpointing
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=10,
        learning_rate=3e-3,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        optim="adamw_torch",
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        bf16=_bf16(),
        gradient_checkpointing=True,
    )
    offline: dict[int, tuple[float, float | None]] = {}

    class Offline(TrainerCallback):  # runs after the sharpness callback, on the very same live state
        def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            if state.global_step not in (5, 10):
                return
            if _bf16():  # the probe measured the fp32 loss under the Trainer's bf16 autocast: so does this
                assert "_original_forward" in model.__dict__
            batches = sharpness.probe.batches
            with full_precision_forward(model):
                report = measure(
                    AdaptedModule(model),
                    MeasureSettings(smallest=False, tol=1e-6, max_iter=200),
                    batches=batches,
                    progress=False,
                )
                block = WholeAdapter().blocks(model)[0]
                inner = getattr(optimizer, "optimizer", optimizer)
                diagonal, adam = optimizer_preconditioner(live_optimizer_state(model, inner), block.names)
                pre = preconditioned_sharpness(
                    HessianOperator(model, batches, block),
                    diagonal,
                    lr=adam["lr"],
                    beta1=adam["beta1"],
                    eps=adam["eps"],
                    step=int(adam["step"]),
                    tol=1e-6,
                    max_iter=200,
                )
            offline[state.global_step] = (report.blocks[0].lambda_max, pre.sharpness)

    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    sharpness = SharpnessCallback.install(trainer, every=5, settings=DuringSettings(tol=1e-6, max_iter=200))
    trainer.add_callback(Offline())
    trainer.train()

    logged = {entry["step"]: entry for entry in trainer.state.log_history if PREFIX + "lambda_max" in entry}
    assert sorted(logged) == [0, 5, 10]
    assert "sharpness/preconditioned" not in logged[0]  # no Adam state before the first update
    assert [entry["step"] for entry in trainer.state.log_history if "loss" in entry] == [10]
    for step, (lambda_max, preconditioned) in offline.items():
        assert logged[step]["sharpness/lambda_max"] == pytest.approx(lambda_max, rel=1e-4)
        assert logged[step]["sharpness/preconditioned"] == pytest.approx(preconditioned, rel=1e-4)
        assert logged[step]["sharpness/hvps"] > 0
        assert logged[step]["sharpness/converged"] == 1.0
    assert sorted(offline) == [5, 10]
