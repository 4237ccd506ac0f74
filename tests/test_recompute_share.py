"""`recompute_share` counts the rows that went through the layers (the compiled bucket or capacity,
padded slots included); `selected_share` the rows the cache asked for. Both checked step by step
against the sizes the test derives from the state before each step."""

import functools
import importlib

import jax
import numpy as np
import pytest

from d2cache_jax.cache import d2cache
from d2cache_jax.config import tiny_dream, tiny_llada
from d2cache_jax.generation.options import make_options
from d2cache_jax.generation.step import max_steps
from d2cache_jax.params import init_params

gen_lib = importlib.import_module("d2cache_jax.generation.generate")

FAMILIES = {"llada": tiny_llada, "dream": tiny_dream}
PROMPTS = [list(range(3, 19)), list(range(40, 49))]  # 16 and 9 tokens: P = 16


@functools.cache
def setup(family):
    cfg = FAMILIES[family]()
    return cfg, init_params(cfg, jax.random.key(11))


def run_recorded(cfg, params, opts, expected):
    """Drive the jitted step; `expected(state)` gives (ran, selected) shares for the next step from
    the state before it. Returns the per-step lists of (reported ran, expected ran, reported sel,
    expected sel)."""
    state = gen_lib.prepare(cfg, PROMPTS, opts)
    step = gen_lib.step_fn(cfg, opts)
    rec = []
    for _ in range(max_steps(opts)):
        want = expected(jax.device_get(state))
        c0, s0 = float(state.rows_computed), float(state.rows_selected)
        state = step(params, state)
        rec.append((float(state.rows_computed) - c0, want[0], float(state.rows_selected) - s0, want[1]))
        done, block = jax.device_get((state.done, state.block))
        if done.all() or block >= opts.num_blocks:
            break
    return np.array(rec)


def check(cfg, params, opts, rec):
    np.testing.assert_allclose(rec[:, 0], rec[:, 1], atol=1e-5)  # float32 running sums
    np.testing.assert_allclose(rec[:, 2], rec[:, 3], atol=1e-5)
    res = gen_lib.generate(cfg, params, PROMPTS, loop="host", **{
        k: getattr(opts, k) for k in ("gen_length", "block_length", "cache", "current_k", "inflate_w",
                                      "capacity", "decoder")})
    assert res.stats["steps"] == len(rec)
    assert res.stats["recompute_share"] == pytest.approx(rec[:, 1].mean(), rel=1e-5)
    assert res.stats["selected_share"] == pytest.approx(rec[:, 3].mean(), rel=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_d2cache_share_is_the_bucket(family):
    cfg, params = setup(family)
    opts = make_options(cache="d2cache", gen_length=16, current_k=8, inflate_w=0, capacity=10**6,
                        decoder="threshold")
    t = 16 + 16
    sizes = d2cache.row_buckets(opts, t)
    assert len(sizes) > 1

    def expected(s):
        if not s.cache.started:
            return 1.0, 1.0
        count = (np.asarray(s.cache.q_idx) < t).sum(-1)
        size = min(x for x in sizes if x >= count.max())  # the smallest compiled bucket that holds it
        return size / t, float(np.mean(count / t))

    rec = run_recorded(cfg, params, opts, expected)
    assert (rec[:, 1] > rec[:, 3]).any()  # some step ran more rows than it selected
    check(cfg, params, opts, rec)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["prefix", "dual"])
def test_prefix_dual_share_is_the_capacity(family, name):
    cfg, params = setup(family)
    g, bl = 32, 4
    nb = g // bl
    opts = make_options(cache=name, gen_length=g, block_length=bl)
    t = 16 + g
    p = 16
    shift = 1 if cfg.shift_logits else 0  # Dream: rows start one earlier and one more row is added
    # Partial-pass capacities in blocks: 1, 2, 4, ... below nb, then nb (prefix); one block (dual).
    blocks = [1] if name == "dual" else [2 ** i for i in range(nb.bit_length()) if 2 ** i < nb] + [nb]
    caps = [k * bl + shift for k in blocks]

    def expected(s):
        if int(s.block_step) == 0:
            return 1.0, 1.0
        block = min(int(s.block), nb - 1)
        n = (bl if name == "dual" else (nb - block) * bl) + shift
        cap = min(c for c in caps if c >= n)
        r0 = p + block * bl - shift
        return cap / t, min(n, t - r0) / t

    rec = run_recorded(cfg, params, opts, expected)
    if name == "prefix":
        assert (rec[:, 1] > rec[:, 3]).any()
    check(cfg, params, opts, rec)
