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
def setup(family, scale=1.0):
    """Tiny model; `scale` multiplies the head so that confidences spread out (parallel decoders)."""
    cfg = config.tiny_llada() if family == "llada" else config.tiny_dream()
    p = params.init_params(cfg, jax.random.key(0 if family == "llada" else 1))
    return cfg, dict(p, lm_head=p["lm_head"] * scale)


@functools.cache
def run(family, scale, prompts, **kw):
    """`generate`, shared between tests (prompts as a tuple of tuples)."""
    cfg, p = setup(family, scale)
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


def gen_logits(cfg, p, x, km):
    """Exact no-cache logits [B, G, V] (float64) predicting the gen positions; mask id excluded."""
    out = np.asarray(forward(cfg, p, x, km), np.float64)
    pl = x.shape[1] - G
    shift = 1 if cfg.shift_logits else 0
    lg = out[:, pl - shift:pl - shift + G].copy()
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
    "prefix": dict(cache="prefix", block_length=8),
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
