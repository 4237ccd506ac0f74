"""Parameter shapes and random initialisation for a ModelConfig."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from d2cache_jax.config import ModelConfig


def layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    d, h, kv, hd, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_hidden
    shapes = {
        "attn_norm": (d,), "wq": (d, h, hd), "wk": (d, kv, hd), "wv": (d, kv, hd),
        "wo": (h, hd, d), "mlp_norm": (d,), "w_gate": (d, f), "w_up": (d, f), "w_down": (f, d),
    }
    if cfg.qkv_bias:
        shapes.update(bq=(h, hd), bk=(kv, hd), bv=(kv, hd))
    return shapes


def param_shapes(cfg: ModelConfig) -> dict:
    """The params pytree with shapes as leaves (tuples are leaves only by convention here)."""
    return {
        "embed": (cfg.vocab_size, cfg.d_model),
        "layers": [layer_shapes(cfg) for _ in range(cfg.n_layers)],
        "final_norm": (cfg.d_model,),
        "lm_head": (cfg.d_model, cfg.vocab_size),
    }


def abstract_params(cfg: ModelConfig, dtype=None) -> dict:
    """ShapeDtypeStruct tree of the params (for eval_shape, orbax restore targets, memory estimates)."""
    dt = jnp.dtype(dtype or cfg.param_dtype)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, dt), param_shapes(cfg),
                        is_leaf=lambda x: isinstance(x, tuple))


def num_params(cfg: ModelConfig) -> int:
    leaves = jax.tree.leaves(param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))
    return int(sum(np.prod(s) for s in leaves))


def init_params(cfg: ModelConfig, key: jax.Array, dtype=None, randomize_norms: bool = True) -> dict:
    """Random params (normal, std 1/sqrt(fan_in)); norms and biases random too when asked, so a
    swapped key cannot go unnoticed in parity tests. Drawn with NumPy leaf by leaf (no compile per
    shape, one leaf in float32 at a time), seeded from `key`."""
    dt = jnp.dtype(dtype or cfg.param_dtype)
    raw = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    rng = np.random.default_rng(np.asarray(raw).ravel().tolist())
    flat, treedef = jax.tree.flatten_with_path(param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))
    out = []
    for path, shape in flat:
        name = str(path[-1].key)
        w = rng.standard_normal(shape, dtype=np.float32)
        if name.endswith("norm"):
            w = 1.0 + 0.2 * w if randomize_norms else np.ones(shape, np.float32)
        elif name in ("bq", "bk", "bv"):
            w *= 0.1
        elif name != "embed":
            w *= 1.0 / np.sqrt(shape[0] * shape[1] if name == "wo" else shape[0])
        out.append(jnp.asarray(w, dt))
    return jax.tree.unflatten(treedef, out)
