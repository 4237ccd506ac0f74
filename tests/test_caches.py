"""Prefix/dual cache and dLLM-Cache against three references: the exact no-cache run, a dense
masked statement of each cache's partial pass (every row computed, cached K/V/outputs swapped in
with `where`), and a NumPy statement of dLLM-Cache's V-verify rule."""

import dataclasses
import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from d2cache_jax import model
from d2cache_jax.cache import METHODS, dllm, none, prefix
from d2cache_jax.cache.base import CacheMethod
from d2cache_jax.config import tiny_dream, tiny_llada
from d2cache_jax.generation.options import make_options
from d2cache_jax.generation.step import max_steps, scatter_to_gen
from d2cache_jax.params import init_params
from tests import reference

# The module (the package re-exports its `generate` function under the same name).
gen_lib = importlib.import_module("d2cache_jax.generation.generate")

FAMILIES = {"llada": tiny_llada, "dream": tiny_dream}
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [20, 21, 22]]  # the second row is left-padded
G = 16
TOL = 1e-5  # max |cache - ref| / max |ref| in fp32


@functools.cache
def setup(family):
    cfg = FAMILIES[family]()
    return cfg, init_params(cfg, jax.random.key(3))


def rel_err(a, b, where=None) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if where is not None:
        a, b = a[where], b[where]
    return float(np.abs(a - b).max() / np.abs(b).max())


# --- a cache method wrapped so that every step also records its logits and the no-cache logits ---

def recording(name: str) -> CacheMethod:
    """`name` run as usual; its cache also holds this step's logits [B,G,V] next to the exact ones."""
    inner = METHODS[name]

    def as_inner(opts):
        return dataclasses.replace(opts, cache=name)

    def init(cfg, opts, b, t):
        g, v = opts.gen_length, cfg.vocab_size
        rec = dict(logits=jnp.zeros((b, g, v)), ref=jnp.zeros((b, g, v)), valid=jnp.zeros((b, g), bool),
                   rows=jnp.zeros(()), block_step=jnp.zeros((), jnp.int32))
        return inner.init(cfg, as_inner(opts), b, t), rec

    def forward(cfg, opts, params, state):
        o = as_inner(opts)
        out = inner.forward(cfg, o, params, state.replace(cache=state.cache[0]))
        ref = none.gen_logits(cfg, o, params, state.tokens, state.positions, state.key_mask)
        bi = jnp.arange(ref.shape[0])[:, None]
        logits = jnp.zeros_like(ref).at[bi, out.gen_idx].set(model.head(params, cfg, out.hidden), mode="drop")
        valid = scatter_to_gen(out.gen_idx, jnp.ones(out.gen_idx.shape, bool), o.gen_length, False)
        rec = dict(logits=logits, ref=ref, valid=valid, rows=out.rows, block_step=state.block_step)
        return out._replace(cache=(out.cache, rec))

    def after_step(cfg, opts, state, info):
        inner_cache = inner.after_step(cfg, as_inner(opts), state.replace(cache=state.cache[0]), info)
        return inner_cache, state.cache[1]

    return CacheMethod(init, forward, after_step)


def host_run(cfg, params, opts, prompts=PROMPTS):
    """Drive the jitted step from Python; returns (gen tokens, per-step cache pytrees, compilations)."""
    state = gen_lib.prepare(cfg, prompts, opts)
    step = gen_lib.step_fn(cfg, opts)
    n0 = gen_lib._step_jit._cache_size()
    caches = []
    for _ in range(max_steps(opts)):
        state = step(params, state)
        caches.append(jax.device_get(state.cache))
        done, block = jax.device_get((state.done, state.block))
        if done.all() or block >= opts.num_blocks:
            break
    tokens = np.asarray(state.tokens[:, -opts.gen_length:])
    return tokens, caches, gen_lib._step_jit._cache_size() - n0


def recorded_run(monkeypatch, cfg, params, name, **kw):
    opts = make_options(cache=name, gen_length=G, **kw)
    monkeypatch.setitem(METHODS, "rec_" + name, recording(name))
    tokens, caches, compiles = host_run(cfg, params, dataclasses.replace(opts, cache="rec_" + name))
    assert compiles <= 1  # one compilation covers the whole generation (0: compiled by an earlier test)
    return tokens, [c[1] for c in caches]


