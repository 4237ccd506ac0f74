"""Generation paths checked through `generate` against independent references.

Most tests replay a finished generation: for each step s the canvas at the start of that step is
rebuilt from `commit_step` (positions committed before s hold their final token, the others the mask
id), one exact no-cache forward (`model.forward`) gives its logits, and a NumPy statement of the
rule (factor, EB, Dream's timesteps, top-k sampling, CFG, ...) says what step s may commit.
"""

import functools

import jax
import numpy as np
import pytest

from d2cache_jax import config, params
from d2cache_jax.generation.generate import generate
from d2cache_jax.generation.state import pad_prompts
from d2cache_jax.model import forward

G = 16
PROMPTS = [[5, 17, 33, 2, 91, 40, 7], [40, 41], [60, 61, 62, 63, 64]]  # lengths 7, 2, 5: left padding


@functools.cache
def setup(family, scale=1.0, **cfg_kw):
    """Tiny model; `scale` multiplies the head so that confidences spread out (parallel decoders)."""
    cfg = config.tiny_llada(**cfg_kw) if family == "llada" else config.tiny_dream(**cfg_kw)
    p = params.init_params(cfg, jax.random.key(0 if family == "llada" else 1))
    return cfg, dict(p, lm_head=p["lm_head"] * scale)


@functools.cache
def run(family, scale, prompts, **kw):
    """`generate`, shared between tests (prompts as a tuple of tuples). Dream runs without its default
    top-p 0.9 unless a test asks for it: the NumPy statements here have no nucleus filter."""
    cfg, p = setup(family, scale)
    if family == "dream":
        kw.setdefault("top_p", None)
    return generate(cfg, p, [list(x) for x in prompts], gen_length=G, **kw)


def tup(prompts):
    return tuple(tuple(x) for x in prompts)


def np_softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def canvas(cfg, prompts, tokens, commit, s):
    """Padded prompt ids, key mask and the canvas at the start of step s."""
    ids, km = pad_prompts(cfg, prompts, G)
    gen = np.where((commit >= 0) & (commit < s), tokens, cfg.mask_token_id)
    return np.concatenate([ids, gen], 1), np.concatenate([km, np.ones_like(gen, bool)], 1)


def gen_logits(cfg, p, x, km, g=G):
    """Exact no-cache logits [B, g, V] (float64) predicting the gen positions; mask id excluded."""
    out = np.asarray(forward(cfg, p, x, km), np.float64)
    pl = x.shape[1] - g
    shift = 1 if cfg.shift_logits else 0
    lg = out[:, pl - shift:pl - shift + g].copy()
    lg[..., cfg.mask_token_id] = -np.inf
    return lg


def replay(cfg, p, prompts, res):
    """Per step: (logits [B,G,V], masked at step start [B,G], committed at this step [B,G])."""
    commit = res.commit_step
    for s in range(res.stats["steps"]):
        x, km = canvas(cfg, prompts, res.tokens, commit, s)
        yield gen_logits(cfg, p, x, km), x[:, -G:] == cfg.mask_token_id, commit == s


def argmax_ok(lg, res, now):
    """Tokens committed this step are the arg-max of this step's logits."""
    np.testing.assert_array_equal(res.tokens[now], lg.argmax(-1)[now])


def finished(cfg, res):
    """Every gen position was committed (leftover masks read as EOS in `tokens`, so check commit_step)."""
    assert (res.commit_step >= 0).all(), res.commit_step


# --- batch equals single, device loop equals host loop, for every cache -----------------------------

CACHE_KW = {
    "none": dict(cache="none", block_length=8),
    "prefix": dict(cache="prefix", block_length=16),
    "dual": dict(cache="dual", block_length=8, decoder="threshold", threshold=0.5),
    "dllm": dict(cache="dllm", kp=3, kr=2),
    "d2cache": dict(cache="d2cache"),
}
SCALE = 12.0  # confident head: the threshold decoder commits several tokens per step


