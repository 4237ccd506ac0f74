"""Atomic file writes: a temporary file in the same folder, then a rename, so nothing is half written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1) + "\n")


def write_json(path: str, obj: Any) -> None:
    """Plain JSON file (inside a directory that is itself written atomically)."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


@contextlib.contextmanager
def atomic_dir(out: str) -> Iterator[str]:
    """Yield a temporary sibling of `out` to fill; it is renamed onto `out` when the block ends
    cleanly and removed on any error. `out` must not exist (checked before and at the rename)."""
    if os.path.exists(out):
        raise FileExistsError(f"output directory already exists: {out}")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(out))}.partial-")
    try:
        yield tmp
        if os.path.exists(out):
            raise FileExistsError(f"output directory already exists: {out}")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