# --- (i) settings that refresh everything every step are exact ---

EXACT = {"prefix": dict(block_length=1), "dual": dict(block_length=1), "dllm": dict(kp=1, kr=1)}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", EXACT)
def test_full_refresh_settings_match_no_cache(monkeypatch, family, name):
    cfg, params = setup(family)
    ref_tokens, ref_recs = recorded_run(monkeypatch, cfg, params, "none", **EXACT[name])
    tokens, recs = recorded_run(monkeypatch, cfg, params, name, **EXACT[name])
    assert (tokens != cfg.mask_token_id).all()
    np.testing.assert_array_equal(tokens, ref_tokens)
    assert len(recs) == len(ref_recs) == G
    for rec, ref in zip(recs, ref_recs):
        assert rec["valid"].any()
        assert rel_err(rec["logits"], rec["ref"], rec["valid"]) <= TOL
        assert rel_err(rec["logits"], ref["ref"], rec["valid"]) <= TOL  # same states as the no-cache run
        assert rec["rows"] == 1.0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["prefix", "dual"])
def test_block_first_steps_exact_later_steps_partial(monkeypatch, family, name):
    cfg, params = setup(family)
    bl = 4
    tokens, recs = recorded_run(monkeypatch, cfg, params, name, block_length=bl)
    assert (tokens != cfg.mask_token_id).all() and len(recs) == G
    t = 16 + G  # prompts are padded to the 16-token bucket
    shift = 1 if cfg.shift_logits else 0
    stale = 0.0
    for n, rec in enumerate(recs):
        block = n // bl
        want = np.zeros(G, bool)
        want[block * bl:(block + 1) * bl] = True
        np.testing.assert_array_equal(rec["valid"], np.broadcast_to(want, rec["valid"].shape))
        if rec["block_step"] == 0:
            assert rel_err(rec["logits"], rec["ref"], rec["valid"]) <= TOL
            assert rec["rows"] == 1.0
        else:
            stale = max(stale, rel_err(rec["logits"], rec["ref"], rec["valid"]))
            n_blocks = 1 if name == "dual" else G // bl - block
            cap = min(k for k in (1, 2, 4) if k >= n_blocks) * bl + shift  # capacities of 1, 2, 4 blocks
            assert rec["rows"] == pytest.approx(cap / t)  # padded slots run through the layers too
    assert stale > 1e-3  # the later steps really reuse frozen K/V


# --- (ii) the partial passes against a dense masked reference ---

@functools.partial(jax.jit, static_argnums=0)
def dense_logits(cfg, params, tokens, positions, key_mask, fresh, frozen):
    """Every layer over all rows, with the K/V of rows outside `fresh` [B,T] taken from `frozen`."""
    x = model.embed(params, tokens)
    eps = cfg.rms_norm_eps
    f = fresh[:, :, None, None]
    for lp, kv in zip(reference.flat_layers(params), reference.unstack(frozen)):
        q, k, v = reference.qkv(lp, cfg, model.rms_norm(x, lp["attn_norm"], eps), positions)
        o, _ = model.attention(cfg, q, jnp.where(f, k, kv.k), jnp.where(f, v, kv.v), key_mask)
        x = x + jnp.einsum("bqnh,nhd->bqd", o, lp["wo"])
        x = x + reference.mlp(lp, model.rms_norm(x, lp["mlp_norm"], eps))
    return model.head(params, cfg, x)


@functools.cache
def jit_forward(cfg, opts):
    return jax.jit(functools.partial(METHODS[opts.cache].forward, cfg, opts))


def commit_some(cfg, state, positions, seed):
    """The canvas with random tokens written at the gen positions `positions`."""
    g = state.commit_step.shape[1]
    p = state.tokens.shape[1] - g
    ids = np.random.RandomState(seed).randint(0, cfg.vocab_size - 3, (state.tokens.shape[0], len(positions)))
    return state.replace(tokens=state.tokens.at[:, p + np.asarray(positions)].set(ids))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["prefix", "dual"])
