"""User-facing errors: one line that names the fix, turned into a non-zero exit code by the CLI."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user. The message is a single line that says how to fix it."""

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
