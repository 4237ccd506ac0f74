"""Converted checkpoints: orbax items per group of params, a manifest, our ModelConfig; and `load`.

A converted directory holds

    manifest.json        format tag, family, dtype, the params paths of every group
    model_config.json    `ModelConfig.to_dict()`
    params/<group>/      one orbax StandardCheckpointer item per group: `embed`, `layer_000` ...,
                         `final` (final_norm + lm_head)
    tokenizer files      copied from the source checkpoint

Groups are written as soon as they are complete, so a converter never holds the whole model.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np

from d2cache_jax import files
from d2cache_jax.cli import InputError
from d2cache_jax.config import ModelConfig, read_hf_config, read_json, read_model_config
from d2cache_jax.params import param_shapes

FORMAT = "d2cache-jax/converted-v1"
MANIFEST = "manifest.json"
MODEL_CONFIG = "model_config.json"
DTYPES = ("bfloat16", "float32")
# Orbax write settings (measured in tools/convert_memory_check.py): plain zarr chunks of at
# most 16 MiB rather than OCDBT, which buffers a whole item until its commit; and host arrays written
# in place, not deep-copied first (safe: each save is synchronous and nothing mutates the arrays).
# A sharded restore then reads only the chunks its devices need.
CHUNK_BYTES = 16 << 20


def group_of(path: str) -> str:
    """The orbax item holding a dotted params path (`layers.3.wq` -> `layer_003`)."""
    if path.startswith("layers."):
        return f"layer_{int(path.split('.')[1]):03d}"
    return "embed" if path == "embed" else "final"


def group_paths(cfg: ModelConfig) -> dict[str, list[str]]:
    """Every group's dotted params paths, in writing order."""
    out = {"embed": ["embed"]}
    for i, layer in enumerate(param_shapes(cfg)["layers"]):
        out[f"layer_{i:03d}"] = [f"layers.{i}.{k}" for k in layer]
    out["final"] = ["final_norm", "lm_head"]
    return out


def get_path(tree: Any, path: str) -> Any:
    """tree at a dotted path (list indices as integers); None if absent."""
    node = tree
    for part in path.split("."):
        if isinstance(node, list | tuple):
            node = node[int(part)] if int(part) < len(node) else None
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
        if node is None:
            return None
    return node


