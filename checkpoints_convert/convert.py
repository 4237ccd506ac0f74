"""Streaming converter from a published HF checkpoint (LLaDA or Dream) to our converted format.

Every shard header is read and checked first (keys, shapes, dtypes, file sizes) so that a bad
checkpoint fails before anything is written; then shards are read one at a time, one tensor at a
time, transformed into our layout and handed to `d2cache_jax.checkpoint.write_converted`, which
saves each group of params as soon as it is complete.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from checkpoints_convert.layout import Entry, key_map, to_ours
from checkpoints_convert.safetensors_io import (
    DTYPES,
    CheckpointError,
    TensorInfo,
    read_header,
    read_rows,
    read_tensor,
)
from d2cache_jax import cli
from d2cache_jax import files as files_lib
from d2cache_jax.checkpoint import group_paths, write_converted
from d2cache_jax.config import ModelConfig, read_hf_config

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "vocab.txt", "tokenizer.model", "added_tokens.json", "chat_template.json",
                   "chat_template.jinja", "generation_config.json", "d2cache_generation.json")


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
    """(our dotted path, array in our layout and dtype), one tensor at a time in group order.

    Reading by group (embed, layer 0, ...) with seek + read, rather than in file order, means a
    consumer that writes each group when complete holds one group at most, however the keys are
    spread over the shards. Within a group, tensors are read in (shard, offset) order.
    """
    dt = np.dtype(src.cfg.param_dtype) if src.cfg.param_dtype == "float32" else DTYPES["BF16"]
    where = {k: (s, path, info) for s, (path, hdr) in enumerate(src.shards) for k, info in hdr.items()}
    key_of = {e.path: k for k, e in src.entries.items()}
    with contextlib.ExitStack() as stack:
        files = {}
        for paths in group_paths(src.cfg).values():
            for key in sorted((key_of[p] for p in paths), key=lambda k: (where[k][0], where[k][2].start)):
                _, path, info = where[key]
                if path not in files:
                    files[path] = stack.enter_context(open(path, "rb"))
                arr = read_ours(files[path], info, src.entries[key], dt, path)
                yield src.entries[key].path, arr
                del arr


def read_ours(f, info: TensorInfo, e: Entry, dt: np.dtype, path: str = "?",
              block_bytes: int = 16 << 20) -> np.ndarray:
    """One tensor in our layout and dtype, as `to_ours` gives it. Linear weights are transposed
    block by block while reading, so the only full-size buffer is the result."""
    if e.kind not in ("linear", "heads_in"):
        return to_ours(e.kind, read_tensor(f, info, path), e.shape).astype(dt, copy=False)
    n_out, n_in = info.shape
    out = np.empty((n_in, n_out), dt)
    step = max(1, block_bytes // (n_in * DTYPES[info.dtype].itemsize))
    for r in range(0, n_out, step):
        out[:, r:r + step] = read_rows(f, info, r, min(r + step, n_out), path).T
    return out.reshape(e.shape)


def tokenizer_files(hf_dir: str) -> list[str]:
    """Tokenizer, chat template, generation config and generation defaults files present in `hf_dir`."""
    names = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(hf_dir, n))]
    names += [os.path.basename(p) for p in sorted(glob.glob(os.path.join(hf_dir, "*.jinja")))
              if os.path.basename(p) not in names]
    return [os.path.join(hf_dir, n) for n in names]


def convert(hf_dir: str, out: str, family: str | None = None, dtype: str | None = None,
            clean_partial: bool = False) -> ModelConfig:
    """Convert `hf_dir` into a new directory `out` (error if it exists; atomic rename at the end).

    Everything is checked before the first tensor is read: the output place, partial outputs of
    interrupted runs beside it (removed when provably stale or with `clean_partial`, else an error
    naming them), the config and every shard header."""
    if os.path.exists(out):
        raise FileExistsError(f"output directory already exists: {out}")
    parent = os.path.dirname(os.path.abspath(out))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise CheckpointError(f"--out={out}: {parent} is not a directory")
    files_lib.check_partials(parent, clean_partial)
    src = inspect_hf(hf_dir, family, dtype)
    source = {"hf_dir": os.path.abspath(hf_dir), "files": [os.path.basename(f) for f, _ in src.shards]}
    write_converted(src.cfg, iter_params(src), out, tokenizer_files(hf_dir), source, clean_partial)
    return src.cfg


# --- command line -----------------------------------------------------------------------------

def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("hf_dir", None, "Published checkpoint directory (config.json + safetensors).")
    flags.DEFINE_string("out", None, "Output directory; must not exist.")
    flags.DEFINE_enum("dtype", None, ["bfloat16", "float32"],
                      "Cast params to this dtype (default: keep bf16 checkpoints bf16).")
    flags.DEFINE_bool("clean_partial", False, "Remove partial outputs of interrupted conversions found beside "
                                              "--out (those whose writer provably died are always removed).")
    flags.mark_flags_as_required(["hf_dir", "out"])


def main(argv: list[str], family: str) -> None:
    """absl main body: convert --hf_dir into --out; bad input is one clear line on stderr, exit status 2."""
    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    if not f["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    cfg = convert(f.hf_dir, f.out, family, f.dtype, f.clean_partial)
    print(f"wrote {f.out}: {cfg.family} {cfg.n_layers} layers d_model={cfg.d_model} {cfg.param_dtype}")


def run(family: str) -> None:
    """Entry point of `python -m checkpoints_convert.<family>`."""
    _define_flags()
    cli.run(lambda argv: main(argv, family))
