"""d2Cache: exactness against the no-cache run when every row is recomputed, the partial step, each
selection rule against a NumPy statement of it, one compilation per generation, upstream_compat."""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from d2cache_jax import model
from d2cache_jax.cache import d2cache, rollout
from d2cache_jax.cache import select_rules as rules
from d2cache_jax.cache.base import StepInfo, gen_rows
from d2cache_jax.config import tiny_dream, tiny_llada
from d2cache_jax.decoding.density import certainty_density
from d2cache_jax.generation.generate import generate, prepare, step_fn
from d2cache_jax.generation.options import make_options
from d2cache_jax.generation.state import init_state
from d2cache_jax.params import init_params
from tests import reference

gen_lib = importlib.import_module("d2cache_jax.generation.generate")  # the package exports `generate`

G = 16
PROMPTS = [list(range(3, 19)), list(range(40, 49))]  # 16 and 9 tokens: the second is left-padded
FAMILIES = {"llada": tiny_llada, "dream": tiny_dream}


@functools.cache
def setup(family):
    cfg = FAMILIES[family]()
    return cfg, init_params(cfg, jax.random.key(7))


def rel_err(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def to_gen(logits, gen_idx, g):
    """[B, R, V] rows -> [B, G, V] by gen index, and which gen positions were covered."""
    b = logits.shape[0]
    out = jnp.zeros((b, g, logits.shape[-1]), logits.dtype).at[jnp.arange(b)[:, None], gen_idx].set(
        logits, mode="drop")
    cov = jnp.zeros((b, g), bool).at[jnp.arange(b)[:, None], gen_idx].set(True, mode="drop")
    return out, cov


def all_rows(state):
    t = state.tokens.shape[1]
    return jnp.sort(jnp.where(state.key_mask, jnp.arange(t), t), axis=-1).astype(jnp.int32)


# --- (i) exactness over a whole generation ---------------------------------------------------------

ALL_ROWS = dict(gen_length=G, current_k=G, rollout_p=1.0, inflate_w=0, capacity=10**6)


@functools.cache
def jit_forward(family):
    """d2Cache's forward under ALL_ROWS settings, jitted once per family."""
    cfg, _ = setup(family)
    return jax.jit(functools.partial(d2cache.METHOD.forward, cfg, make_options(cache="d2cache", **ALL_ROWS)))


def no_cache_logits(cfg, params, state):
    """Reference: one full no-cache pass, the rows predicting gen positions [B, G, V]."""
    p = state.tokens.shape[1] - G
    return model.forward(cfg, params, state.tokens, state.key_mask)[:, gen_rows(cfg, p, G)]


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_all_rows_matches_no_cache(family):
    """Every non-pad row recomputed each step: same logits (fp32, <= 1e-5) and tokens as cache=none,
    on a left-padded batch. LLaDA reaches "every row" through its own rules (current_k >= G,
    rollout_p = 1); Dream's stage 1 skips the masked last row, so its selection is forced."""
    cfg, params = setup(family)
    opts = make_options(cache="d2cache", **ALL_ROWS)
    ref_opts = make_options(cache="none", gen_length=G, sigma=10.0)
    state, ref = prepare(cfg, PROMPTS, opts), prepare(cfg, PROMPTS, ref_opts)
    step, ref_step = step_fn(cfg, opts), step_fn(cfg, ref_opts)
    n = 0
    while not bool(ref.done.all()):
        if bool(state.cache.started):
            if family == "llada":
                np.testing.assert_array_equal(state.cache.q_idx, all_rows(state))  # the rules chose all
            else:
                state = state.replace(cache=state.cache._replace(q_idx=all_rows(state)))
        fo = jit_forward(family)(params, state)
        got, cov = to_gen(model.head(params, cfg, fo.hidden), fo.gen_idx, G)
        assert bool(cov.all())
        assert rel_err(got, no_cache_logits(cfg, params, state)) <= 1e-5
        state, ref = step(params, state), ref_step(params, ref)
        np.testing.assert_array_equal(state.tokens, ref.tokens)
        n += 1
    assert bool(state.done.all()) and n >= G // 2


# --- (ii) the partial step -------------------------------------------------------------------------

PARTIAL = dict(gen_length=G, current_k=8, inflate_w=0, capacity=10**6)  # Q = T, row buckets 9, 17, 25, 32
H = G  # the most recomputed rows that can predict a gen position


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_partial_step_exact_rows(family):
    """A fresh cache (K/V of the current canvas) and a chosen row subset, in each row bucket: every
    recomputed row that predicts a gen position comes back, its logits equal to the no-cache logits,
    and the cache is rewritten with the same K/V."""
    cfg, params = setup(family)
    opts = make_options(cache="d2cache", **PARTIAL)
    assert d2cache.row_buckets(opts, 32) == (9, 17, 25, 32) and d2cache.budgets(opts, 32) == (32, H)
    forward = jax.jit(functools.partial(d2cache.METHOD.forward, cfg, opts))
    state = prepare(cfg, PROMPTS, opts)
    t = state.tokens.shape[1]
    p = t - G
    shift = 1 if cfg.shift_logits else 0
    rng = np.random.RandomState(0)
    gen = np.full((2, G), cfg.mask_token_id)
    decoded = rng.rand(2, G) < 0.5
    gen[decoded] = rng.randint(0, cfg.vocab_size - 3, decoded.sum())
    tokens = state.tokens.at[:, p:].set(jnp.asarray(gen, jnp.int32))
    full = model.forward_rows(cfg, params, tokens, state.positions, state.key_mask)
    ref = np.asarray(no_cache_logits(cfg, params, state.replace(tokens=tokens)))
    for sizes in [(9, 7), (22, 20)]:  # the smallest bucket, then the third
        q_idx = np.full((2, t), t, np.int32)
        q_idx[0, :sizes[0]] = np.sort(rng.choice(np.arange(p - 8, t), sizes[0], replace=False))
        q_idx[1, :sizes[1]] = np.sort(rng.choice(np.arange(p - 5, t), sizes[1], replace=False))  # prompt rows too
        cache = state.cache._replace(kv=full.kv, q_idx=jnp.asarray(q_idx), started=jnp.ones((), bool))
        fo = forward(params, state.replace(tokens=tokens, cache=cache))
        got, cov = to_gen(model.head(params, cfg, fo.hidden), fo.gen_idx, G)
        cov = np.asarray(cov)
        for b in range(2):
            pred = [r - p + shift for r in q_idx[b] if r < t and 0 <= r - p + shift < G]
            need = [j for j in pred if gen[b, j] == cfg.mask_token_id]
            assert set(np.nonzero(cov[b])[0]) <= set(pred)
            assert cov[b].sum() == min(len(pred), H) and set(need[:H]) <= set(np.nonzero(cov[b])[0])
        err = np.abs(np.asarray(got) - ref).max(-1)[cov].max() / np.abs(ref).max()
        assert err <= 1e-5
        for a, b in zip(reference.unstack(fo.cache.kv), reference.unstack(full.kv)):
            assert rel_err(a.k, b.k) <= 1e-5 and rel_err(a.v, b.v) <= 1e-5
        bucket = min(x for x in (9, 17, 25, 32) if x >= max(sizes))  # the rows that went through the layers
        assert float(fo.rows) == pytest.approx(bucket / t)
        assert float(fo.selected) == pytest.approx(np.mean((q_idx < t).sum(-1) / t))
        assert int(fo.overflow) == sum(max(len([r for r in q_idx[b] if r < t and 0 <= r - p + shift < G
                                               and gen[b, r - p + shift] == cfg.mask_token_id]) - H, 0)
                                       for b in range(2))
    if family == "llada":  # a loop that knows the phase: R = Q rows, the same values
        later = jax.jit(functools.partial(d2cache.METHOD.forward, cfg, opts, phase="later"))
        fl = later(params, state.replace(tokens=tokens, cache=cache))
        assert fl.hidden.shape[1] == fo.hidden.shape[1] == 32  # Q rows, the largest bucket (Q > G)
        np.testing.assert_array_equal(fl.gen_idx, fo.gen_idx)
        got, cov = to_gen(model.head(params, cfg, fl.hidden), fl.gen_idx, G)
        assert np.asarray(cov).sum() == int((np.asarray(fl.gen_idx) < G).sum()) > 0
        err = np.abs(np.asarray(got) - ref).max(-1)[np.asarray(cov)].max() / np.abs(ref).max()
        assert err <= 1e-5  # against the no-cache logits of the same rows


# --- (iii) each rule against a NumPy statement -----------------------------------------------------

def np_density(d, sigma):
    g = len(d)
    s = np.concatenate([np.ones(g), d.astype(float), np.full(g, float(d[-1]))])
    k = lambda x: np.exp(-(np.asarray(x, float) ** 2) / (2 * sigma**2))
    z = k(np.arange(-3 * g, 3 * g)).sum()
    return np.array([(s * k(g + i - np.arange(3 * g))).sum() / z for i in range(g)])


def test_certainty_density_matches_formula_and_spec_example():
    d = certainty_density(jnp.zeros((1, 8), bool), 2.0)[0]
    printed = [0.400, 0.224, 0.103, 0.038, 0.011, 0.0027, 5e-4, 8e-5]
    half_unit = [5e-4, 5e-4, 5e-4, 5e-4, 5e-4, 5e-5, 5e-5, 5e-6]  # the example's printed precision
    assert (np.abs(np.asarray(d) - printed) <= half_unit).all(), d
    rng = np.random.RandomState(1)
    dec = rng.rand(4, 24) < 0.4
    dec[1, -1] = True
    for sigma in (1.5, 10.0):
        got = np.asarray(certainty_density(jnp.asarray(dec), sigma))
        np.testing.assert_allclose(got, [np_density(r, sigma) for r in dec], rtol=1e-5, atol=1e-7)


def np_rollout(attn, sel_rows, t):
    r = np.eye(t)
    for a in attn:
        m = np.eye(t)
        for qi, row in enumerate(sel_rows):
            if row < t:
                m[row] = a[qi]
        n = m + np.eye(t)
        r = (n / n.sum(-1, keepdims=True)) @ r
    return r


def test_rollout_matches_numpy_product():
    rng = np.random.RandomState(2)
    t, q, layers = 11, 5, 3
    key_mask = np.ones((2, t), bool)
    key_mask[1, :2] = False
    idx = np.full((2, q), t)
    idx[0] = np.sort(rng.choice(t, q, replace=False))
    idx[1, :3] = np.sort(rng.choice(np.arange(2, t), 3, replace=False))
    attn = []
    for _ in range(layers):
        s = np.where(key_mask[:, None, :], rng.randn(2, q, t) * 2, -np.inf)
        attn.append(np.exp(s) / np.exp(s).sum(-1, keepdims=True))
    imp = rollout.rollout_importance([jnp.asarray(a, jnp.float32) for a in attn], jnp.asarray(idx), t)
    mat = rollout.rollout_matrix([jnp.asarray(a, jnp.float32) for a in attn], jnp.asarray(idx), t)
    for b in range(2):
        ref = np_rollout([a[b] for a in attn], idx[b], t)
        np.testing.assert_allclose(mat[b], ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(imp[b], ref.sum(0), rtol=1e-5, atol=1e-6)
    # Every row recomputed (step 0): the full product of the N matrices.
    full = [np.exp(rng.randn(1, t, t)) for _ in range(2)]
    full = [a / a.sum(-1, keepdims=True) for a in full]
    all_idx = jnp.arange(t)[None]
    got = rollout.rollout_importance([jnp.asarray(a, jnp.float32) for a in full], all_idx, t)
    np.testing.assert_allclose(got[0], np_rollout([a[0] for a in full], np.arange(t), t).sum(0), rtol=1e-5)


def np_nucleus(imp, p, valid):
    s = np.where(valid, imp, 0.0)
    prob = s / (s.sum() + 1e-9)
    order = np.argsort(-prob, kind="stable")
    keep = (np.cumsum(prob[order]) <= p) | (np.arange(len(s)) == 0) | (p >= 1)
    out = np.zeros(len(s), bool)
    out[order] = keep
    return out & valid


def test_nucleus_select():
    imp = jnp.asarray([[1.0, 8.0, 0.5, 40.0, 3.0, 2.0, 1.5]])
    valid = jnp.asarray([[True, True, True, False, True, True, True]])
    pick = lambda p: set(np.nonzero(np.asarray(rules.nucleus_select(imp, p, valid))[0])[0].tolist())
    assert pick(0.5) == {1}  # 8/16 <= 0.5; adding 3/16 crosses it
    assert pick(0.7) == {1, 4}
    assert pick(0.1) == {1}  # the top one always
    assert pick(1.0) == {0, 1, 2, 4, 5, 6}
    rng = np.random.RandomState(3)
    imp = rng.exponential(size=(6, 40)).astype(np.float32)
    valid = rng.rand(6, 40) < 0.7
    for p in (0.05, 0.1, 0.3, 0.9):
        got = np.asarray(rules.nucleus_select(jnp.asarray(imp), p, jnp.asarray(valid)))
        np.testing.assert_array_equal(got, [np_nucleus(i, p, v) for i, v in zip(imp, valid)])
        assert (got.sum(-1) <= np.maximum(np.floor(p * valid.sum(-1)), 1)).all()  # the capacity bound


def np_inflate(q, w):
    out = q.copy()
    sel = np.nonzero(q)[0]
    for i in range(len(q)):
        left, right = sel[sel < i], sel[sel > i]
        if not q[i] and len(left) and len(right) and right[0] - left[-1] <= w:
            out[i] = True
    return out


def test_inflate():
    q = np.array([0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0], bool)
    np.testing.assert_array_equal(rules.inflate(jnp.asarray(q[None]), 3)[0],
                                  [0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(rules.inflate(jnp.asarray(q[None]), 0)[0], q)
    rng = np.random.RandomState(4)
    qs = rng.rand(8, 30) < 0.25
    for w in (1, 2, 4, 7):
        np.testing.assert_array_equal(rules.inflate(jnp.asarray(qs), w), [np_inflate(r, w) for r in qs])


def np_window(rem, bm, k):
    g = len(rem)
    bs = max(int(bm.sum()), 1)
    hits = np.nonzero(np.cumsum(rem) >= k)[0]
    k_end = hits[0] if len(hits) else g - 1
    w_end = (k_end // bs + 1) * bs - 1
    w_start = int(np.argmax(bm)) if bm.any() else 0
    return (np.arange(g) >= w_start) & (np.arange(g) <= w_end)


def test_search_window():
    # ALGORITHMS.md 3.4.3: G=256, first 56 decoded; HEAD's mutated mask (bs=200) cuts at 199.
    rem = np.arange(256) >= 56
    got = np.asarray(rules.search_window(jnp.asarray(rem[None]), jnp.asarray(rem[None]), 32))[0]
    assert np.nonzero(got)[0].min() == 56 and np.nonzero(got)[0].max() == 199
    full = np.asarray(rules.search_window(jnp.asarray(rem[None]), jnp.ones((1, 256), bool), 32))[0]
    assert full.all()
    rng = np.random.RandomState(5)
    for bl in (4, 8, 32):
        rem = rng.rand(6, 32) < 0.6
        blk = rng.randint(0, 32 // bl, 6)
        bm = (np.arange(32) // bl)[None] == blk[:, None]
        bm[0] &= rem[0]  # a mutated (HEAD) mask
        for k in (1, 3, 32):
            got = np.asarray(rules.search_window(jnp.asarray(rem), jnp.asarray(bm), k))
            np.testing.assert_array_equal(got, [np_window(r, m, k) for r, m in zip(rem, bm)])


def test_stage1_top_k():
    rng = np.random.RandomState(6)
    b, g, k, sigma = 4, 24, 5, 3.0
    conf = rng.rand(b, g).astype(np.float32)
    rem = rng.rand(b, g) < 0.7
    bm = np.zeros((b, g), bool)
    bm[:, 8:16] = True
    window = np.asarray(rules.search_window(jnp.asarray(rem), jnp.asarray(bm), k))
    for batch_max in (False, True):
        s = np.asarray(rules.stage1_scores(jnp.asarray(conf), jnp.asarray(rem), jnp.asarray(bm), sigma, batch_max))
        base = conf * np.array([np_density(~r, sigma) for r in rem])
        top = base.max() if batch_max else base.max(-1, keepdims=True)
        np.testing.assert_allclose(s, base + np.where(bm, top, 0.0), rtol=1e-5)
        sel = np.asarray(rules.stage1_select(jnp.asarray(s), jnp.asarray(rem), jnp.asarray(window), k))
        for r in range(b):
            cand = np.nonzero(window[r] & rem[r])[0]
            best = cand[np.argsort(-s[r, cand], kind="stable")[:k]]
            assert set(np.nonzero(sel[r])[0]) == set(best.tolist())
            assert set(best.tolist()) <= set(range(8, 16)) or len(set(cand) & set(range(8, 16))) < k


def test_pack_rows_and_top_up():
    tier = jnp.asarray([[0, 2, 5, 3, 0, 5, 1, 3], [0, 0, 1, 0, 0, 0, 0, 0]])
    within = jnp.asarray([[0, 0, 1.0, 0.2, 0, 2.0, 0, 0.9], [0] * 8], jnp.float32)
    q_idx, dropped = rules.pack_rows(tier, within, 4)
    np.testing.assert_array_equal(q_idx, [[2, 3, 5, 7], [2, 8, 8, 8]])  # tiers 5, 5, 3, 3 kept; 2 and 1 dropped
    np.testing.assert_array_equal(dropped, [2, 0])
    want = jnp.asarray([[1, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]], bool)
    scores = jnp.asarray([[0, 0, 1.0, 3.0, 2.0, 0], [0, 0, 1.0, 3.0, 2.0, 9.0]])
    allowed = jnp.asarray([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]], bool)
    got = rules.top_up(want, scores, allowed, jnp.asarray(3))
    np.testing.assert_array_equal(got, [[1, 1, 0, 1, 0, 0], [0, 1, 0, 1, 1, 0]])


# --- (v) upstream_compat vs default, rule by rule in after_step ------------------------------------

def after_step_case(family, compat, gen_decoded, transfer, importance, conf_new, **kw):
    """One hand-made after_step: P=4 (one pad), G=8, every gen position computed this step."""
    cfg = FAMILIES[family]()
    g, p = 8, 4
    opts = make_options(cache="d2cache", gen_length=g, current_k=2, cache_sigma=100.0, rollout_p=0.3,
                        inflate_w=0, upstream_compat=compat, **kw)
    t = p + g
    ids, mask = np.array([[cfg.pad_token_id, 5, 6, 7]]), np.array([[False, True, True, True]])
    cache = d2cache.init(cfg, opts, 1, t)
    cache = cache._replace(conf=jnp.full((1, g), 0.5), importance=jnp.asarray([importance], jnp.float32),
                           started=jnp.ones((), bool))
    state = init_state(cfg, opts, ids, mask, cache, jax.random.key(0))
    gen = np.where(gen_decoded, 9, cfg.mask_token_id)
    state = state.replace(tokens=state.tokens.at[:, p:].set(jnp.asarray(gen[None], jnp.int32)))
    masked_before = (gen == cfg.mask_token_id) | transfer
    info = StepInfo(transfer=jnp.asarray(transfer[None]), conf=jnp.asarray(conf_new[None], jnp.float32),
                    valid=jnp.ones((1, g), bool), block_mask=jnp.ones((1, g), bool),
                    eligible=jnp.asarray(masked_before[None]), active=jnp.ones((1,), bool))
    out = d2cache.after_step(cfg, opts, state, info)
    rows = np.asarray(out.q_idx[0])
    return out, set(rows[rows < t].tolist())


def test_after_step_default_vs_compat():
    dec = np.array([1, 1, 0, 0, 0, 0, 0, 0], bool)
    tr = np.array([0, 1, 0, 0, 0, 0, 0, 0], bool)
    conf_new = np.array([0.1, 0.2, 0.3, 0.1, 0.1, 0.1, 0.1, 0.9])
    # Importance: a masked row (P+6 = 10) and the prompt row 1 stand out.
    imp = [0, 50, 1, 1, 1, 1, 1, 1, 1, 1, 60, 1]
    d, d_rows = after_step_case("llada", False, dec, tr, imp, conf_new)
    c, c_rows = after_step_case("llada", True, dec, tr, imp, conf_new)
    # (a) the conf cache is refreshed at masked-before positions by default, frozen under compat.
    np.testing.assert_allclose(d.conf[0], np.where(~dec | tr, conf_new, 0.5))
    np.testing.assert_allclose(c.conf[0], np.full(8, 0.5))
    # (c) stage 1: default ranks by the fresh conf (gen 7 = row 11 wins with 0.9); (b) compat's mutated
    # block mask starts at gen 1 (bs 7) so its window ends at gen 6 and gen 7 cannot be chosen.
    assert 11 in d_rows and 11 not in c_rows
    # (d) the committed position (gen 1 = row 5) is recomputed in both.
    assert 5 in d_rows and 5 in c_rows
    # (e) stage 2: default never picks the masked row 10; compat may.
    assert 10 not in d_rows and 1 in d_rows
    assert 10 in c_rows
    assert 0 not in d_rows | c_rows  # the pad row


def test_after_step_dream_last_prompt_row():
    """Dream: row P-1 (=3) predicts gen 0. Stage 2 picks it; gen 0 is decoded so sel[0] is False:
    the default ORs (row kept), compat overwrites (row dropped, bug 5 #9)."""
    dec = np.array([1, 0, 0, 0, 0, 0, 0, 0], bool)
    tr = np.zeros(8, bool)
    imp = [0, 1, 1, 80, 1, 1, 1, 1, 1, 1, 1, 1]
    _, d_rows = after_step_case("dream", False, dec, tr, imp, np.full(8, 0.5))
    _, c_rows = after_step_case("dream", True, dec, tr, imp, np.full(8, 0.5))
    assert 3 in d_rows and 3 not in c_rows
    # Stage 1 picks masked gen 1, 2 (nearest the context): Dream recomputes rows P+j-1 = 4, 5.
    assert {4, 5} <= d_rows and {4, 5} <= c_rows


# --- (iv) one compilation, (v) compat end to end ---------------------------------------------------

@pytest.mark.parametrize("compat", [False, True])
def test_one_compile_per_generation_and_compat(compat):
    cfg, params = setup("llada")
    opts = make_options(cache="d2cache", gen_length=G, current_k=3, rollout_p=0.2, upstream_compat=compat)
    state = prepare(cfg, PROMPTS, opts)
    step = step_fn(cfg, opts)
    before = gen_lib._step_jit._cache_size()
    conf0, selections, n = None, set(), 0
    while not bool(state.done.all()):
        state = step(params, state)
        n += 1
        if conf0 is None:
            conf0 = np.asarray(state.cache.conf)
        selections.add(tuple(np.asarray(state.cache.q_idx).ravel().tolist()))
    assert gen_lib._step_jit._cache_size() - before == 1
    assert len(selections) > 3  # the selection changed from step to step without recompiling
    assert not (np.asarray(state.tokens[:, -G:]) == cfg.mask_token_id).any()
    assert n == G  # vanilla: one token per step
    frozen = np.array_equal(np.asarray(state.cache.conf), conf0)
    assert frozen == compat  # bug 5 #1 reproduced only under upstream_compat
    assert int(state.overflow) == 0


# --- (vi) decoders, semi-AR blocks, CP on/off -------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(decoder="threshold", threshold=0.05, block_length=8, sigma=0.0),
                                dict(decoder="threshold", threshold=0.05, block_length=4, sigma=10.0)])
def test_decoders_and_blocks(kw):
    """With every row chosen the tokens equal cache=none's under the same decoder (threshold, semi-AR
    blocks, CP on/off); the default rules finish the generation with partial recomputation."""
    cfg, params = setup("llada")
    ref = generate(cfg, params, PROMPTS, gen_length=G, cache="none", **kw)
    every = generate(cfg, params, PROMPTS, gen_length=G, cache="d2cache", current_k=G, rollout_p=1.0,
                     inflate_w=0, capacity=10**6, **kw)
    np.testing.assert_array_equal(every.tokens, ref.tokens)
    part = generate(cfg, params, PROMPTS, gen_length=G, cache="d2cache", current_k=4, **kw)
    assert part.stats["recompute_share"] < 0.9
    assert (part.commit_step >= 0).all()  # every position committed (leftover masks would read as EOS)
    # Step 0 is a full pass: it commits what the no-cache run commits at its step 0.
    first = part.commit_step == 0
    assert first.any(-1).all()
    np.testing.assert_array_equal(first, ref.commit_step == 0)
    np.testing.assert_array_equal(part.tokens[first], ref.tokens[first])
