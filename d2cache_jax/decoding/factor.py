"""Fast-dLLM factor-based parallel decoding (section 3.3): commit n*-1 tokens, n* the first n with
(n+1)(1 - c_(n)) >= factor over the sorted eligible scores; N when no n violates (upstream: N-1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from d2cache_jax.decoding.base import DecodeInputs
from d2cache_jax.decoding.select import sorted_valid, top_k_mask


def count(score: jax.Array, eligible: jax.Array, factor: float, upstream_compat: bool = False) -> jax.Array:
    """Number of tokens the factor rule commits per row (before the budget floor)."""
    s, n_valid = sorted_valid(score, eligible)
    n = jnp.arange(1, s.shape[-1] + 1)
    viol = ((n + 1) * (1.0 - s) >= factor) & (n <= n_valid[:, None])
    first = jnp.where(viol.any(-1), jnp.argmax(viol, axis=-1) + 1, n_valid + (0 if upstream_compat else 1))
    return jnp.maximum(first - 1, 0)


def select(inp: DecodeInputs, opts, rng: jax.Array) -> jax.Array:
    k = count(inp.score, inp.eligible, opts.factor, opts.upstream_compat)
    return top_k_mask(inp.score, inp.eligible, jnp.maximum(k, inp.budget))