def cache_run(name, prompts, **extra):
    return run("llada", SCALE, tup(prompts), **CACHE_KW[name], **extra)


@pytest.mark.parametrize("name", list(CACHE_KW))
def test_batch_equals_single_every_cache(name):
    batch = cache_run(name, PROMPTS)
    finished(None, batch)
    for i, pr in enumerate(PROMPTS):
        alone = cache_run(name, [pr])
        np.testing.assert_array_equal(batch.tokens[i], alone.tokens[0], err_msg=f"{name} row {i}")
    if name == "dual":  # the threshold really committed several tokens per step
        assert batch.stats["steps"] < G


@pytest.mark.parametrize("name", ["dual", "d2cache"])
def test_device_loop_equals_host_loop(name):
    dev = cache_run(name, PROMPTS)
    host = cache_run(name, PROMPTS, loop="host")
    np.testing.assert_array_equal(host.tokens, dev.tokens)
    np.testing.assert_array_equal(host.commit_step, dev.commit_step)
    assert host.stats["steps"] == dev.stats["steps"]


# --- parallel decoders and schedules on LLaDA (cache none), replayed step by step --------------------

def np_factor(conf, f):
    """Fast-dLLM factor rule (ALGORITHMS.md 2.3, intended: N when nothing violates)."""
    s = np.sort(conf)[::-1]
    for n in range(1, len(s) + 1):
        if (n + 1) * (1 - s[n - 1]) >= f:
            return n - 1
    return len(s)


def np_eb(conf, ent, gamma):
    """EB sampler (2.5): largest confidence-sorted prefix with sum(H) - max(H) <= gamma."""
    h = ent[np.argsort(-conf, kind="stable")]
    return max(k for k in range(len(h) + 1) if k == 0 or h[:k].sum() - h[:k].max() <= gamma)


def confidences(lg):
    prob = np_softmax(lg)
    p_max = prob.max(-1)
    ent = -np.where(prob > 0, prob * np.log(np.where(prob > 0, prob, 1)), 0).sum(-1)
    return p_max, ent


@pytest.mark.parametrize("decoder,kw", [("factor", dict(factor=1.0)), ("eb", dict(gamma=0.3))])
def test_parallel_decoder_counts(decoder, kw):
    """Per step, per row: committed count = max(rule(confidences of the masked positions), 1) (the
    LLaDA budget with steps = gen_length), the committed positions are the most confident ones and
    their tokens the arg-max."""
    cfg, p = setup("llada", SCALE)
    res = run("llada", SCALE, tup(PROMPTS), decoder=decoder, **kw)
    finished(cfg, res)
    counts = []
    for lg, masked, now in replay(cfg, p, PROMPTS, res):
        argmax_ok(lg, res, now)
        conf, ent = confidences(lg)
        for b in range(len(PROMPTS)):
            c, h = conf[b][masked[b]], ent[b][masked[b]]
            if not len(c):
                assert not now[b].any()
                continue
            k = np_factor(c, kw["factor"]) if decoder == "factor" else np_eb(c, h, kw["gamma"])
            k = min(max(k, 1), len(c))
            assert now[b].sum() == k
            assert conf[b][now[b]].min() >= np.where(masked[b] & ~now[b], conf[b], -np.inf).max()
            counts.append(k)
    assert max(counts) > 1  # the rule really committed several tokens at once


def test_num_transfer_tokens_schedule():
    """upstream HEAD's schedule: min(num_transfer_tokens, masked left in the block) per step, the most
    confident ones."""
    cfg, p = setup("llada")
    res = run("llada", 1.0, tup(PROMPTS), num_transfer_tokens=3, block_length=8)
    finished(cfg, res)
    blocks = np.arange(G) // 8
    for lg, masked, now in replay(cfg, p, PROMPTS, res):
        argmax_ok(lg, res, now)
        conf = np_softmax(lg).max(-1)
        block = min(blocks[masked.any(0)])  # the lowest block any row still has masked
        for b in range(len(PROMPTS)):
            left = masked[b] & (blocks == block)
            assert now[b].sum() == min(3, left.sum()) and not (now[b] & ~left).any()
            if now[b].any() and (left & ~now[b]).any():
                assert conf[b][now[b]].min() >= conf[b][left & ~now[b]].max()
    assert res.stats["steps"] == 2 * 3  # ceil(8/3) steps per block


