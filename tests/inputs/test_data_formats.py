"""The data users train with: TRL's dataset formats carry the loss on the very tokens TRL's SFTTrainer puts it on
(compared with the labels of TRL's own prepared dataset, token by token), and the files users have (JSON lines,
Parquet, CSV, save_to_disk directories, a hub dataset from an offline cache) load through ``datasets``."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import trl  # the dev extra's: a missing TRL fails here rather than skipping the comparison

# ChatML with {% generation %} markers: TRL's training template for Qwen2.5 (what its assistant_only_loss swaps in).
from trl.chat_template_utils import qwen2_5_training_chat_template

from hessian_lora.core.errors import UserError
from hessian_lora.inputs.models import load_model, load_tokenizer
from hessian_lora.inputs.tasks import (
    IGNORE_INDEX,
    applied_template,
    examples_from_rows,
    load_task,
    tokenize_example,
)

PAIRS = [("What is 2+3?", "5"), ("Name a colour.", "Blue, like the sky."), ("Say hi", " hi there")]
ROWS = {
    "text": [{"text": f"{p} {r}"} for p, r in PAIRS],
    "completion": [{"prompt": p, "completion": r} for p, r in PAIRS],
    "conversation": [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]} for p, r in PAIRS
    ]
    + [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "1+1?"},
                {"role": "assistant", "content": "2"},
                {"role": "user", "content": "and 2+2?"},
                {"role": "assistant", "content": "4"},
            ]
        }
    ],
    "conversational_completion": [
        {"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": r}]}
        for p, r in PAIRS
    ],
}


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, object]:
    """tiny-llama's byte tokenizer (no chat template), SmolLM2's (ChatML, no generation markers), and SmolLM2's
    with TRL's ChatML training template (generation markers: assistant masks)."""
    smol = load_tokenizer("smollm2-135m")
    marked = load_tokenizer("smollm2-135m")
    marked.chat_template = qwen2_5_training_chat_template
    return {"tiny": load_tokenizer("tiny-llama"), "smol": smol, "marked": marked}


def _trl_labels(rows: list[dict], tokenizer, **config) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels of TRL's own SFTTrainer preparation of ``rows`` (its train_dataset after __init__)."""
    model = load_model("tiny-llama", device="cpu").model
    args = trl.SFTConfig(
        output_dir="/tmp/unused-trl-out",
        report_to="none",
        use_cpu=True,
        max_length=1024,
        bf16=False,
        dataset_num_proc=None,
        **config,
    )
    trainer = trl.SFTTrainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer
    )
    prepared = trainer.train_dataset
    return [(list(row["input_ids"]), list(row["labels"])) for row in prepared]


def _ours(rows: list[dict], tokenizer, loss: str | None = None) -> list[tuple[list[int], list[int]]]:
    examples = examples_from_rows(rows, where="rows", loss=loss)
    return [tokenize_example(tokenizer, example, 1024, None) for example in examples]


@pytest.mark.parametrize(
    ("fmt", "tokenizer", "loss", "config"),
    [
        ("text", "tiny", None, {}),
        ("completion", "tiny", None, {}),  # completion_only_loss (TRL's default for prompt/completion)
        ("completion", "tiny", "all", {"completion_only_loss": False}),
        ("completion", "smol", None, {}),
        ("conversation", "smol", None, {}),  # TRL's default: every token of the conversation
        ("conversation", "marked", "assistant", {"assistant_only_loss": True}),
        ("conversational_completion", "smol", None, {}),
        ("conversational_completion", "marked", "assistant", {"assistant_only_loss": True}),
    ],
)
def test_the_loss_is_on_the_tokens_trl_trains(fmt, tokenizer, loss, config, tokenizers) -> None:
    tok = tokenizers[tokenizer]
    ours = _ours(ROWS[fmt], tok, loss)
    theirs = _trl_labels(ROWS[fmt], tok, **config)
    assert len(ours) == len(theirs)
    for (our_ids, our_labels), (trl_ids, trl_labels) in zip(ours, theirs, strict=True):
        assert our_ids == trl_ids
        assert our_labels == trl_labels  # the same tokens carry the loss, token by token
    masked = sum(label == IGNORE_INDEX for _, labels in ours for label in labels)
    if fmt == "text" or loss == "all" or (fmt == "conversation" and loss is None):
        assert masked == 0
    else:  # the mask is not vacuous: prompts (and, for assistant-only, system/user turns) are left out
        assert masked > 0


