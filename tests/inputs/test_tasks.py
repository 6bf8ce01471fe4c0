from __future__ import annotations

import json

import pytest

from hessian_lora.core.errors import UserError
from hessian_lora.inputs.models import byte_tokenizer
from hessian_lora.inputs.tasks import (
    IGNORE_INDEX,
    Example,
    extract_answer,
    format_prompt,
    load_task,
    make_batches,
    tokenize_example,
)


def test_arith_task_is_deterministic_and_splits_do_not_overlap() -> None:
    first = load_task("arith", seed=5, n_train=40, n_eval=10)
    again = load_task("arith", seed=5, n_train=40, n_eval=10)
    other = load_task("arith", seed=6, n_train=40, n_eval=10)
    assert [e.prompt for e in first.train] == [e.prompt for e in again.train]
    assert [e.prompt for e in first.train] != [e.prompt for e in other.train]
    assert len(first.train) == 40 and len(first.eval) == 10
    train_indices = {e.metadata["entry"]["metadata"]["source_index"] for e in first.train}
    eval_indices = {e.metadata["entry"]["metadata"]["source_index"] for e in first.eval}
    assert not train_indices & eval_indices


def test_arith_scorer_accepts_right_answers_only() -> None:
    task = load_task("arith", seed=0, n_train=5, n_eval=5)
    example = task.eval[0]
    assert task.scorer is not None
    assert task.scorer(f"{example.answer}\n", example) == 1.0
    assert task.scorer(f"{int(example.answer) + 1}", example) == 0.0
    assert task.scorer("I do not know", example) == 0.0


def test_other_reasoning_gym_generators_and_options() -> None:
    task = load_task("arith:basic_arithmetic,max_terms=2,max_digits=1", seed=0, n_train=3, n_eval=2)
    assert all(e.metadata["entry"]["metadata"]["num_terms"] == 2 for e in task.train)
    with pytest.raises(UserError, match="reasoning-gym"):
        load_task("arith:no_such_generator", n_train=2, n_eval=1)
    with pytest.raises(UserError, match="key=value"):
        load_task("arith:chain_sum,oops", n_train=2, n_eval=1)


@pytest.mark.parametrize(
    ("generation", "expected"),
    [
        ("-12", "-12"),
        ("  42<|im_end|>", "42"),
        ("The answer is 7", "7"),
        ("\n\n3.5\n9", "3.5"),
        ("none", None),
    ],
)
def test_extract_answer(generation: str, expected: str | None) -> None:
    assert extract_answer(generation) == expected


def test_prompt_tokens_are_masked_and_response_ends_with_eos() -> None:
    tokenizer = byte_tokenizer()
    example = Example(prompt="1 + 2 =", response="3")
    ids, labels = tokenize_example(tokenizer, example, max_length=512)
    prompt_length = len(
        tokenizer(format_prompt(tokenizer, example.prompt), add_special_tokens=False)["input_ids"]
    )
    assert labels[:prompt_length] == [IGNORE_INDEX] * prompt_length
    assert labels[prompt_length:] == ids[prompt_length:]
    assert tokenizer.decode(ids[prompt_length:-1]) == "3"
    assert ids[-1] == tokenizer.eos_token_id


def test_batches_pad_right_mask_padding_and_count_loss_tokens() -> None:
    tokenizer = byte_tokenizer()
    examples = [Example("a", "12"), Example("a much longer prompt", "7")]
    (batch,) = make_batches(tokenizer, examples, batch_size=2)
    assert batch.input_ids.shape[0] == 2
    assert batch.attention_mask[0].sum() < batch.attention_mask[1].sum()
    assert (batch.labels[batch.attention_mask == 0] == IGNORE_INDEX).all()
    assert batch.loss_tokens == (2 + 1) + (1 + 1)