def test_random_remasking():
    """remasking=random: one position per step, its token the arg-max, chosen at random (not the
    low-confidence order)."""
    cfg, p = setup("llada")
    res = run("llada", 1.0, tup(PROMPTS), remasking="random", seed=5)
    finished(cfg, res)
    differs = 0
    for lg, masked, now in replay(cfg, p, PROMPTS, res):
        argmax_ok(lg, res, now)
        assert (now.sum(-1) == 1).all()
        conf = np.where(masked, np_softmax(lg).max(-1), -np.inf)
        differs += int((now.argmax(-1) != conf.argmax(-1)).sum())
    assert differs > G  # the low-confidence rule would give 0


@pytest.mark.parametrize("sampling", ["categorical", "gumbel"])
def test_temperature_top_k_sampling(sampling):
    """temperature 1, top_k 3: every committed token is within the top 3 of its step's logits, and
    sampling really happens (not always the arg-max; counted over two seeds, as one seed commits only
    about a dozen tokens and the low-confidence rule prefers rows that drew their top-1)."""
    cfg, p = setup("llada")
    not_top1 = 0
    for seed in (1, 2):
        res = run("llada", 1.0, tup(PROMPTS), temperature=1.0, top_k=3, sampling=sampling, seed=seed)
        finished(cfg, res)
        for lg, _, now in replay(cfg, p, PROMPTS, res):
            assert (now.sum(-1) == 1).all()
            top3 = np.argsort(-lg, -1)[..., :3]
            tok = res.tokens[now]
            assert (top3[now] == tok[:, None]).any(-1).all()
            not_top1 += int((top3[now][:, 0] != tok).sum())
    assert not_top1 >= 5


def test_classifier_free_guidance():
    """cfg_scale s: each step's choice follows logits un + (s+1)(cond - un), un the canvas with every
    prompt token masked; the guided choice differs from the unguided one somewhere."""
    cfg, p = setup("llada")
    s_cfg = 2.0
    res = run("llada", 1.0, tup(PROMPTS), cfg_scale=s_cfg)
    finished(cfg, res)
    assert res.stats["forward_passes"] == 2 * res.stats["steps"]
    differs = 0
    for s in range(res.stats["steps"]):
        x, km = canvas(cfg, PROMPTS, res.tokens, res.commit_step, s)
        pl = x.shape[1] - G
        xu = x.copy()
        xu[:, :pl] = np.where(km[:, :pl], cfg.mask_token_id, x[:, :pl])
        cond, un = gen_logits(cfg, p, x, km), gen_logits(cfg, p, xu, km)
        with np.errstate(invalid="ignore"):
            lg = un + (s_cfg + 1) * (cond - un)
        lg[..., cfg.mask_token_id] = -np.inf
        masked, now = x[:, pl:] == cfg.mask_token_id, res.commit_step == s
        conf = np.where(masked, np_softmax(lg).max(-1), -np.inf)
        np.testing.assert_array_equal(now, conf == conf.max(-1, keepdims=True))
        argmax_ok(lg, res, now)
        plain = np.where(masked, np_softmax(cond).max(-1), -np.inf)
        differs += int((plain.argmax(-1) != conf.argmax(-1)).sum() + (cond.argmax(-1)[now] != res.tokens[now]).sum())
    assert differs > 0


# --- Dream's own sampler (ALGORITHMS.md 1.8) ---------------------------------------------------------

DREAM_STEPS = 8


