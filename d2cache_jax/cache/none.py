"""No cache: every step is a full pass over the whole canvas (the exact reference)."""

from __future__ import annotations

import jax.numpy as jnp

from d2cache_jax import model
from d2cache_jax.cache.base import CacheMethod, ForwardOut, block_hidden, gen_rows


def init(cfg, opts, batch, total_len):
    return ()


def gen_logits(cfg, opts, params, tokens, positions, key_mask):
    """Full pass; logits only for the rows that predict gen positions (the head is the costly part)."""
    p = tokens.shape[1] - opts.gen_length
    out = model.forward_rows(cfg, params, tokens, positions, key_mask)
    return model.head(params, cfg, out.hidden[:, gen_rows(cfg, p, opts.gen_length)])


def forward(cfg, opts, params, state) -> ForwardOut:
    """Full pass; hidden states of the current block's rows only (semi-AR: the other blocks cannot be decoded)."""

    def block_pass(tokens):
        out = model.forward_rows(cfg, params, tokens, state.positions, state.key_mask)
        return block_hidden(cfg, opts, out.hidden, state.block)

    hidden, gen_idx = block_pass(state.tokens)
    uncond = None
    if opts.cfg_scale > 0:
        # Classifier-free guidance (LLaDA reference): the unconditional canvas masks every prompt token.
        p = state.tokens.shape[1] - opts.gen_length
        masked_prompt = state.tokens.at[:, :p].set(jnp.where(state.key_mask[:, :p], cfg.mask_token_id,
                                                               state.tokens[:, :p]))
        uncond, _ = block_pass(masked_prompt)
    return ForwardOut(hidden, gen_idx, state.cache, jnp.float32(1.0), jnp.int32(0), hidden_uncond=uncond)


METHOD = CacheMethod(init=init, forward=forward)
