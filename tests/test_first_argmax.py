"""`greedy_pick`, the lane-wise arg-max and logsumexp of the greedy proposal, against NumPy (float64):
first index of the maximum, NaN counted as the maximum, the mask column excluded, any vocabulary size
(padded lanes never win); and `propose`'s greedy path against the same NumPy statements."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from d2cache_jax.decoding.sampling import first_argmax, greedy_pick, propose

NEG = np.finfo(np.float32).min


def rows(vocab: int) -> np.ndarray:
    rng = np.random.RandomState(vocab)
    x = (rng.randn(3, 5, vocab) * 3).astype(np.float32)
    # Ties inside a lane and across lanes, the max at the last column, an all -inf row, small integers.
    x[0, 0, rng.randint(vocab, size=3)] = 40.0
    x[0, 1, -1] = 50.0
    x[1, 0] = -np.inf
    x[1, 1] = rng.randint(0, 3, vocab).astype(np.float32)
    return x


def numpy_lse(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = np.max(x, -1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (np.log(np.sum(np.exp(x - m), -1, keepdims=True)) + m)[..., 0]


@pytest.mark.parametrize("vocab", [1, 9, 127, 128, 129, 1000, 126464])
def test_argmax_matches_numpy(vocab):
    x = rows(vocab)
    if vocab > 2:
        x[2, 0, [vocab // 2, 1]] = np.nan  # NaN wins, the first one
        x[2, 1, vocab - 1] = np.nan
    np.testing.assert_array_equal(np.asarray(first_argmax(jnp.asarray(x))), np.argmax(x, axis=-1))


@pytest.mark.parametrize("vocab,exclude", [(9, 4), (129, 128), (1000, 0), (1000, 640), (126464, 126336)])
def test_excluded_column_and_logsumexp(vocab, exclude):
    x = rows(vocab)
    x[0, 2, exclude] = 99.0  # the excluded column holds the largest logit: never picked, not in the sum
    x[2, 0, exclude] = 1e30  # exp would overflow
    ref = x.copy()
    ref[..., exclude] = NEG
    g = greedy_pick(jnp.asarray(x), exclude)
    tok = np.argmax(ref, axis=-1)
    np.testing.assert_array_equal(np.asarray(g.token), tok)
    np.testing.assert_array_equal(np.asarray(g.logit), np.take_along_axis(ref, tok[..., None], -1)[..., 0])
    want = numpy_lse(ref)
    finite = np.isfinite(want)
    np.testing.assert_allclose(np.asarray(g.lse)[finite], want[finite], rtol=1e-6, atol=1e-6)


def test_bfloat16_rows():
    x = np.random.RandomState(0).randint(0, 4, (4, 300)).astype(np.float32)
    got = first_argmax(jnp.asarray(x, jnp.bfloat16))
    np.testing.assert_array_equal(np.asarray(got), np.argmax(x, axis=-1))


@pytest.mark.parametrize("exclude_mask", [True, False])
def test_greedy_proposal_matches_numpy_softmax(exclude_mask):
    mask = 300
    x = (np.random.RandomState(1).randn(6, 1000) * 4).astype(np.float32)
    x[0, mask] = 30.0
    pr = propose(jnp.asarray(x), jax.random.key(0), mask_id=mask, need_entropy=False, exclude_mask=exclude_mask)
    ref = x.astype(np.float64)
    if exclude_mask:
        ref[:, mask] = -np.inf
    tok = np.argmax(ref, -1)
    p = np.exp(ref - ref.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_array_equal(np.asarray(pr.token), tok)
    np.testing.assert_allclose(np.asarray(pr.conf), np.take_along_axis(p, tok[:, None], -1)[:, 0], rtol=1e-5)
