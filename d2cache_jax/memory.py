"""Per-device memory estimate of a generation run on a mesh, printed before a run, and a fit check.

    params       every params leaf's shard (the stacked [L, ...] leaves with the modules' logical axes,
                 by the partition rules of `d2cache_jax.sharding`; the layer axis is never split)
    state        the GenState with its cache (shapes from `jax.eval_shape` of the cache's `init`: stacked
                 K/V [L, B, T, Hkv, hd], split over data and kv heads; dLLM-Cache's [L, B, T, d] row outputs
                 over data only)
    activations  the live intermediates of one full pass (every cache's first step is one): the new
                 cache it builds while the loop's carry still holds the old one, the
                 residual stream, q/k/v with their float32 RoPE copies, the float32 scores and
                 probabilities [b, H, T, T] of one layer or its MLP hidden [b, T, 3F], whichever is
                 larger, per-layer head-mean attention maps [b, T, T] when d2Cache keeps them for
                 its rollout, and float32 logits with the sampler's probabilities [b, G, V]

Sizes are per device: b = batch / data, heads, MLP hidden and vocabulary / model where they divide.
It is an estimate, not XLA's buffer assignment; `measure` reads the compiled program's own numbers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from d2cache_jax import sharding
from d2cache_jax.config import ModelConfig
from d2cache_jax.params import param_shapes

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Bytes per device."""

    params: int
    state: int
    activations: int
    mesh: str
    batch: int
    total_len: int

    @property
    def total(self) -> int:
        return self.params + self.state + self.activations

    def describe(self) -> str:
        g = lambda n: f"{n / GiB:.2f}"
        return (f"memory per device on mesh {self.mesh} (batch {self.batch}, length {self.total_len}): "
                f"{g(self.total)} GiB = params {g(self.params)} + state/cache {g(self.state)} "
                f"+ activations {g(self.activations)}")


def _sizes(mesh: Any) -> dict[str, int]:
    sizes = dict(mesh) if isinstance(mesh, dict) else dict(mesh.shape)
    return {a: int(sizes.get(a, 1)) for a in sharding.AXES}


class _Shape:
    def __init__(self, sizes: dict[str, int]):
        self.shape = sizes


def _shard_elems(axes: tuple, shape: tuple, mesh: _Shape) -> int:
    spec = sharding.spec(axes, shape, mesh)
    return math.prod(d // (mesh.shape[a] if a else 1) for d, a in zip(shape, tuple(spec) + (None,) * len(shape)))


def _split(n: int, ways: int) -> int:
    """Per-device share of a dim that is split only when it divides (as the partition rules do)."""
    return n // ways if n % ways == 0 else n


def abstract_state(cfg: ModelConfig, opts: Any, batch: int, prompt_len: int) -> Any:
    """ShapeDtypeStructs of the GenState (cache included) for this batch and prompt length."""
    from d2cache_jax.cache import METHODS
    from d2cache_jax.generation.state import init_state

    t = prompt_len + opts.gen_length
    ids = np.zeros((batch, prompt_len), np.int32)
    mask = np.ones((batch, prompt_len), bool)
    return jax.eval_shape(lambda: init_state(cfg, opts, ids, mask, METHODS[opts.cache].init(cfg, opts, batch, t),
                                             jax.random.key(0)))


def estimate(cfg: ModelConfig, opts: Any, batch: int, prompt_len: int, mesh: Any) -> Estimate:
    """Per-device bytes of params, state and one step's activations (`mesh`: a Mesh, AbstractMesh or
    {'data': n, 'model': m})."""
    sizes = _sizes(mesh)
    m = _Shape(sizes)
    dt = jnp.dtype(cfg.param_dtype).itemsize
    shapes = param_shapes(cfg)
    p_axes = jax.tree.leaves(sharding.param_axes(cfg), is_leaf=sharding._is_axes)
    p_shapes = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))
    params = sum(_shard_elems(a, s, m) for a, s in zip(p_axes, p_shapes)) * dt

    bpad = -(-batch // sizes["data"]) * sizes["data"]
    state = abstract_state(cfg, opts, bpad, prompt_len)
    s_axes = jax.tree.leaves(sharding.state_axes(cfg, opts, state), is_leaf=sharding._is_axes)
    s_leaves = jax.tree.leaves(state)
    state_bytes = sum(_shard_elems(a, tuple(x.shape), m) * x.dtype.itemsize for a, x in zip(s_axes, s_leaves))
    cache_bytes = sum(_shard_elems(a, tuple(x.shape), m) * x.dtype.itemsize
                      for a, x in zip(jax.tree.leaves(sharding.state_axes(cfg, opts, state).cache,
                                                      is_leaf=sharding._is_axes),
                                      jax.tree.leaves(state.cache)))

    b, t, g = bpad // sizes["data"], prompt_len + opts.gen_length, opts.gen_length
    mp = sizes["model"]
    h, hkv = _split(cfg.n_heads, mp), _split(cfg.n_kv_heads, mp)
    f, v = _split(cfg.mlp_hidden, mp), _split(cfg.vocab_size, mp)
    hd, d = cfg.head_dim, cfg.d_model
    stream = 3 * b * t * d * dt  # residual, its norm, the attention/MLP output being added
    qkv = b * t * (h + 2 * hkv) * hd * (dt + 4)  # projections and their float32 RoPE copies
    attn = 2 * b * h * t * t * 4 + b * t * h * hd * dt  # float32 scores and probabilities, output
    mlp = 3 * b * t * f * dt + b * t * d * 4
    layer = stream + max(qkv + attn, mlp)
    maps = cfg.n_layers * b * t * t * 4 if opts.cache == "d2cache" else 0
    head = 3 * b * g * v * 4  # logits, probabilities, sampler temporaries
    activations = layer + maps + head + cache_bytes  # + the fresh cache of a full pass
    return Estimate(params=int(params), state=int(state_bytes), activations=int(activations),
                    mesh=",".join(f"{k}:{n}" for k, n in sizes.items()), batch=bpad, total_len=t)


def device_memory(device: Any = None) -> int | None:
    """Bytes an accelerator offers (its allocator's limit), or None where unknown (CPU)."""
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def check_fits(est: Estimate, device_bytes: int | None, headroom: float = 0.9) -> None:
    """Raise MemoryError, saying what to change, when the estimate exceeds `headroom` of a device."""
    if device_bytes is None or est.total <= headroom * device_bytes:
        return
    raise MemoryError(
        f"this run does not fit: {est.describe()}, but a device has {device_bytes / GiB:.2f} GiB "
        f"({headroom:.0%} usable). Use a larger model axis (--mesh=data:N,model:M), a smaller batch or "
        f"gen_length, or a bfloat16 checkpoint.")


def measure(compiled: Any, params: Any, state: Any) -> dict[str, int]:
    """Measured bytes on the busiest device: params and state shards, and XLA's temporaries of `compiled`."""
    per_p, per_s = sharding.bytes_per_device(params), sharding.bytes_per_device(state)
    ma = compiled.memory_analysis()
    temp = int(getattr(ma, "temp_size_in_bytes", 0)) if ma is not None else 0
    return dict(params=max(per_p.values(), default=0), state=max(per_s.values(), default=0), temp=temp,
                total=max(per_p.values(), default=0) + max(per_s.values(), default=0) + temp)
