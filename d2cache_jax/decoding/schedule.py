"""Per-step token budgets: LLaDA's `steps` split, upstream HEAD's `num_transfer_tokens`, Dream's timesteps."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def llada_steps(n_block_start: jax.Array, block_step: jax.Array, steps_per_block: int) -> jax.Array:
    """Step i of a block commits n//spb tokens, plus one for the first n % spb steps (LLaDA)."""
    base, rem = n_block_start // steps_per_block, n_block_start % steps_per_block
    return base + (block_step < rem).astype(jnp.int32)


def dream_reveal(block_step: jax.Array, steps_per_block: int, eps: float = 1e-3) -> jax.Array:
    """1 - s/t for Dream's timesteps linspace(1, eps, steps+1); 1 on the last step."""
    ts = jnp.linspace(1.0, eps, steps_per_block + 1)
    i = jnp.minimum(block_step, steps_per_block - 1)
    p = 1.0 - ts[i + 1] / ts[i]
    return jnp.where(block_step >= steps_per_block - 1, 1.0, p)


def budget(opts, n_masked_block: jax.Array, n_block_start: jax.Array, block_step: jax.Array):
    """Tokens to commit per row this step, and Dream's reveal probability (for `origin`)."""
    spb = opts.steps_per_block
    ones = jnp.ones_like(n_masked_block, jnp.float32)
    if opts.schedule == "num_transfer_tokens":
        return jnp.full_like(n_masked_block, opts.num_transfer_tokens), ones
    if opts.schedule == "dream":
        p = dream_reveal(block_step, spb)
        k = jnp.floor(n_masked_block * p).astype(jnp.int32)
        return jnp.where(p >= 1.0, n_masked_block, k), ones * p
    k = llada_steps(n_block_start, block_step, spb)
    return jnp.where(block_step >= spb - 1, jnp.maximum(k, n_masked_block), k), ones
