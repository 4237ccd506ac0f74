"""A small streaming safetensors reader and writer (header parsed here; one tensor read at a time).

File format: 8-byte little-endian header length N, N bytes of JSON
`{key: {"dtype", "shape", "data_offsets": [start, end]}, "__metadata__": {...}}`, then the data
bytes; offsets are relative to the start of the data. Tensors are C-order, little-endian.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

from d2cache_jax.cli import InputError

# Only these dtypes are accepted: the published checkpoints are bf16; fp32/fp16 appear in exports.
DTYPES = {"BF16": np.dtype(ml_dtypes.bfloat16), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16)}
NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 << 20  # 100 MB: far above any real header, guards against garbage lengths


class CheckpointError(InputError):
    """A checkpoint file or directory that cannot be converted; the message names file and key."""


class TensorInfo(NamedTuple):
    dtype: str  # safetensors dtype name ("BF16", "F32", "F16")
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def read_header(path: str) -> dict[str, TensorInfo]:
    """Parse and validate one shard's header; every error names the file (and the key)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"missing shard file {path}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"truncated shard {path}: {size} bytes, no header length")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"truncated shard {path}: header length {n} but file has {size} bytes")
        try:
            raw = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"corrupt shard {path}: header is not JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"corrupt shard {path}: header is not a JSON object")
    data0, data_len = 8 + n, size - 8 - n
    out, max_end = {}, 0
    for key, meta in raw.items():
        if key == "__metadata__":
            continue
        try:
            dt, shape, (a, b) = meta["dtype"], tuple(int(s) for s in meta["shape"]), meta["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"corrupt shard {path}: bad header entry for {key}: {meta}") from None
        if dt not in DTYPES:
            raise CheckpointError(f"wrong dtype {dt} for {key} in {path}; accepted: {', '.join(DTYPES)}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dt].itemsize
        if not 0 <= a <= b or b - a != nbytes:
            raise CheckpointError(f"corrupt shard {path}: {key} offsets [{a}, {b}] do not hold "
                                  f"{dt}{list(shape)} ({nbytes} bytes)")
        if b > data_len:
            raise CheckpointError(f"truncated shard {path}: {key} ends at data byte {b} but the file "
                                  f"has {data_len} data bytes")
        max_end = max(max_end, b)
        out[key] = TensorInfo(dt, shape, data0 + a, data0 + b)
    if max_end != data_len:
        raise CheckpointError(f"corrupt shard {path}: header covers {max_end} data bytes, "
                              f"file has {data_len}")
    # The tensors must tile the data bytes exactly: no two share bytes, no bytes belong to none.
    end, prev = 0, None
    for key, info in sorted(out.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        a, b = info.start - data0, info.end - data0
        if a < end:
            raise CheckpointError(f"corrupt shard {path}: {key} (data bytes [{a}, {b}]) overlaps {prev}")
        if a > end:
            raise CheckpointError(f"corrupt shard {path}: data bytes [{end}, {a}] belong to no tensor")
        end, prev = b, key
    return out


def read_tensor(f, info: TensorInfo, path: str = "?") -> np.ndarray:
    """Read one tensor from an open shard with seek + readinto (no whole-file mmap)."""
    return read_rows(f, info, 0, info.shape[0] if info.shape else 1, path).reshape(info.shape)


def read_rows(f, info: TensorInfo, r0: int, r1: int, path: str = "?") -> np.ndarray:
    """Rows [r0, r1) of a tensor along its first axis (a scalar counts as one row)."""
    row = tuple(info.shape[1:])
    arr = np.empty((r1 - r0, *row), DTYPES[info.dtype])
    buf = arr.reshape(-1).view(np.uint8)
    start = info.start + r0 * int(np.prod(row, dtype=np.int64)) * arr.itemsize
    f.seek(start)
    if f.readinto(buf) != buf.size:
        raise CheckpointError(f"truncated shard {path}: short read at byte {start}")
    if not np.little_endian:  # safetensors is little-endian
        arr = arr.byteswap()
    return arr


def write_safetensors(path: str, specs: dict[str, tuple[np.dtype, tuple[int, ...]]],
                      get: Callable[[str], Any], metadata: dict[str, str] | None = None) -> int:
    """Write tensors `specs` (key -> (dtype, shape)) fetching each with `get(key)` just in time.

    Returns the number of data bytes. The header is padded with spaces to a multiple of 8.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    off = 0
    for key, (dt, shape) in specs.items():
        dt = np.dtype(dt)
        if dt not in NAMES:
            raise CheckpointError(f"cannot write {key}: dtype {dt} is not one of {', '.join(DTYPES)}")
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        header[key] = {"dtype": NAMES[dt], "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for key, (dt, shape) in specs.items():
            arr = np.ascontiguousarray(np.asarray(get(key)).astype(dt, copy=False))
            if arr.shape != tuple(shape):
                raise CheckpointError(f"cannot write {key}: shape {arr.shape}, expected {tuple(shape)}")
            f.write(arr.reshape(-1).view(np.uint8).data)
    return off
