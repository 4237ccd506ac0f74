"""Low-confidence (or random) remasking: commit the `budget` best-scoring eligible positions."""

from __future__ import annotations

import jax

from d2cache_jax.decoding.base import DecodeInputs
from d2cache_jax.decoding.select import top_k_mask


def select(inp: DecodeInputs, opts, rng: jax.Array) -> jax.Array:
    return top_k_mask(inp.score, inp.eligible, inp.budget)
