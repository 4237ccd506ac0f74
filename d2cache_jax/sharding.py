"""Device meshes and one table of partition rules, named by logical axes.

A mesh has two axes: `data` (batch rows) and `model` (attention heads, MLP hidden units, vocabulary).
Every array the generation touches is described by logical axes (`batch`, `heads`, `kv_heads`, `mlp`,
`vocab`, `embed`, ...); `RULES` maps those to mesh axes, and `spec()` turns them into a
`PartitionSpec` for a concrete shape. A dimension that does not divide by its mesh axis is
replicated instead (GQA: Dream's 4 KV heads on model:8 keep K/V and wk/wv whole on every device
while the 28 query heads, MLP hidden and vocabulary follow their own divisibility).

    params:   the modules' own `sharding_names` (`params.param_axes`), e.g. embed.embedding [V,d]
              ('vocab','embed'); layers.attn.wq [L,d,H,hd] (None,'embed','heads','head_dim');
              layers.mlp.w_down [L,F,d] (None,'mlp','embed'); lm_head [d,V] ('embed','vocab').
              The layer axis is never sharded.
    state:    [B,...] arrays ('batch', None, ...); scalars and the rng key replicated
    caches:   by type, not shape: `model.LayerKV` K/V [L,B,T,Hkv,hd] (None,'batch','length','kv_heads',
              'head_dim'); dLLM-Cache's `DllmLayer` the same for k/v and (None,'batch',None,None) for its
              attn/ffn [L,B,T,d]; any other [B,...] ('batch',None,...). A cache method may override
              this with a `logical_axes(cfg, opts, cache)` attribute.

Meshes use `AxisType.Auto`: shardings are given at the jit boundary and XLA propagates them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from d2cache_jax import params as params_lib
from d2cache_jax.config import ModelConfig

AXES = ("data", "model")
RULES: dict[str, str | None] = {
    "batch": "data",
    "heads": "model",
    "kv_heads": "model",
    "mlp": "model",
    "vocab": "model",
    "embed": None,
    "length": None,
    "head_dim": None,
}

Axes = tuple[str | None, ...]


# --- meshes -------------------------------------------------------------------------------------

def parse_mesh(spec: str | None, n_devices: int | None = None) -> dict[str, int]:
    """`"data:2,model:4"` -> {'data': 2, 'model': 4}; missing axes are 1, `None`/"" puts all on data.

    One axis may be `-1` (the rest of the devices). The product must equal `n_devices` (`None`: any,
    for meshes of devices that are not here).
    """
    if n_devices is None:
        if not spec or "-1" in spec.replace(" ", ""):
            raise ValueError(f"mesh spec {spec!r}: give every axis size when the device count is unknown")
        n_devices = math.prod(int(v) for v in re.findall(r":\s*(\d+)", spec)) or 1
    sizes = {"data": 1, "model": 1}
    if not spec:
        sizes["data"] = n_devices
        return sizes
    seen, free = set(), None
    for part in spec.split(","):
        name, sep, value = part.strip().partition(":")
        name = name.strip()
        if not sep:
            raise ValueError(f"mesh spec {spec!r}: {part!r} is not NAME:SIZE (e.g. data:2,model:4)")
        if name not in AXES:
            raise ValueError(f"mesh spec {spec!r}: unknown axis {name!r}; axes are {', '.join(AXES)}")
        if name in seen:
            raise ValueError(f"mesh spec {spec!r}: axis {name!r} given twice")
        seen.add(name)
        try:
            size = int(value.strip())
        except ValueError:
            raise ValueError(f"mesh spec {spec!r}: size of {name!r} must be an integer, got {value!r}") from None
        if size == -1 and free is None:
            free = name
            continue
        if size < 1:
            raise ValueError(f"mesh spec {spec!r}: size of {name!r} must be >= 1 (or one -1), got {size}")
        sizes[name] = size
    fixed = math.prod(v for k, v in sizes.items() if k != free)
    if free is not None:
        if n_devices % fixed:
            raise ValueError(f"mesh spec {spec!r}: {n_devices} devices do not divide by {fixed}")
        sizes[free] = n_devices // fixed
    if math.prod(sizes.values()) != n_devices:
        raise ValueError(f"mesh spec {spec!r} has {math.prod(sizes.values())} devices "
                         f"({'x'.join(str(sizes[a]) for a in AXES)}) but {n_devices} are available")
    return sizes


def make_mesh(spec: str | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, model) mesh over `devices` (default: this process's devices) from a `--mesh` spec."""
    devices = list(jax.local_devices() if devices is None else devices)
    sizes = parse_mesh(spec, len(devices))
    return jax.make_mesh(tuple(sizes[a] for a in AXES), AXES, axis_types=(AxisType.Auto,) * len(AXES),
                         devices=devices)


