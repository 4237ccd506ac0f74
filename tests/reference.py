"""Layer math stated directly over raw weights, for dense test references (independent of the
NNX modules): per-layer flat dicts of the stacked params, q/k/v and the MLP."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from d2cache_jax import model


def flat_layers(params: dict) -> list[dict]:
    """Per-layer dicts {attn_norm, wq, wk, wv, (bq, bk, bv), wo, mlp_norm, w_gate, w_up, w_down}."""
    lay = params["layers"]
    out = []
    for i in range(lay["attn"]["wq"].shape[0]):
        d = {k: v[i] for k, v in {**lay["attn"], **lay["mlp"]}.items()}
        d["attn_norm"], d["mlp_norm"] = lay["attn_norm"]["scale"][i], lay["mlp_norm"]["scale"][i]
        out.append(d)
    return out


def qkv(lp: dict, cfg, h: jax.Array, pos: jax.Array):
    q = jnp.einsum("bsd,dnh->bsnh", h, lp["wq"])
    k = jnp.einsum("bsd,dnh->bsnh", h, lp["wk"])
    v = jnp.einsum("bsd,dnh->bsnh", h, lp["wv"])
    if cfg.qkv_bias:
        q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
    return model.rope(q, pos, cfg.rope_theta), model.rope(k, pos, cfg.rope_theta), v


def mlp(lp: dict, x: jax.Array) -> jax.Array:
    gate = jnp.einsum("bsd,df->bsf", x, lp["w_gate"])
    up = jnp.einsum("bsd,df->bsf", x, lp["w_up"])
    return jnp.einsum("bsf,fd->bsd", jax.nn.silu(gate) * up, lp["w_down"])


def prefer(p: dict, token: int) -> dict:
    """Params whose residual stream keeps a large positive dim 0 that the head maps to `token`."""
    lay = p["layers"]
    layers = {**lay, "attn": {**lay["attn"], "wo": lay["attn"]["wo"].at[..., 0].set(0.0)},
              "mlp": {**lay["mlp"], "w_down": lay["mlp"]["w_down"].at[..., 0].set(0.0)}}
    return {**p, "embed": {"embedding": p["embed"]["embedding"].at[:, 0].set(100.0)}, "layers": layers,
            "lm_head": p["lm_head"].at[0, token].set(100.0)}


def unstack(tree) -> list:
    """A stacked per-layer cache (leaves [L, ...]) as a list of per-layer trees of the same type."""
    n = jax.tree.leaves(tree)[0].shape[0]
    return [jax.tree.map(lambda a, i=i: a[i], tree) for i in range(n)]


def stack(layers: list):
    """The inverse of `unstack`."""
    return jax.tree.map(lambda *a: jnp.stack(a), *layers)
