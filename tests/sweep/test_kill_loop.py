"""A randomised kill loop: ≥ 30 SIGKILLs of a sweep's process group at random moments, each followed by a resume.

Each phase starts in a fresh directory; its first kill hits a real ``python -m hessian_lora sweep`` in its first
seconds (import, preflight, config.yaml), the others hit sweeps forked from a clean fork server (no import cost)
at random moments or exactly while an eigen report's temporary file exists. Atomic writes are slowed (fsync sleeps) in
the killed processes so that kills land inside writes often. Every phase ends with an uninterrupted resume whose table
must equal an uninterrupted sweep's (timing columns aside) and a directory without temporary files or staging
directories.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sweep_helpers import RESULT_COLUMNS

from hessian_lora.core.store import open_store
from hessian_lora.settings.sweep import config_from_dict
from hessian_lora.sweep.runner import run_sweep

REPO = Path(__file__).resolve().parents[2]
KILLS = 30
SEED = 20250113
CONFIG: dict[str, Any] = {
    "name": "kill-loop",
    "model": "tiny-llama",
    "task": "arith",
    "n_train": 16,
    "n_eval": 4,
    "methods": ["lora", "pissa"],
    "ranks": [2],
    "batch_sizes": [4],
    "lr": [1e-3, 1e-2],
    "steps": 3,
    "max_length": 96,
    "targets": ["q_proj", "v_proj"],
    "checkpoints": "final",
    "eval": {"batch_size": 4, "max_new_tokens": 2},
    "hessian": {"init": True, "final": True, "samples": 4, "batch_size": 4, "max_iter": 5, "smallest": False},
}
# The result columns every execution of a run agrees on, and what a killed run must also leave the same.
COMPARED = (
    *RESULT_COLUMNS,
    "lambda_init",
    "lambda_final",
    "precond_lambda_final",
    "checkpoint",
    "error",
)
SLOW_FSYNC_S = 0.1
# Runs in the killed processes: slow fsync widens the window in which an atomic write's temp file exists.
BOOT = (
    "import os, sys, time\n"
    "_fsync = os.fsync\n"
    f"os.fsync = lambda fd: (time.sleep({SLOW_FSYNC_S}), _fsync(fd))[1]\n"
    "from hessian_lora.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _table(run_dir: Path) -> list[tuple[Any, ...]]:
    with open_store(run_dir, read_only=True) as store:
        rows = store.rows()
    table = []
    for row in rows:
        values = []
        for name in COMPARED:
            value = row[name]
            values.append(round(value, 6) if isinstance(value, float) else value)
        table.append(tuple(values))
    return sorted(table, key=repr)


def _strays(run_dir: Path) -> list[str]:
    """Temporary files and hidden staging directories anywhere in the run directory (the lock file aside)."""
    return sorted(
        str(path.relative_to(run_dir)) for path in run_dir.rglob(".*") if path.name != ".sweep.lock"
    )


def _argv(config_path: Path, run_dir: Path) -> list[str]:
    return ["sweep", str(config_path), "--out", str(run_dir), "--quiet", "--threads", "1"]


def _spawn_subprocess(config_path: Path, run_dir: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(
        [sys.executable, "-c", BOOT, *_argv(config_path, run_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return process.pid


# The forked sweeps come from a fork server: a fresh interpreter that has imported everything and started no
# thread, so each fork copies a process in which no lock can be held by another thread. Forking pytest itself did
# once leave a child in a futex for ever (a lock held at fork time by one of pytest's other threads: the suite's
# earlier tests start them). The server answers one line per command on stdin: "fork ARGV..." → the child's pid;
# "poll PID" → "running" or its wait status; "kill PID" → SIGKILLs the child's process group and reaps it, then
# "killed STATUS", or "ended STATUS" when it had already ended.
FORK_SERVER = BOOT.replace(
    "sys.exit(main(sys.argv[1:]))\n",
    """\
import contextlib, signal
import hessian_lora.sweep.runner  # imported before any fork, so a child starts its sweep at once
for line in sys.stdin:
    command, *args = line.split()
    if command == "fork":
        pid = os.fork()
        if pid == 0:  # the child: never return into the loop
            code = 99
            try:
                os.setpgid(0, 0)
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                code = main(args)
            except BaseException:
                code = 98
            finally:
                os._exit(code)
        with contextlib.suppress(OSError):  # both sides set the group, so a kill right after the fork finds it
            os.setpgid(pid, pid)
        reply = str(pid)
    elif command == "poll":
        done, status = os.waitpid(int(args[0]), os.WNOHANG)
        reply = str(status) if done else "running"
    elif command == "kill":
        pid = int(args[0])
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            reply = f"ended {status}"
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            reply = f"killed {os.waitpid(pid, 0)[1]}"
    else:
        reply = "unknown command"
    sys.stdout.write(reply + "\\n")
    sys.stdout.flush()
