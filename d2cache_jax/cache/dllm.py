"""dLLM-Cache: long-interval prompt refresh, short-interval response refresh and V-verify in between
(ALGORITHMS.md 3.3).

Every layer keeps K, V, AttnOut and FFNOut for all T rows, and the hidden stream stays full length.
Per step n (= `state.step`): the prompt is refreshed when n % kp == 0, the response when n % kr == 0.
A layer recomputes the refreshed rows (q/k/v, attention over the full cached K/V, output projection,
FFN) and every other row adds its cached AttnOut/FFNOut. When the response is not refreshed, the
layer projects V for every response row, overwrites the response V cache with it, and recomputes the
`int(G * rou)` response rows whose fresh V has the lowest cosine similarity with the cached V.

Layer 0 is recomputed in full at every step, as upstream does (ALGORITHMS.md 5 #23; whether the
original dLLM-Cache does so is unsure): kept for parity.

Static shapes: the step kind (full, response, prompt + adaptive, adaptive) is a `lax.switch` over
branches with fixed row counts (P+G, G, P+k, k); only the kinds that kp and kr can produce are
compiled. Logits come out for the current block's positions, the only ones that can be decoded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp

from d2cache_jax import model
from d2cache_jax.cache.base import CacheMethod, ForwardOut, block_logits
from d2cache_jax.config import ModelConfig

if TYPE_CHECKING:
    from d2cache_jax.generation.options import GenOptions
    from d2cache_jax.generation.state import GenState

FULL, RESPONSE, PROMPT_ADAPTIVE, ADAPTIVE = range(4)


class DllmLayer(NamedTuple):
    """One layer's cache over all T rows: post-RoPE k, v [B,T,Hkv,hd]; attn, ffn outputs [B,T,d]."""

    k: jax.Array
    v: jax.Array
    attn: jax.Array
    ffn: jax.Array


def init(cfg: ModelConfig, opts: GenOptions, batch: int, total_len: int) -> list[DllmLayer]:
    dt = model.dtype_of(cfg)
    kv_shape = (batch, total_len, cfg.n_kv_heads, cfg.head_dim)
    out_shape = (batch, total_len, cfg.d_model)
    return [DllmLayer(jnp.zeros(kv_shape, dt), jnp.zeros(kv_shape, dt), jnp.zeros(out_shape, dt),
                      jnp.zeros(out_shape, dt)) for _ in range(cfg.n_layers)]


def num_adaptive(opts: GenOptions) -> int:
    """Response rows recomputed per layer by V-verify."""
    return int(opts.gen_length * opts.rou)


def step_kinds(opts: GenOptions) -> list[int]:
    """The step kinds that (n % kp == 0, n % kr == 0) can produce for some n >= 0."""
    kinds = [FULL]
    if opts.kr % opts.kp:
        kinds.append(RESPONSE)  # n = kr
    if opts.kp % opts.kr:
        kinds.append(PROMPT_ADAPTIVE)  # n = kp
    if opts.kp > 1 and opts.kr > 1:
        kinds.append(ADAPTIVE)  # n = 1
    return kinds


