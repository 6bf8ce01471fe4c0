"""Evaluation sets: loaders on home-made fixtures, math-verify scoring, MBPP/HumanEval pass@1, bad files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from hessian_lora.core.errors import UserError
from hessian_lora.inputs.tasks import Example
from hessian_lora.training.evalsets import (
    answers_equal,
    extract_math_answer,
    gsm8k_gold,
    last_boxed,
    load_eval_set,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GSM8K = FIXTURES / "gsm8k.jsonl"
MATH = FIXTURES / "math.jsonl"
MBPP = FIXTURES / "mbpp.jsonl"


# ------------------------------------------------------------------------------------------------- loaders


def test_gsm8k_loads_questions_and_gold_numbers() -> None:
    evalset = load_eval_set(f"gsm8k:{GSM8K}")
    assert (evalset.name, evalset.kind) == ("gsm8k", "math")
    assert [example.answer for example in evalset.examples] == ["34", "315", "2000", "-5"]
    first = evalset.examples[0]
    assert isinstance(first, Example)
    assert first.prompt.startswith("A baker fills 7 trays")
    assert first.response.endswith("#### 34")
    assert load_eval_set(f"gsm8k:{GSM8K}", limit=2).examples == evalset.examples[:2]


def test_math_gold_is_the_last_boxed_with_nested_braces() -> None:
    evalset = load_eval_set(f"math:{MATH}")
    assert (evalset.name, evalset.kind) == ("math", "math")
    assert [example.answer for example in evalset.examples] == [
        "\\frac{1}{2}",
        "\\left( 1, 2 \\right)",
        "5\\sqrt{2}",
        "3",
        "[2, 5)",
    ]
    assert evalset.examples[0].metadata["level"] == "Level 1"
    assert evalset.examples[1].metadata["type"] == "Algebra"


def test_mbpp_loads_prompts_tests_and_setup_code() -> None:
    evalset = load_eval_set(f"mbpp:{MBPP}")
    assert (evalset.name, evalset.kind) == ("mbpp", "code")
    assert [example.metadata["task_id"] for example in evalset.examples] == [1, 2, 3]
    first = evalset.examples[0]
    assert "sum of the squares" in first.prompt and "assert sum_squares([1, 2, 3]) == 14" in first.prompt
    assert evalset.examples[2].metadata["test_setup_code"].startswith("SHARED =")


def test_last_boxed_and_answer_extraction() -> None:
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{a}{b^{2}}} end") == "\\frac{a}{b^{2}}"
    assert last_boxed("so \\boxed 7$.") == "7"
    assert last_boxed("no box here") is None
    assert (
        extract_math_answer("work... so the result is \\boxed{\\dfrac{1}{2}}. The answer is 3")
        == "\\dfrac{1}{2}"
    )
    assert extract_math_answer("We add them.\nThe answer is $42$.\nDone, 7 more words") == "42"
    assert extract_math_answer("12 + 30 = 42\n#### 42") == "42"
    assert extract_math_answer("first 3 then 17 apples") == "17"
    assert extract_math_answer("no numbers at all") is None
    assert gsm8k_gold("steps\n#### 1,234") == "1234"
    assert gsm8k_gold("steps without a marker") is None


# ------------------------------------------------------------------------------------------------- scorers


@pytest.mark.parametrize(
    ("gold", "answer", "equal"),
    [
        ("\\frac{1}{2}", "0.5", True),
        ("\\frac{1}{2}", "\\dfrac{1}{2}", True),
        ("\\frac{1}{2}", "1/2", True),
        ("\\left( 1, 2 \\right)", "(1,2)", True),
        ("5\\sqrt{2}", "\\sqrt{50}", True),
        ("[2, 5)", "[2,5)", True),
        ("\\frac{1}{2}", "\\frac{1}{3}", False),
        ("\\left( 1, 2 \\right)", "(2,1)", False),
        ("[2, 5)", "[2, 5]", False),
        ("2000", "2,000", True),
        ("34", "35", False),
        ("34", None, False),
    ],
)
def test_math_answers_compare_mathematically(gold: str, answer: str | None, equal: bool) -> None:
    assert answers_equal(gold, answer) is equal


def test_gsm8k_scorer_right_and_wrong_generations() -> None:
    evalset = load_eval_set(f"gsm8k:{GSM8K}")
    rolls, pages, cost, cold = evalset.examples
    assert evalset.score("84 rolls, 50 sold, so 34 remain.\nThe answer is 34.", rolls) == 1.0
    assert evalset.score("84 - 50 = 34\n#### 34", rolls) == 1.0
    assert evalset.score("The answer is 36.", rolls) == 0.0
    assert evalset.score("She reads 21 * 15 = 315 pages", pages) == 1.0  # last number
    assert evalset.score("315 pages in 3 weeks", pages) == 0.0  # the last number is 3
    assert evalset.score("The total is \\boxed{2000}", cost) == 1.0
    assert evalset.score("The answer is $2,000.", cost) == 1.0
    assert evalset.score("The answer is -5", cold) == 1.0
    assert evalset.score("The answer is 5", cold) == 0.0
    assert evalset.accuracy(["#### 34", "#### 0", "#### 2000", "#### -5"]) == pytest.approx(0.75)


def test_math_scorer_accepts_equal_answers_written_differently() -> None:
    half, point, root, three, interval = load_eval_set(f"math:{MATH}").examples
    score = load_eval_set(f"math:{MATH}").score
    assert score("It is $\\boxed{0.5}$.", half) == 1.0
    assert score("so \\boxed{\\dfrac{1}{2}}", half) == 1.0
    assert score("so \\boxed{\\frac{2}{3}}", half) == 0.0
    assert score("They meet at \\boxed{(1,2)}.", point) == 1.0
    assert score("They meet at \\boxed{(1,3)}.", point) == 0.0
    assert score("\\boxed{\\sqrt{50}}", root) == 1.0
    assert score("\\boxed{5\\sqrt{3}}", root) == 0.0
    assert score("The answer is 3", three) == 1.0
    assert score("\\boxed{[2,5)}", interval) == 1.0
    assert score("\\boxed{(2,5)}", interval) == 0.0


def test_mbpp_pass_at_1_right_wrong_and_timeout() -> None:
    evalset = load_eval_set(f"mbpp:{MBPP}", code_timeout=3.0)
    squares, mirror, shared = evalset.examples
    assert evalset.score(squares.response, squares) == 1.0
    assert (
        evalset.score(
            "```python\ndef sum_squares(values):\n    return sum(v * v for v in values)\n```", squares
        )
        == 1.0
    )
    assert evalset.score("def sum_squares(values):\n    return sum(values)\n", squares) == 0.0
    assert evalset.score(shared.response, shared) == 1.0  # needs test_setup_code
    assert evalset.score("def is_mirror(text):\n    return True\n", mirror) == 0.0
    start = time.monotonic()
    assert evalset.score("def is_mirror(text):\n    while True:\n        pass\n", mirror) == 0.0
    assert time.monotonic() - start < 8.0


def test_humaneval_reuses_the_embedded_problems() -> None:
    evalset = load_eval_set("humaneval", limit=1, code_timeout=5.0)
    (example,) = evalset.examples
    assert (evalset.name, evalset.kind) == ("humaneval", "code")
    assert example.metadata["task_id"] == "HumanEval/0"
    assert evalset.score(example.response, example) == 1.0
    assert evalset.score("    return False\n", example) == 0.0


# ------------------------------------------------------------------------------------------------- bad files


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("kind", "content", "fragment"),
    [
        ("gsm8k", json.dumps({"question": "q"}) + "\n", "no field 'answer'"),
        ("gsm8k", json.dumps({"question": "q", "answer": "no marker"}) + "\n", "#### NUMBER"),
        ("gsm8k", "", "is empty"),
        ("gsm8k", "question,answer\nq,a\n", "line 1 is not JSON"),
        ("gsm8k", b'{"question": "caf\xe9", "answer": "#### 1"}\n', "not UTF-8"),
        ("gsm8k", "[1, 2]\n", "not an object"),
        ("math", json.dumps({"problem": "p", "solution": "the answer is 3"}) + "\n", "no \\\\boxed"),
        ("math", json.dumps({"problem": "p", "solution": "\\boxed{3"}) + "\n", "no \\\\boxed"),
        ("math", json.dumps({"solution": "\\boxed{3}"}) + "\n", "no field 'problem'"),
        ("mbpp", json.dumps({"task_id": 1, "text": "t", "code": "c"}) + "\n", "no field 'test_list'"),
        (
            "mbpp",
            json.dumps({"task_id": 1, "text": "t", "code": "c", "test_list": "assert 1"}) + "\n",
            "field 'test_list' is a str",
        ),
    ],
)
def test_bad_files_give_one_line_errors_naming_file_and_field(
    tmp_path: Path, kind: str, content: str | bytes, fragment: str
) -> None:
    path = _write(tmp_path, f"bad-{kind}.jsonl", content)
    with pytest.raises(UserError, match=fragment) as info:
        load_eval_set(f"{kind}:{path}")
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message


def test_bad_specs(tmp_path: Path) -> None:
    for spec, fragment in [
        ("squad:x.jsonl", "unknown eval set"),
        ("gsm8k", "needs a file"),
        (f"gsm8k:{tmp_path / 'missing.jsonl'}", "does not exist"),
    ]:
        with pytest.raises(UserError, match=fragment):
            load_eval_set(spec)
    with pytest.raises(UserError, match="limit"):
        load_eval_set(f"gsm8k:{GSM8K}", limit=0)
