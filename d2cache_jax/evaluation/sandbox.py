"""Run untrusted code (a model's program) isolated by the operating system, and judge it from outside.

Isolation (util-linux `unshare`, `mount`, `pivot_root`, `setpriv`; no Python-level trust): each run gets
new user (when not root), pid, network, mount, IPC and UTS namespaces; a root filesystem of read-only
binds (/usr, /etc, the Python install, its inputs at /in) with a private size-limited tmpfs at /tmp;
no capabilities, no new privileges, an unprivileged uid (a fresh one per run when the evaluator is
root), rlimits on memory, CPU, file size, open files and processes. The namespace's first process
stays root-owned, so killing it at the time limit ends every process the program started.

Verdict (`check_solution`): the solution runs in one sandbox as a server that only answers calls;
the tests run in a second sandbox whose namespace holds the problem's trusted code and stand-ins
that forward calls and receive plain data (numbers, strings, containers) back. The verdict is the
test process's own report on a pipe the solution cannot reach, so the solution can only win by
returning the right values. Without isolation (`unsafe=True`) the same runs happen in plain
processes under the old audit-hook guard, as a last resort.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import functools
import json
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
_TOOLS = ("unshare", "mount", "umount", "pivot_root", "setpriv")


class IsolationUnavailable(RuntimeError):
    """OS isolation cannot be set up on this machine, and unprotected execution was not asked for."""


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run."""

    timeout_s: float = 10.0  # wall clock
    memory_mb: int = 1024  # address space
    file_size_mb: int = 16  # largest file it may write (its stdout/stderr included)
    open_files: int = 64
    max_processes: int = 16  # processes and threads of the sandbox's user
    tmp_mb: int = 64  # size of the private /tmp


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


@dataclasses.dataclass(frozen=True)
class ProblemTests:
    """Trusted code of a problem: `prelude` (helpers from the problem) and `tests` (which raise on failure)."""

    tests: str
    prelude: str = ""


# Sets up the sandbox's filesystem as root of the new namespaces, then runs the command as a child.
# Arguments: new root, input folder, tmp size (MB), then `b<dir>` (bind read-only) or `l<link>=<target>`
# entries, `--`, and the command. It stays as the pid namespace's first process: when it ends, or is
# killed, the kernel kills everything else in the namespace.
_INIT = r'''
set -eu
PATH=/usr/sbin:/usr/bin:/sbin:/bin
R=$1; IN=$2; TMP_MB=$3; shift 3
mount -t tmpfs -o size=1m,mode=755 d2c-root "$R"
while [ "$1" != "--" ]; do
  case "$1" in
    b*) d=${1#b}; mkdir -p "$R$d"; mount --bind "$d" "$R$d"; mount -o remount,bind,ro,nosuid,nodev "$R$d" ;;
    l*) e=${1#l}; ln -s "${e#*=}" "$R${e%%=*}" ;;
  esac
  shift
done
shift
mkdir -p "$R/in" "$R/tmp" "$R/proc" "$R/dev" "$R/.old"
mount --bind "$IN" "$R/in"; mount -o remount,bind,ro,nosuid,nodev "$R/in"
mount -t tmpfs -o "size=${TMP_MB}m,mode=1777,nosuid,nodev" d2c-tmp "$R/tmp"
for f in null zero urandom random; do touch "$R/dev/$f"; mount --bind "/dev/$f" "$R/dev/$f"; done
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
cd "$R"; pivot_root . .old; umount -l /.old; rmdir /.old
mount -o remount,ro,nosuid,nodev d2c-root /
cd /tmp
set +e
"$@"
'''

# Plain-data encoding shared by both sides: JSON with tags for the types JSON lacks. The decoder
# builds nothing but these types, so a reply cannot carry behaviour (an `__eq__` that always agrees).
_CODEC = r'''
import json as _json

def _enc(x, depth=0):
    if depth > 100:
        raise ValueError("value nested too deeply")
    if x is None or type(x) is bool:
        return x
    if isinstance(x, bool):
        return bool(x)
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return {"f": repr(float(x))}
    if isinstance(x, str):
        return str(x)
    if isinstance(x, complex):
        return {"c": [repr(x.real), repr(x.imag)]}
    if isinstance(x, bytes | bytearray):
        return {"b": bytes(x).hex()}
    for tag, kind in (("l", list), ("t", tuple), ("s", set), ("z", frozenset)):
        if isinstance(x, kind):
            return {tag: [_enc(v, depth + 1) for v in x]}
    if isinstance(x, dict):
        return {"d": [[_enc(k, depth + 1), _enc(v, depth + 1)] for k, v in x.items()]}
    raise TypeError(f"a {type(x).__name__} cannot be passed between the solution and its tests")

def _dec(x):
    if x is None or type(x) in (bool, int, str):
        return x
    if type(x) is not dict or len(x) != 1:
        raise ValueError("malformed value")
    (tag, v), = x.items()
    if tag == "f":
        return float(v)
    if tag == "c":
        return complex(float(v[0]), float(v[1]))
    if tag == "b":
        return bytes.fromhex(v)
    kinds = {"l": list, "t": tuple, "s": set, "z": frozenset}
    if tag in kinds:
        return kinds[tag](_dec(i) for i in v)
    if tag == "d":
        return {_dec(k): _dec(w) for k, w in v}
    raise ValueError("malformed value")
'''