""",
)


class ForkServer:
    """Forks sweeps from a clean interpreter (see FORK_SERVER); the same calls as the local helpers below."""

    def __init__(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", FORK_SERVER],
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def _ask(self, *words: object) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(" ".join(map(str, words)) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline().strip()
        assert reply and reply != "unknown command", f"fork server: {reply!r} to {words}"
        return reply

    def spawn(self, config_path: Path, run_dir: Path) -> int:
        return int(self._ask("fork", *_argv(config_path, run_dir)))

    def finished(self, pid: int) -> bool:
        return self._ask("poll", pid) != "running"

    def kill(self, pid: int) -> bool:
        """SIGKILL the sweep's process group; True when it was still running (the kill interrupted it)."""
        how, status = self._ask("kill", pid).split()
        return how == "killed" and os.WIFSIGNALED(int(status)) and os.WTERMSIG(int(status)) == signal.SIGKILL

    def wait_bounded(self, pid: int, limit_s: float) -> bool:
        """Reap ``pid`` if it ends within ``limit_s`` (True); False if it is still running then."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.finished(pid):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()  # the loop ends at end of input
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _finished(pid: int) -> int | None:
    """The child's wait status if it has ended (reaped), else None."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return status if done == pid else None


def _kill(pid: int) -> bool:
    """SIGKILL the process group of ``pid`` (a child of this process); True when it was still running (the kill
    interrupted it)."""
    if _finished(pid) is not None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _wait_for_eigen_temp(pid: int, run_dir: Path, limit_s: float) -> bool:
    """Poll until a temporary eigen report exists in hessian/ (True) or the sweep ends / time runs out."""
    deadline = time.monotonic() + limit_s
    hessian = run_dir / "hessian"
    while time.monotonic() < deadline:
        if hessian.is_dir() and any(hessian.glob(".*.tmp")):
            return True
        if _finished_peek(pid):
            return False
        time.sleep(0.003)
    return False


def _finished_peek(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); look at its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


@pytest.fixture
def fork_server() -> Iterator[ForkServer]:
    server = ForkServer()
    yield server
    server.close()


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="fork and /proc (Linux)")
def test_random_kills_then_resume_give_the_uninterrupted_table(
    tmp_path: Path, fork_server: ForkServer
) -> None:
    started = time.monotonic()
    config_path = tmp_path / "kill.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    config = config_from_dict(CONFIG, source="kill loop")
    reference_dir = tmp_path / "reference"
    summary = run_sweep(config, reference_dir, progress=False)
    assert summary.counts == {"done": 4}, summary
    reference = _table(reference_dir)

    rng = random.Random(SEED)
    kills = stale_after_kill = eigen_kills = phases = 0
    log: list[str] = []
    while kills < KILLS:
        phases += 1
        run_dir = tmp_path / f"phase{phases}"
        phase_kills = 0
        # First start in a fresh directory: a real interpreter, killed in its first seconds.
        pid = _spawn_subprocess(config_path, run_dir)
        time.sleep(rng.uniform(0.2, 6.0))
        if _kill(pid):
            kills += 1
            phase_kills += 1
            log.append(f"phase {phases}: fresh-directory kill")
        while kills < KILLS and phase_kills < 12:
            pid = fork_server.spawn(config_path, run_dir)
            if rng.random() < 0.4:
                if not _wait_for_eigen_temp(pid, run_dir, limit_s=15.0):
                    # no eigen write came: let the sweep end, the phase is complete (bounded all the same: a
                    # hung child is killed and said, and the resume below still has to give the table).
                    if not fork_server.wait_bounded(pid, limit_s=180.0):
                        fork_server.kill(pid)
                        log.append(f"phase {phases}: a forked child hung and was killed")
                    break
                if fork_server.kill(pid):
                    kills += 1
                    eigen_kills += 1
                    phase_kills += 1
                    stale_after_kill += bool(list((run_dir / "hessian").glob(".*.tmp")))
                    continue
            else:
                time.sleep(rng.uniform(0.02, 2.0))
                if fork_server.kill(pid):
                    kills += 1
                    phase_kills += 1
                    stale_after_kill += bool([p for p in run_dir.rglob(".*.tmp")])
                    continue
            break  # the sweep ended (and was reaped) before the kill: this phase is complete
        # Resume without interruption; the table must be the uninterrupted one and nothing stray is left.
        final = run_sweep(config, run_dir, progress=False)
        assert final.counts == {"done": 4}, (phases, final)
        assert _table(run_dir) == reference, f"phase {phases} differs after {phase_kills} kills"
        assert _strays(run_dir) == [], _strays(run_dir)
        assert not list(run_dir.rglob("*.tmp"))
        log.append(f"phase {phases}: {phase_kills} kills, table equal")
    elapsed = time.monotonic() - started
    print(
        f"kill loop: {kills} kills ({eigen_kills} during eigen report writes, {stale_after_kill} left temporary "
        f"files) over {phases} phases in {elapsed:.1f} s"
    )
    assert kills >= KILLS and eigen_kills >= 3
