"""Dream under `upstream_compat`: the cache query sets follow upstream HEAD exactly.

Each rule is restated here as a naive loop over dense forwards (every layer over all rows, with the
K/V of rows outside the recomputed set frozen at the block's first step), independent of the
static-shape cache code it checks.
"""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from d2cache_jax import generate, model
from d2cache_jax.cache import prefix
from d2cache_jax.config import tiny_dream
from d2cache_jax.generation.options import make_options
from d2cache_jax.params import init_params
from tests import reference

gen_lib = importlib.import_module("d2cache_jax.generation.generate")  # the module, not the function

G, BL = 16, 4
PROMPT = [[5, 6, 7, 8, 9, 10, 11, 12]]  # one row, no padding: positions 0..T-1


@functools.cache
def setup():
    cfg = tiny_dream()
    return cfg, init_params(cfg, jax.random.key(7))


@functools.partial(jax.jit, static_argnums=0)
def dense_logits(cfg, params, tokens, fresh, frozen, pos=None, key_mask=None):
    """[B,T,V] logits of every row; K/V of rows outside `fresh` [T] come from `frozen` (or are
    fresh everywhere when `frozen` is None). Default: no padding, positions 0..T-1."""
    t = tokens.shape[1]
    if pos is None:
        pos = jnp.broadcast_to(jnp.arange(t), tokens.shape)
        key_mask = jnp.ones(tokens.shape, bool)
    x = model.embed(params, tokens)
    eps = cfg.rms_norm_eps
    f = fresh[None, :, None, None]
    kvs = []
    for i, lp in enumerate(reference.flat_layers(params)):
        q, k, v = reference.qkv(lp, cfg, model.rms_norm(x, lp["attn_norm"], eps), pos)
        kvs.append((k, v))
        if frozen is not None:
            k, v = jnp.where(f, k, frozen[i][0]), jnp.where(f, v, frozen[i][1])
        o, _ = model.attention(cfg, q, k, v, key_mask)
        x = x + jnp.einsum("bqnh,nhd->bqd", o, lp["wo"])
        x = x + reference.mlp(lp, model.rms_norm(x, lp["mlp_norm"], eps))
    return model.head(params, cfg, x), kvs


def upstream_prefix_loop(cfg, params, prompt, dual: bool):
    """Upstream HEAD's PrefixCache with Dream (prefix_cache.py `on_step_end`): a full pass at each
    block's first step; then the query rows are the block [s, e) (dual) or [s, G) (prefix) in
    gen coordinates, i.e. rows [P+s, P+e) / [P+s, T), shifted left by one row for Dream:
    [P+s-1, P+e-1) / [P+s-1, T-1). Row P+e-1 (dual) / T-1 (prefix) keeps its block-start K/V.
    Gen position j reads row P+j-1; one token per step: the most confident masked one in the block."""
    p = len(prompt)
    t = p + G
    tokens = np.array([prompt + [cfg.mask_token_id] * G])
    for b in range(G // BL):
        s, e = b * BL, (b + 1) * BL
        frozen = None
        fresh = np.ones(t, bool)
        while (tokens[0, p + s:p + e] == cfg.mask_token_id).any():
            logits, kvs = dense_logits(cfg, params, jnp.asarray(tokens), jnp.asarray(fresh), frozen)
            if frozen is None:  # the block's first step: store every row's K/V, pick the query rows
                frozen = kvs
                fresh = np.zeros(t, bool)
                fresh[p + s - 1:(p + e - 1) if dual else t - 1] = True
            lg = np.asarray(logits[0, p + s - 1:p + e - 1], np.float64)
            lg[:, cfg.mask_token_id] = -np.inf  # the mask id is never proposed
            prob = np.exp(lg - lg.max(-1, keepdims=True))
            prob /= prob.sum(-1, keepdims=True)
            conf = np.where(tokens[0, p + s:p + e] == cfg.mask_token_id, prob.max(-1), -np.inf)
            j = int(np.argmax(conf))
            tokens[0, p + s + j] = int(np.argmax(prob[j]))
    return tokens[0, p:]


@pytest.mark.parametrize("name", ["prefix", "dual"])
def test_dream_prefix_dual_query_set_as_upstream(name):
    cfg, params = setup()
    ref = upstream_prefix_loop(cfg, params, PROMPT[0], dual=name == "dual")
    out = generate(cfg, params, PROMPT, cache=name, gen_length=G, block_length=BL, upstream_compat=True)
    np.testing.assert_array_equal(out.tokens[0], ref)
    # The default widens the set by one row, so it is a different (intended) computation.
    for compat, extra in ((True, 0), (False, 1)):
        opts = make_options(cache=name, gen_length=G, block_length=BL, upstream_compat=compat)
        caps = prefix.capacities(cfg, opts)
        assert caps[-1] == (BL if name == "dual" else G) + extra


@pytest.mark.parametrize("name", ["prefix", "dual"])
def test_dream_partial_pass_keeps_upstreams_stale_row(name):
    """One partial pass after two commits in the block (the last block token among them): logits and
    K/V equal the dense statement with upstream's shifted query rows, so row P+e-1 (dual) / T-1
    (prefix) keeps its block-start K/V."""
    cfg, params = setup()
    opts = make_options(cache=name, gen_length=G, block_length=BL, upstream_compat=True)
    fwd = jax.jit(functools.partial(prefix.forward, cfg, opts))
    state = gen_lib.prepare(cfg, PROMPT, opts)
    t = state.tokens.shape[1]
    p = t - G
    block = 1
    s, e = block * BL, (block + 1) * BL
    st = state.replace(block=jnp.int32(block), block_step=jnp.int32(0))
    first = fwd(params, st)
    # commit the block's first and last tokens
    toks = st.tokens.at[0, p + s].set(3).at[0, p + e - 1].set(4)
    part = fwd(params, st.replace(tokens=toks, cache=first.cache, block_step=jnp.int32(1)))
    fresh = np.zeros(t, bool)
    fresh[p + s - 1:(p + e - 1) if name == "dual" else t - 1] = True
    frozen = [(kv.k, kv.v) for kv in reference.unstack(first.cache)]
    ref, _ = dense_logits(cfg, params, toks, jnp.asarray(fresh), frozen, st.positions, st.key_mask)
    ref = np.asarray(ref[:, p + s - 1:p + e - 1])
    assert np.abs(np.asarray(model.head(params, cfg, part.hidden)) - ref).max() <= 1e-5 * np.abs(ref).max()
    stale = (p + e - 1) if name == "dual" else t - 1
    for new, old in zip(reference.unstack(part.cache), reference.unstack(first.cache)):
        np.testing.assert_array_equal(np.asarray(new.k)[:, stale], np.asarray(old.k)[:, stale])
