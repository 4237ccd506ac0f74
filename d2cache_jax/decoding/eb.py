"""Entropy-bounded sampler: the largest confidence-sorted prefix U with sum(H) - max(H) <= gamma.

The running max is along the sequence; under `upstream_compat` it is over the batch axis, as upstream
takes it (ALGORITHMS.md 5 #4: with one row the rule becomes "entropy sum of the first k-1 <= gamma").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from d2cache_jax.decoding.base import DecodeInputs
from d2cache_jax.decoding.select import ranks, top_k_mask


def count(score: jax.Array, entropy: jax.Array, eligible: jax.Array, gamma: float,
          upstream_compat: bool = False) -> jax.Array:
    r = ranks(score, eligible)
    h = jnp.zeros_like(entropy).at[tuple(jnp.indices(r.shape)[:-1]) + (r,)].set(entropy)  # by rank
    n_valid = eligible.sum(-1)
    pos = jnp.arange(h.shape[-1])
    h = jnp.where(pos < n_valid[:, None], h, 0.0)
    running_max = jax.lax.cummax(h, axis=0 if upstream_compat else h.ndim - 1)
    ok = (jnp.cumsum(h, -1) - running_max <= gamma) & (pos < n_valid[:, None])
    return ok.sum(-1)


def select(inp: DecodeInputs, opts, rng: jax.Array) -> jax.Array:
    k = count(inp.score, inp.entropy, inp.eligible, opts.gamma, opts.upstream_compat)
    return top_k_mask(inp.score, inp.eligible, jnp.maximum(k, inp.budget))
