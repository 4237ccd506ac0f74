"""Fidelity rules of the generation core: upstream_compat numerics, d2Cache capacity at instruct sizes,
batch independence, family defaults and logits only where they can be used."""

import dataclasses
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from d2cache_jax import config, model, params
from d2cache_jax.cache import METHODS, d2cache
from d2cache_jax.decoding import threshold
from d2cache_jax.decoding.base import DecodeInputs
from d2cache_jax.decoding.sampling import propose
from d2cache_jax.generation.options import make_options
from d2cache_jax.generation.state import bucket_length
from d2cache_jax.generation.step import bf16_scores

gen_lib = importlib.import_module("d2cache_jax.generation.generate")


# --- upstream_compat numerics follow the model's dtype -------------------------------------------------

def test_compat_confidence_dtype_follows_the_model():
    """Upstream's softmax runs in the logits' dtype: bf16 confidences for a bf16 model, fp32 for fp32."""
    cfg = config.tiny_llada()
    compat, plain = make_options(upstream_compat=True), make_options()
    assert bf16_scores(dataclasses.replace(cfg, param_dtype="bfloat16"), compat)
    assert not bf16_scores(dataclasses.replace(cfg, param_dtype="float32"), compat)
    assert not bf16_scores(dataclasses.replace(cfg, param_dtype="bfloat16"), plain)
    assert bf16_scores(dataclasses.replace(cfg, param_dtype="float32"), make_options(bf16_confidence=True))


def test_threshold_cast_follows_the_score_dtype():
    """bf16 scores (no certainty prior) meet the threshold cast to bf16: 0.8984375 passes 0.9; fp32 scores
    (fp32 model, or CP-weighted) compare with 0.9 itself (ALGORITHMS.md 2.2)."""
    conf = jnp.asarray([[0.8984375, 0.5, 0.91]], jnp.float32)
    elig = jnp.ones((1, 3), bool)
    opts = make_options(decoder="threshold", threshold=0.9)

    def chosen(bf16):
        inp = DecodeInputs(conf, conf, jnp.zeros_like(conf), elig, jnp.asarray([1]), jnp.ones(1), bf16)
        return np.asarray(threshold.select(inp, opts, None))[0].tolist()

    assert chosen(True) == [True, False, True]
    assert chosen(False) == [False, False, True]


def test_compat_keeps_the_mask_id_in_the_softmax():
    """Under upstream_compat the mask id competes like any token (upstream has no guard): it can be the
    proposal and it takes its share of the probability mass; by default it is never proposed."""
    v, mask = 6, 4
    logits = np.array([[1.0, 0.5, -1.0, 0.2, 3.0, 0.0], [2.0, 0.5, -1.0, 0.2, 1.0, 0.0]], np.float32)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    kw = dict(mask_id=mask, need_entropy=False)
    compat = propose(jnp.asarray(logits), jax.random.key(0), exclude_mask=False, **kw)
    np.testing.assert_array_equal(compat.token, [4, 0])
    np.testing.assert_allclose(compat.conf, p.max(-1), rtol=1e-6)
    default = propose(jnp.asarray(logits), jax.random.key(0), **kw)
    q = np.delete(np.exp(logits - logits.max(-1, keepdims=True)), mask, axis=-1)
    np.testing.assert_array_equal(default.token, [0, 0])
    np.testing.assert_allclose(default.conf, q.max(-1) / q.sum(-1), rtol=1e-6)
    assert v == logits.shape[1]


# --- d2Cache capacity covers inflation ----------------------------------------------------------------

@pytest.mark.parametrize("family,prompt_len,gen_length",
                         [pytest.param("llada", 1024, 256, marks=pytest.mark.slow),
                          pytest.param("dream", 1000, 512, marks=pytest.mark.slow)])
