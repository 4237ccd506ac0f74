"""The output head and the proposal on the rows that can still be decoded.

A cache's forward hands over last-layer hidden states for R rows. Only rows whose gen position is
still masked can be committed or refresh a cached confidence, so only they go through the output
head (at a real vocabulary the costliest matmul of a cached step) and the proposal (softmax and
arg-max over the vocabulary). Their count changes every step; a `lax.switch` over a few compiled
row counts (`head_buckets`) keeps shapes static and runs the smallest that holds the batch's
largest count. Rows keep their order; each row's result is the same whichever bucket ran. A bucket
costs compile time, so buckets are at least MIN_BUCKET_FLOPS of head work apart: a small vocabulary
gets one bucket (all rows), LLaDA's 4096 x 126464 head sixteen (every 8th count of 128 rows).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from d2cache_jax import model
from d2cache_jax.config import ModelConfig
from d2cache_jax.decoding.sampling import Proposal, propose

N_HEAD_BUCKETS = 16
MIN_BUCKET_FLOPS = 1e9  # about 5 ms of head on a 2-core CPU; less is not worth a compiled branch


def head_buckets(rows: int, min_step: int = 1) -> tuple[int, ...]:
    """Compiled head row counts for at most `rows` rows: up to N_HEAD_BUCKETS evenly spaced sizes at
    least `min_step` rows apart, the last = rows."""
    step = max(-(-rows // N_HEAD_BUCKETS), min_step)
    return tuple(sorted({min(rows, step * i) for i in range(1, -(-rows // step) + 1)}))


def model_buckets(cfg: ModelConfig, rows: int) -> tuple[int, ...]:
    """The head buckets of this model: sizes at least MIN_BUCKET_FLOPS of head work apart."""
    per_row = 2 * cfg.d_model * cfg.vocab_size
    return head_buckets(rows, max(int(-(-MIN_BUCKET_FLOPS // per_row)), 1))


def propose_rows(cfg: ModelConfig, opts, params: dict, hidden: jax.Array, need: jax.Array, rng: jax.Array,
                 propose_kw: dict, hidden_uncond: jax.Array | None = None) -> tuple[Proposal, jax.Array]:
    """Head and proposal for the rows `need` [B, R] of `hidden` [B, R, d].

    `hidden_uncond`: the unconditional pass of classifier-free guidance (logits un + (s+1)(cond - un)).
    Returns the proposal per row [B, R] (meaningless where not needed) and the head rows run per
    sequence (the bucket, padding included), as float32.
    """
    b, r, _ = hidden.shape
    sizes = model_buckets(cfg, min(r, opts.gen_length))  # rows predict distinct gen positions
    order = jnp.argsort(~need, axis=-1, stable=True)  # needed rows first, in row order
    bidx = jnp.arange(b)[:, None]

    def bucket(n: int):
        def run(_):
            slots = order[:, :n]
            pick = lambda h: jnp.take_along_axis(h, slots[..., None], axis=1)  # noqa: E731
            logits = model.head(params, cfg, pick(hidden))
            if hidden_uncond is not None:
                un = model.head(params, cfg, pick(hidden_uncond))
                logits = un + (opts.cfg_scale + 1.0) * (logits - un)
            if opts.upstream_compat and cfg.param_dtype == "bfloat16":
                logits = logits.astype(jnp.bfloat16).astype(jnp.float32)  # upstream's head returns bf16 logits
            prop = propose(logits, rng, **propose_kw)
            back = lambda x: jnp.zeros((b, r), x.dtype).at[bidx, slots].set(x)  # noqa: E731
            return Proposal(*(back(x) for x in prop)), jnp.float32(n)
        return run

    count = need.sum(-1).max()
    which = jnp.minimum(jnp.searchsorted(jnp.asarray(sizes), count), len(sizes) - 1)
    return jax.lax.switch(which, [bucket(n) for n in sizes], None)