def test_partial_pass_matches_dense_reference(family, name):
    cfg, params = setup(family)
    bl = 4
    opts = make_options(cache=name, gen_length=G, block_length=bl)
    fwd = jit_forward(cfg, opts)
    state = gen_lib.prepare(cfg, PROMPTS, opts)
    t = state.tokens.shape[1]
    p, shift = t - G, (1 if cfg.shift_logits else 0)
    for block in range(G // bl):
        # Earlier blocks decoded, this block half decoded: the canvas at this block's first step.
        s = state.replace(block=jnp.int32(block), block_step=jnp.int32(0))
        s = commit_some(cfg, s, list(range(block * bl)) + [block * bl + 1], seed=block)
        first = fwd(params, s)
        exact = model.forward(cfg, params, s.tokens, s.key_mask)
        rows = p + block * bl - shift + np.arange(bl)
        assert rel_err(model.head(params, cfg, first.hidden), exact[:, rows]) <= TOL
        np.testing.assert_array_equal(first.gen_idx, np.broadcast_to(block * bl + np.arange(bl), (2, bl)))
        # No token changed: the partial pass reproduces the full pass.
        again = fwd(params, s.replace(cache=first.cache, block_step=jnp.int32(1)))
        assert rel_err(again.hidden, first.hidden) <= TOL
        # Two tokens committed: the query rows see fresh K/V of themselves and frozen K/V elsewhere.
        s2 = commit_some(cfg, s, [block * bl, block * bl + 3], seed=100 + block)
        part = fwd(params, s2.replace(cache=first.cache, block_step=jnp.int32(2)))
        end = p + (block + 1) * bl if name == "dual" else t
        fresh = np.zeros((2, t), bool)
        fresh[:, p + block * bl - shift:end] = True
        ref = dense_logits(cfg, params, s2.tokens, s2.positions, s2.key_mask, jnp.asarray(fresh), first.cache)
        assert rel_err(model.head(params, cfg, part.hidden), ref[:, rows]) <= TOL
        assert rel_err(model.head(params, cfg, part.hidden), exact[:, rows]) > 1e-3  # the change is seen
        # rows outside the query set stay frozen
        for new, old in zip(reference.unstack(part.cache), reference.unstack(first.cache)):
            np.testing.assert_array_equal(np.asarray(new.k)[~fresh], np.asarray(old.k)[~fresh])
            np.testing.assert_array_equal(np.asarray(new.v)[~fresh], np.asarray(old.v)[~fresh])


def test_prefix_capacities():
    cfg = tiny_llada()
    opts = make_options(cache="prefix", gen_length=256, block_length=32)
    assert prefix.capacities(cfg, opts) == [32, 64, 128, 256]
    assert prefix.capacities(tiny_dream(), opts) == [33, 65, 129, 257]
    assert prefix.capacities(cfg, make_options(cache="dual", gen_length=256, block_length=32)) == [32]


# --- (iii) V-verify against a NumPy statement of the rule ---

def np_lowest_cosine(v_new, v_old, k):
    """Indices of the k response rows whose fresh V is least cosine-similar to the cached V."""
    a = v_new.reshape(v_new.shape[0], v_new.shape[1], -1).astype(np.float64)
    c = v_old.reshape(v_old.shape[0], v_old.shape[1], -1).astype(np.float64)
    sim = (a * c).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(c, axis=-1))
    return np.sort(np.argsort(sim, axis=-1, kind="stable")[:, :k], axis=-1), sim


def test_v_verify_hand_made():
    # 5 rows of V [1 head, 2 dims]: cached V is (1, 0) everywhere.
    old = np.tile(np.array([1.0, 0.0]), (1, 5, 1, 1)).reshape(1, 5, 1, 2)
    new = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [3.0, 0.1], [1.0, 1.0]]).reshape(1, 5, 1, 2)
    # cosines: 1, 0, -1, ~0.9994, 0.7071 -> the two lowest are rows 2 and 1; three lowest add row 4
    sim = np.asarray(dllm.v_similarity(jnp.asarray(new), jnp.asarray(old)))
    np.testing.assert_allclose(sim, [[1.0, 0.0, -1.0, 3 / np.hypot(3, 0.1), np.sqrt(0.5)]], rtol=1e-6)
    assert dllm.lowest_k(jnp.asarray(sim), 2).tolist() == [[1, 2]]
    assert dllm.lowest_k(jnp.asarray(sim), 3).tolist() == [[1, 2, 4]]
    # The cosine is over all heads concatenated, not per head: per-head cosines would all be 1 here.
    old2 = np.array([[1.0, 0.0], [1.0, 0.0]]).reshape(1, 1, 2, 2)
    new2 = np.array([[1.0, 0.0], [5.0, 0.0]]).reshape(1, 1, 2, 2)
    assert float(dllm.v_similarity(jnp.asarray(new2), jnp.asarray(old2))[0, 0]) == pytest.approx(
        6 / (np.sqrt(2) * np.sqrt(26)), rel=1e-6)


