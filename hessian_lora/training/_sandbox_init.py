"""The first process inside the sandbox's namespaces: builds the private root, drops privilege, execs the program.

Run by :mod:`hessian_lora.training.sandbox` as ``unshare --user --map-root-user --mount --net --pid --ipc --uts --fork
--kill-child -- PYTHON -I -S -c <this file's text> <settings as JSON>``; it is PID 1 of a fresh PID namespace and
root of a fresh user namespace (root there only: outside it is the calling user). Standard library only, and no
import of ``hessian_lora``: the package lives in the user's tree, which this process is about to hide.

What it does, in order (each step is a reason the confinement holds):

1. a size-limited tmpfs becomes the new root; the system directories and the interpreter's prefixes are bound
   into it read-only at their own paths, a few device nodes are bound, a fresh /proc (this PID namespace only)
   is mounted, and the program is copied into /sandbox; /tmp is an empty directory of the tmpfs;
2. ``pivot_root`` into it and detach the old root: nothing of the host's file tree is reachable any more (a
   ``chroot`` would not do: a root with CAP_SYS_CHROOT walks out of it);
3. the PID namespace's ``pid_max`` is lowered where the kernel allows it (Linux >= 6.14): a fork storm stops at
   a few hundred processes even for a caller that is root, whom RLIMIT_NPROC does not bind;
4. every capability is dropped (bounding, inheritable, ambient, then effective and permitted) and
   no_new_privs set: the program cannot remount the read-only binds writable, mount, or unshare again;
5. resource limits (address space, CPU seconds, file size, open files, processes), then ``exec`` the program.

Any failure exits with status 121 and one line on stderr: the caller's probe reports it as the reason.
"""

import ctypes
import json
import os
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
# pivot_root has no libc wrapper; its number differs by architecture.
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217, "i686": 217}
SYS_CAPSET = {"x86_64": 126, "aarch64": 91, "riscv64": 91, "ppc64le": 184, "s390x": 185, "i686": 185}
FAILED = 121

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def fail(message: str) -> None:
    sys.stderr.write(f"sandbox: {message}\n")
    sys.stderr.flush()
    os._exit(FAILED)


def check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        fail(f"{what}: {os.strerror(errno)}")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    check(
        libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def locked_flags(path: str) -> int:
    """The flags a read-only remount must keep: a user namespace may not clear nosuid/nodev/noexec/atime flags
    that the mount carries from the host (the kernel refuses the remount otherwise)."""
    flag = os.statvfs(path).f_flag
    kept = 0
    for statvfs_bit, mount_bit in (
        (2, MS_NOSUID),
        (4, MS_NODEV),
        (8, MS_NOEXEC),
        (1024, MS_NOATIME),
        (2048, MS_NODIRATIME),
        (4096, MS_RELATIME),
    ):
        if flag & statvfs_bit:
            kept |= mount_bit
    return kept


def bind_read_only(source: str, root: str, *, directory: bool = True) -> None:
    target = root + source
    if directory:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, None, MS_BIND | MS_REC)
    mount("none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | locked_flags(source))


def build_root(settings: dict) -> None:
    root = settings["root"]
    mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing done here propagates back to the host
    mount("sandbox", root, "tmpfs", MS_NOSUID | MS_NODEV, f"size={settings['scratch_bytes']},mode=755")
    for path in settings["system"]:
        if os.path.islink(path):  # merged /usr: /bin -> usr/bin and the like, recreated as links
            os.symlink(os.readlink(path), root + path)
        elif os.path.isdir(path):
            bind_read_only(path, root)
    for path in settings["prefixes"]:
        if not os.path.exists(root + path) or not os.path.ismount(root + path):
            bind_read_only(path, root)
    for node in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"):
        if os.path.exists(node):
            bind_read_only(node, root, directory=False)
    os.makedirs(root + "/proc")
    # A /proc of this PID namespace (programs may read /proc/self; nothing of the host shows). Where the kernel
    # refuses it (a container masking parts of the host's /proc), the directory stays empty.
    libc.mount(b"proc", (root + "/proc").encode(), b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    os.makedirs(root + "/tmp")
    os.chmod(root + "/tmp", 0o1777)
    os.makedirs(root + "/sandbox")
    with open(settings["program"], "rb") as source, open(root + "/sandbox/program.py", "wb") as copy:
        copy.write(source.read())
    os.chdir(root)
    check(libc.syscall(SYS_PIVOT_ROOT[os.uname().machine], b".", b"."), "pivot_root")
    check(libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/sandbox")


def lower_pid_max(limit: int) -> None:
    """This PID namespace's pid_max, then /proc read-only: the program (root in its namespace) could otherwise
    write pid_max back up, capabilities or not (the file's owner is the namespace's root)."""
    if not os.path.isdir("/proc/sys"):
        return
    try:
        with open("/proc/sys/kernel/pid_max", "w") as handle:
            handle.write(str(limit))
    except OSError:
        pass  # kernels before 6.14 have one pid_max for the whole machine; RLIMIT_NPROC still binds non-root
    mount("none", "/proc", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def drop_privileges() -> None:
    for capability in range(64):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            break  # EINVAL past the last capability the kernel knows
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable (two words each): all empty
    check(libc.syscall(SYS_CAPSET[os.uname().machine], header, data), "drop capabilities")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def set_limits(settings: dict) -> None:
    for name, value in settings["limits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))


def main() -> None:
    settings = json.loads(sys.argv[1])
    try:
        build_root(settings)
        lower_pid_max(settings["pid_max"])
        drop_privileges()
        set_limits(settings)
    except OSError as error:
        fail(str(error))
    # The program's own output goes nowhere: the caller reads this process's stderr for the init's one line only
    # (a program printing without end would otherwise fill the caller's memory).
    os.dup2(os.open("/dev/null", os.O_WRONLY), 2)
    os.execve(
        settings["python"],
        [settings["python"], "-I", "-B", "/sandbox/program.py"],
        {"PATH": "/usr/bin:/bin", "HOME": "/sandbox", "TMPDIR": "/tmp", "LANG": "C.UTF-8"},
    )


if __name__ == "__main__":  # run with -c by hessian_lora.training.sandbox; importing it does nothing
    main()
