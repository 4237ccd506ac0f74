"""Atomic file writes: a temporary file in the same folder, then a rename, so nothing is half written.

Results are created with the permissions the umask allows (not the 0600/0700 of temporary files).
A directory is built in a hidden `.<name>.partial-*` sibling holding an owner record (host, boot,
pid and start time of the writing process); a later write into the same folder removes partial
siblings whose writer provably died on this machine and names any other in its error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from d2cache_jax.cli import InputError

PARTIAL = ".partial-"
OWNER_FILE = ".d2cache_owner.json"
log = logging.getLogger(__name__)


def umask() -> int:
    """This process's umask (read from /proc where possible, so nothing changes it even briefly)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _chmod_default(path: str, directory: bool) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


def write_with(path: str, writer: Callable[[str], None]) -> None:
    """Have `writer` fill a temporary file in `path`'s folder, then rename it to `path` atomically: a
    failed or interrupted write leaves `path` as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        _chmod_default(tmp, directory=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    write_with(path, write)


def write_json_atomic(path: str, obj: Any) -> None:
    """`obj` as indented JSON at `path`, atomically."""
    write_atomic(path, json.dumps(obj, indent=1) + "\n")


def write_json(path: str, obj: Any) -> None:
    """Plain JSON file (inside a directory that is itself written atomically)."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def _process_id(pid: int) -> dict[str, Any] | None:
    """What tells process `pid` on this machine apart from a later one with the same pid (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except (OSError, ValueError, IndexError):
        return None
    return {"host": socket.gethostname(), "boot": boot, "pid": pid, "start": start}


def _writer_alive(partial: str) -> bool | None:
    """True / False when the process that made `partial` provably runs / died; None when unknown
    (no owner record, another machine, or no /proc)."""
    try:
        with open(os.path.join(partial, OWNER_FILE)) as f:
            owner = json.load(f)
        pid = int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    me = _process_id(os.getpid())
    if me is None or owner.get("host") != me["host"] or owner.get("boot") != me["boot"]:
        return None
    now = _process_id(pid)
    return now is not None and now["start"] == owner.get("start")


def _size(path: str) -> int:
    total = 0
    for root, _, names in os.walk(path):
        for n in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, n)).st_size
    return total


def check_partials(parent: str, clean: bool = False) -> list[str]:
    """Deal with `.*.partial-*` folders in `parent` left by interrupted writes; return those removed.

    Those whose writer provably died on this machine are removed. Others (writer unknown) are removed
    with `clean`, else named in an InputError; those of a writer still running are left alone."""
    if not os.path.isdir(parent):
        return []
    removed, unknown = [], []
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if not (name.startswith(".") and PARTIAL in name and os.path.isdir(path)):
            continue
        alive = _writer_alive(path)
        if alive is True:
            continue
        if alive is False or clean:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            log.warning("removed %s, the partial output of an interrupted run", path)
        else:
            unknown.append(f"{path} ({_size(path) / 2**20:.1f} MiB)")
    if unknown:
        raise InputError(f"leftover partial output of an interrupted run in {parent}: {', '.join(unknown)}; "
                         "remove it, or rerun with --clean_partial")
    return removed


@contextlib.contextmanager
def atomic_dir(out: str, clean_partial: bool = False) -> Iterator[str]:
    """Yield a temporary sibling of `out` to fill; it is renamed onto `out` when the block ends
    cleanly and removed on any error. `out` must not exist (checked before and at the rename).

    Partial siblings left by interrupted writes are handled first (`check_partials`)."""
    if os.path.exists(out):
        raise FileExistsError(f"output directory already exists: {out}")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    check_partials(parent, clean_partial)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(out))}{PARTIAL}")
    try:
        _chmod_default(tmp, directory=True)
        owner = os.path.join(tmp, OWNER_FILE)
        write_json(owner, _process_id(os.getpid()) or {"host": socket.gethostname(), "pid": os.getpid()})
        yield tmp
        os.remove(owner)
        if os.path.exists(out):
            raise FileExistsError(f"output directory already exists: {out}")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
