"""One denoising step, `state -> state`, with static shapes: forward through the cache method,
propose a token per computed gen position, let the decoder commit some, advance the block."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from d2cache_jax.cache import METHODS
from d2cache_jax.cache.base import StepInfo, active_rows, before_first_stop
from d2cache_jax.config import ModelConfig
from d2cache_jax.decoding import DECODERS, schedule
from d2cache_jax.decoding.base import DecodeInputs
from d2cache_jax.decoding.density import certainty_density
from d2cache_jax.decoding.sampling import propose
from d2cache_jax.generation import decodable
from d2cache_jax.generation.state import GenState


def scatter_to_gen(gen_idx: jax.Array, values: jax.Array, gen_length: int, fill) -> jax.Array:
    """Rows [B, R] -> gen positions [B, G]; unused slots (index G) are dropped."""
    out = jnp.full(gen_idx.shape[:1] + (gen_length,), fill, values.dtype)
    return out.at[jnp.arange(gen_idx.shape[0])[:, None], gen_idx].set(values, mode="drop")


def bf16_scores(cfg: ModelConfig, opts) -> bool:
    """Whether confidences are bf16-rounded: asked for, or under `upstream_compat` with a bf16 model
    (upstream's softmax runs in the logits' dtype, which is the model's: fp32 weights give fp32)."""
    return opts.bf16_confidence or (opts.upstream_compat and cfg.param_dtype == "bfloat16")


def propose_kw(cfg: ModelConfig, opts) -> dict:
    return dict(mask_id=cfg.mask_token_id, temperature=opts.temperature, top_p=opts.top_p,
                top_k=opts.top_k, alg=opts.confidence_kind, bf16_confidence=bf16_scores(cfg, opts),
                gumbel=opts.sampling == "gumbel", need_entropy=opts.decoder == "eb",
                exclude_mask=not opts.upstream_compat)


def step(cfg: ModelConfig, opts, params, state: GenState) -> GenState:
    """One denoising step. Methods with a distinct full-pass phase get one `lax.cond` branch per phase."""
    method = METHODS[opts.cache]
    if method.is_first is None:
        return _step(cfg, opts, params, state, method.forward)
    first = functools.partial(method.forward, phase="first")
    later = functools.partial(method.forward, phase="later")
    return jax.lax.cond(method.is_first(state), lambda s: _step(cfg, opts, params, s, first),
                        lambda s: _step(cfg, opts, params, s, later), state)


def _step(cfg: ModelConfig, opts, params, state: GenState, forward) -> GenState:
    method = METHODS[opts.cache]
    g, bl = opts.gen_length, opts.block
    p = state.tokens.shape[1] - g
    fwd = forward(cfg, opts, params, state)
    rng, k_prop, k_dec = jax.random.split(state.rng, 3)

    gen = state.tokens[:, p:]
    masked = gen == cfg.mask_token_id
    # Only rows predicting a still-masked position of an unfinished sequence get the head.
    masked_at = jnp.take_along_axis(jnp.pad(masked, ((0, 0), (0, 1))), fwd.gen_idx, axis=1)
    need = masked_at & ~state.done[:, None]
    prop, head_rows = decodable.propose_rows(cfg, opts, params, fwd.hidden, need, k_prop, propose_kw(cfg, opts),
                                             fwd.hidden_uncond)
    gen_idx = jnp.where(need, fwd.gen_idx, g)
    valid = scatter_to_gen(gen_idx, jnp.ones_like(gen_idx, bool), g, False)
    x0 = scatter_to_gen(gen_idx, prop.token, g, 0)
    conf = scatter_to_gen(gen_idx, prop.conf, g, -jnp.inf)
    ent = scatter_to_gen(gen_idx, prop.entropy, g, jnp.inf)
    if opts.upstream_compat:
        # Upstream HEAD decodes positions it did not recompute from all-zero logits (ALGORITHMS.md 5 #2).
        z = propose(jnp.zeros((1, cfg.vocab_size), jnp.float32), k_prop, **propose_kw(cfg, opts))
        x0 = jnp.where(valid, x0, z.token[0])
        conf = jnp.where(valid, conf, z.conf[0])
        ent = jnp.where(valid, ent, z.entropy[0])
        valid = jnp.ones_like(valid)

    block_mask = jnp.broadcast_to((jnp.arange(g) // bl) == state.block, gen.shape)
    live = block_mask & before_first_stop(cfg, gen) if opts.stop_at_eos else block_mask
    eligible = masked & live & valid & ~state.done[:, None]
    score = conf
    if opts.cp_sigma > 0:
        score = conf * certainty_density(~masked, opts.cp_sigma)
    n_masked_block = (masked & live).sum(-1).astype(jnp.int32)
    budget, reveal = schedule.budget(opts, n_masked_block, state.n_block_start, state.block_step)
    inputs = DecodeInputs(jnp.where(eligible, score, -jnp.inf), conf, ent, eligible, budget, reveal,
                          bf16_scores(cfg, opts) and opts.cp_sigma == 0)
    transfer = DECODERS[opts.decoder](inputs, opts, k_dec) & eligible

    new_gen = jnp.where(transfer, x0, gen)
    tokens = state.tokens.at[:, p:].set(new_gen)
    # Under upstream_compat a position may be "committed" to the mask id: a no-op, it stays masked.
    committed_now = transfer & (x0 != cfg.mask_token_id)
    commit_step = jnp.where(committed_now, state.step, state.commit_step)
    commit_conf = jnp.where(committed_now, conf, state.commit_conf)

    # A block ends when no row has a masked position left in it (before its first EOS if stopping).
    new_masked = new_gen == cfg.mask_token_id
    keep = before_first_stop(cfg, new_gen) if opts.stop_at_eos else jnp.ones_like(new_masked)
    todo = new_masked & keep
    block_left = (todo & block_mask).any(-1) & ~state.done
    advance = ~block_left.any()
    block = state.block + advance.astype(jnp.int32)
    next_block_mask = (jnp.arange(g) // bl) == block
    n_next = (todo & next_block_mask).sum(-1).astype(jnp.int32)
    done = state.done | ~todo.any(-1)

    new_state = state.replace(
        tokens=tokens, commit_step=commit_step, commit_conf=commit_conf, block=block,
        block_step=jnp.where(advance, 0, state.block_step + 1),
        step=state.step + 1, n_block_start=jnp.where(advance, n_next, state.n_block_start),
        done=done, rng=rng, rows_computed=state.rows_computed + fwd.rows,
        overflow=state.overflow + fwd.overflow, cache=fwd.cache, head_rows=state.head_rows + head_rows,
        rows_selected=state.rows_selected + (fwd.rows if fwd.selected is None else fwd.selected))
    info = StepInfo(transfer=transfer, conf=conf, valid=valid, block_mask=block_mask, eligible=eligible,
                    active=active_rows(cfg, opts, state.tokens, state.block, state.done))
    return new_state.replace(cache=method.after_step(cfg, opts, new_state, info))


def max_steps(opts) -> int:
    """Safety bound on the loop: every step of an unfinished block commits at least one token."""
    return 2 * opts.gen_length + 2 * opts.num_blocks * opts.steps_per_block + 8


def run(cfg: ModelConfig, opts, params, state: GenState) -> GenState:
    """Every step on device in one `lax.while_loop`: no host sync per step, early exit when all done."""
    limit = max_steps(opts)

    def cond(s):
        return ~s.done.all() & (s.block < opts.num_blocks) & (s.step < limit)

    return jax.lax.while_loop(cond, lambda s: step(cfg, opts, params, s), state)
