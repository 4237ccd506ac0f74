"""The generation state: one pytree carried from step to step (static shapes throughout)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from d2cache_jax.config import ModelConfig
from d2cache_jax.model import positions_from_mask


@struct.dataclass
class GenState:
    tokens: jax.Array  # [B, T] canvas: left-padded prompt (P) then gen_length positions
    key_mask: jax.Array  # [B, T] bool: False on left padding
    positions: jax.Array  # [B, T] int32 RoPE positions (cumsum(mask) - 1)
    commit_step: jax.Array  # [B, G] int32: step at which each gen position was committed, -1 if masked
    commit_conf: jax.Array  # [B, G] float32: confidence of each committed token when committed (NaN if masked)
    block: jax.Array  # () int32: current block
    block_step: jax.Array  # () int32: steps taken in the current block
    step: jax.Array  # () int32: steps taken (= forward passes)
    n_block_start: jax.Array  # [B] int32: masked positions of the current block when it started
    done: jax.Array  # [B] bool
    rng: jax.Array
    cache: Any  # the cache method's pytree
    rows_computed: jax.Array  # () float32: sum over steps of the share of rows run through the layers
    rows_selected: jax.Array  # () float32: sum over steps of the share of rows the cache selected
    overflow: jax.Array  # () int32: rows a selective cache wanted but could not fit in its capacity
    head_rows: jax.Array  # () float32: sum over steps of the rows given the output head (per sequence)


PROMPT_BUCKET, PROMPT_GROWTH = 16, 1.5  # the default prompt-length rule (GenOptions.prompt_bucket/_growth)


def bucket_length(n: int, bucket: int = PROMPT_BUCKET, growth: float = PROMPT_GROWTH,
                  cap: int | None = None) -> int:
    """The padded length of an `n`-token prompt: the smallest size `ceil(bucket * growth**k / bucket) * bucket`
    (k = 0, 1, ...) that holds it, at most `cap` (the context left after generation).

    The sizes are multiples of `bucket` that grow geometrically (16, 32, 48, 64, 96, 128, 192, 288, ... for
    16 and 1.5), so prompts of 30 to 900 tokens fall into 10 shapes, and the padded length is below
    `growth * n + bucket`. `growth=1` gives every multiple of `bucket`; `bucket <= 1` pads nothing."""
    if n < 1:
        raise ValueError(f"a prompt has at least one token, got {n}")
    if cap is not None and n > cap:
        raise ValueError(f"a prompt of {n} tokens does not fit in {cap}")
    if bucket <= 1:
        return n
    if growth < 1:
        raise ValueError(f"prompt growth must be >= 1, got {growth}")
    if growth == 1:
        size = -(-n // bucket) * bucket
    else:
        k = 0
        while (size := -(-math.ceil(round(bucket * growth**k, 6)) // bucket) * bucket) < n:
            k += 1
    return size if cap is None else min(size, cap)


def pad_prompts(cfg: ModelConfig, prompt_ids, gen_length: int, bucket: int = PROMPT_BUCKET,
                attention_mask=None, growth: float = PROMPT_GROWTH) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad prompts (list of id lists or [B, L] array) to a bucketed length P (`bucket_length`, never past
    the context `max_seq_len - gen_length`); returns (ids, mask)."""
    if isinstance(prompt_ids, (list, tuple)) and (len(prompt_ids) == 0 or np.ndim(prompt_ids[0]) == 1):
        seqs = [np.asarray(p, np.int64).reshape(-1) for p in prompt_ids]
    else:
        arr = np.asarray(prompt_ids)
        if arr.ndim != 2:
            raise ValueError(f"prompt_ids must be [batch, length] or a list of id lists, not {arr.shape}")
        if attention_mask is None:
            seqs = list(arr)
        else:
            m = np.asarray(attention_mask).astype(bool)
            seqs = [row[mrow] for row, mrow in zip(arr, m)]
    if not seqs:
        raise ValueError("prompt_ids is empty: give at least one prompt")
    for i, s in enumerate(seqs):
        if s.size == 0:
            raise ValueError(f"prompt {i} is empty")
        if s.min() < 0 or s.max() >= cfg.vocab_size:
            raise ValueError(f"prompt {i} has token ids outside [0, {cfg.vocab_size})")
        if s.size + gen_length > cfg.max_seq_len:
            raise ValueError(f"prompt {i} has {s.size} tokens; with gen_length={gen_length} that exceeds the "
                             f"model's context of {cfg.max_seq_len} (at most {cfg.max_seq_len - gen_length})")
    p = bucket_length(max(s.size for s in seqs), bucket, growth, cfg.max_seq_len - gen_length)
    ids = np.full((len(seqs), p), cfg.pad_token_id, np.int32)
    mask = np.zeros((len(seqs), p), bool)
    for i, s in enumerate(seqs):
        ids[i, p - s.size:] = s
        mask[i, p - s.size:] = True
    return ids, mask


def init_state(cfg: ModelConfig, opts, prompt_ids: np.ndarray, prompt_mask: np.ndarray, cache: Any,
               rng: jax.Array) -> GenState:
    b, g = prompt_ids.shape[0], opts.gen_length
    tokens = jnp.concatenate([jnp.asarray(prompt_ids), jnp.full((b, g), cfg.mask_token_id, jnp.int32)], 1)
    key_mask = jnp.concatenate([jnp.asarray(prompt_mask), jnp.ones((b, g), bool)], 1)
    zero = lambda: jnp.zeros((), jnp.int32)  # distinct buffers: the state is donated to the step
    return GenState(
        tokens=tokens, key_mask=key_mask, positions=positions_from_mask(key_mask),
        commit_step=jnp.full((b, g), -1, jnp.int32), commit_conf=jnp.full((b, g), jnp.nan, jnp.float32),
        block=zero(), block_step=zero(), step=zero(),
        n_block_start=jnp.full((b,), opts.block, jnp.int32), done=jnp.zeros((b,), bool), rng=rng,
        cache=cache, rows_computed=jnp.zeros((), jnp.float32), rows_selected=jnp.zeros((), jnp.float32),
        overflow=zero(), head_rows=jnp.zeros((), jnp.float32))
