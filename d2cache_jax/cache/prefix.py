"""Fast-dLLM prefix and dual KV caches (ALGORITHMS.md 3.2).

The first step of every block is a full pass that refreshes the K/V of all T rows. The later steps
of the block recompute only the query rows, whose fresh K/V are written into the cache before they
attend over it; every other row stays frozen since the block's first step.

* dual: the query rows are the current block [s, e).
* prefix: the current block and everything after it, [s, G).

Dream reads gen position j from row j-1, so its query rows start one row earlier, at s-1. Upstream
shifts the whole set left by one, which leaves the block's last row (dual) or the canvas' last row
(prefix) stale for the whole block (ALGORITHMS.md 5 #20); here the set is widened by one row
instead, so those rows are recomputed too (capacity bl+1 resp. G+1). `upstream_compat` keeps
upstream's shifted set exactly: rows [P+s-1, P+e-1) (dual) or [P+s-1, T-1) (prefix).

Static shapes: one `lax.switch` picks the full pass or a partial pass of fixed capacity, so one
compiled step covers every step. Unused slots of a partial pass carry the index T (gather clamped,
scatter dropped). Dual has a single capacity; prefix, whose query set shrinks block by block, has
one branch per capacity of 1, 2, 4, ... blocks (+1 row for Dream), so no pass computes more than
twice the rows it needs. Hidden states come out for the block's positions only, the only eligible ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from d2cache_jax import model
from d2cache_jax.cache.base import CacheMethod, ForwardOut, empty_kv
from d2cache_jax.config import ModelConfig

if TYPE_CHECKING:
    from d2cache_jax.generation.options import GenOptions
    from d2cache_jax.generation.state import GenState


def extra_row(cfg: ModelConfig, opts: GenOptions) -> int:
    """1 where Dream's query set is widened by the row past its shifted end (not under compat)."""
    return 1 if cfg.shift_logits and not opts.upstream_compat else 0


def capacities(cfg: ModelConfig, opts: GenOptions) -> list[int]:
    """Static row counts of the partial passes, ascending."""
    shift = extra_row(cfg, opts)
    bl, nb = opts.block, opts.num_blocks
    if opts.cache == "dual":
        return [bl + shift]
    sizes, k = [], 1
    while k < nb:
        sizes.append(k)
        k *= 2
    return [n * bl + shift for n in sizes + [nb]]


def query_count(cfg: ModelConfig, opts: GenOptions, block: jax.Array) -> jax.Array:
    """Rows a partial pass recomputes in `block` (before padding to a capacity)."""
    shift = extra_row(cfg, opts)
    if opts.cache == "dual":
        return jnp.int32(opts.block + shift)
    return (opts.num_blocks - block) * opts.block + shift


def init(cfg: ModelConfig, opts: GenOptions, batch: int, total_len: int) -> model.LayerKV:
    return empty_kv(cfg, batch, total_len, model.dtype_of(cfg))


def forward(cfg: ModelConfig, opts: GenOptions, params: dict, state: GenState) -> ForwardOut:
    b, t = state.tokens.shape
    g, bl = opts.gen_length, opts.block
    p = t - g
    shift = 1 if cfg.shift_logits else 0
    block = jnp.minimum(state.block, opts.num_blocks - 1)
    r0 = p + block * bl - shift  # first row of the query set; rows r0 .. r0+bl-1 predict the block
    gen_idx = jnp.broadcast_to(block * bl + jnp.arange(bl, dtype=jnp.int32), (b, bl))

    def full(kv):
        out = model.forward_rows(cfg, params, state.tokens, state.positions, state.key_mask)
        hid = jax.lax.dynamic_slice_in_dim(out.hidden, r0, bl, axis=1)
        return hid, out.kv, jnp.float32(1.0), jnp.float32(1.0)

    def partial(cap):
        def run(kv):
            idx = r0 + jnp.arange(cap, dtype=jnp.int32)
            n = query_count(cfg, opts, block)
            idx = jnp.where((jnp.arange(cap) < n) & (idx < t), idx, t)
            q_idx = jnp.broadcast_to(idx, (b, cap))
            out = model.forward_rows(cfg, params, state.tokens, state.positions, state.key_mask,
                                     q_idx=q_idx, kv=kv)
            selected = jnp.minimum(n, t - r0).astype(jnp.float32) / t
            # All `cap` slots go through the layers, the padded ones (index T) included.
            return out.hidden[:, :bl], out.kv, jnp.float32(cap / t), selected
        return run

    # With one-position blocks every step starts a block: the partial passes are never taken.
    caps = capacities(cfg, opts) if bl > 1 else []
    branch = jnp.int32(0)
    if caps:
        fit = jnp.searchsorted(jnp.asarray(caps, jnp.int32), query_count(cfg, opts, block))
        branch = jnp.where(state.block_step == 0, 0, 1 + fit)
    hidden, kv, rows, selected = jax.lax.switch(branch, [full] + [partial(c) for c in caps], state.cache)
    return ForwardOut(hidden, gen_idx, kv, rows, jnp.int32(0), selected)


METHOD = CacheMethod(init=init, forward=forward)