def test_assistant_only_loss_on_the_smollm2_template_is_what_trl_patches_or_refused(tokenizers) -> None:
    """SmolLM2's ChatML has no generation markers and TRL has no training template for it: TRL refuses
    assistant_only_loss, and so does the toolkit, in one line."""
    with pytest.raises(ValueError, match="not training-compatible"):
        _trl_labels(ROWS["conversation"], tokenizers["smol"], assistant_only_loss=True)
    with pytest.raises(UserError, match="loss=all") as info:
        _ours(ROWS["conversation"], tokenizers["smol"], "assistant")
    assert "\n" not in str(info.value)


def test_formats_are_told_from_the_columns() -> None:
    formats = {name: examples_from_rows(rows, where="x")[0].format for name, rows in ROWS.items()}
    assert formats == {name: name for name in ROWS}
    pairs = {("prompt", "response"), ("question", "answer"), ("input", "output"), ("query", "response")}
    for prompt_field, response_field in pairs:  # no mapping needed
        example = examples_from_rows([{prompt_field: "2+2?", response_field: "4"}], where="x")[0]
        assert (example.format, example.prompt, example.response) == ("pair", "2+2?", "4")
    with pytest.raises(UserError, match="loss=completion needs prompt/completion"):
        examples_from_rows(ROWS["text"], where="x", loss="completion")
    with pytest.raises(UserError, match="must be a non-empty list of messages"):
        examples_from_rows([{"messages": "hello"}], where="x")


def test_templates_per_format(tokenizers) -> None:
    conversation = examples_from_rows(ROWS["conversation"], where="x")
    assert applied_template(conversation, None) == "chat"
    with pytest.raises(UserError, match="cannot format conversational data"):
        applied_template(conversation, "alpaca")
    completion = examples_from_rows(ROWS["completion"], where="x")
    assert applied_template(completion, None) == "raw"  # as TRL: no template on text prompts
    ids, labels = tokenize_example(tokenizers["tiny"], completion[0], 1024, "Q: {prompt}\nA:")
    assert tokenizers["tiny"].decode(ids).startswith("Q: What is 2+3?\nA:")
    assert tokenizers["tiny"].decode([t for t in labels if t != IGNORE_INDEX]).startswith("5")
    with pytest.raises(UserError, match="needs a chat template"):
        tokenize_example(tokenizers["tiny"], conversation[0], 1024, None)


# ----------------------------------------------------------------------------------------------------------
# Files


def _write_all(tmp_path: Path, rows: list[dict]) -> dict[str, Path]:
    dataset = datasets.Dataset.from_list(rows)
    paths = {
        "jsonl": tmp_path / "d.jsonl",
        "json": tmp_path / "d.json",
        "parquet": tmp_path / "d.parquet",
        "csv": tmp_path / "d.csv",
        "disk": tmp_path / "saved",
        "dict": tmp_path / "saved_dict",
    }
    paths["jsonl"].write_text("".join(json.dumps(row) + "\n" for row in rows))
    paths["json"].write_text(json.dumps({"data": rows}))
    dataset.to_parquet(str(paths["parquet"]))
    dataset.to_csv(str(paths["csv"]), index=False)
    dataset.save_to_disk(str(paths["disk"]))
    datasets.DatasetDict({"train": dataset, "test": dataset.select([0])}).save_to_disk(str(paths["dict"]))
    return paths


def test_every_file_kind_loads_the_same_examples(tmp_path) -> None:
    rows = [{"question": f"What is {i}+1?", "answer": str(i + 1)} for i in range(6)]
    paths = _write_all(tmp_path, rows)
    loaded = {kind: load_task(str(path), seed=0, n_train=10, n_eval=0).train for kind, path in paths.items()}
    expected = sorted((row["question"], row["answer"]) for row in rows)
    for kind, examples in loaded.items():
        assert sorted((e.prompt, e.response) for e in examples) == expected, kind
    test_split = load_task(f"{paths['dict']}::split=test", n_train=10, n_eval=0).train
    assert [(e.prompt, e.response) for e in test_split] == [(rows[0]["question"], rows[0]["answer"])]


