"""Converted checkpoints: one orbax item per params leaf, a manifest, our ModelConfig; and `load`.

A converted directory (format `d2cache-jax/converted-v2`) holds

    manifest.json        format tag, family, dtype, every params leaf's dotted path and shape, the source
    model_config.json    `ModelConfig.to_dict()`
    params/<leaf path>/  one orbax PyTree item per leaf of the params (the model's NNX state as a pure
                         dict), named by its dotted path: `embed.embedding`, `layers.attn.wq`, ...,
                         `final_norm.scale`, `lm_head`; per-layer leaves hold the whole [L, ...] stack
    tokenizer files      copied from the source checkpoint (and `d2cache_generation.json`)

Leaves are written one at a time as they arrive, so a converter holds one stacked leaf at most.
Directories of the previous format (`converted-v1`: per-layer groups of a list of layer dicts) are
refused with the command that converts the model again.
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
from d2cache_jax.params import is_shape, param_shapes

FORMAT = "d2cache-jax/converted-v2"
OLD_FORMATS = ("d2cache-jax/converted-v1",)
MANIFEST = "manifest.json"
MODEL_CONFIG = "model_config.json"
DTYPES = ("bfloat16", "float32")
# Orbax write settings (measured in tools/convert_memory_check.py): plain zarr chunks of at
# most 16 MiB rather than OCDBT, which buffers a whole item until its commit; and host arrays written
# in place, not deep-copied first (safe: each save is synchronous and nothing mutates the arrays).
# A sharded restore then reads only the chunks its devices need.
CHUNK_BYTES = 16 << 20


def dotted(path: tuple) -> str:
    """A jax key path of dict keys as a dotted string (`layers.attn.wq`)."""
    return ".".join(str(getattr(k, "key", k)) for k in path)


def leaf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every params leaf's dotted path and shape, in the params tree's order."""
    flat, _ = jax.tree.flatten_with_path(param_shapes(cfg), is_leaf=is_shape)
    return {dotted(path): tuple(shape) for path, shape in flat}


def flatten(tree: dict) -> dict[str, Any]:
    """A nested params dict as {dotted path: leaf}."""
    return {dotted(path): leaf for path, leaf in jax.tree.flatten_with_path(tree)[0]}


def nest(flat: dict[str, Any]) -> dict:
    """{dotted path: leaf} back into the nested dict (the inverse of `flatten`)."""
    out: dict = {}
    for path, leaf in flat.items():
        set_path(out, path, leaf)
    return out


def get_path(tree: Any, path: str) -> Any:
    """tree at a dotted path of dict keys; None if absent."""
    node = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_path(tree: dict, path: str, value: Any) -> None:
    """Put `value` at a dotted path, making the dicts on the way."""
    *parents, last = path.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
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


def _leaf_writer():
    """A synchronous orbax checkpointer for host arrays (no OCDBT, no defensive copies)."""
    import orbax.checkpoint as ocp

    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, ocp.type_handlers.get_type_handler(jax.Array)))
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False, type_handler_registry=registry))