def set_path(tree: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = tree
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[last] = value


def _leaf_name(path: str) -> str:
    return path.split(".")[-1]


def _dtype_name(dtype: Any) -> str:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return name



class _DropOcdbtMergeNotice(logging.Filter):
    """Orbax warns on every non-OCDBT save that it skips the OCDBT merge; that is expected here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Skipping merge of OCDBT" not in record.getMessage()


def _group_writer():
    """A synchronous orbax checkpointer for groups of host arrays (no OCDBT, no defensive copies)."""
    import orbax.checkpoint as ocp

    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, ocp.type_handlers.get_type_handler(jax.Array)))
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False, type_handler_registry=registry))


def write_converted(cfg: ModelConfig, items: Iterable[tuple[str, np.ndarray]], out: str,
                    extra_files: Sequence[str] = (), source: dict | None = None, clean_partial: bool = False) -> str:
    """Write params streamed as (dotted path, array) pairs to a converted directory at `out`.

    Each group is saved with orbax as soon as all its arrays have arrived and then dropped. The
    directory is built in a temporary sibling and renamed only when complete; on any error the
    temporary is removed and `out` is never touched. Partial outputs of interrupted runs beside `out`
    are handled by `files.check_partials` (`clean_partial` removes those whose writer is unknown).
    """
    import orbax.checkpoint as ocp

    groups = group_paths(cfg)
    shapes, dtype = param_shapes(cfg), np.dtype(cfg.param_dtype)
    notice = _DropOcdbtMergeNotice()
    logging.getLogger("absl").addFilter(notice)
    try:
        with files.atomic_dir(out, clean_partial) as tmp:
            ckptr = _group_writer()
            pending: dict[str, dict[str, np.ndarray]] = {}
            done = set()
            for path, arr in items:
                g = group_of(path)
                if g not in groups or path not in groups[g] or g in done or path in pending.get(g, {}):
                    raise ValueError(f"unexpected or repeated params path {path!r}")
                if arr.shape != tuple(get_path(shapes, path)) or arr.dtype != dtype:
                    raise ValueError(f"params {path}: got {arr.dtype}{list(arr.shape)}, expected "
                                     f"{dtype}{list(get_path(shapes, path))}")
                pending.setdefault(g, {})[path] = arr
                if len(pending[g]) == len(groups[g]):
                    tree = {_leaf_name(p): a for p, a in pending.pop(g).items()}
                    save_args = {k: ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES) for k in tree}
                    ckptr.save(os.path.join(tmp, "params", g), args=ocp.args.PyTreeSave(tree, save_args=save_args))
                    del tree
                    release_memory()
                    done.add(g)
            missing = [p for g, ps in groups.items() if g not in done for p in ps
                       if p not in pending.get(g, {})]
            if missing:
                raise ValueError(f"params stream ended without: {', '.join(missing)}")
            manifest = {"format": FORMAT, "family": cfg.family, "param_dtype": cfg.param_dtype,
                        "groups": groups, "source": source or {}}
            files.write_json(os.path.join(tmp, MANIFEST), manifest)
            files.write_json(os.path.join(tmp, MODEL_CONFIG), cfg.to_dict())
            for f in extra_files:
                shutil.copyfile(f, os.path.join(tmp, os.path.basename(f)))
    finally:
        logging.getLogger("absl").removeFilter(notice)
    return out


def release_memory() -> None:
    """Give freed heap pages back to the OS (glibc keeps them in per-thread arenas otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def save(cfg: ModelConfig, params: dict, out: str) -> str:
    """Write in-memory params as a converted directory (the format `load` reads fastest)."""
    dtype = np.dtype(cfg.param_dtype)
    items = ((p, np.asarray(get_path(params, p)).astype(dtype, copy=False))
             for ps in group_paths(cfg).values() for p in ps)
    return write_converted(cfg, items, out, source={"from": "save"})


def _skeleton(cfg: ModelConfig) -> dict:
    return {"embed": None, "layers": [{} for _ in range(cfg.n_layers)], "final_norm": None,
            "lm_head": None}


def _sharding_at(shardings: Any, path: str):
    if shardings is None:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    s = get_path(shardings, path)
    if not isinstance(s, jax.sharding.Sharding):
        raise ValueError(f"shardings has no jax.sharding.Sharding at params path {path!r}")
    return s


def load(path: str, dtype: Any = None, shardings: Any = None) -> tuple[ModelConfig, dict]:
    """Load (ModelConfig, params) from a converted directory or straight from a published HF one.

    `dtype` ("bfloat16" / "float32") casts the params; default keeps the checkpoint's. `shardings`
    is an optional pytree of `jax.sharding.Sharding` shaped like the params: arrays are restored
    straight into those shardings (orbax restore targets carry them).
    """
    if os.path.isfile(os.path.join(path, MANIFEST)):
        return _load_converted(path, dtype, shardings)
    if os.path.isfile(os.path.join(path, "config.json")):
        return _load_hf(path, dtype, shardings)
    raise InputError(f"{path} is neither a converted checkpoint ({MANIFEST}) nor an HF checkpoint "
                     "(config.json)")


def read_config(path: str) -> ModelConfig:
    """The ModelConfig of a converted or Hugging Face checkpoint directory, checked, without its params;
    a bad or missing file is an InputError naming it (cheap: call it before any long work)."""
    if os.path.isfile(os.path.join(path, MANIFEST)):
        return read_model_config(os.path.join(path, MODEL_CONFIG))
    if os.path.isfile(os.path.join(path, "config.json")):
        return read_hf_config(path)
    raise InputError(f"{path} is neither a converted checkpoint ({MANIFEST}) nor an HF checkpoint (config.json)")


def _read_manifest(path: str) -> dict:
    manifest = read_json(os.path.join(path, MANIFEST))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise InputError(f"{path}/{MANIFEST}: format {got!r}, expected {FORMAT!r}")
    return manifest


def _why(e: BaseException) -> str:
    """The innermost cause of an orbax/TensorStore error, in one short line."""
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line.split("; at byte")[0][:300]


def _restore_group(ckptr: Any, item: str, target: dict) -> dict:
    """Restore one group; a missing, truncated or garbage file is an InputError naming the group."""
    try:
        return ckptr.restore(item, target)
    except Exception as e:  # orbax and TensorStore raise plain Exception / ValueError / OSError
        why = _why(e)
    # Outside the except block so nothing keeps the failed reads alive; their coroutines are collected
    # now, quietly, instead of printing "Exception ignored" at interpreter exit.
    hook, sys.unraisablehook = sys.unraisablehook, lambda _: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook
    raise InputError(f"damaged converted checkpoint: params group {os.path.basename(item)} ({item}) cannot "
                     f"be read: {why}; convert the model again")


def _load_converted(path: str, dtype: Any, shardings: Any) -> tuple[ModelConfig, dict]:
    import orbax.checkpoint as ocp

    manifest = _read_manifest(path)
    cfg = read_model_config(os.path.join(path, MODEL_CONFIG))
    if dtype is not None:
        cfg = cfg.replace(param_dtype=_dtype_name(dtype))
    groups = group_paths(cfg)
    if manifest.get("groups") != groups:
        raise InputError(f"{path}/{MANIFEST}: groups do not match {MODEL_CONFIG}")
    shapes, params = param_shapes(cfg), _skeleton(cfg)
    ckptr = ocp.StandardCheckpointer()
    for g, paths in groups.items():
        item = os.path.join(path, "params", g)
        if not os.path.isdir(item):
            raise InputError(f"damaged converted checkpoint: missing params group {g} ({item}); "
                             "convert the model again")
        target = {_leaf_name(p): jax.ShapeDtypeStruct(tuple(get_path(shapes, p)), cfg.param_dtype,
                                                      sharding=_sharding_at(shardings, p)) for p in paths}
        restored = _restore_group(ckptr, item, target)
        for p in paths:
            set_path(params, p, restored[_leaf_name(p)])
    return cfg, params


def _load_hf(path: str, dtype: Any, shardings: Any) -> tuple[ModelConfig, dict]:
    from d2cache_jax.hf.reader import inspect_hf, iter_params

    src = inspect_hf(path, dtype=None if dtype is None else _dtype_name(dtype))
    params = _skeleton(src.cfg)
    for p, arr in iter_params(src):
        # Each device gets only its slice; also right on several hosts (every one reads the tensor).
        arr_of = lambda idx, a=arr: a[idx]
        set_path(params, p, jax.make_array_from_callback(arr.shape, _sharding_at(shardings, p), arr_of))
        del arr
    return src.cfg, params


