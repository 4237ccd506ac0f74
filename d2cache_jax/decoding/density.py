"""Certainty density (d2Cache, ALGORITHMS.md 3.4.1): a Gaussian smoothing of the decoded positions.

The prompt side counts as fully known; the right side counts as known only once the last
position is decoded. Upstream evaluates the same linear sum with an FFT; we use the direct sum
with upstream's single normalising constant Z, so values match it to fp32 rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _kernel(gen_length: int, sigma: float) -> np.ndarray:
    g = gen_length
    delta = np.arange(-3 * g, 3 * g, dtype=np.float64)
    z = np.exp(-(delta**2) / (2 * sigma**2)).sum()
    i = np.arange(g)[:, None]
    m = np.arange(3 * g)[None, :]
    return (np.exp(-((g + i - m) ** 2) / (2 * sigma**2)) / z).astype(np.float32)  # [G, 3G]


def certainty_density(decoded: jax.Array, sigma: float) -> jax.Array:
    """decoded [B, G] bool -> density [B, G] float32."""
    g = decoded.shape[-1]
    kern = jnp.asarray(_kernel(g, float(sigma)))
    d = decoded.astype(jnp.float32)
    right = jnp.broadcast_to(d[..., -1:], d.shape)
    s = jnp.concatenate([jnp.ones_like(d), d, right], axis=-1)  # [B, 3G]
    return jnp.einsum("bm,im->bi", s, kern, precision=jax.lax.Precision.HIGHEST)
