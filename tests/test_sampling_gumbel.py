"""LLaDA's Gumbel sampling (ALGORITHMS.md 1.8): token from the tempered Gumbel-max, confidence from the
untempered softmax, both checked against NumPy statements over the same uniform draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from d2cache_jax.decoding.sampling import propose

MASK = 7


def numpy_llada(logits: np.ndarray, u: np.ndarray, temperature: float):
    """LLaDA's generate.py in NumPy (float64): x0 = argmax(exp(l) / (-log u)^T), conf = softmax(l)[x0]."""
    lg = logits.astype(np.float64).copy()
    lg[..., MASK] = -np.inf  # adopted change: the mask id is never proposed
    x0 = np.argmax(np.exp(lg) / (-np.log(u)) ** temperature, axis=-1)
    e = np.exp(lg - lg.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    return x0, np.take_along_axis(p, x0[..., None], -1)[..., 0]


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_gumbel_confidence_is_untempered(temperature):
    rng = np.random.RandomState(0)
    logits = rng.randn(64, 16).astype(np.float32) * 2.0
    key = jax.random.key(3)
    pr = propose(jnp.asarray(logits), key, mask_id=MASK, temperature=temperature, gumbel=True)
    # The same uniform draws as the sampler (its token key is the first half of the split).
    k_tok = jax.random.split(key)[0]
    u = np.asarray(jax.random.uniform(k_tok, logits.shape, jnp.float32, minval=np.finfo(np.float32).tiny))
    x0, conf = numpy_llada(logits, u.astype(np.float64), temperature)
    np.testing.assert_array_equal(np.asarray(pr.token), x0)
    np.testing.assert_allclose(np.asarray(pr.conf), conf, rtol=1e-5)
    # The tempered softmax would give a different confidence (and so a different commit order).
    t = logits.astype(np.float64) / temperature
    t[:, MASK] = -np.inf
    pt = np.exp(t - t.max(-1, keepdims=True))
    pt = np.take_along_axis(pt / pt.sum(-1, keepdims=True), x0[:, None], -1)[:, 0]
    assert np.abs(pt - conf).max() > 1e-2
    # Entropy follows the same, untempered, distribution.
    lg = logits.astype(np.float64)
    lg[:, MASK] = -np.inf
    q = np.exp(lg - lg.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    ent = -np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0), -1)
    np.testing.assert_allclose(np.asarray(pr.entropy), ent, rtol=1e-4)


def test_gumbel_top_k_confidence_over_kept_tokens():
    """With top-k, the confidence is the untempered softmax renormalised over the k kept tokens."""
    rng = np.random.RandomState(1)
    logits = rng.randn(32, 16).astype(np.float32)
    pr = propose(jnp.asarray(logits), jax.random.key(5), mask_id=MASK, temperature=0.5, top_k=3, gumbel=True)
    lg = logits.astype(np.float64)
    lg[:, MASK] = -np.inf
    kth = np.sort(lg, -1)[:, -3][:, None]
    lg = np.where(lg >= kth, lg, -np.inf)
    p = np.exp(lg - lg.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    tok = np.asarray(pr.token)
    assert np.isfinite(np.take_along_axis(lg, tok[:, None], -1)).all()
    np.testing.assert_allclose(np.asarray(pr.conf), np.take_along_axis(p, tok[:, None], -1)[:, 0], rtol=1e-5)