def dream_n(m, i, steps, eps=1e-3):
    """Dream `_sample`: n = int(num_masked * (1 - s/t)), t = ts[i], s = ts[i+1]; all on the last step."""
    ts = np.linspace(1, eps, steps + 1)
    return m if i == steps - 1 else int(m * (1 - ts[i + 1] / ts[i]))


def dream_conf(lg, alg):
    prob = np_softmax(lg)
    if alg == "maskgit_plus":
        return prob.max(-1)
    if alg == "topk_margin":
        top2 = np.sort(prob, -1)[..., ::-1][..., :2]
        return top2[..., 0] - top2[..., 1]
    return (prob * np.log(prob + 1e-10)).sum(-1)  # entropy: negative entropy


def np_dream_sample(cfg, p, prompts, alg, steps):
    """Dream's confidence samplers at temperature 0 and alg_temp 0, stated in NumPy (logits shifted)."""
    ids, km = pad_prompts(cfg, prompts, G)
    pl = ids.shape[1]
    x = np.concatenate([ids, np.full((len(prompts), G), cfg.mask_token_id)], 1)
    km = np.concatenate([km, np.ones((len(prompts), G), bool)], 1)
    commit = np.full((len(prompts), G), -1)
    for i in range(steps):
        lg = gen_logits(cfg, p, x, km)
        x0, conf = lg.argmax(-1), dream_conf(lg, alg)
        for b in range(len(prompts)):
            masked = x[b, pl:] == cfg.mask_token_id
            n = dream_n(masked.sum(), i, steps)
            idx = np.argsort(-np.where(masked, conf[b], -np.inf), kind="stable")[:n]
            x[b, pl + idx] = x0[b, idx]
            commit[b, idx] = i
    return x[:, pl:], commit


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
def test_dream_decoder_matches_numpy_sampler(alg):
    cfg, p = setup("dream")
    want, want_commit = np_dream_sample(cfg, p, PROMPTS[:2], alg, DREAM_STEPS)
    res = run("dream", 1.0, tup(PROMPTS[:2]), decoder="dream", alg=alg, steps=DREAM_STEPS)
    np.testing.assert_array_equal(res.commit_step, want_commit)
    np.testing.assert_array_equal(res.tokens, want)
    assert res.stats["steps"] == DREAM_STEPS


def test_dream_decoder_alg_temp():
    """alg_temp > 0: per step exactly Dream's n positions, tokens the arg-max, positions drawn at random
    (not always the top-n by confidence)."""
    cfg, p = setup("dream")
    res = run("dream", 1.0, tup(PROMPTS), decoder="dream", alg="entropy", alg_temp=0.5, steps=DREAM_STEPS)
    finished(cfg, res)
    not_top = 0
    for i, (lg, masked, now) in enumerate(replay(cfg, p, PROMPTS, res)):
        argmax_ok(lg, res, now)
        conf = np.where(masked, dream_conf(lg, "entropy"), -np.inf)
        for b in range(len(PROMPTS)):
            n = dream_n(masked[b].sum(), i, DREAM_STEPS)
            assert now[b].sum() == n and not (now[b] & ~masked[b]).any()
            not_top += int(now[b].sum() and conf[b][now[b]].min() < np.sort(conf[b])[::-1][n - 1])
    assert res.stats["steps"] == DREAM_STEPS and not_top > 0


def test_dream_origin_reveal_probability():
    """origin: every masked position is revealed with probability 1 - s/t at each step (all on the last),
    with the arg-max token. Counts over 8 rows x 16 positions against the binomial means (|z| < 4)."""
    cfg, p = setup("dream")
    steps = 4
    prompts = [PROMPTS[0]] * 8
    res = run("dream", 1.0, tup(prompts), decoder="origin", steps=steps, seed=2)
    finished(cfg, res)
    assert res.stats["steps"] == steps
    ts = np.linspace(1, 1e-3, steps + 1)
    dev, var = 0.0, 0.0
    for i, (lg, masked, now) in enumerate(replay(cfg, p, prompts, res)):
        argmax_ok(lg, res, now)
        assert not (now & ~masked).any()
        m = masked.sum()
        if i == steps - 1:
            assert now.sum() == m
        else:
            q = 1 - ts[i + 1] / ts[i]
            dev += now.sum() - m * q
            var += m * q * (1 - q)
    assert abs(dev) / np.sqrt(var) < 4


