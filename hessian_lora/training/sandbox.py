"""Confinement of generated programs (MBPP and HumanEval scoring runs the code a model writes).

Two levels, chosen once per process by :func:`code_confinement`:

- ``namespaces`` (the default wherever the machine allows it): the program runs under util-linux ``unshare`` in
  fresh user, mount, network, PID, IPC and UTS namespaces; :mod:`hessian_lora.training._sandbox_init` pivots it into a
  private size-limited tmpfs root holding only read-only binds of the system directories and the interpreter,
  a few device nodes, a read-only /proc of its own PID namespace, an empty /tmp and its working directory. The
  user's files (home directories, the working tree, the host's /tmp) are not in its file tree at all, the
  network has only a down loopback, every capability is dropped, and when the program (PID 1 of its namespace)
  ends or is killed at the timeout, every descendant dies with it.
- ``none``: a temporary working directory and resource limits only. Used only when the user accepts the risk
  (``--allow-unconfined-code`` / ``eval.allow_unconfined_code: true``); otherwise code execution is refused with
  one line saying what to install or which flag accepts the risk, as OpenAI's human-eval and the
  bigcode-evaluation-harness do.

Both levels set RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE and RLIMIT_NOFILE; the confined one also RLIMIT_NPROC
(counted per user namespace since Linux 5.14) and its PID namespace's ``pid_max`` (Linux >= 6.14), which caps a
fork storm even for a caller that is root. This is confinement for benchmark code, not a security boundary
against a determined attacker with a kernel exploit. See docs/sandbox.md.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hessian_lora.core.bounds import time_limit
from hessian_lora.core.errors import UserError

ConfinementLevel = Literal["namespaces", "none"]

UNSHARE_ARGUMENTS = (
    "--user",
    "--map-root-user",
    "--mount",
    "--net",
    "--pid",
    "--ipc",
    "--uts",
    "--fork",
    "--kill-child",
)
# Read-only inside the sandbox: what an interpreter and the standard library need. /etc is left out (it holds
# the host's account and key files; Python starts without it).
SYSTEM_DIRECTORIES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SCRATCH_BYTES = 64 << 20  # the private root's tmpfs (program, /tmp, working directory) in memory
FILE_SIZE_LIMIT = 16 << 20  # RLIMIT_FSIZE: no single file beyond this
OPEN_FILES_LIMIT = 64  # RLIMIT_NOFILE
PROCESS_LIMIT = 64  # RLIMIT_NPROC inside the user namespace (not binding on a root caller: see PID_MAX)
PID_MAX = 301  # the smallest pid_max the kernel accepts: a fork storm stops near 300 processes
INIT_FAILED = 121  # _sandbox_init's exit status when it could not build the sandbox
HIDES = (
    "network (down loopback only)",
    "host file tree (home directories, working tree, /etc, host /tmp)",
    "writes outside a private 64 MiB tmpfs (system and interpreter read-only)",
    "descendants (PID namespace: all end with the program)",
    "capabilities (all dropped)",
)
INSTALL_HINT = (
    "install util-linux's unshare and allow unprivileged user namespaces (sysctl "
    "kernel.unprivileged_userns_clone=1 or the AppArmor profile), or accept the risk with "
    "--allow-unconfined-code (eval.allow_unconfined_code: true)"
)


@dataclass(frozen=True)
class Confinement:
    """How generated programs run in this process: the level, the tool, what it hides, why (when it is none)."""

    level: ConfinementLevel
    backend: str  # the command used ("unshare"), or "none"
    hides: tuple[str, ...] = ()
    reason: str = ""  # why no confinement is available, when level is "none"
    limits: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """What a run's metadata records (eval.json's ``code_confinement``)."""
        record: dict[str, Any] = {
            "level": self.level,
            "backend": self.backend,
            "hides": list(self.hides),
            "limits": dict(self.limits),
        }
        if self.reason:
            record["reason"] = self.reason
        return record

    def line(self) -> str:
        """The one console line said when code first runs."""
        if self.level == "namespaces":
            return (
                f"generated code runs confined ({self.backend} namespaces): no network, host files out of "
                "sight, read-only system, private /tmp and home, descendants killed with the program"
            )
        return (
            f"generated code runs UNCONFINED (accepted with --allow-unconfined-code; {self.reason}): it can "
            "read, change and delete your files and reach the network"
        )


def _unshare_command() -> str | None:
    return shutil.which("unshare") or ("/usr/bin/unshare" if os.access("/usr/bin/unshare", os.X_OK) else None)


def _interpreter() -> str:
    """The program's interpreter: this one with symbolic links resolved (a venv's ``bin/python`` is usually a
    link to the base interpreter, whose prefix is bound into the sandbox; the venv's own tree is not)."""
    return os.path.realpath(sys.executable)


def _prefixes() -> list[str]:
    """The interpreter's installation trees, bound read-only at their own paths (pyenv, conda and venvs live
    in home directories, which are otherwise hidden)."""
    interpreter = Path(_interpreter())
    candidates = {
        os.path.realpath(sys.base_prefix),
        os.path.realpath(sys.prefix),
        str(interpreter.parent.parent),
    }
    return sorted(
        path for path in candidates if path not in SYSTEM_DIRECTORIES and not path.startswith("/usr/")
    )


def _limits(timeout: float, memory_bytes: int | None, *, confined: bool) -> dict[str, int]:
    limits = {
        "RLIMIT_CPU": math.ceil(timeout) + 1,
        "RLIMIT_FSIZE": FILE_SIZE_LIMIT,
        "RLIMIT_NOFILE": OPEN_FILES_LIMIT,
    }
    if memory_bytes:
        limits["RLIMIT_AS"] = int(memory_bytes)
    if confined:  # outside a user namespace the count is the user's whole process table: no sane bound
        limits["RLIMIT_NPROC"] = PROCESS_LIMIT
    return limits