def mesh_str(mesh: Any) -> str:
    return ",".join(f"{k}:{v}" for k, v in mesh.shape.items())


# --- logical axes -> partition specs -------------------------------------------------------------

def spec(axes: Axes, shape: Sequence[int], mesh: Any, rules: dict[str, str | None] | None = None) -> PartitionSpec:
    """PartitionSpec for logical `axes` of an array of `shape`: a dim that does not divide, or whose
    mesh axis is already used by an earlier dim, is replicated."""
    rules = RULES if rules is None else rules
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match shape {tuple(shape)}")
    out, used = [], set()
    for name, dim in zip(axes, shape):
        mesh_axis = rules.get(name) if name is not None else None
        if mesh_axis is None or mesh_axis in used or dim % mesh.shape[mesh_axis]:
            out.append(None)
            continue
        used.add(mesh_axis)
        out.append(mesh_axis if mesh.shape[mesh_axis] > 1 else None)
    return PartitionSpec(*out)


def param_axes(cfg: ModelConfig) -> dict:
    """The params tree with each leaf's logical axes as a tuple (None on the layer axis), from the
    modules' `sharding_names` metadata."""
    def axes(p: PartitionSpec, shape: tuple[int, ...]) -> Axes:
        names = tuple(p) + (None,) * (len(shape) - len(p))
        if any(not (a is None or isinstance(a, str)) for a in names):
            raise ValueError(f"logical axes {p} name more than one axis per dimension")
        return names

    return jax.tree.map(axes, params_lib.param_axes(cfg), params_lib.param_shapes(cfg),
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def _is_axes(x: Any) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def shardings_from_axes(axes_tree: Any, shapes_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a tree of logical axes and a matching tree of shapes (tuples or arrays)."""
    shapes = jax.tree.leaves(shapes_tree, is_leaf=lambda x: isinstance(x, tuple))
    axes, treedef = jax.tree.flatten(axes_tree, is_leaf=_is_axes)
    if len(axes) != len(shapes):
        raise ValueError(f"{len(axes)} logical-axes leaves for {len(shapes)} arrays")
    out = [NamedSharding(mesh, spec(a, s if isinstance(s, tuple) else np.shape(s), mesh))
           for a, s in zip(axes, shapes)]
    return jax.tree.unflatten(treedef, out)


def param_shardings(cfg: ModelConfig, mesh: Mesh, scan_layers: bool = True) -> dict:
    """NamedShardings shaped like the params tree (pass to `checkpoint.load` or `jax.device_put`);
    `scan_layers=False`: shaped like `model.unstack_layers`' per-layer list (the layer axis dropped)."""
    out = shardings_from_axes(param_axes(cfg), params_lib.param_shapes(cfg), mesh)
    if not scan_layers:
        one = jax.tree.map(lambda s: NamedSharding(mesh, PartitionSpec(*tuple(s.spec)[1:])), out["layers"])
        out = {**out, "layers": [one] * cfg.n_layers}
    return out


KV_AXES: Axes = (None, "batch", "length", "kv_heads", "head_dim")  # [L, B, T, Hkv, hd]
ROWS_AXES: Axes = (None, "batch", None, None)  # [L, B, T, d] per-layer row outputs (dLLM-Cache)


def array_axes(shape: Sequence[int], cfg: ModelConfig, batch: int) -> Axes:
    """Default logical axes of a state or cache array, by shape: a leading batch dim is `batch`,
    everything else is replicated (K/V caches are recognised by type, see `_leaf_axes`)."""
    del cfg
    shape = tuple(shape)
    if not shape or shape[0] != batch:
        return (None,) * len(shape)
    return ("batch",) + (None,) * (len(shape) - 1)


def _leaf_axes(tree: Any, cfg: ModelConfig, batch: int) -> Any:
    """Logical axes of every array in `tree`: stacked K/V caches by their type, the rest by shape."""
    from d2cache_jax.cache.dllm import DllmLayer
    from d2cache_jax.model import LayerKV

    def one(x):
        if isinstance(x, LayerKV):
            return LayerKV(KV_AXES, KV_AXES)
        if isinstance(x, DllmLayer):
            return DllmLayer(KV_AXES, KV_AXES, ROWS_AXES, ROWS_AXES)
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            return (None,) * len(x.shape)  # a typed key: replicated
        return array_axes(np.shape(x), cfg, batch)
    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, (LayerKV, DllmLayer)))