def write_converted(cfg: ModelConfig, items: Iterable[tuple[str, np.ndarray]], out: str,
                    extra_files: Sequence[str] = (), source: dict | None = None, clean_partial: bool = False) -> str:
    """Write params streamed as (dotted leaf path, whole leaf) pairs to a converted directory at `out`.

    Each leaf (per-layer ones as their [L, ...] stack) is saved with orbax as soon as it arrives and
    then dropped. The directory is built in a temporary sibling and renamed only when complete; on any
    error the temporary is removed and `out` is never touched. Partial outputs of interrupted runs beside
    `out` are handled by `files.check_partials` (`clean_partial` removes those whose writer is unknown).
    """
    import orbax.checkpoint as ocp

    shapes, dtype = leaf_shapes(cfg), np.dtype(cfg.param_dtype)
    notice = _DropOcdbtMergeNotice()
    logging.getLogger("absl").addFilter(notice)
    try:
        with files.atomic_dir(out, clean_partial) as tmp:
            ckptr, done = _leaf_writer(), set()
            for path, arr in items:
                if path not in shapes or path in done:
                    raise ValueError(f"unexpected or repeated params path {path!r}")
                if arr.shape != shapes[path] or arr.dtype != dtype:
                    raise ValueError(f"params {path}: got {arr.dtype}{list(arr.shape)}, expected "
                                     f"{dtype}{list(shapes[path])}")
                tree = {_leaf_name(path): arr}
                del arr
                save_args = {k: ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES) for k in tree}
                ckptr.save(os.path.join(tmp, "params", path), args=ocp.args.PyTreeSave(tree, save_args=save_args))
                del tree
                release_memory()
                done.add(path)
            missing = [p for p in shapes if p not in done]
            if missing:
                raise ValueError(f"params stream ended without: {', '.join(missing)}")
            manifest = {"format": FORMAT, "family": cfg.family, "param_dtype": cfg.param_dtype,
                        "params": {p: list(s) for p, s in shapes.items()}, "source": source or {}}
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
    """Write in-memory params (the new layout) as a converted directory (the format `load` reads fastest)."""
    dtype, flat, shapes = np.dtype(cfg.param_dtype), flatten(params), leaf_shapes(cfg)
    if set(flat) != set(shapes):
        some = lambda xs: ", ".join(sorted(xs)[:4]) + (f" (+{len(xs) - 4} more)" if len(xs) > 4 else "") or "none"
        raise ValueError(f"params do not match the config's layout (the model's stacked state as a dict): "
                         f"missing {some(set(shapes) - set(flat))}; unexpected {some(set(flat) - set(shapes))}")
    items = ((p, np.asarray(flat[p]).astype(dtype, copy=False)) for p in shapes)
    return write_converted(cfg, items, out, source={"from": "save"})


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
    is an optional pytree of `jax.sharding.Sharding` shaped like the params: each leaf is restored
    straight into its sharding (orbax restore targets carry them; HF tensors go through
    `jax.make_array_from_callback`).
    """
    if os.path.isfile(os.path.join(path, MANIFEST)):
        return _load_converted(path, dtype, shardings)
    if os.path.isfile(os.path.join(path, "config.json")):
        return _load_hf(path, dtype, shardings)
    raise InputError(f"{path} is neither a converted checkpoint ({MANIFEST}) nor an HF checkpoint "
                     "(config.json)")


def read_config(path: str) -> ModelConfig:
    """The ModelConfig of a converted or Hugging Face checkpoint directory, checked, without its params;
    a bad or missing file, or a converted directory of an older format, is an InputError naming it
    (cheap: call it before any long work)."""
    if os.path.isfile(os.path.join(path, MANIFEST)):
        _read_manifest(path)
        return read_model_config(os.path.join(path, MODEL_CONFIG))
    if os.path.isfile(os.path.join(path, "config.json")):
        return read_hf_config(path)
    raise InputError(f"{path} is neither a converted checkpoint ({MANIFEST}) nor an HF checkpoint (config.json)")


def _read_manifest(path: str) -> dict:
    manifest = read_json(os.path.join(path, MANIFEST))
    got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    if got in OLD_FORMATS:
        family = manifest.get("family") if manifest.get("family") in ("llada", "dream") else "<llada|dream>"
        source = manifest.get("source")
        hf_dir = source.get("hf_dir") if isinstance(source, dict) and source.get("hf_dir") else "<published dir>"
        raise InputError(f"{path} was converted by an older version of d2cache-jax (format {got!r}, this version "
                         f"reads {FORMAT!r}); convert the model again: python -m checkpoints_convert.{family} "
                         f"--hf_dir={hf_dir} --out=<new dir>")
    if got != FORMAT:
        raise InputError(f"{path}/{MANIFEST}: format {got!r}, expected {FORMAT!r}")
    return manifest


def _why(e: BaseException) -> str:
    """The innermost cause of an orbax/TensorStore error, in one short line."""
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line.split("; at byte")[0][:300]


def _restore_item(ckptr: Any, item: str, target: dict) -> dict:
    """Restore one leaf's item; a missing, truncated or garbage file is an InputError naming the leaf."""
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
    raise InputError(f"damaged converted checkpoint: params leaf {os.path.basename(item)} ({item}) cannot "
                     f"be read: {why}; convert the model again")


def _load_converted(path: str, dtype: Any, shardings: Any) -> tuple[ModelConfig, dict]:
    import orbax.checkpoint as ocp

    manifest = _read_manifest(path)
    cfg = read_model_config(os.path.join(path, MODEL_CONFIG))
    if dtype is not None:
        cfg = cfg.replace(param_dtype=_dtype_name(dtype))
    shapes = leaf_shapes(cfg)
    if manifest.get("params") != {p: list(s) for p, s in shapes.items()}:
        raise InputError(f"{path}/{MANIFEST}: its params leaves and shapes do not match {MODEL_CONFIG}; "
                         "convert the model again")
    ckptr, flat = ocp.StandardCheckpointer(), {}
    for p, shape in shapes.items():
        item = os.path.join(path, "params", p)
        if not os.path.isdir(item):
            raise InputError(f"damaged converted checkpoint: missing params leaf {p} ({item}); "
                             "convert the model again")
        target = {_leaf_name(p): jax.ShapeDtypeStruct(shape, cfg.param_dtype, sharding=_sharding_at(shardings, p))}
        flat[p] = _restore_item(ckptr, item, target)[_leaf_name(p)]
    return cfg, nest(flat)


def _load_hf(path: str, dtype: Any, shardings: Any) -> tuple[ModelConfig, dict]:
    from d2cache_jax.hf.reader import inspect_hf, iter_params

    src = inspect_hf(path, dtype=None if dtype is None else _dtype_name(dtype))
    flat = {}
    for p, arr in iter_params(src):
        # The whole stacked leaf on the host; each device gets only its slice (also right on several
        # hosts: every one reads the leaf).
        arr_of = lambda idx, a=arr: a[idx]
        flat[p] = jax.make_array_from_callback(arr.shape, _sharding_at(shardings, p), arr_of)
        del arr, arr_of
    return src.cfg, nest(flat)