def test_v_verify_random():
    rs = np.random.RandomState(0)
    old = rs.randn(3, 40, 2, 8).astype(np.float32)
    new = (old + rs.rand(3, 40, 1, 1) * rs.randn(3, 40, 2, 8)).astype(np.float32)
    for k in (1, 7, 10):
        want, sim = np_lowest_cosine(new, old, k)
        got = np.asarray(dllm.lowest_k(dllm.v_similarity(jnp.asarray(new), jnp.asarray(old)), k))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(np.asarray(dllm.v_similarity(jnp.asarray(new), jnp.asarray(old))), sim,
                                   rtol=1e-5, atol=1e-6)


def dllm_dense(cfg, params, tokens, positions, key_mask, cache, kind, k):
    """dLLM-Cache's step stated densely: every row computed, cached values swapped in where not fresh."""
    x = model.embed(params, tokens)
    eps = cfg.rms_norm_eps
    b, t = tokens.shape
    p = t - G
    resp = np.zeros((b, t), bool)
    resp[:, p:] = True
    out = []
    for i, (lp, c) in enumerate(zip(reference.flat_layers(params), reference.unstack(cache))):
        q, kk, v = reference.qkv(lp, cfg, model.rms_norm(x, lp["attn_norm"], eps), positions)
        if i == 0 or kind == dllm.FULL:
            fresh = vfresh = np.ones((b, t), bool)
        elif kind == dllm.RESPONSE:
            fresh = vfresh = resp
        else:
            sel, _ = np_lowest_cosine(np.asarray(v)[:, p:], np.asarray(c.v)[:, p:], k)
            fresh = np.zeros((b, t), bool)
            np.put_along_axis(fresh, p + sel, True, axis=1)
            if kind == dllm.PROMPT_ADAPTIVE:
                fresh[:, :p] = True
            vfresh = fresh | resp
        f4, v4 = jnp.asarray(fresh)[..., None, None], jnp.asarray(vfresh)[..., None, None]
        f3 = fresh[..., None]
        kk, v = jnp.where(f4, kk, c.k), jnp.where(v4, v, c.v)
        o, _ = model.attention(cfg, q, kk, v, key_mask)
        a = jnp.where(f3, jnp.einsum("bqnh,nhd->bqd", o, lp["wo"]), c.attn)
        x = x + a
        m = jnp.where(f3, reference.mlp(lp, model.rms_norm(x, lp["mlp_norm"], eps)), c.ffn)
        x = x + m
        out.append(dllm.DllmLayer(kk, v, a, m))
    shift = 1 if cfg.shift_logits else 0
    return model.head(params, cfg, x[:, p - shift:t - shift]), reference.stack(out)