# Common start of every sandboxed Python process: limits, optional guard, then the role's code.
_BOOT = r'''
import os, sys, resource

def _limit(cfg):
    limits = [(resource.RLIMIT_AS, cfg["memory_bytes"]), (resource.RLIMIT_DATA, cfg["memory_bytes"]),
              (resource.RLIMIT_CPU, cfg["cpu_s"]), (resource.RLIMIT_FSIZE, cfg["file_bytes"]),
              (resource.RLIMIT_NOFILE, cfg["open_files"]), (resource.RLIMIT_CORE, 0),
              (resource.RLIMIT_NPROC, cfg["processes"])]
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

_IN = sys.argv[1]
with open(os.path.join(_IN, "config.json"), encoding="utf-8") as _f:
    _CFG = _json.load(_f)
_limit(_CFG)
if _CFG["guard"]:
    _install_guard(os.path.realpath(os.getcwd()))
'''

# Runs program.py; its exit status is the (program-controlled) verdict of `run_program`.
_PROGRAM = r'''
def _main():
    with open(os.path.join(_IN, "program.py"), encoding="utf-8") as f:
        code = compile(f.read(), "program.py", "exec")
    exec(code, {"__name__": "__sandbox__", "__builtins__": __builtins__})

_main()
'''

# The solution's side: defines the solution, then answers `get` and `call` requests from stdin.
_SERVER = r'''
def _serve():
    import traceback, types
    ns = {"__name__": "__sandbox__", "__builtins__": __builtins__}
    with open(os.path.join(_IN, "solution.py"), encoding="utf-8") as f:
        source = f.read()
    loaded = True
    try:
        exec(compile(source, "solution.py", "exec"), ns)
    except BaseException:
        traceback.print_exc()
        loaded = False
    sys.stdout.flush()
    requests, replies = os.fdopen(0, "rb"), os.fdopen(_CFG["fds"]["replies"], "wb")
    for line in requests:
        req = _json.loads(line)
        name = req["name"]
        obj = ns.get(name) if loaded else None
        try:
            if req["op"] == "get":
                if name not in ns or not loaded:
                    reply = {"kind": "missing"}
                elif isinstance(obj, types.ModuleType):
                    reply = {"kind": "module", "module": obj.__name__}
                elif callable(obj):
                    reply = {"kind": "function"}
                else:
                    reply = {"kind": "value", "value": _enc(obj)}
            else:
                result = obj(*_dec(req["args"]), **_dec(req["kwargs"]))
                reply = {"value": _enc(result)}
        except BaseException as e:
            traceback.print_exc()
            reply = {"error": type(e).__name__, "message": str(e)[:300]}
        sys.stdout.flush()
        replies.write(_json.dumps(reply).encode() + b"\n")
        replies.flush()

_serve()
'''

