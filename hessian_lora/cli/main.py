"""The ``hessian-lora`` command line: one sub-command per module in ``hessian_lora.cli.commands``."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any, NoReturn

from hessian_lora.core.errors import UserError

# Order is the order of --help. Each module defines register(subparsers), which adds its parser through
# hessian_lora.cli.commands.add_command with ``run`` (parsed args -> exit code) as its handler.
COMMAND_MODULES = (
    "methods",
    "init",
    "info",
    "eigen",
    "sweep",
    "results",
    "analyze",
    "recommend",
    "plot",
    "demo",
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``PROG: error: MESSAGE (see PROG --help)`` and exit 2, no usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``hessian-lora`` argument parser with every sub-command registered."""
    parser = _Parser(
        prog="hessian-lora",
        description="Which learning rate each LoRA variant needs, and why: LR sweeps and loss-Hessian sharpness.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"hessian_lora.cli.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"hessian_lora.cli.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; bad input and interrupts end with one line on stderr and exit 2 / 130, never a traceback.

    Building the parser imports torch and peft (seconds): a Ctrl-C then must end as cleanly as one mid-command,
    so the parser is built inside the same guard as the command. A KeyboardInterrupt raised inside an import can
    come out as another exception (numpy's lazy ``numpy.dtypes`` import, interrupted, recurses until a
    RecursionError): any exception after a Ctrl-C counts as the interrupt.
    """
    command = "hessian-lora"
    with _noting_interrupts() as interrupted:
        try:
            parser = build_parser()
            try:
                args = parser.parse_args(argv)
            except (
                SystemExit
            ) as exc:  # --help (0) or a usage error (2, already printed): a code, not an exception
                return exc.code if isinstance(exc.code, int) else 2
            if not getattr(args, "handler", None):
                parser.print_help()
                return 2
            command = f"hessian-lora {args.command}"
            return int(args.handler(args) or 0)
        except UserError as exc:
            print(f"{command}: error: {exc}", file=sys.stderr)
            return exc.exit_code
        except BrokenPipeError:
            # Output piped into head/less that closed early: not an error of ours.
            sys.stderr.close()
            return 0
        except Exception:
            if not interrupted:
                raise
            return _report_interrupt(command)
        except KeyboardInterrupt:
            return _report_interrupt(command)


def _report_interrupt(command: str) -> int:
    """One line on stderr, and exit status 130 whatever CPython noted on the way.

    A KeyboardInterrupt that escapes an ``exec`` of source text (dataclasses build every ``__init__`` that way,
    so an import interrupted at the wrong moment does it) sets CPython's "unhandled KeyboardInterrupt" flag,
    and the interpreter then ends by re-raising SIGINT on itself (status -2) even though we caught it and
    asked for 130. Each ``exec`` of source text clears that flag first, so an empty one restores our status.
    """
    print(f"{command}: interrupted; finished work is kept, rerun to resume.", file=sys.stderr)
    exec("pass")  # a constant: clears the flag described above
    return 130


@contextlib.contextmanager
def _noting_interrupts() -> Iterator[list[bool]]:
    """SIGINT raises KeyboardInterrupt as usual (deferred until a running import finishes) and is noted in the
    yielded list (truthy once one arrived). Outside the main thread (where no signal handler can be set)
    nothing is noted."""
    noted: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return

    def on_interrupt(signum: int, frame: Any) -> None:
        noted.append(True)
        if _inside_an_import(frame):
            # Raised inside an import, the interrupt can land in torch's C++ start-up (``_autograd_init`` checks
            # signals): pybind11 then throws into C++ that cannot catch it and the process aborts (status -6,
            # seen in CI). Nothing is computed while importing, so deliver it again shortly, after the import.
            _deliver_again()
            return
        raise KeyboardInterrupt

    def on_unraisable(unraisable: Any) -> None:
        # A KeyboardInterrupt raised while a finalizer (``__del__``, a weakref callback: the garbage collector
        # runs them at any moment of torch's start-up) ran is not raised but printed as "Exception ignored in"
        # with its traceback, and the program went on to exit 0. Swallow the print and deliver it again.
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and noted:
            _deliver_again()
            return
        previous_hook(unraisable)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    previous_hook, sys.unraisablehook = sys.unraisablehook, on_unraisable
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook


def _deliver_again() -> None:
    """Send SIGINT to this process again shortly (from a timer thread: the handler runs in the main thread)."""
    retry = threading.Timer(_RETRY_INTERRUPT_SECONDS, os.kill, (os.getpid(), signal.SIGINT))
    retry.daemon = True
    retry.start()


_RETRY_INTERRUPT_SECONDS = 0.05
_IMPORT_MACHINERY = frozenset({"<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>"})


def _inside_an_import(frame: FrameType | None) -> bool:
    """Whether the interrupted code runs under an ``import`` (some frame of the stack is importlib's)."""
    while frame is not None:
        if frame.f_code.co_filename in _IMPORT_MACHINERY:
            return True
        frame = frame.f_back
    return False


if __name__ == "__main__":
    sys.exit(main())
