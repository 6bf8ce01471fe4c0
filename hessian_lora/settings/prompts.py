"""Prompt templates by name: the vocabulary every setting that formats examples is checked against.

The formatting itself (a tokenizer's chat template) is :func:`hessian_lora.inputs.tasks.format_prompt`'s; the names and
their check live here so that settings can be validated without loading a tokenizer or torch.

- ``raw``: the prompt as it is, nothing added (how TRL's ``SFTTrainer`` and a plain ``transformers`` loop see
  text data);
- ``chat``: the tokenizer's chat template, one user turn and the generation prompt (``plain`` for a tokenizer
  without one);
- ``alpaca``: the Alpaca prompt the paper's authors used;
- ``plain``: ``Question: ...\\nAnswer: ``;
- any string holding ``{prompt}`` (or ``{instruction}``, its older name) where the prompt goes.
"""

from __future__ import annotations

from hessian_lora.core.errors import UserError

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)
PLAIN_TEMPLATE = "Question: {instruction}\nAnswer: "
RAW_TEMPLATE = "{instruction}"
# ``chat``: the tokenizer's chat template, or ``plain`` when it has none (the toolkit's behaviour before templates
# could be chosen, hence the default: existing results do not change).
PROMPT_TEMPLATES: dict[str, str | None] = {
    "chat": None,
    "alpaca": ALPACA_TEMPLATE,
    "plain": PLAIN_TEMPLATE,
    "raw": RAW_TEMPLATE,
}
DEFAULT_PROMPT_TEMPLATE = "chat"
# Where a template string puts the prompt: ``{prompt}``, or ``{instruction}`` (the name it had first).
PROMPT_PLACEHOLDERS = ("{prompt}", "{instruction}")
# The choices in one phrase, for flag help and error messages.
TEMPLATE_CHOICES = "raw, chat (plain without a chat template), alpaca, plain, or a string with {prompt}"


def check_prompt_template(template: str) -> str:
    """``template`` if it is a template name (raw, chat, alpaca, plain) or a string holding ``{prompt}``."""
    if not isinstance(template, str) or (
        template not in PROMPT_TEMPLATES and not any(mark in template for mark in PROMPT_PLACEHOLDERS)
    ):
        raise UserError(
            f"bad prompt template {template!r}: use raw, chat, alpaca, plain, or a string with "
            "{prompt} where the prompt goes, e.g. --prompt-template 'Q: {prompt}\\nA: '."
        )
    return template


def fill_template(template: str, prompt: str) -> str:
    """A template string (not ``chat``) with the prompt put where its placeholder says; other braces kept."""
    text = PROMPT_TEMPLATES.get(template) or template
    for mark in PROMPT_PLACEHOLDERS:
        text = text.replace(mark, prompt) if mark in text else text
    return text