def _confined_command(workdir: Path, program: Path, limits: dict[str, int]) -> list[str]:
    unshare = _unshare_command()
    if unshare is None:
        raise UserError(
            f"generated code cannot be confined: util-linux unshare is not installed; {INSTALL_HINT}."
        )
    root = workdir / "root"
    root.mkdir()
    settings = {
        "root": str(root),
        "program": str(program),
        "scratch_bytes": SCRATCH_BYTES,
        "system": list(SYSTEM_DIRECTORIES),
        "prefixes": _prefixes(),
        "pid_max": PID_MAX,
        "limits": limits,
        "python": _interpreter(),
    }
    init = Path(__file__).with_name("_sandbox_init.py").read_text(encoding="utf-8")
    return [unshare, *UNSHARE_ARGUMENTS, "--", _interpreter(), "-I", "-S", "-c", init, json.dumps(settings)]


def execute(program: str, *, timeout: float, memory_bytes: int | None, level: ConfinementLevel) -> int | None:
    """Run ``program`` at ``level``; its exit status, or None when it ran past ``timeout`` seconds (killed with
    every descendant). Status ``INIT_FAILED`` with level ``namespaces`` means the sandbox could not be built."""
    timeout = time_limit(timeout, "the sandbox's timeout")  # no untrusted program runs without a finite limit
    confined = level == "namespaces"
    limits = _limits(timeout, memory_bytes, confined=confined)
    with tempfile.TemporaryDirectory(prefix="hessian-lora-exec-") as directory:
        workdir = Path(directory)
        path = workdir / "program.py"
        path.write_text(program, encoding="utf-8")
        if confined:
            command, cwd, preexec = _confined_command(workdir, path, limits), "/", None
        else:
            command, cwd = [sys.executable, "-I", "-B", str(path)], directory
            preexec = _apply_limits(limits) if os.name == "posix" else None
        process = subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env={"PATH": os.environ.get("PATH", ""), "HOME": directory},
            preexec_fn=preexec,
        )
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return None
        if confined and process.returncode == INIT_FAILED:
            _last_failure.append(stderr.decode(errors="replace").strip().splitlines()[-1:] or [""])
        return process.returncode


_last_failure: list[list[str]] = []  # the init's one-line reason, for the probe


def _apply_limits(limits: dict[str, int]) -> Any:
    def apply() -> None:
        import resource  # local: POSIX only, and needed only in the child process

        for name, value in limits.items():
            resource.setrlimit(getattr(resource, name), (value, value))

    return apply


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # unshare --kill-child takes the namespace's PID 1 with it
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.communicate()


# The probe's program: it must find itself PID 1 of its namespace, without a network and without the host's tree.
_PROBE = """import os, socket
assert os.getpid() == 1
assert not os.path.exists({hidden!r})
try:
    socket.create_connection(("127.0.0.1", 9), timeout=1)
except OSError:
    pass
else:
    raise SystemExit(3)
"""


@functools.lru_cache(maxsize=1)
def probe_confinement() -> Confinement:
    """The strongest confinement this machine gives, found by running a small program in it (cached)."""
    if sys.platform != "linux":
        return Confinement("none", "none", reason=f"namespaces need Linux, this is {sys.platform}")
    if _unshare_command() is None:
        return Confinement("none", "none", reason="util-linux unshare not found")
    hidden = os.path.realpath(Path(__file__).parents[1])  # the package's own tree must be out of sight
    try:
        status = execute(_PROBE.format(hidden=hidden), timeout=30.0, memory_bytes=2 << 30, level="namespaces")
    except OSError as error:
        return Confinement("none", "none", reason=f"unshare cannot start ({error})")
    if status != 0:
        why = _last_failure.pop()[0] if _last_failure else f"exit status {status}"
        return Confinement("none", "none", reason=f"unshare namespaces unavailable ({why or status})")
    return Confinement("namespaces", "unshare", HIDES, limits=_limits(1.0, 2 << 30, confined=True))


_announced: set[ConfinementLevel] = set()
_accepted_in_process = (
    False  # --allow-unconfined-code: holds for this process, a resumed sweep's runs included
)


def accept_unconfined_code() -> None:
    """The user accepted the risk for this process (the CLI's ``--allow-unconfined-code``): a sweep resumed in
    a directory whose stored config did not accept it runs its code too."""
    global _accepted_in_process
    _accepted_in_process = True


def code_confinement(*, allow_unconfined: bool = False, announce: bool = True) -> Confinement:
    """The confinement generated code gets here, said once on stderr; a :class:`UserError` (one line: what to
    install or which flag accepts the risk) when there is none and ``allow_unconfined`` is False."""
    found = probe_confinement()
    if found.level == "none" and not (allow_unconfined or _accepted_in_process):
        raise UserError(
            f"refusing to run generated code without confinement ({found.reason}): {INSTALL_HINT}."
        )
    if announce and found.level not in _announced:
        _announced.add(found.level)
        print(f"hessian-lora: {found.line()}", file=sys.stderr)
    return found


def run_confined(
    program: str, *, timeout: float = 10.0, memory_bytes: int | None = 2 << 30, allow_unconfined: bool = False
) -> bool:
    """True iff ``program`` exits with status 0 within ``timeout`` seconds, run at the strongest confinement
    the machine offers (refused, by :class:`UserError`, where there is none and ``allow_unconfined`` is False)."""
    level = code_confinement(allow_unconfined=allow_unconfined).level
    return execute(program, timeout=timeout, memory_bytes=memory_bytes, level=level) == 0
