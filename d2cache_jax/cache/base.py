"""The cache interface: a method is three pure functions over its own pytree, carried in GenState."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from d2cache_jax.config import ModelConfig


class ForwardOut(NamedTuple):
    """What a cache's forward gives the decoder: logits for some gen positions."""

    logits: jax.Array  # [B, R, V] float32
    gen_idx: jax.Array  # [B, R] int32: the gen position each row predicts (G = unused slot)
    cache: Any
    rows: jax.Array  # () float32: share of the T rows that went through the layers (padded slots included)
    overflow: jax.Array  # () int32: rows wanted beyond the capacity this step
    selected: jax.Array | None = None  # () float32: share of the T rows the method asked for (None: = rows)


class StepInfo(NamedTuple):
    """What a cache may use after the decoder committed tokens."""

    transfer: jax.Array  # [B, G] bool: committed this step
    conf: jax.Array  # [B, G] float32: confidence of this step's proposals (-inf where not computed)
    valid: jax.Array  # [B, G] bool: gen positions whose logits were computed this step
    block_mask: jax.Array  # [B, G] bool: the current block (as the loop saw it this step)
    eligible: jax.Array  # [B, G] bool: what the decoder could choose from


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


def gen_rows(cfg: ModelConfig, prompt_len: int, gen_length: int) -> jax.Array:
    """Sequence rows whose hidden states predict the gen positions (Dream reads row j-1 for j)."""
    return jnp.arange(gen_length) + prompt_len - (1 if cfg.shift_logits else 0)


def rows_to_gen(cfg: ModelConfig, rows: jax.Array, prompt_len: int, gen_length: int) -> jax.Array:
    """Gen position predicted by each sequence row (gen_length where it predicts none)."""
    g = rows - prompt_len + (1 if cfg.shift_logits else 0)
    return jnp.where((g >= 0) & (g < gen_length) & (rows < prompt_len + gen_length), g, gen_length)


def empty_kv(cfg: ModelConfig, batch: int, total_len: int, dtype) -> list:
    from d2cache_jax.model import LayerKV

    shape = (batch, total_len, cfg.n_kv_heads, cfg.head_dim)
    return [LayerKV(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.n_layers)]
