"""The head and the proposal run on the rows that predict still-masked positions only, in compiled
row buckets: per-row results against a NumPy head and softmax, and the head rows a whole generation
runs against the count derived from its commit order."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from d2cache_jax.cache import d2cache
from d2cache_jax.config import llada_8b_base, tiny_dream, tiny_llada
from d2cache_jax.generation import decodable
from d2cache_jax.generation.options import make_options
from d2cache_jax.generation.step import propose_kw
from d2cache_jax.params import init_params

gen_lib = importlib.import_module("d2cache_jax.generation.generate")


def np_logits(cfg, p, hidden):
    x = np.asarray(hidden, np.float64)
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.rms_norm_eps)
    logits = (y * np.asarray(p["final_norm"]["scale"], np.float64)) @ np.asarray(p["lm_head"], np.float64)
    logits[..., cfg.mask_token_id] = -np.inf
    return logits


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def every_bucket(monkeypatch):
    """Buckets for the tiny models too (their head is too cheap to get more than one by default);
    jit caches are cleared so no program compiled under the other setting is reused."""
    jax.clear_caches()
    monkeypatch.setattr(decodable, "MIN_BUCKET_FLOPS", 0)
    yield
    jax.clear_caches()


def test_head_buckets():
    assert decodable.head_buckets(128) == tuple(range(8, 129, 8))
    assert decodable.head_buckets(32) == tuple(range(2, 33, 2))
    assert decodable.head_buckets(20) == tuple(range(2, 21, 2))
    assert decodable.head_buckets(5) == (1, 2, 3, 4, 5)
    assert decodable.head_buckets(32, min_step=5) == (5, 10, 15, 20, 25, 30, 32)
    # 1e9 FLOPs apart: LLaDA's head (2 x 4096 x 126464 = 1.04e9 a row) gets every 8th count of 128,
    # the cpu-vocab head (2.6e8 a row) steps of 4 rows, a 64 x 256 head a single bucket.
    assert decodable.model_buckets(llada_8b_base(), 128) == tuple(range(8, 129, 8))
    assert decodable.model_buckets(tiny_llada(126464).replace(d_model=1024), 32) == tuple(range(4, 33, 4))
    assert decodable.model_buckets(tiny_llada(), 128) == (128,)


@pytest.mark.parametrize("guidance", [0.0, 1.5])
def test_needed_rows_get_their_argmax_and_confidence(guidance, every_bucket):
    cfg = tiny_llada()
    p = init_params(cfg, jax.random.key(3))
    opts = make_options(cache="none", gen_length=20, cfg_scale=guidance)
    rng = np.random.RandomState(0)
    hidden = rng.randn(3, 20, cfg.d_model).astype(np.float32)
    uncond = rng.randn(3, 20, cfg.d_model).astype(np.float32) if guidance else None
    need = np.zeros((3, 20), bool)
    need[1, rng.choice(20, 5, replace=False)] = True
    need[2, rng.choice(20, 13, replace=False)] = True  # row 0 needs nothing
    fn = jax.jit(lambda h, n, u: decodable.propose_rows(cfg, opts, p, h, n, jax.random.key(0),
                                                        propose_kw(cfg, opts), u))
    prop, head_rows = fn(jnp.asarray(hidden), jnp.asarray(need), None if uncond is None else jnp.asarray(uncond))
    assert float(head_rows) == 14  # the smallest of 2, 4, ..., 20 that holds 13 rows
    ref = np_logits(cfg, p, hidden)
    if guidance:
        un = np_logits(cfg, p, uncond)
        with np.errstate(invalid="ignore"):
            ref = np.where(np.isneginf(ref), -np.inf, un + (guidance + 1) * (ref - un))
    probs = np_softmax(ref)
    np.testing.assert_array_equal(np.asarray(prop.token)[need], ref.argmax(-1)[need])
    np.testing.assert_allclose(np.asarray(prop.conf)[need], probs.max(-1)[need], rtol=2e-5)


@pytest.mark.parametrize("family, cache, extra", [
    pytest.param(family, cache, extra, marks=pytest.mark.slow if (family, cache) == ("dream", "d2cache") else ())
    for cache, extra in (("none", {}), ("dual", dict(block_length=8)), ("d2cache", {}))
    for family in ("llada", "dream")])
def test_generation_heads_only_masked_rows(family, cache, extra, every_bucket):
    """Vanilla decoding commits one token per step, so before step s the block holds m_s masked
    positions (known from the commit order) and the step's head runs the smallest bucket >= m_s.
    d2Cache's later steps head only the recomputed rows predicting masked positions: at least one
    (stage 1 picks a masked position while any is left), at most m_s, in buckets of its Q rows."""
    cfg = (tiny_llada if family == "llada" else tiny_dream)()
    p = init_params(cfg, jax.random.key(5))
    g, prompts = 16, [[5, 6, 7, 8, 9, 10]]
    opts = make_options(cache=cache, gen_length=g, **extra)
    res = gen_lib.generate(cfg, p, prompts, cache=cache, gen_length=g, **extra)
    assert res.stats["steps"] == g and res.commit_step.min() == 0
    bl = opts.block
    fit = lambda rows, m: min(b for b in decodable.head_buckets(rows) if b >= m)  # noqa: E731
    lo = hi = 0
    for s in range(g):
        block = np.argmax(res.commit_step[0] == s) // bl  # the block this step committed in
        masked = int((res.commit_step[0, block * bl:(block + 1) * bl] >= s).sum())
        if cache == "d2cache" and s > 0:
            t = gen_lib.prepare(cfg, prompts, opts).tokens.shape[1]
            q = d2cache.row_buckets(opts, t)[-1]
            lo, hi = lo + fit(q, 1), hi + fit(q, masked)
        else:
            rows = g if cache == "d2cache" else bl  # d2Cache's step 0 heads all G gen rows
            lo, hi = lo + fit(rows, masked), hi + fit(rows, masked)
    assert lo <= res.stats["head_rows"] <= hi
    if cache != "d2cache":
        assert lo == hi