def test_dream_d2cache_defaults():
    """Dream with d2Cache at default settings finishes (one token per step, 128 steps), and its first
    step (a full pass) commits what the no-cache rule gives: arg-max of conf x certainty density (sigma 10)."""
    cfg, p = setup("dream")
    res = generate(cfg, p, PROMPTS[:2], cache="d2cache")
    g = res.tokens.shape[1]
    assert g == 128
    finished(cfg, res)
    assert res.stats["steps"] == g
    np.testing.assert_array_equal(np.sort(res.commit_step, -1), np.broadcast_to(np.arange(g), (2, g)))
    ids, km = pad_prompts(cfg, PROMPTS[:2], g)
    x = np.concatenate([ids, np.full((2, g), cfg.mask_token_id)], 1)
    lg = gen_logits(cfg, p, x, np.concatenate([km, np.ones((2, g), bool)], 1), g)
    sigma, i = 10.0, np.arange(g)
    z = np.exp(-np.arange(-3 * g, 3 * g) ** 2 / (2 * sigma**2)).sum()
    density = np.exp(-(i[:, None] - np.arange(-g, 0)[None]) ** 2 / (2 * sigma**2)).sum(-1) / z  # prompt side only
    # Dream's default top-p 0.9: the confidence is the top probability renormalised over the nucleus
    # (sorted prefix up to and including the token whose cumulative mass first exceeds 0.9).
    prob = np.sort(np_softmax(lg), -1)[..., ::-1]
    cum = np.cumsum(prob, -1)
    kept = np.concatenate([np.ones_like(cum[..., :1], bool), cum[..., :-1] <= 0.9], -1)
    conf = prob[..., 0] / (prob * kept).sum(-1)
    first = (conf * density).argmax(-1)
    np.testing.assert_array_equal(res.commit_step.argmin(-1), first)
    np.testing.assert_array_equal(res.tokens[np.arange(2), first], lg.argmax(-1)[np.arange(2), first])


# --- stop_at_eos with every cache --------------------------------------------------------------------

EOS = 75  # a token the tiny LLaDA (key 0) writes mid-sequence after the prompt 60..64
STOP_KW = {"none": dict(block_length=8), "prefix": dict(block_length=8), "dual": dict(block_length=8),
           "dllm": dict(kp=3, kr=2), "d2cache": dict()}


@pytest.mark.parametrize("name", list(STOP_KW))
def test_stop_at_eos_every_cache(name):
    """Nothing is committed after the first EOS committed at an earlier step, every position before the
    final first EOS is committed, and the stop really skipped positions."""
    cfg, p = setup("llada", eos_token_id=EOS)
    prompts = [PROMPTS[2], PROMPTS[1]]
    res = generate(cfg, p, prompts, gen_length=G, stop_at_eos=True, cache=name, **STOP_KW[name])
    c, tok = res.commit_step, res.tokens
    for b in range(len(prompts)):
        for s in range(res.stats["steps"]):
            before = (c[b] >= 0) & (c[b] < s) & (tok[b] == EOS)
            if before.any():
                assert not ((c[b] == s) & (np.arange(G) > before.argmax())).any(), (b, s, c[b], tok[b])
        eos = (c[b] >= 0) & (tok[b] == EOS)
        end = eos.argmax() if eos.any() else G
        assert (c[b][:end] >= 0).all(), (b, c[b], tok[b])
    assert (c < 0).any(), (c, tok)  # the stop left positions undecoded
