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
compiled. Hidden states come out for the current block's positions, the only ones that can be decoded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp

from d2cache_jax import model
from d2cache_jax.cache.base import CacheMethod, ForwardOut, block_hidden
from d2cache_jax.config import ModelConfig

if TYPE_CHECKING:
    from d2cache_jax.generation.options import GenOptions
    from d2cache_jax.generation.state import GenState

FULL, RESPONSE, PROMPT_ADAPTIVE, ADAPTIVE = range(4)


class DllmLayer(NamedTuple):
    """Every layer's cache over all T rows, stacked: post-RoPE k, v [L,B,T,Hkv,hd]; attn, ffn outputs
    [L,B,T,d]."""

    k: jax.Array
    v: jax.Array
    attn: jax.Array
    ffn: jax.Array


def init(cfg: ModelConfig, opts: GenOptions, batch: int, total_len: int) -> DllmLayer:
    dt = model.dtype_of(cfg)
    kv_shape = (cfg.n_layers, batch, total_len, cfg.n_kv_heads, cfg.head_dim)
    out_shape = (cfg.n_layers, batch, total_len, cfg.d_model)
    return DllmLayer(jnp.zeros(kv_shape, dt), jnp.zeros(kv_shape, dt), jnp.zeros(out_shape, dt),
                     jnp.zeros(out_shape, dt))


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


def layer(cfg: ModelConfig, blk: model.Block, x: jax.Array, cache: DllmLayer, i: jax.Array, pos: jax.Array,
          key_mask: jax.Array, idx: jax.Array | None = None,
          v_new: tuple[int, jax.Array] | None = None) -> tuple[jax.Array, DllmLayer]:
    """Layer i recomputing the rows idx [B,Q] (None = all rows); the others reuse cached outputs.

    The stacked `cache` is updated in place at layer i. `v_new = (p, V)` first overwrites the cached
    V of rows p.. with V (V-verify's overwrite), before the rows' fresh V are written.
    """
    if idx is None:
        q, k, v = blk.attn.qkv(blk.attn_norm(x), pos)
        o, _ = model.attention(cfg, q, k, v, key_mask)
        attn = blk.attn.out(o)
        x = x + attn
        ffn = blk.mlp(blk.mlp_norm(x))
        put = lambda c, n: jax.lax.dynamic_update_index_in_dim(c, n.astype(c.dtype), i, 0)  # noqa: E731
        return x + ffn, DllmLayer(put(cache.k, k), put(cache.v, v), put(cache.attn, attn), put(cache.ffn, ffn))
    bi = jnp.arange(x.shape[0])[:, None]
    put = lambda c, n: c.at[i, bi, idx].set(n.astype(c.dtype), mode="drop")  # noqa: E731
    q, k, v = blk.attn.qkv(blk.attn_norm(model.gather_rows(x, idx)), model.gather_rows(pos, idx))
    vc = cache.v
    if v_new is not None:
        p, vals = v_new
        vc = vc.at[i, :, p:].set(vals.astype(vc.dtype))
    kc, vc = put(cache.k, k), put(vc, v)
    o, _ = model.attention(cfg, q, kc[i], vc[i], key_mask)
    ac = put(cache.attn, blk.attn.out(o))
    x = x + ac[i]
    fc = put(cache.ffn, blk.mlp(blk.mlp_norm(model.gather_rows(x, idx))))
    return x + fc[i], DllmLayer(kc, vc, ac, fc)


def v_verify(blk: model.Block, x: jax.Array, v_old: jax.Array, p: int, k: int) -> tuple[jax.Array, jax.Array]:
    """Fresh V of every response row against the cached `v_old` [B,T,Hkv,hd]; returns (the k least
    similar response rows [B,k], the fresh response V [B,G,Hkv,hd])."""
    v_new = blk.attn.values(blk.attn_norm(x[:, p:]))
    if k == 0:  # rou > 0 but int(G * rou) == 0: upstream still overwrites the response V
        return jnp.zeros((x.shape[0], 0), jnp.int32), v_new
    return p + lowest_k(v_similarity(v_new, v_old[:, p:]), k), v_new


def run_layers(cfg: ModelConfig, opts: GenOptions, m: model.Transformer, state: GenState, x: jax.Array,
               cache: DllmLayer, kind: int) -> tuple[jax.Array, DllmLayer]:
    """Layers 1..L-1 in one step kind (`Transformer.loop_layers`); returns (hidden [B,T,d], cache)."""
    b, t = state.tokens.shape
    g = opts.gen_length
    p = t - g
    kad = num_adaptive(opts)
    prompt = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))

    def one(blk, carry, i):
        x, cache = carry
        v_new = None
        if kind == FULL:
            idx = None
        elif kind == RESPONSE:
            idx = jnp.broadcast_to(p + jnp.arange(g, dtype=jnp.int32), (b, g))
        elif opts.rou == 0:  # no V-verify; only the prompt rows when it is refreshed
            idx = prompt if kind == PROMPT_ADAPTIVE else jnp.zeros((b, 0), jnp.int32)
        else:
            idx, vals = v_verify(blk, x, cache.v[i], p, kad)
            v_new = (p, vals)
            if kind == PROMPT_ADAPTIVE:
                idx = jnp.concatenate([prompt, idx], axis=1)
        return layer(cfg, blk, x, cache, i, state.positions, state.key_mask, idx, v_new)

    return m.loop_layers(one, (x, cache), start=1)


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
    m = model.bind(cfg, params)
    x, cache = layer(cfg, m.layer(0), m.embed(state.tokens), state.cache, jnp.int32(0), state.positions,
                     state.key_mask)

    rp = state.step % opts.kp == 0
    rr = state.step % opts.kr == 0
    kind = jnp.where(rp, jnp.where(rr, FULL, PROMPT_ADAPTIVE), jnp.where(rr, RESPONSE, ADAPTIVE))
    kinds = step_kinds(opts)
    table = jnp.asarray([kinds.index(c) if c in kinds else 0 for c in range(4)], jnp.int32)

    def branch(c):
        def run(x, cache):
            h, cache = run_layers(cfg, opts, m, state, x, cache, c)
            rows = (1.0 + (n_layers - 1) * kind_rows(opts, c, p, t)) / n_layers
            return h, cache, jnp.float32(rows)
        return run

    x, cache, rows = jax.lax.switch(table[kind], [branch(c) for c in kinds], x, cache)
    hidden, gen_idx = block_hidden(cfg, opts, x, state.block)
    return ForwardOut(hidden, gen_idx, cache, rows, jnp.int32(0))


METHOD = CacheMethod(init=init, forward=forward)
