"""Generated programs stay in their box: hostile programs as a model could write them, handed to the runner that
scores MBPP and HumanEval (:func:`hessian_lora.training.evaluate.run_program`), must leave the user's files, the network
and the process table as they were. Each test fails on the runner before confinement (temp dir, timeout and
RLIMIT_AS only): see docs/sandbox.md for that check. The controls (a correct program passes, a slow one times out)
hold too, and where the machine offers no confinement, execution is refused up front unless the user opts in.
"""

from __future__ import annotations

import os
import socket
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from hessian_lora.core.errors import UserError
from hessian_lora.training import sandbox
from hessian_lora.training.evaluate import run_program

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0  # generous: the machine is shared; no test below relies on the limit except the slow control
# The hostile programs need the confinement to run at all (without it run_program refuses them, tested below);
# a machine without user namespaces skips them with the probe's reason. This one and CI have them.
confined = pytest.mark.skipif(
    sandbox.probe_confinement().level != "namespaces",
    reason=f"no confinement here: {sandbox.probe_confinement().reason}",
)


@pytest.fixture
def user_files(tmp_path):
    """A user's directory outside the sandbox: a document, a private key and a project tree."""
    home = tmp_path / "user"
    (home / ".ssh").mkdir(parents=True)
    (home / "notes.txt").write_text("original\n")
    (home / ".ssh" / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n")
    (home / ".ssh" / "id_ed25519").chmod(0o600)
    (home / "project" / "src").mkdir(parents=True)
    (home / "project" / "src" / "main.py").write_text("print('mine')\n")
    return home


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def program(source: str, **values: object) -> str:
    """``source`` with each ``{name}`` replaced by the value's Python literal (paths as strings)."""
    return textwrap.dedent(source).format(
        **{key: repr(str(value) if isinstance(value, Path) else value) for key, value in values.items()}
    )


def processes_mentioning(marker: str) -> list[int]:
    """Live processes whose command line contains ``marker`` (zombies have none)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# ------------------------------------------------------------------------------------------------- controls


@confined
def test_a_correct_program_passes_and_a_wrong_one_fails():
    assert run_program("assert sorted([3, 1, 2]) == [1, 2, 3]\n", timeout=TIMEOUT) is True
    assert run_program("assert 1 + 1 == 3\n", timeout=TIMEOUT) is False


@confined
def test_a_slow_program_times_out():
    start = time.perf_counter()
    assert run_program("while True:\n    pass\n", timeout=1.0) is False
    assert time.perf_counter() - start < 15


@confined
def test_the_program_has_a_writable_private_scratch():
    assert (
        run_program(
            program("""
        import os, tempfile
        assert os.listdir('.') == ['program.py']
        open('out.txt', 'w').write('x')
        with tempfile.NamedTemporaryFile() as handle:
            handle.write(b'y')
        assert os.listdir('/tmp') == []
    """),
            timeout=TIMEOUT,
        )
        is True
    )


# ------------------------------------------------------------------------------------------ hostile programs


@confined
@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("open({path}, 'w').write('pwned')\n", "notes.txt"),
        ("import shutil\nshutil.rmtree({path})\n", "project"),
    ],
    ids=["overwrite-a-file", "delete-a-directory-tree"],
)
def test_it_cannot_change_the_users_files(source, target, user_files):
    before = snapshot(user_files)
    run_program(program(source, path=user_files / target), timeout=TIMEOUT)
    assert snapshot(user_files) == before


@confined
def test_it_cannot_create_a_file_outside(user_files, tmp_path):
    targets = [user_files / "created.txt", tmp_path / "created.txt", REPO / f"created-{uuid.uuid4().hex}.txt"]
    source = "".join(
        f"try:\n    open({str(t)!r}, 'w').write('x')\nexcept OSError:\n    pass\n" for t in targets
    )
    run_program(source, timeout=TIMEOUT)
    assert not any(target.exists() for target in targets)


@confined
def test_it_cannot_read_a_private_key(user_files):
    key = user_files / ".ssh" / "id_ed25519"
    assert (
        run_program(program("assert 'PRIVATE KEY' in open({path}).read()\n", path=key), timeout=TIMEOUT)
        is False
    )


@confined
def test_the_users_tree_and_the_hosts_tmp_are_out_of_sight(user_files):
    assert (
        run_program(
            program(
                """
        import os
        for path in ({user}, {repo}, {host_tmp}):
            assert not os.path.exists(path), path
    """,
                user=user_files,
                repo=REPO / "setup.cfg",
                host_tmp=user_files.parent,
            ),
            timeout=TIMEOUT,
        )
        is True
    )


@confined
def test_it_cannot_write_to_the_system_or_the_interpreter():
    assert (
        run_program(
            program("""
        import os, sys
        for directory in ('/usr', os.path.dirname(os.path.realpath(sys.executable))):
            try:
                open(os.path.join(directory, 'planted.txt'), 'w')
            except OSError:
                continue
            raise SystemExit(0)
        raise SystemExit(1)
    """),
            timeout=TIMEOUT,
        )
        is False
    )


@confined
def test_it_cannot_reach_a_service_on_loopback():
    received: list[bytes] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        port = server.getsockname()[1]
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                try:
                    connection, _ = server.accept()
                except OSError:
                    continue
                with connection:
                    received.append(connection.recv(64) or b"(connected)")

        listener = threading.Thread(target=accept)
        listener.start()
        try:
            passed = run_program(
                program(
                    """
                import socket
                with socket.create_connection(('127.0.0.1', {port}), timeout=5) as connection:
                    connection.sendall(b'stolen')
            """,
                    port=port,
                ),
                timeout=TIMEOUT,
            )
        finally:
            time.sleep(0.3)
            stop.set()
            listener.join()
    assert received == [] and passed is False


@confined
def test_a_daemon_does_not_outlive_the_runner(tmp_path):
    marker = tmp_path / f"daemon-{uuid.uuid4().hex}.txt"
    source = program(
        """
        import os, sys
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, '-c',
                         'import sys, time; time.sleep(1.5); open(sys.argv[1], "w").write("alive")', {marker}])
            os._exit(0)
        os.wait()
    """,
        marker=marker,
    )
    assert run_program(source, timeout=TIMEOUT) is True
    assert processes_mentioning(str(marker)) == []
    time.sleep(2.5)
    assert not marker.exists()


@confined
def test_a_fork_storm_is_capped_and_leaves_nothing_behind():
    if os.geteuid() == 0 and tuple(int(part) for part in os.uname().release.split(".")[:2]) < (6, 14):
        pytest.skip("root before Linux 6.14: neither RLIMIT_NPROC nor a PID namespace's pid_max binds")
    marker = f"storm-{uuid.uuid4().hex}"
    # Bounded, so that the runner without confinement (which lets it through) does not take the machine down.
    source = program(
        """
        import os, sys, time
        children = 0
        for _ in range(400):
            if os.fork() == 0:
                os.execv('/bin/sh', ['sh', '-c', 'sleep 5; :', {marker}])  # a light child that keeps the marker
            children += 1
        time.sleep(0.5)
    """,
        marker=marker,
    )
    assert run_program(source, timeout=TIMEOUT) is False
    assert processes_mentioning(marker) == []


# ---------------------------------------------------------------------------------- refusal, level, record


@pytest.fixture
def no_confinement(monkeypatch):
    """A machine without user namespaces (AppArmor, an old kernel, no util-linux), simulated at the probe."""
    unavailable = sandbox.Confinement("none", "none", reason="simulated: unshare namespaces unavailable")
    monkeypatch.setattr(sandbox, "probe_confinement", lambda: unavailable)
    monkeypatch.setattr(sandbox, "_announced", set())
    monkeypatch.setattr(sandbox, "_accepted_in_process", False)


def test_without_confinement_code_is_refused_in_one_line(no_confinement, user_files):
    before = snapshot(user_files)
    with pytest.raises(UserError) as caught:
        run_program(
            program("open({path}, 'w').write('pwned')\n", path=user_files / "notes.txt"), timeout=TIMEOUT
        )
    message = str(caught.value)
    assert "\n" not in message and "--allow-unconfined-code" in message and "unshare" in message
    assert snapshot(user_files) == before


def test_the_explicit_flag_accepts_the_risk_and_says_so(no_confinement, capsys):
    assert run_program("assert True\n", timeout=TIMEOUT, allow_unconfined=True) is True
    assert run_program("assert True\n", timeout=TIMEOUT, allow_unconfined=True) is True
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and "UNCONFINED" in said[0]  # said once per process
    assert sandbox.code_confinement(allow_unconfined=True).to_dict()["level"] == "none"


def test_the_unconfined_fallback_still_limits_time():
    assert sandbox.execute("while True:\n    pass\n", timeout=1.0, memory_bytes=None, level="none") is None


@confined
def test_this_machine_confines_and_records_the_level():
    found = sandbox.probe_confinement()
    assert found.level == "namespaces", found.reason  # CI and the development machine allow user namespaces
    record = found.to_dict()
    assert record["backend"] == "unshare" and record["limits"]["RLIMIT_NPROC"] == sandbox.PROCESS_LIMIT
