"""The cache interface: a method is three pure functions over its own pytree, carried in GenState."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from d2cache_jax.config import ModelConfig


class ForwardOut(NamedTuple):
    """What a cache's forward gives the decoder: last-layer hidden states of rows that predict gen
    positions (the step runs the head on those still masked, `generation.decodable`)."""

    hidden: jax.Array  # [B, R, d] before the final norm
    gen_idx: jax.Array  # [B, R] int32: the gen position each row predicts (G = unused slot)
    cache: Any
    rows: jax.Array  # () float32: share of the T rows that went through the layers (padded slots included)
    overflow: jax.Array  # () int32: rows wanted beyond the capacity this step
    selected: jax.Array | None = None  # () float32: share of the T rows the method asked for (None: = rows)
    hidden_uncond: jax.Array | None = None  # [B, R, d]: classifier-free guidance's unconditional pass


class StepInfo(NamedTuple):
    """What a cache may use after the decoder committed tokens."""

    transfer: jax.Array  # [B, G] bool: committed this step
    conf: jax.Array  # [B, G] float32: confidence of this step's proposals (-inf where not computed)
    valid: jax.Array  # [B, G] bool: gen positions whose logits were computed this step
    block_mask: jax.Array  # [B, G] bool: the current block (as the loop saw it this step)
    eligible: jax.Array  # [B, G] bool: what the decoder could choose from
    active: jax.Array  # [B] bool: rows that had something to commit this step (`active_rows`)


@dataclasses.dataclass(frozen=True)
class CacheMethod:
    """init(cfg, opts, batch, total_len) -> cache; forward(cfg, opts, params, state) -> ForwardOut;
    after_step(cfg, opts, state_after, info) -> cache.

    A method whose full-pass step and partial steps produce different row counts may give
    `is_first(state) -> () bool` and accept `forward(..., phase="first"|"later")`: the step then
    branches with `lax.cond`, so the partial steps do not pay for the full pass's logit rows."""

    init: Callable[..., Any]
    forward: Callable[..., ForwardOut]
    after_step: Callable[..., Any] = lambda cfg, opts, state, info: state.cache
    is_first: Callable[..., Any] | None = None


def before_first_stop(cfg: ModelConfig, gen: jax.Array) -> jax.Array:
    """[B, G] bool: positions strictly before the first committed stop token (all True if none)."""
    is_stop = jnp.isin(gen, jnp.asarray(cfg.stop_token_ids))
    first = jnp.where(is_stop.any(-1), jnp.argmax(is_stop, -1), gen.shape[-1])
    return jnp.arange(gen.shape[-1]) < first[:, None]


def active_rows(cfg: ModelConfig, opts, tokens: jax.Array, block: jax.Array, done: jax.Array) -> jax.Array:
    """[B] bool: rows that can commit something in `block` (a masked position there, before the first
    stop token when stopping at EOS). Upstream feeds only these rows to the model."""
    g = opts.gen_length
    gen = tokens[:, -g:]
    todo = (gen == cfg.mask_token_id) & ((jnp.arange(g) // opts.block) == block)
    if opts.stop_at_eos:
        todo &= before_first_stop(cfg, gen)
    return todo.any(-1) & ~done


def gen_rows(cfg: ModelConfig, prompt_len: int, gen_length: int) -> jax.Array:
    """Sequence rows whose hidden states predict the gen positions (Dream reads row j-1 for j)."""
    return jnp.arange(gen_length) + prompt_len - (1 if cfg.shift_logits else 0)


def block_hidden(cfg: ModelConfig, opts, hidden: jax.Array, block: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The rows that predict the current block's gen positions, the only ones a decoder may commit
    (hidden [B, T, d] -> [B, bl, d], gen_idx [B, bl])."""
    bl, g = opts.block, opts.gen_length
    p = hidden.shape[1] - g
    start = jnp.minimum(block, opts.num_blocks - 1) * bl
    rows = jax.lax.dynamic_slice_in_dim(hidden, p - (1 if cfg.shift_logits else 0) + start, bl, axis=1)
    gen_idx = jnp.broadcast_to(start + jnp.arange(bl, dtype=jnp.int32), (hidden.shape[0], bl))
    return rows, gen_idx


def rows_to_gen(cfg: ModelConfig, rows: jax.Array, prompt_len: int, gen_length: int) -> jax.Array:
    """Gen position predicted by each sequence row (gen_length where it predicts none)."""
    g = rows - prompt_len + (1 if cfg.shift_logits else 0)
    return jnp.where((g >= 0) & (g < gen_length) & (rows < prompt_len + gen_length), g, gen_length)


def empty_kv(cfg: ModelConfig, batch: int, total_len: int, dtype):
    """Zero K/V for every layer, stacked: LayerKV of [L, B, T, Hkv, hd]."""
    from d2cache_jax.model import LayerKV

    shape = (cfg.n_layers, batch, total_len, cfg.n_kv_heads, cfg.head_dim)
    return LayerKV(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
