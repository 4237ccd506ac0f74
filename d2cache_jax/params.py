"""Parameter shapes, logical axes and random initialisation for a ModelConfig (the layout of
`d2cache_jax.model`'s state as a pure dict; per-layer leaves carry a leading layer axis)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from d2cache_jax.config import ModelConfig

BIASES = ("bq", "bk", "bv")


def is_shape(x) -> bool:
    """A shape tuple (a leaf of `param_shapes`)."""
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def param_shapes(cfg: ModelConfig) -> dict:
    """The params pytree with shapes (tuples) as leaves."""
    from d2cache_jax.model import abstract_state

    return jax.tree.map(lambda s: tuple(s.shape), nnx.to_pure_dict(abstract_state(cfg)))


def param_axes(cfg: ModelConfig) -> dict:
    """The params pytree with each leaf's logical axes (the modules' `sharding_names`; None on the
    layer axis)."""
    from d2cache_jax.model import abstract_state

    return nnx.to_pure_dict(nnx.get_partition_spec(abstract_state(cfg)))


def layer_shapes(cfg: ModelConfig) -> dict:
    """One layer's params shapes (no layer axis)."""
    return jax.tree.map(lambda s: s[1:], param_shapes(cfg)["layers"], is_leaf=is_shape)


def abstract_params(cfg: ModelConfig, dtype=None) -> dict:
    """ShapeDtypeStruct tree of the params (for eval_shape, orbax restore targets, memory estimates)."""
    dt = jnp.dtype(dtype or cfg.param_dtype)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, dt), param_shapes(cfg), is_leaf=is_shape)


def num_params(cfg: ModelConfig) -> int:
    return int(sum(np.prod(s) for s in jax.tree.leaves(param_shapes(cfg), is_leaf=is_shape)))


def fan_in(name: str, shape: tuple[int, ...]) -> int:
    """Input width of one layer's weight (the output projection reads heads x head_dim)."""
    return shape[0] * shape[1] if name == "wo" else shape[0]


def _draw(rng: np.random.Generator, name: str, shape: tuple[int, ...], randomize_norms: bool) -> np.ndarray:
    w = rng.standard_normal(shape, dtype=np.float32)
    if name in ("norm", "attn_norm", "mlp_norm", "final_norm"):
        return 1.0 + 0.2 * w if randomize_norms else np.ones(shape, np.float32)
    if name in BIASES:
        return w * 0.1
    if name != "embed":
        w *= 1.0 / np.sqrt(fan_in(name, shape))
    return w


def init_params(cfg: ModelConfig, key: jax.Array, dtype=None, randomize_norms: bool = True) -> dict:
    """Random params (normal, std 1/sqrt(fan_in)); norms and biases random too when asked, so a
    swapped key cannot go unnoticed in parity tests. Drawn with NumPy leaf by leaf (no compile per
    shape, one leaf in float32 at a time), seeded from `key`; the draw order is embed, final norm,
    each layer's leaves by name, head, so a seed gives the same weights whatever the tree's nesting."""
    dt = jnp.dtype(dtype or cfg.param_dtype)
    raw = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    rng = np.random.default_rng(np.asarray(raw).ravel().tolist())
    shapes = param_shapes(cfg)
    out = {"embed": {"embedding": jnp.asarray(_draw(rng, "embed", shapes["embed"]["embedding"], randomize_norms), dt)},
           "final_norm": {"scale": jnp.asarray(_draw(rng, "final_norm", shapes["final_norm"]["scale"],
                                                     randomize_norms), dt)}}
    lay = shapes["layers"]
    where = {"attn_norm": ("attn_norm", "scale"), "mlp_norm": ("mlp_norm", "scale"),
             **{k: ("attn", k) for k in lay["attn"]}, **{k: ("mlp", k) for k in lay["mlp"]}}
    stacked = {name: np.empty(lay[a][b], np.float32) for name, (a, b) in where.items()}
    for i in range(cfg.n_layers):
        for name in sorted(where):
            stacked[name][i] = _draw(rng, name, stacked[name].shape[1:], randomize_norms)
    layers: dict = {"attn": {}, "mlp": {}}
    for name, (a, b) in where.items():
        layers.setdefault(a, {})[b] = jnp.asarray(stacked.pop(name), dt)
    out["layers"] = layers
    out["lm_head"] = jnp.asarray(_draw(rng, "lm_head", shapes["lm_head"], randomize_norms), dt)
    return out
