"""Static-shape selection helpers shared by decoders and caches."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ranks(score: jax.Array, valid: jax.Array) -> jax.Array:
    """Rank of each entry by descending score among valid entries (0 = best; ties -> lower index).

    Invalid entries rank after every valid one.
    """
    iota = jnp.broadcast_to(jnp.arange(score.shape[-1]), score.shape)  # lax.sort is not stable: break ties
    order = jnp.lexsort((iota, -score, ~valid), axis=-1)
    idx = tuple(jnp.indices(order.shape)[:-1]) + (order,)
    return jnp.zeros_like(order).at[idx].set(jnp.broadcast_to(jnp.arange(order.shape[-1]), order.shape))


def top_k_mask(score: jax.Array, valid: jax.Array, k: jax.Array) -> jax.Array:
    """The k[b] best valid entries of each row (k may vary per row; capped by the valid count)."""
    return valid & (ranks(score, valid) < jnp.asarray(k)[..., None])


def sorted_valid(score: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Scores sorted descending with invalid entries last (as -inf), and the valid count per row."""
    s = jnp.sort(jnp.where(valid, score, -jnp.inf), axis=-1, descending=True)
    return s, valid.sum(-1)