# The tests' side: trusted code, stand-ins for the solution's names, the verdict on its own pipe.
_CHECKER = r'''
_REPLY_LIMIT = 16 << 20

def _check():
    import builtins, importlib, traceback
    with open(os.path.join(_IN, "check.json"), encoding="utf-8") as f:
        spec = _json.load(f)
    fds = _CFG["fds"]
    requests, replies = os.fdopen(fds["requests"], "wb"), os.fdopen(fds["replies"], "rb")
    verdict = os.fdopen(fds["verdict"], "wb")

    def ask(request):
        requests.write(_json.dumps(request).encode() + b"\n")
        requests.flush()
        line = replies.readline(_REPLY_LIMIT)
        if not line.endswith(b"\n"):
            raise RuntimeError("the solution process ended or sent an oversized reply")
        return _json.loads(line)

    def stand_in(name):
        def call(*args, **kwargs):
            reply = ask({"op": "call", "name": name, "args": _enc(list(args)), "kwargs": _enc(kwargs)})
            if "error" in reply:
                kind = getattr(builtins, str(reply["error"]), None)
                if isinstance(kind, type) and issubclass(kind, Exception):
                    raise kind(str(reply["message"]))
                raise RuntimeError(f"{name} raised {reply['error']}: {reply['message']}")
            return _dec(reply["value"])
        call.__name__ = call.__qualname__ = name
        return call

    ns = {"__name__": "__check__", "__builtins__": builtins}
    for name in spec["names"]:
        reply = ask({"op": "get", "name": name})
        kind = reply.get("kind")
        if kind == "function":
            ns[name] = stand_in(name)
        elif kind == "value":
            ns[name] = _dec(reply["value"])
        elif kind == "module" and str(reply["module"]).split(".")[0] in sys.stdlib_module_names:
            ns[name] = importlib.import_module(str(reply["module"]))
    try:
        exec(compile(spec["prelude"], "prelude.py", "exec"), ns)
        exec(compile(spec["tests"], "tests.py", "exec"), ns)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    verdict.write(b"pass\n")
    verdict.flush()
    os._exit(0)

_check()
'''

# The audit-hook guard of unprotected runs (`unsafe=True`): refuses process creation, sockets, ctypes,
# signals and file changes outside the working folder. It lives in the program's memory, so it only
# stops programs that do not try to get around it.
_GUARD = r'''
def _install_guard(root):
    denied = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
              "os.killpg", "os.symlink", "os.link", "os.chown", "os.lchown", "os.chflags", "os.setxattr",
              "os.removexattr", "os.mknod", "os.mkfifo", "subprocess.", "_posixsubprocess", "pty.", "socket.",
              "ctypes.", "resource.setrlimit", "resource.prlimit", "signal.pidfd_send_signal", "os.pidfd_open",
              "webbrowser.", "urllib.", "http.", "ftplib.", "smtplib.")
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
            if mode is None:
                writes = bool(flags & write_flags)
                if writes and not isinstance(path, int) and not isabs(fspath(path)):
                    raise PermissionError("sandbox: os.open of a relative path for writing is not allowed")
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
'''

_ROLES = {"program": _PROGRAM, "server": _SERVER, "checker": _CHECKER}


def _boot_source(role: str) -> str:
    return _CODEC + _GUARD + _BOOT + _ROLES[role]


def _python_dirs() -> list[str]:
    """Folders the sandboxed Python needs besides /usr: its install prefixes, outside /usr."""
    exe_prefix = os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))
    dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, exe_prefix)}
    return sorted(d for d in dirs if d != "/" and not d.startswith(("/usr/", "/etc/")) and d not in ("/usr",
                                                                                                     "/etc"))


def _root_entries() -> list[str]:
    """`_INIT`'s list of what the sandbox's root holds: read-only binds and copies of top-level links."""
    entries = []
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            entries.append(f"l{top}={os.readlink(top)}")
        elif os.path.isdir(top):
            entries.append(f"b{top}")
    entries += ["b/usr", "b/etc"] + [f"b{d}" for d in _python_dirs()]
    return entries


def _missing_tools() -> list[str]:
    return [t for t in _TOOLS if not shutil.which(t, path="/usr/bin:/bin:/usr/sbin:/sbin")]


def _as_root() -> bool:
    """Whether the evaluator is root (then no user namespace is needed and the program gets a fresh uid)."""
    return os.geteuid() == 0


def _isolated_command(rootdir: str, indir: str, limits: SandboxLimits, argv: list[str]) -> list[str]:
    """unshare, the setup script, then the command without capabilities as an unprivileged user."""
    tools = {t: shutil.which(t, path="/usr/bin:/bin:/usr/sbin:/sbin") for t in _TOOLS}
    namespaces = ["--pid", "--fork", "--kill-child", "--net", "--mount", "--ipc", "--uts"]
    drop = ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    if _as_root():
        uid = 1_000_000 + secrets.randbelow(1 << 30)  # a fresh user: its process count is this run's alone
        drop = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *drop]
    else:
        namespaces = ["--user", "--map-root-user", *namespaces]
    return [tools["unshare"], *namespaces, "--", "/bin/sh", "-c", _INIT, "d2c-init", rootdir, indir,
            str(int(limits.tmp_mb)), *_root_entries(), "--", tools["setpriv"], *drop, *argv]


