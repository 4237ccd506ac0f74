"""The bidirectional Transformer shared by LLaDA and Dream, as pure functions over a params pytree.

Params layout (JAX `[in, out]` order, heads kept as their own axis so sharding rules can name them):

    embed [V, d]; final_norm [d]; lm_head [d, V]
    layers[i]: attn_norm [d]; wq [d, H, hd]; wk, wv [d, Hkv, hd]; (bq [H, hd]; bk, bv [Hkv, hd]);
               wo [H, hd, d]; mlp_norm [d]; w_gate, w_up [d, F]; w_down [F, d]

Every layer can run on a *subset of rows*: `q_idx [B, Q]` names the sequence positions whose
queries, keys and values are recomputed; their fresh K/V are written into a full-length cache and
attention runs over that cache. An index equal to T marks an unused slot: its gather is clamped and
its scatter dropped, so static-shape selections never write into real rows.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from d2cache_jax.config import ModelConfig

Params = dict
F32 = jnp.float32


class LayerKV(NamedTuple):
    """Post-RoPE keys and values of one layer for every position: [B, T, Hkv, hd]."""

    k: jax.Array
    v: jax.Array


def dtype_of(cfg: ModelConfig):
    return jnp.dtype(cfg.param_dtype)


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32, cast back before the weight as the PyTorch references do."""
    xf = x.astype(F32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return w * y.astype(x.dtype)


def rope(x: jax.Array, pos: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding (rotate-half convention) in float32. x [B, S, N, hd], pos [B, S]."""
    hd = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=F32) / hd))
    ang = pos.astype(F32)[..., None] * inv_freq  # [B, S, hd/2]
    cos = jnp.concatenate([jnp.cos(ang)] * 2, -1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(ang)] * 2, -1)[:, :, None, :]
    xf = x.astype(F32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    rot = jnp.concatenate([-x2, x1], axis=-1)
    return (xf * cos + rot * sin).astype(x.dtype)


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """RoPE positions that ignore left padding: cumsum(mask) - 1, padded slots at 0."""
    m = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=1) - 1, 0) * m


def qkv(lp: Params, cfg: ModelConfig, h: jax.Array, pos: jax.Array):
    """Project normed hidden rows h [B, S, d] to post-RoPE q [B,S,H,hd] and k, v [B,S,Hkv,hd]."""
    q = jnp.einsum("bsd,dnh->bsnh", h, lp["wq"])
    k = jnp.einsum("bsd,dnh->bsnh", h, lp["wk"])
    v = jnp.einsum("bsd,dnh->bsnh", h, lp["wv"])
    if cfg.qkv_bias:
        q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
    return rope(q, pos, cfg.rope_theta), rope(k, pos, cfg.rope_theta), v


def attention(cfg: ModelConfig, q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array,
              need_weights: bool = False):
    """Bidirectional attention of q [B,Q,H,hd] over k, v [B,T,Hkv,hd]; key_mask [B,T] bool.

    Scores and softmax in float32. Returns o [B,Q,H,hd] and, if asked, the head-mean attention
    probabilities [B,Q,T] (float32) that d2Cache's rollout needs.
    """
    b, nq, nh, hd = q.shape
    g = nh // cfg.n_kv_heads
    qg = q.reshape(b, nq, cfg.n_kv_heads, g, hd)
    s = jnp.einsum("bqkgh,btkh->bkgqt", qg, k, preferred_element_type=F32) / jnp.sqrt(F32(hd))
    s = jnp.where(key_mask[:, None, None, None, :], s, jnp.finfo(F32).min)
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("bkgqt,btkh->bqkgh", p.astype(v.dtype), v).reshape(b, nq, nh, hd)
    w = p.mean(axis=(1, 2)) if need_weights else None
    return o, w


def mlp(lp: Params, x: jax.Array) -> jax.Array:
    gate = jnp.einsum("bsd,df->bsf", x, lp["w_gate"])
    up = jnp.einsum("bsd,df->bsf", x, lp["w_up"])
    return jnp.einsum("bsf,fd->bsd", jax.nn.silu(gate) * up, lp["w_down"])


def block(lp: Params, cfg: ModelConfig, x: jax.Array, pos: jax.Array, key_mask: jax.Array,
          kv: LayerKV | None = None, q_idx: jax.Array | None = None, need_weights: bool = False):
    """One pre-norm layer over the rows x [B,Q,d] at positions pos [B,Q].

    With `kv=None` the rows are the whole sequence (Q == T) and attend to themselves. With a cache,
    the rows' fresh K/V are scattered into `kv` at `q_idx` (out-of-range = dropped) and the rows
    attend over the updated cache. Returns (x, new LayerKV, head-mean weights or None).
    """
    h = rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps)
    q, k, v = qkv(lp, cfg, h, pos)
    if kv is None:
        new_kv = LayerKV(k, v)
    else:
        bidx = jnp.arange(x.shape[0])[:, None]
        new_kv = LayerKV(kv.k.at[bidx, q_idx].set(k, mode="drop"),
                         kv.v.at[bidx, q_idx].set(v, mode="drop"))
    o, w = attention(cfg, q, new_kv.k, new_kv.v, key_mask, need_weights)
    x = x + jnp.einsum("bqnh,nhd->bqd", o, lp["wo"])
    x = x + mlp(lp, rms_norm(x, lp["mlp_norm"], cfg.rms_norm_eps))
    return x, new_kv, w


def embed(params: Params, tokens: jax.Array) -> jax.Array:
    return jnp.take(params["embed"], tokens, axis=0)


def head(params: Params, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """Final norm and output head in float32: x [B,S,d] -> logits [B,S,V]."""
    h = rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
    return jnp.einsum("bsd,dv->bsv", h, params["lm_head"], preferred_element_type=F32)


def gather_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x [B,T,...] at idx [B,Q]; out-of-range indices read the last row (their results are unused)."""
    idx = jnp.minimum(idx, x.shape[1] - 1)
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


class RowsOut(NamedTuple):
    hidden: jax.Array  # [B, Q, d] last-layer hidden states of the selected rows (before final norm)
    kv: list  # per-layer LayerKV after this pass
    attn: list | None  # per-layer head-mean attention [B, Q, T] if asked


def forward_rows(cfg: ModelConfig, params: Params, tokens: jax.Array, positions: jax.Array,
                 key_mask: jax.Array, q_idx: jax.Array | None = None, kv: list | None = None,
                 need_weights: bool = False) -> RowsOut:
    """Run every layer on the rows `q_idx` of the canvas `tokens [B,T]`.

    `kv=None` is the full pass (all T rows, q_idx ignored); otherwise the rows read and update the
    per-layer caches `kv`. One selection is shared by every layer (prefix/dual cache, d2Cache).
    """
    if kv is None:
        x, pos = embed(params, tokens), positions
    else:
        x, pos = embed(params, gather_rows(tokens, q_idx)), gather_rows(positions, q_idx)
    new_kv, attn = [], []
    for i, lp in enumerate(params["layers"]):
        x, layer_kv, w = block(lp, cfg, x, pos, key_mask, None if kv is None else kv[i], q_idx,
                               need_weights)
        new_kv.append(layer_kv)
        attn.append(w)
    return RowsOut(x, new_kv, attn if need_weights else None)


def forward(cfg: ModelConfig, params: Params, tokens: jax.Array,
            attention_mask: jax.Array | None = None) -> jax.Array:
    """One full no-cache pass: fp32 logits [B, T, V] (Dream's are returned unshifted)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones(tokens.shape, bool)
    attention_mask = jnp.asarray(attention_mask).astype(bool)
    return _forward_jit(cfg, params, tokens, attention_mask)


@functools.partial(jax.jit, static_argnums=0)
def _forward_jit(cfg, params, tokens, attention_mask):
    out = forward_rows(cfg, params, tokens, positions_from_mask(attention_mask), attention_mask)
    return head(params, cfg, out.hidden)
