"""Run untrusted code (a model's program plus its tests) in a separate, confined Python process.

Layers, each enough for the common case and together hard to get around by accident:
- a fresh `python -I -B` process per program, in its own session (the whole group is killed at the
  wall-time limit), with a minimal environment, stdin closed and a temporary working directory;
- resource limits set by a boot script before the program runs: address space, data, CPU seconds,
  file size, open files, no core dumps;
- when run as root: the program runs as the `nobody` user, and the kernel refuses it any new process;
- a new network namespace (`unshare -n`, when it works here), so there is no network at all;
- an audit hook (PEP 578) that refuses process creation, sockets, ctypes, signals to other processes,
  rlimit changes and any file change outside the working directory.
The program passes when it exits normally after printing a per-run secret marker that only the
boot script knows, so `sys.exit(0)` or `os._exit(0)` before the tests cannot pass.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

_OUTPUT_LIMIT = 64 * 1024  # characters of stdout/stderr kept


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run."""

    timeout_s: float = 10.0  # wall clock
    memory_mb: int = 1024  # address space
    file_size_mb: int = 16  # largest file it may write (its stdout/stderr included)
    open_files: int = 64
    network_namespace: bool = True  # use `unshare -n` when available


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed run ended."""

    passed: bool
    status: str  # passed | failed | timeout
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float

    def error_tail(self, chars: int = 400) -> str:
        """The end of stderr, for a sample record."""
        return self.stderr[-chars:]


# Runs in the child before the untrusted program. Reads its settings from the environment, removes
# them, confines the process and then executes program.py in a fresh namespace.
_BOOT = r'''
import os, sys, json, resource

def _boot():
    cfg = json.loads(os.environ.pop("D2C_SANDBOX_CONFIG"))
    marker = os.environ.pop("D2C_SANDBOX_MARKER").encode()
    limits = [(resource.RLIMIT_AS, cfg["memory_bytes"]), (resource.RLIMIT_DATA, cfg["memory_bytes"]),
              (resource.RLIMIT_CPU, cfg["cpu_s"]), (resource.RLIMIT_FSIZE, cfg["file_bytes"]),
              (resource.RLIMIT_NOFILE, cfg["open_files"]), (resource.RLIMIT_CORE, 0)]
    for kind, value in limits:
        try:
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError):
            pass
    if cfg["drop_to"]:
        uid, gid = cfg["drop_to"]
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    if os.geteuid() != 0:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no fork, no thread, as a non-root user
    root = os.path.realpath(os.getcwd())
    with open("program.py", encoding="utf-8") as f:
        source = f.read()
    marker_fd = os.dup(1)
    _install_guard(root)
    code = compile(source, os.path.join(root, "program.py"), "exec")
    namespace = {"__name__": "__sandbox__", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
    except BaseException:
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    os.write(marker_fd, b"\n" + marker + b"\n")
    os._exit(0)

def _install_guard(root):
    denied = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
              "os.kill", "os.killpg", "os.symlink", "os.link", "os.chown", "os.lchown", "os.chflags",
              "os.setxattr", "os.removexattr", "subprocess.", "pty.", "socket.", "ctypes.",
              "resource.setrlimit", "resource.prlimit",
              "webbrowser.", "urllib.", "http.", "ftplib.", "smtplib.", "winreg.")
    # event -> (positions of paths it changes, positions of dir_fd arguments)
    path_events = {"os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
                   "os.rename": ((0, 1), (2, 3)), "os.truncate": ((0,), ()), "os.chmod": ((0,), (2,)),
                   "os.utime": ((0,), (3,)), "shutil.rmtree": ((0,), (1,)), "shutil.copyfile": ((1,), ()),
                   "shutil.copymode": ((1,), ()), "shutil.copystat": ((1,), ()),
                   "shutil.copytree": ((1,), ()), "shutil.move": ((0, 1), ()), "shutil.chown": ((0,), ())}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    fspath, realpath, isabs, sep = os.fspath, os.path.realpath, os.path.isabs, os.sep
    busy = []

    def inside(path):
        if isinstance(path, int):
            return True
        full = realpath(fspath(path))
        if isinstance(full, bytes):
            full = full.decode(errors="surrogateescape")
        return full == root or full.startswith(root + sep)

    def check(event, args):
        if event.startswith(denied):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            if mode is None:  # os.open: it may carry a dir_fd the event does not show
                writes = bool(flags & write_flags)
                if writes and not isinstance(path, int) and not isabs(fspath(path)):
                    raise PermissionError(f"sandbox: os.open of a relative path for writing is not allowed")
            else:
                writes = any(c in mode for c in "wax+")
            if writes and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} is not allowed")
        elif event in path_events:
            paths, dir_fds = path_events[event]
            if any(i < len(args) and args[i] not in (None, -1) for i in dir_fds):
                raise PermissionError(f"sandbox: {event} with dir_fd is not allowed")
            for i in paths:
                if not inside(args[i]):
                    raise PermissionError(f"sandbox: {event} on {args[i]!r} is not allowed")

    def hook(event, args):
        if busy:
            return
        busy.append(1)
        try:
            check(event, args)
        finally:
            busy.pop()

    sys.addaudithook(hook)

_boot()
'''


@functools.cache
def _network_prefix() -> tuple[str, ...]:
    """`unshare -n` (or `-rn` for a non-root user) if it works on this machine, else nothing."""
    exe = shutil.which("unshare")
    if not exe:
        return ()
    for prefix in ((exe, "-n"), (exe, "-r", "-n")):
        try:
            done = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return prefix
    return ()


def _world_readable(path: str) -> bool:
    """Whether any user can read `path` and reach it through its parent directories."""
    path = os.path.realpath(path)
    if not os.stat(path).st_mode & 0o004:
        return False
    while path != os.path.dirname(path):
        path = os.path.dirname(path)
        if not os.stat(path).st_mode & 0o001:
            return False
    return True


@functools.cache
def _unprivileged_ids() -> tuple[int, int] | None:
    """(uid, gid) of `nobody` when running as root and Python's files are readable by it, else None."""
    if os.geteuid() != 0:
        return None
    stdlib = os.path.dirname(os.__file__)
    if not (_world_readable(stdlib) and _world_readable(sys.executable)):
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _read_tail(path: str) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(f.tell() - _OUTPUT_LIMIT, 0))
        return f.read().decode("utf-8", errors="replace")


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_program(code: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `code` as a program in the sandbox and report whether it finished without error."""
    limits = limits or SandboxLimits()
    workdir = tempfile.mkdtemp(prefix="d2c-sandbox-")
    logdir = tempfile.mkdtemp(prefix="d2c-sandbox-log-")  # outside the program's reach
    try:
        return _run_in(workdir, logdir, code, limits)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(logdir, ignore_errors=True)


def _run_in(workdir: str, logdir: str, code: str, limits: SandboxLimits) -> SandboxResult:
    for name, text in (("program.py", code), ("boot.py", _BOOT)):
        with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
            f.write(text)
    prefix = _network_prefix() if limits.network_namespace else ()
    drop_to = _unprivileged_ids() if "-r" not in prefix else None
    if drop_to:
        os.chown(workdir, *drop_to)
    os.chmod(workdir, 0o755 if not drop_to else 0o700)
    marker = secrets.token_hex(16)
    config = {"memory_bytes": int(limits.memory_mb) << 20, "cpu_s": int(math.ceil(limits.timeout_s)) + 1,
              "file_bytes": int(limits.file_size_mb) << 20, "open_files": int(limits.open_files),
              "drop_to": drop_to}
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
           "D2C_SANDBOX_CONFIG": json.dumps(config), "D2C_SANDBOX_MARKER": marker}
    cmd = [*prefix, sys.executable, "-I", "-B", os.path.join(workdir, "boot.py")]
    out_path, err_path = os.path.join(logdir, "stdout"), os.path.join(logdir, "stderr")
    start = time.perf_counter()
    timed_out = False
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True, close_fds=True)
        try:
            returncode = proc.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            returncode = proc.wait()
        _kill_group(proc.pid)  # anything it left behind in its group
    wall_s = time.perf_counter() - start
    stdout, stderr = _read_tail(out_path), _read_tail(err_path)
    lines = stdout.rstrip("\n").rsplit("\n", 1)
    passed = not timed_out and returncode == 0 and lines[-1] == marker
    if passed:
        stdout = lines[0] if len(lines) > 1 else ""
    status = "timeout" if timed_out else ("passed" if passed else "failed")
    return SandboxResult(passed=passed, status=status, returncode=returncode, stdout=stdout, stderr=stderr,
                         wall_s=wall_s)
