"""Attention rollout over a row subset (d2Cache stage 2, ALGORITHMS.md 3.4 step 4).

Per layer l, N_l = 1/2 (I + A_l) on the recomputed rows and the identity elsewhere (A_l: head-mean
attention probabilities, rows summing to 1). The rollout of one forward is R = N_{L-1} ... N_0 and
a position's importance is its column sum, imp_j = sum_i R[i, j].

Only the column sums are needed, so `rollout_importance` never forms R: it carries the row vector
v^T = 1^T N_{L-1} ... N_{l} from the last layer down, O(L Q T) work instead of O(L Q T^2).
`rollout_matrix` is the explicit update R[sel] <- 1/2 (R[sel] + A_sel R), kept for tests and reading.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def selected_mask(q_idx: jax.Array, total_len: int) -> jax.Array:
    """[B, Q] row indices (total_len = unused slot) -> [B, T] bool."""
    b = q_idx.shape[0]
    return jnp.zeros((b, total_len), bool).at[jnp.arange(b)[:, None], q_idx].set(True, mode="drop")


def rollout_importance(attn: jax.Array, q_idx: jax.Array, total_len: int) -> jax.Array:
    """Column sums of N_{L-1} ... N_0 for per-layer attention `attn` [L, B, Q, T] (or a list of
    [B, Q, T]) of rows q_idx [B, Q].

    v^T N = v - 1/2 v*sel + 1/2 sum_{i in sel} v_i A_i, applied from the last layer to the first (a
    reversed scan over the layer axis). Valid indices must be distinct; unused slots (index T)
    contribute nothing.
    """
    attn = jnp.stack(attn) if isinstance(attn, list | tuple) else attn
    b = q_idx.shape[0]
    valid = q_idx < total_len
    keep = jnp.where(selected_mask(q_idx, total_len), 0.5, 1.0)
    rows = jnp.minimum(q_idx, total_len - 1)

    def layer(v, a):
        vq = jnp.where(valid, jnp.take_along_axis(v, rows, axis=1), 0.0)
        return v * keep + 0.5 * jnp.einsum("bq,bqt->bt", vq, a.astype(F32), precision=jax.lax.Precision.HIGHEST), None

    v, _ = jax.lax.scan(layer, jnp.ones((b, total_len), F32), attn, reverse=True)
    return v


def rollout_matrix(attn: jax.Array, q_idx: jax.Array, total_len: int) -> jax.Array:
    """The explicit rollout R [B, T, T]: start from I, then R[sel] <- 1/2 (R[sel] + A_sel @ R) per layer."""
    b = q_idx.shape[0]
    bidx = jnp.arange(b)[:, None]
    r = jnp.broadcast_to(jnp.eye(total_len, dtype=F32), (b, total_len, total_len))
    for a in attn:
        r_sel = jnp.take_along_axis(r, jnp.minimum(q_idx, total_len - 1)[..., None], axis=1)
        new = 0.5 * (r_sel + jnp.einsum("bqs,bst->bqt", a.astype(F32), r, precision=jax.lax.Precision.HIGHEST))
        r = r.at[bidx, q_idx].set(new, mode="drop")
    return r
