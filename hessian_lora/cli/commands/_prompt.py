"""The ``--prompt-template`` option shared by the commands that tokenise examples (eigen, sweep, init, recommend)."""

from __future__ import annotations

import argparse

from hessian_lora.settings.prompts import TEMPLATE_CHOICES

CHOICES_HELP = TEMPLATE_CHOICES


def add_prompt_template_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, default: str | None, purpose: str
) -> None:
    """``--prompt-template``; ``purpose`` says what it formats and what the default means."""
    parser.add_argument("--prompt-template", default=default, help=f"{CHOICES_HELP}: {purpose}")