@functools.cache
def isolation_problem() -> str | None:
    """None if programs can run isolated here, else why not (one line)."""
    missing = _missing_tools()
    if missing:
        return f"util-linux tools not found: {', '.join(missing)} (Debian/Ubuntu: apt-get install util-linux)"
    for d in _python_dirs():
        if not _world_readable(d) and os.geteuid() == 0:
            return f"the Python install {d} is not readable by other users (chmod -R o+rX it)"
    result = _run_role("program", {"program.py": "print(6 * 7)\n"}, SandboxLimits(timeout_s=20), unsafe=False)
    if result.status != "passed" or result.stdout.strip() != "42":
        why = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        return (f"could not set up namespaces with unshare ({why}); this needs root, or unprivileged user "
                "namespaces (sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0)")
    return None


def require_isolation() -> None:
    """Raise IsolationUnavailable with a clear message if programs cannot run isolated here."""
    problem = isolation_problem()
    if problem:
        raise IsolationUnavailable(f"code execution sandbox unavailable: {problem}; refusing to run generated "
                                   "code unprotected (pass --unsafe_code_exec to run it anyway)")


def _world_readable(path: str) -> bool:
    """Whether any user can read `path`."""
    return bool(os.stat(path).st_mode & 0o004)


def _reachable(path: str) -> bool:
    """Whether any user can read `path` and pass through its parent folders."""
    if not _world_readable(path):
        return False
    while path != os.path.dirname(path):
        path = os.path.dirname(path)
        if not os.stat(path).st_mode & 0o001:
            return False
    return True


@functools.cache
def _unsafe_network_prefix() -> tuple[str, ...]:
    """`unshare -n` (or `-rn` for a non-root user) if it works here, for unprotected runs."""
    exe = shutil.which("unshare")
    for prefix in ((exe, "-n"), (exe, "-r", "-n")) if exe else ():
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.SubprocessError):
            continue
    return ()


def _unsafe_drop_to() -> tuple[int, int] | None:
    """(uid, gid) of `nobody` for unprotected runs as root, when it can read Python's files."""
    if os.geteuid() != 0 or not all(_reachable(d) for d in _python_dirs()):
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