def test_batches_shuffle_deterministically_and_drop_truncated_examples() -> None:
    tokenizer = byte_tokenizer()
    examples = [Example(f"q{i}", str(i)) for i in range(10)]
    a = make_batches(tokenizer, examples, 3, shuffle_seed=1)
    b = make_batches(tokenizer, examples, 3, shuffle_seed=1)
    assert all((x.input_ids == y.input_ids).all() for x, y in zip(a, b))
    assert sum(batch.size for batch in a) == 10
    with pytest.raises(UserError, match="max_length"):
        make_batches(tokenizer, examples, 3, max_length=4)


def test_empty_dataset_and_bad_batch_size_are_refused() -> None:
    tokenizer = byte_tokenizer()
    with pytest.raises(UserError, match="empty"):
        make_batches(tokenizer, [], 4)
    with pytest.raises(UserError, match="batch size"):
        make_batches(tokenizer, [Example("q", "a")], 0)


def test_metamath_jsonl_fields_are_detected(tmp_path) -> None:
    path = tmp_path / "metamath.jsonl"
    rows = [
        {"query": f"What is {i} + {i}?", "response": f"Double it. The answer is: {2 * i}"} for i in range(10)
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    task = load_task(str(path), n_train=100, n_eval=3)
    assert len(task.eval) == 2 and len(task.train) == 8  # at most a fifth held out
    example = task.train[0]
    assert example.answer == str(2 * int(example.prompt.split()[2]))
    assert task.scorer is not None
    assert task.scorer(f"so the answer is: {example.answer}", example) == 1.0


def test_alpaca_json_joins_instruction_and_input(tmp_path) -> None:
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "Add", "input": "2 and 3", "output": "5"}] * 3))
    task = load_task(str(path), n_train=10, n_eval=1)
    assert all(e.prompt == "Add\n\n2 and 3" for e in task.train + task.eval)


def test_explicit_field_mapping_and_its_errors(tmp_path) -> None:
    path = tmp_path / "custom.jsonl"
    path.write_text(json.dumps({"q": "x?", "a": "1"}) + "\n" + json.dumps({"q": "y?", "a": "2"}))
    task = load_task(f"{path}::q,a", n_train=10, n_eval=1)
    assert {e.response for e in task.train + task.eval} == {"1", "2"}
    with pytest.raises(UserError, match="no known prompt/response"):
        load_task(str(path))
    with pytest.raises(UserError, match="no field 'answer'"):
        load_task(f"{path}::q,answer")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("", "no records"), ("{not json", "not valid JSON"), ("[1, 2]", "JSON objects")],
)
def test_bad_files_raise_one_line_errors(tmp_path, content: str, fragment: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=fragment) as info:
        load_task(str(path))
    assert "\n" not in str(info.value)


def test_missing_file_and_unknown_task() -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_task("/nonexistent/data.jsonl")
    with pytest.raises(UserError, match="unknown task"):
        load_task("imagenet")


def test_humaneval_ships_164_problems() -> None:
    task = load_task("humaneval")
    assert len(task.eval) == 164 and task.kind == "code" and not task.train
    assert task.eval[0].metadata["task_id"] == "HumanEval/0"


def test_prompt_templates(tiny) -> None:
    from hessian_lora.inputs.tasks import ALPACA_TEMPLATE, format_prompt, make_batches

    tok = tiny.tokenizer
    assert format_prompt(tok, "2+2?") == "Question: 2+2?\nAnswer: "  # chat without a chat template: plain
    assert format_prompt(tok, "2+2?", "alpaca") == ALPACA_TEMPLATE.replace("{instruction}", "2+2?")
    assert format_prompt(tok, "2+2?", "alpaca").endswith("### Instruction:\n2+2?\n\n### Response:")
    assert format_prompt(tok, "x", "Q {instruction} {other}") == "Q x {other}"
    with pytest.raises(UserError, match="prompt template"):
        format_prompt(tok, "x", "nothing here")
    example = [Example(prompt="2+2?", response="4", answer="4")]
    plain = make_batches(tok, example, 1)[0]
    alpaca = make_batches(tok, example, 1, prompt_template="alpaca")[0]
    assert alpaca.input_ids.shape[1] > plain.input_ids.shape[1] and alpaca.loss_tokens == plain.loss_tokens
