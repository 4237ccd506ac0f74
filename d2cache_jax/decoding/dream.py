"""Dream's own samplers: confidence top-n with n from its timestep schedule (maskgit_plus,
topk_margin, entropy), positions drawn from softmax(conf / alg_temp) when alg_temp > 0, and
`origin`, which reveals each masked position with probability 1 - s/t."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from d2cache_jax.decoding.base import DecodeInputs
from d2cache_jax.decoding.select import top_k_mask


def select(inp: DecodeInputs, opts, rng: jax.Array) -> jax.Array:
    score = inp.score
    if opts.alg_temp and opts.alg_temp > 0:
        # Gumbel-top-n = drawing n positions without replacement from softmax(score / alg_temp).
        g = jax.random.gumbel(rng, score.shape, jnp.float32)
        score = score / opts.alg_temp + g
    return top_k_mask(score, inp.eligible, inp.budget)


def select_origin(inp: DecodeInputs, opts, rng: jax.Array) -> jax.Array:
    u = jax.random.uniform(rng, inp.score.shape)
    last = inp.reveal_p >= 1.0
    return inp.eligible & ((u < inp.reveal_p[:, None]) | last[:, None])