def test_d2cache_defaults_never_overflow_at_instruct_sizes(family, prompt_len, gen_length):
    """Instruct settings (prompt up to 1024, gen 256/512, block 32) with d2Cache's defaults: no row the
    rules choose is ever dropped. Random weights attend almost uniformly, so stage 2's nucleus is wide
    and inflation fills many gaps: the worst case for the capacity. The capacity of the previous
    rule (stages 1-2 plus 2 inflate_w rows) overflows here, so the count can fail."""
    base = config.tiny_llada() if family == "llada" else config.tiny_dream()
    cfg = dataclasses.replace(base, max_seq_len=2048)
    p = params.init_params(cfg, jax.random.key(5))
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size - 8, prompt_len).tolist()
    # prompt_growth=1: the canvas is the prompt (a multiple of 16) plus gen_length, the shape the numbers state
    kw = dict(cache="d2cache", gen_length=gen_length, block_length=32, prompt_growth=1.0)
    out = gen_lib.generate(cfg, p, [prompt], **kw)
    assert out.stats["overflow_rows"] == 0
    assert (out.commit_step >= 0).all()
    opts = make_options(**kw)
    t = bucket_length(prompt_len, opts.prompt_bucket, opts.prompt_growth, cfg.max_seq_len - gen_length) + gen_length
    k, c = opts.current_k, 1
    old_capacity = k + c + int(opts.rollout_p * (t - k - c)) + 1 + 1 + 2 * opts.inflate_w
    assert d2cache.budgets(opts, t)[0] > old_capacity
    if family == "llada":  # the old capacity, set explicitly, drops rows on the same run
        before = gen_lib.generate(cfg, p, [prompt], capacity=old_capacity, **kw)
        assert before.stats["overflow_rows"] > 0


# --- batch rows are independent ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["none", "prefix", "dual", "d2cache"])
def test_semi_ar_batch_rows_are_independent(llada, name):
    """A row that finishes its block waits (idle) while a batch mate works: its tokens equal the run of
    its prompt alone (d2Cache's idle rows recompute nothing and keep their state). Not dLLM-Cache: its
    refresh schedule counts the batch's steps, as upstream's does, so idle steps shift it."""
    cfg, p = llada
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [20, 21, 22, 23]]
    kw = dict(cache=name, gen_length=16, block_length=8, decoder="threshold", threshold=0.05, sigma=0)
    both = gen_lib.generate(cfg, p, prompts, **kw)
    steps = []
    for i, prompt in enumerate(prompts):
        alone = gen_lib.generate(cfg, p, [prompt], **kw)
        np.testing.assert_array_equal(both.tokens[i], alone.tokens[0])
        steps.append(alone.stats["steps"])
    # The rows really idled: per block they needed different step counts alone.
    assert both.stats["steps"] > min(steps)


# --- defaults per model family -----------------------------------------------------------------------

def test_dream_generates_with_top_p_by_default(dream):
    """`generate` applies Dream's top_p 0.9 unless told otherwise (as upstream and the evaluation do)."""
    cfg, p = dream
    p = {**p, "lm_head": p["lm_head"] * 8.0}  # peaked distributions, so a 0.9 nucleus drops real mass
    prompt = [[3, 9, 27, 81, 50, 7, 11, 13]]
    run = lambda **kw: gen_lib.generate(cfg, p, prompt, gen_length=16, **kw)  # noqa: E731
    default, nucleus, off = run(), run(top_p=0.9), run(top_p=None)
    np.testing.assert_array_equal(default.commit_step, nucleus.commit_step)
    assert (nucleus.commit_step != off.commit_step).any(), "top_p must matter on this model for the test"


# --- logits only where they can be used --------------------------------------------------------------

@pytest.mark.parametrize("name", ["none", "dllm"])
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_logits_for_the_current_block_only(llada, dream, name, family):
    """With semi-AR blocks the head runs on the current block's rows only; they equal the full pass's
    logits of those positions (Dream: read from the previous row)."""
    cfg, p = llada if family == "llada" else dream
    opts = make_options(cache=name, gen_length=16, block_length=4)
    state = gen_lib.prepare(cfg, [[5, 6, 7, 8, 9]], opts).replace(block=jnp.int32(2))
    out = jax.jit(lambda s: METHODS[name].forward(cfg, opts, p, s))(state)
    assert out.hidden.shape[1] == 4
    np.testing.assert_array_equal(out.gen_idx[0], [8, 9, 10, 11])
    full = np.asarray(model.forward(cfg, p, state.tokens, state.key_mask))
    t = state.tokens.shape[1]
    rows = t - 16 + np.arange(8, 12) - (1 if cfg.shift_logits else 0)
    logits = np.asarray(model.head(p, cfg, out.hidden))
    np.testing.assert_allclose(logits[0], full[0, rows], rtol=2e-5, atol=2e-5)
