"""Fast-dLLM confidence-threshold parallel decoding: every eligible score >= tau, at least `budget`."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from d2cache_jax.decoding.base import DecodeInputs
from d2cache_jax.decoding.select import top_k_mask


def select(inp: DecodeInputs, opts, rng: jax.Array) -> jax.Array:
    tau = opts.threshold
    score = inp.score
    if inp.bf16:
        # Upstream compares bf16 confidences with the threshold cast to bf16 (0.9 -> 0.8984375); with
        # the certainty prior the scores are fp32 and so is the comparison.
        tau = float(jnp.asarray(tau, jnp.bfloat16))
    passed = inp.eligible & (score >= tau)
    enough = passed.sum(-1) >= inp.budget
    return jnp.where(enough[:, None], passed, top_k_mask(score, inp.eligible, inp.budget))
