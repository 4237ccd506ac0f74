"""`first_argmax`, the chunked arg-max the greedy proposal uses, against NumPy's argmax: first index of
the maximum, NaN counted as the maximum, any vocabulary size (padded lanes never win)."""

import jax.numpy as jnp
import numpy as np
import pytest

from d2cache_jax.decoding.sampling import first_argmax


@pytest.mark.parametrize("vocab", [1, 9, 127, 128, 129, 1000, 126464])
def test_matches_numpy_argmax(vocab):
    rng = np.random.RandomState(vocab)
    x = rng.randn(3, 5, vocab).astype(np.float32)
    # Ties inside a lane, across lanes, and at the last column; an all -inf row; a small-integer row.
    x[0, 0, rng.randint(vocab, size=3)] = 9.0
    x[0, 1, -1] = 50.0
    x[1, 0] = -np.inf
    x[1, 1] = rng.randint(0, 3, vocab).astype(np.float32)
    if vocab > 2:
        x[2, 0, [vocab // 2, 1]] = np.nan  # NaN wins, the first one
        x[2, 1, vocab - 1] = np.nan
    np.testing.assert_array_equal(np.asarray(first_argmax(jnp.asarray(x))), np.argmax(x, axis=-1))


def test_bfloat16_rows():
    x = np.random.RandomState(0).randint(0, 4, (4, 300)).astype(np.float32)
    got = first_argmax(jnp.asarray(x, jnp.bfloat16))
    np.testing.assert_array_equal(np.asarray(got), np.argmax(x, axis=-1))
