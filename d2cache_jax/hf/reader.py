"""Read a published Hugging Face checkpoint (LLaDA or Dream safetensors) into our params, one leaf at a time.

Every shard header is read and checked first (keys, shapes, dtypes, file sizes) so that a bad checkpoint fails
before any tensor is read. A per-layer leaf of ours ([L, ...]) is built from its L published tensors, read by
their header offsets wherever they sit in the shards. `d2cache_jax.checkpoint.load` runs from this directly;
the converter (`checkpoints_convert`) writes what it yields into our converted format.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from d2cache_jax import cli
from d2cache_jax.config import ModelConfig, read_hf_config
from d2cache_jax.hf.layout import Entry, key_map, keys_by_leaf, leaf_shape
from d2cache_jax.hf.safetensors_io import DTYPES, CheckpointError, TensorInfo, read_header, read_rows

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class Source(NamedTuple):
    """A checked HF checkpoint: config, shard headers in file order, and the key map."""

    hf_dir: str
    cfg: ModelConfig  # param_dtype is the output dtype
    shards: list[tuple[str, dict[str, TensorInfo]]]
    entries: dict[str, Entry]


def _read_config(hf_dir: str, family: str | None, dtype: str) -> ModelConfig:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"missing config.json in {hf_dir}")
    try:
        cfg = read_hf_config(hf_dir, param_dtype=dtype)
    except cli.InputError as e:
        raise CheckpointError(str(e)) from None
    if family is not None and cfg.family != family:
        raise CheckpointError(f"{path} is a {cfg.family} config; use checkpoints_convert.{cfg.family}")
    return cfg


def _shard_files(hf_dir: str) -> tuple[list[str], dict[str, str] | None]:
    """Shard paths, and the index's key -> file map when the checkpoint is sharded."""
    index_path = os.path.join(hf_dir, INDEX)
    if os.path.isfile(index_path):
        try:
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"corrupt index {index_path}: {e!r}") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"corrupt index {index_path}: weight_map must map keys to shard file names")
        files = list(dict.fromkeys(weight_map.values()))
        for name in files:
            if not name or name != os.path.basename(name) or name in (".", "..") or "\\" in name:
                raise CheckpointError(f"corrupt index {index_path}: shard file {name!r} is not a plain file name "
                                      f"inside {hf_dir}")
            if not os.path.isfile(os.path.join(hf_dir, name)):
                raise CheckpointError(f"missing shard file {os.path.join(hf_dir, name)} "
                                      f"(named in {index_path})")
        return [os.path.join(hf_dir, n) for n in files], weight_map
    if os.path.isfile(os.path.join(hf_dir, SINGLE)):
        return [os.path.join(hf_dir, SINGLE)], None
    raise CheckpointError(f"no {INDEX} or {SINGLE} in {hf_dir}")


def inspect_hf(hf_dir: str, family: str | None = None, dtype: str | None = None) -> Source:
    """Read config and every shard header; raise one CheckpointError listing all problems.

    The output dtype is `dtype`, else bfloat16 when the embedding is stored in bf16, else float32.
    """
    files, weight_map = _shard_files(hf_dir)
    shards = [(f, read_header(f)) for f in files]
    where = {k: f for f, hdr in shards for k in hdr}
    embeds = ("model.transformer.wte.weight", "model.embed_tokens.weight")
    embed_dt = next((hdr[k].dtype for _, hdr in shards for k in hdr if k in embeds), None)
    out_dtype = dtype or ("bfloat16" if embed_dt in (None, "BF16") else "float32")
    if out_dtype not in ("bfloat16", "float32"):
        raise CheckpointError(f"--dtype must be bfloat16 or float32, got {out_dtype!r}")
    cfg = _read_config(hf_dir, family, out_dtype)
    entries = key_map(cfg)
    errors = []
    for f, hdr in shards:
        for k in hdr:
            if weight_map is not None and os.path.join(hf_dir, weight_map.get(k, "?")) != f:
                errors.append(f"key {k} is in {f} but {INDEX} places it in {weight_map.get(k)}")
    if weight_map is not None:
        errors += [f"key {k}: {INDEX} places it in {os.path.join(hf_dir, v)}, which does not hold it"
                   for k, v in weight_map.items() if k not in where]
    errors += [f"unknown key {k} in {where[k]}" for k in where if k not in entries]
    errors += [f"missing key {k} (expected by {hf_dir}/config.json, in no shard)"
               for k in entries if k not in where]
    for k, e in entries.items():
        if k in where:
            info = dict(shards)[where[k]][k]
            if info.shape != e.hf_shape:
                errors.append(f"wrong shape for {k} in {where[k]}: {list(info.shape)}, expected "
                              f"{list(e.hf_shape)} from config.json")
    if errors:
        raise CheckpointError(f"{len(errors)} problem(s) in {hf_dir}:\n  " + "\n  ".join(errors))
    return Source(hf_dir, cfg, shards, entries)


def iter_params(src: Source) -> Iterator[tuple[str, np.ndarray]]:
    """(our dotted leaf path, the whole leaf in our layout and dtype), one leaf at a time.

    A per-layer leaf is allocated as its [L, ...] stack and each layer's tensor is read straight into
    its row, block by block (Linear weights transposed on the way), so the most held at once is one
    stacked leaf plus one read block, however the keys are spread over the shards. A leaf's tensors
    are read in (shard, offset) order. Each leaf is a fresh array (consumers may keep it).
    """
    dt = np.dtype(src.cfg.param_dtype) if src.cfg.param_dtype == "float32" else DTYPES["BF16"]
    where = {k: (s, path, info) for s, (path, hdr) in enumerate(src.shards) for k, info in hdr.items()}
    with contextlib.ExitStack() as stack:
        files = {}
        for leaf, keys in keys_by_leaf(src.entries).items():
            out = np.empty(leaf_shape(src.entries, keys), dt)
            for key in sorted(keys, key=lambda k: (where[k][0], where[k][2].start)):
                _, path, info = where[key]
                if path not in files:
                    files[path] = stack.enter_context(open(path, "rb"))
                e = src.entries[key]
                read_ours(files[path], info, e, dt, path, out=out if e.layer is None else out[e.layer])
            yield leaf, out
            del out


def read_ours(f, info: TensorInfo, e: Entry, dt: np.dtype, path: str = "?", block_bytes: int = 16 << 20,
              out: np.ndarray | None = None) -> np.ndarray:
    """One tensor in our layout and dtype, as `to_ours` gives it, written into `out` (C-contiguous, shape
    `e.shape`) when given. Read block by block (Linear weights transposed on the way), so the only
    full-size buffer is the result."""
    if out is None:
        out = np.empty(e.shape, dt)
    if out.shape != e.shape or not out.flags.c_contiguous:
        raise ValueError(f"read_ours: out must be C-contiguous {list(e.shape)}, got {list(out.shape)}")
    n_rows = info.shape[0] if info.shape else 1
    transposed = e.kind in ("linear", "heads_in")
    # Views of `out` (it is C-contiguous): [in, out] for a transposed Linear weight, else the published shape.
    dst = out.reshape(info.shape[::-1] if transposed else (n_rows, *info.shape[1:]))
    row_bytes = int(np.prod(info.shape[1:], dtype=np.int64)) * DTYPES[info.dtype].itemsize
    step = max(1, block_bytes // max(row_bytes, 1))
    for r in range(0, n_rows, step):
        rows = read_rows(f, info, r, min(r + step, n_rows), path)
        if transposed:
            dst[:, r:r + step] = rows.T
        else:
            dst[r:r + step] = rows
    return out
