"""A checkpoint written during a TRL SFTTrainer run with the SharpnessCallback carries the probes' batches, and
``eigen`` on it measures on those very tokens: the same λ_max as the callback logged at that step."""

from __future__ import annotations

import json

import datasets
import pytest
import trl

from hessian_lora.inputs.tasks import IGNORE_INDEX, PROBE_BATCHES_FILE, load_task, tokenize_example
from hessian_lora.measurement.trainer_callback import PREFIX, SharpnessCallback
from hessian_lora.measurement.training_probe import DuringSettings


def test_eigen_on_a_checkpoint_of_the_run_measures_the_probes_tokens(tiny, tmp_path) -> None:
    from peft import LoraConfig

    from hessian_lora.measurement.measure import eigen

    rows = [{"prompt": f"What is {i} + {i + 1}?", "completion": f" {2 * i + 1}"} for i in range(16)]
    data_file = tmp_path / "pairs.jsonl"
    data_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=3e-3,
        logging_steps=10,
        save_steps=3,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        max_length=96,
        bf16=False,
    )
    callback = SharpnessCallback(every=3, probe_batches=2, settings=DuringSettings(tol=1e-6, max_iter=120))
    trainer = trl.SFTTrainer(
        model=tiny.model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tiny.tokenizer,
        callbacks=[callback],
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    trainer.train()
    folder = tmp_path / "run" / "checkpoint-3"
    assert (folder / PROBE_BATCHES_FILE).is_file()
    logged = next(e for e in reversed(trainer.state.log_history) if PREFIX + "lambda_max" in e)
    assert logged["step"] == 3

    report = eigen(folder, model="tiny-llama", smallest=False, tol=1e-6, max_iter=200, progress=False)
    data = report.source["data"]
    assert PROBE_BATCHES_FILE not in data["source"] and "SharpnessCallback" in data["source"]
    assert data["loss_tokens"] == sum(batch.loss_tokens for batch in callback.probe.batches)
    assert report.blocks[0].lambda_max == pytest.approx(
        logged[PREFIX + "lambda_max"], rel=2 * logged[PREFIX + "rel_residual"] + 1e-6
    )

    # The probes' rows are TRL's tokenisation of the file, which is the toolkit's of the same file: measuring the
    # checkpoint on --data pairs.jsonl puts the loss on the same tokens (TRL's prompt/completion, template raw).
    ours = set()
    for example in load_task(str(data_file), n_train=100, n_eval=0).train:
        ids, labels = tokenize_example(tiny.tokenizer, example, 96, None)
        ours.add((tuple(ids), tuple(labels)))
    for batch in callback.probe.batches:
        for ids, mask, labels in zip(batch.input_ids, batch.attention_mask, batch.labels, strict=True):
            length = int(mask.sum())
            row = (tuple(ids[:length].tolist()), tuple(labels[:length].tolist()))
            assert row in ours
            assert IGNORE_INDEX in row[1]  # the prompt is masked (completion_only_loss)