def v_similarity(v_new: jax.Array, v_old: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Cosine similarity per row of [B,S,Hkv,hd] values over all heads concatenated -> [B,S] float32."""
    a = v_new.reshape(v_new.shape[:2] + (-1,)).astype(jnp.float32)
    c = v_old.reshape(v_old.shape[:2] + (-1,)).astype(jnp.float32)
    na = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
    nc = jnp.maximum(jnp.linalg.norm(c, axis=-1), eps)
    return jnp.sum(a * c, axis=-1) / (na * nc)


def lowest_k(sim: jax.Array, k: int) -> jax.Array:
    """Indices [B,k] (ascending) of the k lowest similarities per row; ties go to the lower index."""
    _, idx = jax.lax.top_k(-sim, k)
    return jnp.sort(idx, axis=-1).astype(jnp.int32)


def layer(cfg: ModelConfig, lp: dict, x: jax.Array, lc: DllmLayer, pos: jax.Array, key_mask: jax.Array,
          idx: jax.Array | None = None, v_cache: jax.Array | None = None) -> tuple[jax.Array, DllmLayer]:
    """One layer recomputing the rows idx [B,Q] (None = all rows); the others reuse cached outputs.

    `v_cache` replaces the cached V before the rows' fresh V are written (V-verify's overwrite).
    """
    eps = cfg.rms_norm_eps
    if idx is None:
        q, k, v = model.qkv(lp, cfg, model.rms_norm(x, lp["attn_norm"], eps), pos)
        o, _ = model.attention(cfg, q, k, v, key_mask)
        attn = jnp.einsum("bqnh,nhd->bqd", o, lp["wo"])
        x = x + attn
        ffn = model.mlp(lp, model.rms_norm(x, lp["mlp_norm"], eps))
        return x + ffn, DllmLayer(k, v, attn, ffn)
    bi = jnp.arange(x.shape[0])[:, None]
    h = model.rms_norm(model.gather_rows(x, idx), lp["attn_norm"], eps)
    q, k, v = model.qkv(lp, cfg, h, model.gather_rows(pos, idx))
    kk = lc.k.at[bi, idx].set(k, mode="drop")
    vv = (lc.v if v_cache is None else v_cache).at[bi, idx].set(v, mode="drop")
    o, _ = model.attention(cfg, q, kk, vv, key_mask)
    attn = lc.attn.at[bi, idx].set(jnp.einsum("bqnh,nhd->bqd", o, lp["wo"]), mode="drop")
    x = x + attn
    f = model.mlp(lp, model.rms_norm(model.gather_rows(x, idx), lp["mlp_norm"], eps))
    ffn = lc.ffn.at[bi, idx].set(f, mode="drop")
    return x + ffn, DllmLayer(kk, vv, attn, ffn)


def v_verify(cfg: ModelConfig, lp: dict, x: jax.Array, lc: DllmLayer, p: int,
             k: int) -> tuple[jax.Array, jax.Array]:
    """Fresh V of every response row; returns (the k least similar response rows [B,k], new V cache)."""
    h = model.rms_norm(x[:, p:], lp["attn_norm"], cfg.rms_norm_eps)
    v_new = jnp.einsum("bsd,dnh->bsnh", h, lp["wv"])
    if cfg.qkv_bias:
        v_new = v_new + lp["bv"]
    new_cache = lc.v.at[:, p:].set(v_new.astype(lc.v.dtype))
    if k == 0:  # rou > 0 but int(G * rou) == 0: upstream still overwrites the response V
        return jnp.zeros((x.shape[0], 0), jnp.int32), new_cache
    return p + lowest_k(v_similarity(v_new, lc.v[:, p:]), k), new_cache


def run_layers(cfg: ModelConfig, opts: GenOptions, params: dict, state: GenState, x: jax.Array,
               cache: list[DllmLayer], kind: int) -> tuple[jax.Array, list[DllmLayer]]:
    """Layers 1..L-1 in one step kind; returns (hidden [B,T,d], caches of those layers)."""
    b, t = state.tokens.shape
    g = opts.gen_length
    p = t - g
    kad = num_adaptive(opts)
    prompt = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    out = []
    for lp, lc in zip(params["layers"][1:], cache[1:]):
        v_cache = None
        if kind == FULL:
            idx = None
        elif kind == RESPONSE:
            idx = jnp.broadcast_to(p + jnp.arange(g, dtype=jnp.int32), (b, g))
        elif opts.rou == 0:  # no V-verify; only the prompt rows when it is refreshed
            idx = prompt if kind == PROMPT_ADAPTIVE else jnp.zeros((b, 0), jnp.int32)
        else:
            idx, v_cache = v_verify(cfg, lp, x, lc, p, kad)
            if kind == PROMPT_ADAPTIVE:
                idx = jnp.concatenate([prompt, idx], axis=1)
        x, new = layer(cfg, lp, x, lc, state.positions, state.key_mask, idx, v_cache)
        out.append(new)
    return x, out


def kind_rows(opts: GenOptions, kind: int, p: int, t: int) -> float:
    """Share of the T rows recomputed by a layer of this step kind."""
    g = opts.gen_length
    n = {FULL: t, RESPONSE: g, PROMPT_ADAPTIVE: p + num_adaptive(opts), ADAPTIVE: num_adaptive(opts)}[kind]
    return n / t


def forward(cfg: ModelConfig, opts: GenOptions, params: dict, state: GenState) -> ForwardOut:
    b, t = state.tokens.shape
    g = opts.gen_length
    p = t - g
    n_layers = cfg.n_layers
    x = model.embed(params, state.tokens)
    x, first = layer(cfg, params["layers"][0], x, state.cache[0], state.positions, state.key_mask)

    rp = state.step % opts.kp == 0
    rr = state.step % opts.kr == 0
    kind = jnp.where(rp, jnp.where(rr, FULL, PROMPT_ADAPTIVE), jnp.where(rr, RESPONSE, ADAPTIVE))
    kinds = step_kinds(opts)
    table = jnp.asarray([kinds.index(c) if c in kinds else 0 for c in range(4)], jnp.int32)

    def branch(c):
        def run(x, cache):
            h, rest = run_layers(cfg, opts, params, state, x, cache, c)
            rows = (1.0 + (n_layers - 1) * kind_rows(opts, c, p, t)) / n_layers
            return h, rest, jnp.float32(rows)
        return run

    x, rest, rows = jax.lax.switch(table[kind], [branch(c) for c in kinds], x, state.cache)
    logits, gen_idx = block_logits(cfg, opts, params, x, state.block)
    return ForwardOut(logits, gen_idx, [first] + rest, rows, jnp.int32(0))


METHOD = CacheMethod(init=init, forward=forward)
