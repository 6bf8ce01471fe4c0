"""Prompt templates by name: the vocabulary every setting that formats examples is checked against.

The formatting itself (a tokenizer's chat template) is :func:`hessian_lora.data.format_prompt`'s; the names and
their check live here so that settings can be validated without loading a tokenizer or torch.
"""

from __future__ import annotations

from hessian_lora.errors import UserError

ALPACA_TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n### Instruction:\n{instruction}\n\n### Response:")
PLAIN_TEMPLATE = "Question: {instruction}\nAnswer: "
# ``chat``: the tokenizer's chat template, or ``plain`` when it has none (the toolkit's behaviour before templates
# could be chosen, hence the default: existing results do not change).
PROMPT_TEMPLATES: dict[str, str | None] = {"chat": None, "alpaca": ALPACA_TEMPLATE, "plain": PLAIN_TEMPLATE}
DEFAULT_PROMPT_TEMPLATE = "chat"


def check_prompt_template(template: str) -> str:
    """``template`` if it is a template name (chat, alpaca, plain) or a string holding ``{instruction}``."""
    if not isinstance(template, str) or (template not in PROMPT_TEMPLATES and "{instruction}" not in template):
        raise UserError(f"bad prompt template {template!r}: use chat, alpaca, plain, or a string with "
                        "{instruction} where the prompt goes.")
    return template
