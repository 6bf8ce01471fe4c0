"""SharpnessCallback inside a real transformers.Trainer: logged values = an offline measurement of the same state."""

from __future__ import annotations

import pytest
import torch

from hessian_lora.adapters import AdapterConfig, build_adapter
from hessian_lora.data import collate, load_task, tokenize_example
from hessian_lora.dynamics import DuringSettings
from hessian_lora.integrations import SharpnessCallback

pytest.importorskip("transformers")


class _Rows(torch.utils.data.Dataset):
    def __init__(self, batch):
        self.batch = batch

    def __len__(self):
        return int(self.batch.input_ids.shape[0])

    def __getitem__(self, index):
        return {"input_ids": self.batch.input_ids[index], "attention_mask": self.batch.attention_mask[index],
                "labels": self.batch.labels[index]}


def test_callback_logs_equal_offline_measurements(tiny, tmp_path):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from hessian_lora.checkpoint import live_optimizer_state
    from hessian_lora.hessian.filters import WholeAdapter
    from hessian_lora.hessian.operator import HessianOperator
    from hessian_lora.hessian.preconditioned import preconditioned_sharpness
    from hessian_lora.measure import MeasureSettings, measure
    from hessian_lora.preconditioning import optimizer_preconditioner

    task = load_task("arith", seed=0, n_train=16, n_eval=0)
    encoded = [tokenize_example(tiny.tokenizer, example, 96) for example in task.train]
    dataset = _Rows(collate(tiny.tokenizer, encoded))  # padded to one length: the default collator stacks rows
    model = build_adapter(tiny.model, AdapterConfig("lora", rank=4, targets=("q_proj", "v_proj")))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4,
                             learning_rate=3e-3, logging_steps=100, save_strategy="no", report_to="none",
                             use_cpu=True, optim="adamw_torch", disable_tqdm=True, seed=0,
                             dataloader_num_workers=0)
    offline: dict[int, tuple[float, float | None]] = {}

    class Offline(TrainerCallback):  # runs after the sharpness callback, on the very same live state
        def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            if state.global_step not in (2, 4):
                return
            batches = sharpness.probe.batches
            report = measure(model, batches, MeasureSettings(smallest=False, tol=1e-6, max_iter=200),
                             progress=False)
            block = WholeAdapter().blocks(model)[0]
            inner = getattr(optimizer, "optimizer", optimizer)
            diagonal, adam = optimizer_preconditioner(live_optimizer_state(model, inner), block.names)
            pre = preconditioned_sharpness(HessianOperator(model, batches, block), diagonal, lr=adam["lr"],
                                           beta1=adam["beta1"], eps=adam["eps"], step=int(adam["step"]),
                                           tol=1e-6, max_iter=200)
            offline[state.global_step] = (report.blocks[0].lambda_max, pre.sharpness)

    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    sharpness = SharpnessCallback.install(trainer, every=2, settings=DuringSettings(tol=1e-6, max_iter=200))
    trainer.add_callback(Offline())
    trainer.train()

    logged = {entry["step"]: entry for entry in trainer.state.log_history if "sharpness/lambda_max" in entry}
    assert sorted(logged) == [0, 2, 4]
    assert "sharpness/preconditioned" not in logged[0]  # no Adam state before the first update
    for step, (lambda_max, preconditioned) in offline.items():
        assert logged[step]["sharpness/lambda_max"] == pytest.approx(lambda_max, rel=1e-4)
        assert logged[step]["sharpness/preconditioned"] == pytest.approx(preconditioned, rel=1e-4)
        assert logged[step]["sharpness/hvps"] > 0
    assert sorted(offline) == [2, 4]
