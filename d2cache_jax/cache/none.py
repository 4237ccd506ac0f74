"""No cache: every step is a full pass over the whole canvas (the exact reference)."""

from __future__ import annotations

import jax.numpy as jnp

from d2cache_jax import model
from d2cache_jax.cache.base import CacheMethod, ForwardOut, block_logits, gen_rows


def init(cfg, opts, batch, total_len):
    return ()


def gen_logits(cfg, opts, params, tokens, positions, key_mask):
    """Full pass; logits only for the rows that predict gen positions (the head is the costly part)."""
    p = tokens.shape[1] - opts.gen_length
    out = model.forward_rows(cfg, params, tokens, positions, key_mask)
    return model.head(params, cfg, out.hidden[:, gen_rows(cfg, p, opts.gen_length)])


def forward(cfg, opts, params, state) -> ForwardOut:
    """Full pass; logits for the current block only (semi-AR: the other blocks cannot be decoded)."""

    def block_pass(tokens):
        out = model.forward_rows(cfg, params, tokens, state.positions, state.key_mask)
        return block_logits(cfg, opts, params, out.hidden, state.block)

    logits, gen_idx = block_pass(state.tokens)
    if opts.cfg_scale > 0:
        # Classifier-free guidance (LLaDA reference): the unconditional canvas masks every prompt token.
        p = state.tokens.shape[1] - opts.gen_length
        uncond = state.tokens.at[:, :p].set(jnp.where(state.key_mask[:, :p], cfg.mask_token_id,
                                                        state.tokens[:, :p]))
        un, _ = block_pass(uncond)
        logits = un + (opts.cfg_scale + 1.0) * (logits - un)
    return ForwardOut(logits, gen_idx, state.cache, jnp.float32(1.0), jnp.int32(0))


METHOD = CacheMethod(init=init, forward=forward)
