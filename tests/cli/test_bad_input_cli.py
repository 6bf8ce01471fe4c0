"""Bad input to ``hessian-lora`` itself, before any command: an unknown command, and a Ctrl-C inside any command or
during start-up (exit 130, one line, no traceback); start-up imports no torch."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bad_input_cases import Case, Good, cli_env, fails, params, refuse, write

INTERRUPTED = "hessian-lora: interrupted; finished work is kept, rerun to resume."

CASES: list[Case] = [
    Case("unknown-command", ["frobnicate"], at_most_a_lock=["{tmp}/out"]),
]
# Each command's argv, its run() replaced by one that raises KeyboardInterrupt.
INTERRUPTED_COMMANDS: list[Case] = [
    Case(command, argv, exit=130, says=[f"hessian-lora {command}: interrupted; finished work is kept"])
    for command, argv in {
        "methods": ["methods"],
        "init": ["init", "--method", "lora", "--out", "x"],
        "info": ["info", "x"],
        "eigen": ["eigen", "--method", "lora", "--out", "x"],
        "sweep": ["sweep", "c.yaml", "--out", "x"],
        "results": ["results", "x"],
        "analyze": ["analyze", "x"],
        "recommend": ["recommend"],
        "plot": ["plot", "x"],
        "demo": ["demo"],
    }.items()
]


@pytest.mark.parametrize("case", params(CASES))
def test_cli_refuses(case: Case, good: Good, untouched, tmp_path: Path, capsys, monkeypatch) -> None:
    refuse(case, good, tmp_path, capsys, monkeypatch)


@pytest.mark.parametrize("case", params(INTERRUPTED_COMMANDS))
def test_keyboard_interrupt_inside_any_command(case: Case, monkeypatch, capsys) -> None:
    module = importlib.import_module(f"hessian_lora.cli.commands.{case.id}")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "run", interrupted)
    message = fails(case.argv, capsys, expected=case.exit)
    assert all(text in message for text in case.says), message


def test_importing_the_cli_imports_no_torch() -> None:
    code = "import sys, hessian_lora.cli.main; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=60
    )
    assert result.stdout.strip() == "False", result.stderr


def test_an_interrupt_escaping_exec_still_exits_130(tmp_path) -> None:
    """CPython marks a KeyboardInterrupt that leaves ``exec`` of source text (how dataclasses build methods, so an
    import interrupted there does it), and under ``python -m`` ends the process by SIGINT (-2) instead of our
    130 (CI saw it in test_ctrl_c_in_the_first_seconds). Run as a module, like ``python -m hessian_lora``."""
    write(
        tmp_path / "interrupted_import.py",
        "import sys, hessian_lora.cli.main as cli\n"
        "def interrupted_while_importing():\n    exec('raise KeyboardInterrupt')\n"
        "cli.build_parser = interrupted_while_importing\nsys.exit(cli.main([]))\n",
    )
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "interrupted_import"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == INTERRUPTED


def test_an_interrupt_during_an_import_waits_for_the_import(tmp_path) -> None:
    """A Ctrl-C raised inside an import can abort the process from torch's C++ start-up (status -6, CI saw it in
    test_ctrl_c_in_the_first_seconds): the CLI delivers it once the import is done, and still exits 130."""
    write(
        tmp_path / "slow_module.py",
        "import signal, time\nsignal.raise_signal(signal.SIGINT)\ntime.sleep(0.3)\nFINISHED = True\n",
    )
    write(
        tmp_path / "interrupted_import.py",
        "import sys, time, hessian_lora.cli.main as cli\n"
        "def build_parser():\n    import slow_module\n    time.sleep(30)\n"
        "cli.build_parser = build_parser\ncode = cli.main([])\n"
        "print(getattr(sys.modules.get('slow_module'), 'FINISHED', False))\nsys.exit(code)\n",
    )
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "interrupted_import"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 130, result.stderr
    assert result.stdout.strip() == "True"  # the import ran to its end before the interrupt landed
    assert time.monotonic() - started < 20  # ... and the interrupt did land, in the sleep after it
    assert result.stderr.strip() == INTERRUPTED