@pytest.mark.parametrize("family,rou", [("llada", 0.25), ("dream", 0.25), ("llada", 0.05)])
def test_dllm_steps_match_dense_reference(family, rou):
    """Every step kind against the dense statement; rou = 0.05 (int(G * rou) = 0 rows) still overwrites
    the response V at adaptive steps, as upstream does."""
    cfg, params = setup(family)
    opts = make_options(cache="dllm", gen_length=G, kp=3, kr=2, rou=rou)
    kad = int(G * rou)
    assert dllm.step_kinds(opts) == [dllm.FULL, dllm.RESPONSE, dllm.PROMPT_ADAPTIVE, dllm.ADAPTIVE]
    fwd = jit_forward(cfg, opts)
    state = gen_lib.prepare(cfg, PROMPTS, opts)
    t = state.tokens.shape[1]
    ref_cache = state.cache
    kinds = [dllm.FULL, dllm.ADAPTIVE, dllm.RESPONSE, dllm.PROMPT_ADAPTIVE, dllm.RESPONSE, dllm.ADAPTIVE,
             dllm.FULL]
    order = np.random.RandomState(1).permutation(G)
    for n, kind in enumerate(kinds):
        s = state.replace(step=jnp.int32(n))
        if n:  # commit 5 more positions before each later step (at least k=4 rows change)
            s = commit_some(cfg, s, order[:5 * n], seed=0)
        out = fwd(params, s)
        ref, ref_cache = dllm_dense(cfg, params, s.tokens, s.positions, s.key_mask, ref_cache, kind, kad)
        assert rel_err(model.head(params, cfg, out.hidden), ref) <= TOL, (n, kind)
        np.testing.assert_array_equal(out.gen_idx, np.broadcast_to(np.arange(G), (2, G)))
        for got, want in zip(out.cache, ref_cache):
            for a, w in zip(got, want):
                assert rel_err(a, w) <= TOL, (n, kind)
        share = {dllm.FULL: t, dllm.RESPONSE: G, dllm.PROMPT_ADAPTIVE: t - G + kad, dllm.ADAPTIVE: kad}[kind] / t
        assert float(out.rows) == pytest.approx((1 + (cfg.n_layers - 1) * share) / cfg.n_layers)
        state = s.replace(cache=out.cache)
    # With no token change, an adaptive step reproduces the exact logits (the cache is fresh).
    exact = none.gen_logits(cfg, opts, params, state.tokens, state.positions, state.key_mask)
    fresh = fwd(params, state.replace(step=jnp.int32(7)))  # 7: adaptive
    assert rel_err(model.head(params, cfg, fresh.hidden), exact) <= TOL


def test_dllm_step_kinds():
    kinds = lambda **kw: dllm.step_kinds(make_options(cache="dllm", **kw))  # noqa: E731
    assert kinds(kp=50, kr=2) == [dllm.FULL, dllm.RESPONSE, dllm.ADAPTIVE]
    assert kinds(kp=1, kr=1) == [dllm.FULL]
    assert kinds(kp=1, kr=4) == [dllm.FULL, dllm.PROMPT_ADAPTIVE]
    assert kinds(kp=4, kr=4) == [dllm.FULL, dllm.ADAPTIVE]
    assert kinds(kp=2, kr=3) == [dllm.FULL, dllm.RESPONSE, dllm.PROMPT_ADAPTIVE, dllm.ADAPTIVE]


# --- (iv) one compilation per generation and (v) every cache with vanilla, threshold and semi-AR ---

# Vanilla semi-AR prefix/dual generations also run in test_block_first_steps_exact_later_steps_partial.
DECODING = {
    "vanilla": dict(decoder="vanilla"),
    "threshold_semi_ar": dict(decoder="threshold", threshold=0.5, block_length=8),
}


@functools.cache
def confident_params():
    """Tiny LLaDA whose head is scaled up, so many positions pass a confidence threshold."""
    cfg, params = setup("llada")
    return cfg, dict(params, lm_head=params["lm_head"] * 12.0)


@pytest.mark.parametrize("decoding", DECODING)
@pytest.mark.parametrize("name", ["prefix", "dual", "dllm"])
def test_generation_one_compile(name, decoding):
    cfg, params = confident_params()
    opts = make_options(cache=name, gen_length=G, **DECODING[decoding])
    tokens, caches, compiles = host_run(cfg, params, opts)
    assert compiles == 1
    assert (tokens != cfg.mask_token_id).all()
    if decoding == "threshold_semi_ar":
        assert len(caches) < G  # several tokens per step
    else:
        assert len(caches) == G
    # A second generation reuses the compiled step.
    assert host_run(cfg, params, opts)[2] == 0


@pytest.mark.parametrize("name", ["prefix", "dual", "dllm"])
def test_generate_device_loop_stats(name):
    cfg, params = setup("dream")
    res = gen_lib.generate(cfg, params, PROMPTS, gen_length=G, block_length=8, cache=name)
    # The schedule (steps = gen_length): exactly one position per row at each step 0..G-1.
    np.testing.assert_array_equal(np.sort(res.commit_step, -1), np.broadcast_to(np.arange(G), res.tokens.shape))
    assert res.stats["steps"] == G and res.stats["overflow_rows"] == 0
    assert 0 < res.stats["recompute_share"] < 1