def state_axes(cfg: ModelConfig, opts: Any, state: Any) -> Any:
    """Logical axes of a GenState (arrays or ShapeDtypeStructs), its cache included."""
    from d2cache_jax.cache import METHODS

    batch = state.tokens.shape[0]
    hook = getattr(METHODS.get(opts.cache), "logical_axes", None)
    cache_axes = hook(cfg, opts, state.cache) if hook else _leaf_axes(state.cache, cfg, batch)
    return _leaf_axes(state.replace(cache=None), cfg, batch).replace(cache=cache_axes)


def state_shardings(cfg: ModelConfig, opts: Any, state: Any, mesh: Mesh) -> Any:
    """NamedShardings shaped like the GenState."""
    axes = state_axes(cfg, opts, state)
    leaves, treedef = jax.tree.flatten(state)
    axes_leaves = jax.tree.leaves(axes, is_leaf=_is_axes)
    return jax.tree.unflatten(treedef, [NamedSharding(mesh, spec(a, np.shape(x), mesh))
                                        for a, x in zip(axes_leaves, leaves)])


def check_batch(batch: int, mesh: Any) -> None:
    if batch % mesh.shape["data"]:
        raise ValueError(f"batch of {batch} does not divide over the mesh's data axis of {mesh.shape['data']}")


def place(cfg: ModelConfig, opts: Any, params: dict, state: Any, mesh: Mesh) -> tuple[dict, Any]:
    """Params and a GenState put on `mesh` with their shardings (a no-op for arrays already there)."""
    from d2cache_jax.model import is_scanned

    check_batch(state.tokens.shape[0], mesh)
    return (jax.device_put(params, param_shardings(cfg, mesh, is_scanned(params))),
            jax.device_put(state, state_shardings(cfg, opts, state, mesh)))


def checkpoint_config(path: str) -> ModelConfig:
    """The ModelConfig of a converted or Hugging Face checkpoint directory, without its params."""
    from d2cache_jax import checkpoint

    return checkpoint.read_config(path)


def load(path: str, mesh: Mesh, dtype: Any = None) -> tuple[ModelConfig, dict]:
    """(config, params) with every array restored straight into its sharding on `mesh`: orbax reads
    only the slices this process's devices hold (a Hugging Face directory is read tensor by tensor)."""
    from d2cache_jax import checkpoint

    return checkpoint.load(path, dtype=dtype, shardings=param_shardings(checkpoint_config(path), mesh))


def to_host(tree: Any) -> Any:
    """numpy copies of (possibly multi-host) arrays: the whole global value on every process."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))
    return jax.tree.map(one, tree)


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """Sum of addressable shard bytes of every array in `tree`, per device."""
    per: dict[Any, int] = {}
    for x in jax.tree.leaves(tree):
        if isinstance(x, jax.Array):
            for s in x.addressable_shards:
                per[s.device] = per.get(s.device, 0) + s.data.nbytes
    return per
