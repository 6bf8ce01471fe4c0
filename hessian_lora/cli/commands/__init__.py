"""CLI sub-commands, one module each (see ``hessian_lora.cli.main.COMMAND_MODULES``).

Each command module's docstring is its ``--help`` description (after its first paragraph, which names the
command for readers of the code); ``HELP`` is its one-line summary in ``hessian-lora --help``; ``register`` adds
its arguments through :func:`add_command`, and ``run(args) -> int`` is its handler.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    help: str,
    doc: str | None,
    handler: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """The parser of one sub-command: ``help`` in the command list, ``doc`` (a module docstring, its first
    paragraph left out, or a plain description) as the description, ``handler`` run on its arguments."""
    paragraphs = (doc or "").strip().split("\n\n")
    description = " ".join(" ".join(paragraphs[1:] if len(paragraphs) > 1 else paragraphs).split())
    parser = subparsers.add_parser(name, help=help, description=description)
    parser.set_defaults(handler=handler)
    return parser