def test_conversational_parquet_and_saved_dataset_load(tmp_path) -> None:
    paths = _write_all(tmp_path, ROWS["conversation"])
    for kind in ("parquet", "disk", "jsonl"):
        examples = load_task(str(paths[kind]), n_train=10, n_eval=0).train
        assert {e.format for e in examples} == {"conversation"}, kind
        assert sorted(len(e.messages) for e in examples) == [2, 2, 2, 5], kind
        assert all(set(m) == {"role", "content"} for e in examples for m in e.messages), kind


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "no split 'validation'"),
        ("a,b\n1,2\n", "no known prompt/response"),
        ('x\n"unclosed\n', "cannot read .* as CSV .*Error"),
    ],
)
def test_file_errors_are_one_line(content, fragment, tmp_path) -> None:
    if content is None:
        paths = _write_all(tmp_path, [{"text": "hello"}])
        spec = f"{paths['dict']}::split=validation"
    else:
        (tmp_path / "d.csv").write_text(content)
        spec = str(tmp_path / "d.csv")
    with pytest.raises(UserError, match=fragment) as info:
        load_task(spec, n_train=4, n_eval=0)
    assert "\n" not in str(info.value)
    for spec, fragment in (
        (str(tmp_path / "broken.parquet"), "cannot read"),
        (f"{tmp_path / 'd.csv'}::loss=some", "not a loss choice"),
        (f"{tmp_path / 'd.csv'}::colour=red", "unknown data option"),
        (str(tmp_path), "not a saved dataset"),
    ):
        (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
        with pytest.raises(UserError, match=fragment) as info:
            load_task(spec, n_train=4, n_eval=0)
        assert "\n" not in str(info.value), spec


def test_a_hub_dataset_id_offline_and_not_cached_is_one_line(tmp_path) -> None:
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "ds"),
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    code = (
        "from hessian_lora.inputs.tasks import load_task\nfrom hessian_lora.core.errors import UserError\n"
        "try:\n    load_task('acme/no-such-pairs')\nexcept UserError as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hub dataset acme/no-such-pairs cannot be loaded"), result
    assert "HF_HUB_OFFLINE=1 reads the local datasets cache" in lines[0]


def test_a_hub_dataset_id_loads_offline_from_the_datasets_cache(tmp_path) -> None:
    """The cache a `load_dataset("acme/pairs")` leaves (HF_DATASETS_CACHE/acme___pairs/default/0.0.0/<hash>/
    pairs-train.arrow + dataset_info.json), made here by datasets' own json builder, read offline."""
    import os
    import shutil
    import subprocess
    import sys

    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.json.json import Json

    rows = [{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in range(5)]
    source = tmp_path / "train.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cache = tmp_path / "datasets-cache"
    builder = Json(
        cache_dir=str(cache),
        dataset_name="pairs",
        config_name="default",
        hash="0123abcd",
        data_files=DataFilesDict.from_patterns({"train": [str(source)]}),
    )
    builder.download_and_prepare()
    built = Path(builder.cache_dir).parents[1]  # cache/pairs/default-<data files hash>
    shutil.move(
        str(built), str(cache / "acme___pairs" / "default")
    )  # where a hub download of acme/pairs lands
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(cache),
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    code = (
        "import json\nfrom hessian_lora.inputs.tasks import load_task\n"
        "task = load_task('acme/pairs', n_train=10, n_eval=0)\n"
        "print(json.dumps(sorted([e.format, e.prompt, e.response] for e in task.train)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == sorted(["completion", row["prompt"], row["completion"]] for row in rows)


def test_template_names_and_placeholders(tokenizers) -> None:
    from hessian_lora.inputs.tasks import format_prompt
    from hessian_lora.settings import check_prompt_template
    from hessian_lora.settings.training import TrainConfig

    tok = tokenizers["smol"]
    assert format_prompt(tok, "2+2?", "raw") == "2+2?"
    assert format_prompt(tok, "2+2?", "Q: {prompt}\nA: {x}") == "Q: 2+2?\nA: {x}"
    assert format_prompt(tok, "2+2?", "Q: {instruction}") == "Q: 2+2?"  # the older name
    assert format_prompt(tok, "2+2?", "chat").startswith("<|im_start|>")
    for template in ("raw", "Q: {prompt}"):
        assert check_prompt_template(template) == template
        assert (
            TrainConfig(lr=1e-4, steps=1, prompt_template=template).prompt_template == template
        )  # a sweep's
    with pytest.raises(UserError, match="raw, chat, alpaca, plain"):
        check_prompt_template("Q: {question}")
