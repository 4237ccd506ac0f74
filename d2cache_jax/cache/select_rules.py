"""d2Cache's row-selection rules as small static-shape functions (ALGORITHMS.md 3.4, 3.4.2).

Gen-aligned arrays are [B, G] (gen position j = sequence row P + j); row-aligned ones are [B, T].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from d2cache_jax.decoding.density import certainty_density
from d2cache_jax.decoding.select import top_k_mask

F32 = jnp.float32


def search_window(remaining: jax.Array, block_mask: jax.Array, current_k: int) -> jax.Array:
    """Stage-1 window [B, G]: from the block's first position to the end of the block-size multiple
    that holds the first `current_k` still-masked positions (G-1 if there are fewer)."""
    g = remaining.shape[-1]
    bs = jnp.maximum(block_mask.sum(-1), 1)
    meets = jnp.cumsum(remaining.astype(jnp.int32), -1) >= current_k
    k_end = jnp.where(meets.any(-1), jnp.argmax(meets, -1), g - 1)
    w_end = (k_end // bs + 1) * bs - 1
    w_start = jnp.argmax(block_mask, -1)
    j = jnp.arange(g)
    return (j >= w_start[:, None]) & (j <= w_end[:, None])


def stage1_scores(conf_cache: jax.Array, remaining: jax.Array, block_mask: jax.Array, sigma: float,
                  batch_max: bool = False) -> jax.Array:
    """S = conf_cache * certainty_density(decoded, sigma), plus max(S) inside the block.

    The max is per row, or over the whole batch when `batch_max` (upstream, ALGORITHMS.md 5 #12).
    sigma <= 0 leaves the confidence unweighted.
    """
    s = conf_cache * certainty_density(~remaining, sigma) if sigma > 0 else conf_cache
    top = s.max() if batch_max else s.max(-1, keepdims=True)
    return s + jnp.where(block_mask, top, 0.0)


def stage1_select(scores: jax.Array, remaining: jax.Array, window: jax.Array, current_k: int) -> jax.Array:
    """The `current_k` best-scoring still-masked positions inside the window [B, G]."""
    return top_k_mask(scores, window & remaining, min(current_k, scores.shape[-1]))


def nucleus_select(importance: jax.Array, p: float, valid: jax.Array) -> jax.Array:
    """Valid entries whose sorted cumulative share of the valid mass is <= p, plus always the top one.

    p >= 1 keeps every valid entry (as exact arithmetic would; fp32 sums can exceed 1 by rounding).
    """
    s = jnp.where(valid, importance, 0.0).astype(F32)
    prob = s / (s.sum(-1, keepdims=True) + 1e-9)
    order = jnp.argsort(-prob, axis=-1, stable=True)
    cum = jnp.cumsum(jnp.take_along_axis(prob, order, axis=-1), axis=-1)
    keep_sorted = (cum <= p) | (jnp.arange(s.shape[-1]) == 0) | (p >= 1.0)
    b = jnp.arange(s.shape[0])[:, None]
    return jnp.zeros_like(valid).at[b, order].set(keep_sorted) & valid


def inflate(q: jax.Array, w: int) -> jax.Array:
    """Fill every unselected position whose nearest selected neighbours a < p < b have b - a <= w."""
    if w <= 0:
        return q
    t = q.shape[-1]
    idx = jnp.arange(t)
    prev = jax.lax.cummax(jnp.where(q, idx, -1), axis=q.ndim - 1)
    nxt = jax.lax.cummin(jnp.where(q, idx, t), axis=q.ndim - 1, reverse=True)
    return q | ((nxt - prev <= w) & (prev >= 0) & (nxt < t))


def gen_to_rows(x: jax.Array, prompt_len: int, shift: int, fill) -> jax.Array:
    """Gen-aligned [B, G] -> row-aligned [B, T]: gen j goes to row P + j - shift (Dream: shift 1)."""
    b, g = x.shape
    left = jnp.full((b, prompt_len - shift), fill, x.dtype)
    right = jnp.full((b, shift), fill, x.dtype)
    return jnp.concatenate([left, x, right], axis=1)


def top_up(want: jax.Array, scores: jax.Array, allowed: jax.Array, target: jax.Array) -> jax.Array:
    """Upstream's batch equalisation: rows with fewer than `target` selections get their best-scoring
    allowed unselected positions added [B, T]."""
    need = jnp.maximum(target - want.sum(-1), 0)
    return want | top_k_mask(scores, allowed & ~want, need)


def pack_rows(tier: jax.Array, within: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array]:
    """Rows with tier > 0, best first (higher tier, then higher `within`, then lower index), packed
    into `capacity` ascending slots [B, Q] (T = unused). Returns (q_idx, rows dropped per row [B])."""
    t = tier.shape[-1]
    idx = jnp.broadcast_to(jnp.arange(t), tier.shape)  # explicit last key: lax.sort is not stable
    order = jnp.lexsort((idx, -within, -tier), axis=-1)[:, :capacity]
    kept = jnp.take_along_axis(tier, order, axis=-1) > 0
    q_idx = jnp.sort(jnp.where(kept, order, t), axis=-1).astype(jnp.int32)
    dropped = jnp.maximum((tier > 0).sum(-1) - capacity, 0).astype(jnp.int32)
    return q_idx, dropped
