"""User-facing errors: one line that names the fix, turned into a non-zero exit code by the CLI."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user. The message is a single line that says how to fix it.

    A ``ValueError`` so that library callers who catch bad values catch it too; the CLI prints the message
    alone (no traceback) and exits with :attr:`exit_code`.

    Args:
        message: the one line: the file or field, what is wrong, and the fix.

    Attributes:
        exit_code: the CLI's exit status for it (2).
    """

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