class _Run:
    """One sandboxed Python process: its folders, command and logs; `stop` ends it and all it started."""

    def __init__(self, role: str, files: dict[str, str], limits: SandboxLimits, unsafe: bool,
                 fds: dict[str, int] | None = None):
        self.fds = dict(fds or {})
        self.base = tempfile.mkdtemp(prefix="d2c-sandbox-")
        self.unsafe = unsafe
        indir = os.path.join(self.base, "in")
        os.mkdir(indir)
        drop_to = _unsafe_drop_to() if unsafe else None
        config = {"memory_bytes": int(limits.memory_mb) << 20, "cpu_s": int(limits.timeout_s) + 2,
                  "file_bytes": int(limits.file_size_mb) << 20, "open_files": int(limits.open_files),
                  "processes": int(limits.max_processes), "drop_to": drop_to, "guard": unsafe, "fds": self.fds}
        files = {**files, "boot.py": _boot_source(role), "config.json": json.dumps(config)}
        for name, text in files.items():
            with open(os.path.join(indir, name), "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(os.path.join(indir, name), 0o644)
        os.chmod(self.base, 0o755)
        os.chmod(indir, 0o755)
        self.out_path, self.err_path = os.path.join(self.base, "stdout"), os.path.join(self.base, "stderr")
        if unsafe:
            workdir = os.path.join(self.base, "work")
            os.mkdir(workdir)
            if drop_to:
                os.chown(workdir, *drop_to)
            self.cwd, self.env_home = workdir, workdir
            self.argv = [*_unsafe_network_prefix(), sys.executable, "-I", "-B", os.path.join(indir, "boot.py"),
                         indir]
        else:
            rootdir = os.path.join(self.base, "root")
            os.mkdir(rootdir)
            self.cwd, self.env_home = self.base, "/tmp"
            site = ["-S"] if role == "checker" else []  # the tests' side needs the standard library only
            self.argv = _isolated_command(rootdir, indir, limits,
                                          [sys.executable, "-I", "-B", *site, "/in/boot.py", "/in"])

    def start(self, stdin: int | None = None) -> None:
        """Start the process, handing it the descriptors named in `fds`."""
        env = {"PATH": "/usr/bin:/bin", "HOME": self.env_home, "TMPDIR": self.env_home, "LANG": "C.UTF-8"}
        self.started = time.perf_counter()
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=env, stdin=stdin or subprocess.DEVNULL,
                                         stdout=out, stderr=err, start_new_session=True,
                                         pass_fds=tuple(self.fds.values()))

    def wait(self, timeout: float) -> tuple[int | None, bool]:
        """(exit status, timed out); on time-out everything it started is killed."""
        try:
            return self.proc.wait(timeout=max(timeout, 0.0)), False
        except subprocess.TimeoutExpired:
            self.stop()
            return self.proc.returncode, True

    def stop(self) -> None:
        """Kill the namespace's first process (the kernel then kills the rest) and wait for it all to end."""
        if self.proc.poll() is None and not self.unsafe:
            for pid in _children(self.proc.pid):
                _kill(pid)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    def logs(self) -> tuple[str, str]:
        stderr = _read_tail(self.err_path).replace("unshare: sigprocmask unblock failed: Invalid argument\n", "")
        return _read_tail(self.out_path), stderr

    def cleanup(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run_role(role: str, files: dict[str, str], limits: SandboxLimits, unsafe: bool) -> SandboxResult:
    run = _Run(role, files, limits, unsafe)
    try:
        run.start()
        returncode, timed_out = run.wait(limits.timeout_s)
        run.stop()
        stdout, stderr = run.logs()
        wall_s = time.perf_counter() - run.started
    finally:
        run.cleanup()
    passed = not timed_out and returncode == 0
    status = "timeout" if timed_out else ("passed" if passed else "failed")
    return SandboxResult(passed, status, returncode, stdout, stderr, wall_s)


def _check_isolation(unsafe: bool) -> None:
    if not unsafe:
        require_isolation()


def run_program(code: str, limits: SandboxLimits | None = None, unsafe: bool = False) -> SandboxResult:
    """Run `code` as a program in the sandbox; `passed` is its own exit status (0), which it controls."""
    _check_isolation(unsafe)
    return _run_role("program", {"program.py": code}, limits or SandboxLimits(), unsafe)


def names_to_forward(spec: ProblemTests) -> list[str]:
    """Names the trusted code reads but neither defines at top level nor gets from builtins."""
    trees = [ast.parse(spec.prelude), ast.parse(spec.tests)]
    defined = set()
    for tree in trees:
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                defined.update((a.asname or a.name).split(".")[0] for a in node.names)
            else:
                defined.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name)
                               and isinstance(n.ctx, ast.Store))
    read = {n.id for tree in trees for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return sorted(read - defined - set(dir(builtins)))


def check_solution(solution: str, spec: ProblemTests, limits: SandboxLimits | None = None,
                   unsafe: bool = False) -> SandboxResult:
    """Run `solution` and `spec`'s tests in two sandboxes; passed only if the tests' own process says so."""
    limits = limits or SandboxLimits()
    try:
        names = names_to_forward(spec)
    except SyntaxError as e:
        raise ValueError(f"the problem's test code does not parse: {e}") from e
    _check_isolation(unsafe)
    (req_r, req_w), (rep_r, rep_w), (ver_r, ver_w) = os.pipe(), os.pipe(), os.pipe()
    open_fds = {req_r, req_w, rep_r, rep_w, ver_r, ver_w}
    server = checker = None
    try:
        server = _Run("server", {"solution.py": solution}, limits, unsafe, {"replies": rep_w})
        checker = _Run("checker", {"check.json": json.dumps({"names": names, "prelude": spec.prelude,
                                                             "tests": spec.tests})},
                       limits, unsafe, {"requests": req_w, "replies": rep_r, "verdict": ver_w})
        server.start(stdin=req_r)
        checker.start()
        for fd in (req_r, req_w, rep_r, rep_w, ver_w):  # only the two processes hold these now
            os.close(fd)
            open_fds.discard(fd)
        returncode, timed_out = checker.wait(limits.timeout_s)
        server.wait(0.5)  # it ends by itself once its requests pipe is closed
        server.stop()
        checker.stop()
        verdict = os.read(ver_r, 64)
        wall_s = time.perf_counter() - server.started
        out_s, err_s = server.logs()
        out_c, err_c = checker.logs()
    finally:
        for fd in open_fds:
            os.close(fd)
        for run in (server, checker):
            if run is not None:
                run.cleanup()
    passed = not timed_out and returncode == 0 and verdict == b"pass\n"
    status = "timeout" if timed_out else ("passed" if passed else "failed")
    stderr = err_s + ("\n" if err_s and err_c else "") + err_c
    return SandboxResult(passed, status, returncode, (out_s + out_c)[-_OUTPUT_LIMIT:], stderr[-_OUTPUT_LIMIT:],
                         wall_s)
