"""Generation core: decoders against independent NumPy statements, batching, compilation count."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from d2cache_jax.decoding import eb, factor, schedule
from d2cache_jax.decoding.base import DecodeInputs
from d2cache_jax.decoding.sampling import propose, top_p_filter
from d2cache_jax.decoding.select import top_k_mask
from d2cache_jax.evaluation import compiles
from d2cache_jax.generation import generate, make_options
from d2cache_jax.model import forward
from tests import reference

gen_mod = importlib.import_module("d2cache_jax.generation.generate")


def reference_llada_generate(cfg, p, prompt, gen_length, steps, block_length):
    """LLaDA's reference sampler (temperature 0, low-confidence remasking) stated in NumPy.

    Only the network is the project's `forward` (checked against PyTorch in test_parity). One
    adopted change from the reference: the mask id is never proposed. Dream reads logits shifted by one.
    """
    mask = cfg.mask_token_id
    x = np.concatenate([np.asarray(prompt), np.full((1, gen_length), mask)], 1)
    P = len(prompt[0])
    nblocks = gen_length // block_length
    spb = steps // nblocks
    for b in range(nblocks):
        lo, hi = P + b * block_length, P + (b + 1) * block_length
        n = int((x[0, lo:hi] == mask).sum())
        num = [n // spb + (1 if i < n % spb else 0) for i in range(spb)]
        for i in range(spb):
            logits = np.asarray(forward(cfg, p, jnp.asarray(x)), np.float64)
            if cfg.shift_logits:
                logits = np.concatenate([logits[:, :1], logits[:, :-1]], 1)
            logits[..., mask] = -np.inf
            x0 = logits.argmax(-1)
            e = np.exp(logits - logits.max(-1, keepdims=True))
            prob = e / e.sum(-1, keepdims=True)
            x0_p = np.take_along_axis(prob, x0[..., None], -1)[..., 0]
            x0_p[:, hi:] = -np.inf
            is_mask = x == mask
            conf = np.where(is_mask, x0_p, -np.inf)
            idx = np.argsort(-conf[0], kind="stable")[: num[i]]
            x[0, idx] = x0[0, idx]
    return x[0, P:]


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("gen_length,steps,block_length", [(16, 16, 16), (16, 8, 8), (12, 6, 4)])
def test_matches_reference_llada_sampler(family, gen_length, steps, block_length, llada, dream):
    cfg, p = llada if family == "llada" else dream
    prompt = [[5, 17, 33, 2, 91, 40, 7]]
    want = reference_llada_generate(cfg, p, prompt, gen_length, steps, block_length)
    got = generate(cfg, p, prompt, gen_length=gen_length, steps=steps, block_length=block_length)
    np.testing.assert_array_equal(got.tokens[0], want)
    assert got.stats["steps"] == steps


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("decoder", ["vanilla", "threshold"])
def test_batch_equals_single(family, decoder, llada, dream):
    cfg, p = llada if family == "llada" else dream
    prompts = [[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], [40, 41], [60, 61, 62, 63, 64]]
    kw = dict(gen_length=16, block_length=8, decoder=decoder, threshold=0.05)
    batch = generate(cfg, p, prompts, **kw)
    for i, pr in enumerate(prompts):
        alone = generate(cfg, p, [pr], **kw)
        np.testing.assert_array_equal(batch.tokens[i], alone.tokens[0])


def test_step_compiles_once(llada):
    """Counted by XLA compile events (`generate` compiles ahead of time, which the jit call cache does not
    see). `threshold` is unused by vanilla but static: these options are compiled by no other test."""
    cfg, p = llada
    compiles.install()
    opts = make_options(gen_length=16, block_length=4, loop="host", threshold=0.6543)
    before = compiles.current().generation_programs
    r1 = generate(cfg, p, [[1, 2, 3]], **opts.__dict__)
    after_first = compiles.current().generation_programs
    r2 = generate(cfg, p, [[9, 8, 7, 6, 5]], **{**opts.__dict__, "seed": 3})
    assert r1.stats["steps"] == 16 and r2.stats["steps"] == 16
    assert after_first - before == 1
    assert compiles.current().generation_programs == after_first


def test_mask_preferring_model_finishes(llada):
    cfg, p = llada
    biased = reference.prefer(p, cfg.mask_token_id)
    assert (np.asarray(forward(cfg, biased, jnp.array([[1, 2, 3]]))).argmax(-1) == cfg.mask_token_id).all()
    # `generate` maps leftover masks to EOS, so drive the step and read the raw canvas.
    opts = make_options(gen_length=16, block_length=8, decoder="threshold")
    state, step = gen_mod.prepare(cfg, [[1, 2, 3]], opts), gen_mod.step_fn(cfg, opts)
    n = 0
    while not bool(state.done.all()):
        assert n < 16, "a step committed nothing (the mask id was proposed)"
        state, n = step(biased, state), n + 1
    assert not (np.asarray(state.tokens[:, -16:]) == cfg.mask_token_id).any()
    assert (np.asarray(state.commit_step) >= 0).all()


def test_stop_at_eos(llada):
    cfg, p = llada
    biased = reference.prefer(p, cfg.eos_token_id)
    r = generate(cfg, biased, [[1, 2, 3]], gen_length=16, stop_at_eos=True)
    assert r.lengths[0] == 0 and r.stats["steps"] == 1
    r = generate(cfg, biased, [[1, 2, 3]], gen_length=16)
    assert r.lengths[0] == 0 and r.stats["steps"] == 16


@pytest.mark.parametrize("kw,msg", [
    (dict(gen_length=10, block_length=4), "not divisible by block_length"),
    (dict(gen_length=16, block_length=4, steps=6), "not divisible by the number of blocks"),
    (dict(decoder="nope"), "unknown decoder"),
    (dict(cache="nope"), "unknown cache"),
    (dict(bogus=1), "unknown generation option"),
    (dict(temperature=-1.0), "temperature"),
])
def test_bad_options(kw, msg):
    with pytest.raises(ValueError, match=msg):
        make_options(**kw)


def test_bad_prompts(llada):
    cfg, p = llada
    with pytest.raises(ValueError, match="empty"):
        generate(cfg, p, [[]], gen_length=8)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        generate(cfg, p, [list(range(1, 100)) * 5], gen_length=64)
    with pytest.raises(ValueError, match="outside"):
        generate(cfg, p, [[cfg.vocab_size + 3]], gen_length=8)


# --- selection rules on hand-made arrays -----------------------------------------------------------

def _inputs(score, eligible, budget, entropy=None):
    score = jnp.asarray(score, jnp.float32)
    ent = jnp.zeros_like(score) if entropy is None else jnp.asarray(entropy, jnp.float32)
    return DecodeInputs(score, score, ent, jnp.asarray(eligible), jnp.asarray(budget, jnp.int32),
                        jnp.ones(score.shape[:1]))


class _Opts:
    threshold, factor, gamma, bf16_confidence, sigma, upstream_compat, alg_temp = 0.9, 1.0, 0.1, False, 0, False, 0


def test_threshold_rule():
    from d2cache_jax.decoding import threshold

    score = [[0.95, 0.2, 0.91, 0.99, 0.5], [0.1, 0.3, 0.2, 0.4, 0.05]]
    elig = [[True, True, True, False, True], [True] * 5]
    t = np.asarray(threshold.select(_inputs(score, elig, [1, 2]), _Opts, None))
    np.testing.assert_array_equal(t[0], [True, False, True, False, False])  # 0.99 not eligible
    np.testing.assert_array_equal(t[1], [False, True, False, True, False])  # none pass: top-2


def _numpy_factor(c, f, compat=False):
    s = sorted(c, reverse=True)
    for n in range(1, len(s) + 1):
        if (n + 1) * (1 - s[n - 1]) >= f:
            return n - 1
    return len(s) - 1 if compat else len(s)


def test_factor_rule_random():
    rng = np.random.default_rng(0)
    for _ in range(50):
        g = 12
        c = rng.uniform(0.5, 1.0, (1, g)) ** rng.uniform(0.1, 3)
        elig = rng.random((1, g)) < 0.7
        elig[0, 0] = True
        f = rng.uniform(0.3, 2.0)
        for compat in (False, True):
            k = int(factor.count(jnp.asarray(c, jnp.float32), jnp.asarray(elig), f, compat)[0])
            assert k == _numpy_factor(list(c[0][elig[0]].astype(np.float32)), f, compat)


def _numpy_eb(c, h, gamma):
    order = np.argsort(-c, kind="stable")
    hs = h[order]
    return sum(1 for k in range(1, len(hs) + 1) if hs[:k].sum() - hs[:k].max() <= gamma)


def test_eb_rule_random():
    rng = np.random.default_rng(1)
    for _ in range(50):
        g = 10
        c, h = rng.random((1, g)), rng.random((1, g)) * 0.2
        elig = rng.random((1, g)) < 0.8
        elig[0, 3] = True
        gamma = rng.uniform(0, 0.4)
        k = int(eb.count(jnp.asarray(c, jnp.float32), jnp.asarray(h, jnp.float32), jnp.asarray(elig), gamma)[0])
        assert k == _numpy_eb(c[0][elig[0]], h[0][elig[0]], gamma)


def test_top_k_mask_variable_k():
    score = jnp.array([[0.3, 0.9, 0.1, 0.9], [0.5, 0.4, 0.3, 0.2]])
    elig = jnp.array([[True, True, True, True], [False, True, True, True]])
    m = np.asarray(top_k_mask(score, elig, jnp.array([2, 5])))
    np.testing.assert_array_equal(m, [[False, True, False, True], [False, True, True, True]])


def test_llada_steps_split():
    # LLaDA get_num_transfer_tokens: 10 masked over 4 steps -> 3, 3, 2, 2
    got = [int(schedule.llada_steps(jnp.array([10]), jnp.array(i), 4)[0]) for i in range(4)]
    assert got == [3, 3, 2, 2]


def test_dream_reveal_schedule():
    ts = np.linspace(1, 1e-3, 5)
    for i in range(4):
        want = 1.0 if i == 3 else 1 - ts[i + 1] / ts[i]
        assert abs(float(schedule.dream_reveal(jnp.array(i), 4)) - want) < 1e-6


def test_proposal_rules():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    # nucleus keeps 0.5 and 0.3 (the token crossing 0.7 is kept); renormalised max prob = 0.625
    np.testing.assert_array_equal(np.asarray(top_p_filter(logits, 0.7)) > -1e30,
                                  [[True, True, False, False]])
    pr = propose(logits, jax.random.key(0), mask_id=0, top_p=0.7)
    assert int(pr.token[0]) == 1  # the mask id 0 is never proposed
    pr = propose(logits, jax.random.key(0), mask_id=3, alg="topk_margin")
    assert abs(float(pr.conf[0]) - (0.5 - 0.3) / 0.95) < 1e-6
    pr = propose(logits, jax.random.key(0), mask_id=3, alg="entropy")
    q = np.array([0.5, 0.3, 0.15]) / 0.95
    assert abs(float(pr.conf[0]) - float((q * np.log(q + 1e-10)).sum())) < 1e-5
