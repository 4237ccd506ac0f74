"""From logits to a proposed token and a confidence per row (upstream `sample_tokens`, ALGORITHMS.md 1.5)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

F32 = jnp.float32
NEG = jnp.finfo(F32).min

CONFIDENCE_KINDS = ("maskgit_plus", "topk_margin", "entropy", "random")


class Proposal(NamedTuple):
    """Per row: proposed token, its confidence (higher = commit earlier) and predictive entropy."""

    token: jax.Array  # [..] int32
    conf: jax.Array  # [..] float32
    entropy: jax.Array  # [..] float32 (used by the EB sampler)


class Greedy(NamedTuple):
    """Arg-max of a row of logits, with the logsumexp and the chosen logit (for its probability)."""

    token: jax.Array  # [..] int32
    lse: jax.Array  # [..] float32
    logit: jax.Array  # [..] float32


def _first(hit: jax.Array) -> jax.Array:
    """Index of the first True along the last axis (its length when none)."""
    n = hit.shape[-1]
    return jnp.min(jnp.where(hit, jax.lax.broadcasted_iota(jnp.int32, hit.shape, hit.ndim - 1), n), axis=-1)


def greedy_pick(x: jax.Array, exclude: int | None = None, chunk: int = 128) -> Greedy:
    """`jnp.argmax(x, -1)` (first maximum; a NaN counts as the maximum) and `logsumexp(x, -1)`, with
    column `exclude` (the mask id) read as NEG, computed over lanes of `chunk` columns: the max and
    exp-sum of each lane, then the winning lane's `chunk` columns. On XLA's CPU backend argmax's
    value-index reduction runs unvectorised (9 ms for 32 rows of LLaDA's 126464 logits against
    under 1 ms here), and writing NEG into the logits copied them: 15 ms at 32 rows. Here only the
    excluded column's lane is patched."""
    v = x.shape[-1]
    pad = (-v) % chunk
    if pad:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], constant_values=-jnp.inf)
    if exclude is not None and not 0 <= exclude < v:
        exclude = None
    lanes = x.reshape(x.shape[:-1] + (-1, chunk))
    col = jnp.arange(chunk)
    lane_max = jnp.max(lanes, axis=-1)
    lane_nan = jnp.isnan(lanes).any(axis=-1)  # XLA's vectorised max may drop a NaN
    if exclude is not None:
        c0, j0 = divmod(exclude, chunk)
        lane0 = jnp.where(col == j0, NEG, lanes[..., c0, :])
        lane_max = lane_max.at[..., c0].set(jnp.max(lane0, axis=-1))
        lane_nan = lane_nan.at[..., c0].set(jnp.isnan(lane0).any(axis=-1))
    has_nan = lane_nan.any(axis=-1, keepdims=True)
    best = jnp.max(lane_max, axis=-1, keepdims=True)
    c = _first(jnp.where(has_nan, lane_nan, lane_max == best))
    lane = jnp.take_along_axis(lanes, c[..., None, None], axis=-2)[..., 0, :]
    if exclude is not None:
        lane = jnp.where((c[..., None] == c0) & (col == j0), NEG, lane)
    j = _first(jnp.where(has_nan, jnp.isnan(lane), lane == best))
    shift = jnp.where(jnp.isfinite(best), best, 0.0)
    sums = jnp.sum(jnp.exp(lanes - shift[..., None]), axis=-1)
    if exclude is not None:
        sums = sums.at[..., c0].set(jnp.sum(jnp.exp(lane0 - shift), axis=-1))
    lse = jnp.log(jnp.sum(sums, axis=-1)) + shift[..., 0]
    logit = jnp.take_along_axis(lane, jnp.minimum(j, chunk - 1)[..., None], axis=-1)[..., 0]
    return Greedy(c * chunk + j, lse, logit)


def first_argmax(x: jax.Array) -> jax.Array:
    """`jnp.argmax(x, axis=-1)`, vectorised (`greedy_pick`; its unused logsumexp is compiled away)."""
    return greedy_pick(x).token


def top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
    """Nucleus filter: keep the smallest sorted prefix whose mass reaches top_p (top-1 always kept)."""
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    drop_sorted = cum > top_p
    # Shift right by one so the token that crosses the threshold is kept.
    drop_sorted = jnp.concatenate([jnp.zeros_like(drop_sorted[..., :1]), drop_sorted[..., :-1]], axis=-1)
    drop = jnp.zeros_like(drop_sorted).at[
        tuple(jnp.indices(order.shape)[:-1]) + (order,)].set(drop_sorted)
    return jnp.where(drop, NEG, logits)


def top_k_filter(logits: jax.Array, top_k: int) -> jax.Array:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    return jnp.where(logits < kth, NEG, logits)


def propose(logits: jax.Array, rng: jax.Array, *, mask_id: int, temperature: float = 0.0,
            top_p: float | None = None, top_k: int | None = None, alg: str = "maskgit_plus",
            bf16_confidence: bool = False, gumbel: bool = False, need_entropy: bool = True,
            exclude_mask: bool = True) -> Proposal:
    """Propose a token per row of fp32 logits [..., V]; the mask id is never proposed (unless
    `exclude_mask=False`, as upstream: it then stays in the softmax, the nucleus and the arg-max).

    Order as upstream: temperature, top-p, top-k, softmax, sample or arg-max, then `alg` decides
    the confidence. `gumbel=True` samples as LLaDA's reference does (Gumbel-max; float64 when
    jax_enable_x64 is on, float32 otherwise) instead of categorical sampling; the token is drawn
    from the tempered logits, but the confidence (and entropy) come from the untempered softmax
    (ALGORITHMS.md 1.8), restricted to the tokens top-p/top-k kept. Full probability
    rows are only formed when a rule needs them (bf16 rounding, entropy): the step runs this over
    every computed row, so the common greedy path (`greedy_pick`) reads the logits once per lane
    statistic and never writes them.
    """
    if alg not in CONFIDENCE_KINDS:
        raise ValueError(f"unknown confidence alg {alg!r}; known: {', '.join(CONFIDENCE_KINDS)}")
    filtered = (top_p is not None and top_p < 1.0) or (top_k is not None and top_k > 0)
    if (temperature <= 0 and not filtered and not bf16_confidence and not need_entropy
            and alg in ("maskgit_plus", "random")):
        # The default greedy path: one pass over the logits, never written to.
        g = greedy_pick(logits.astype(F32), mask_id if exclude_mask else None)
        conf = (jnp.exp(g.logit - g.lse) if alg == "maskgit_plus"
                else jax.random.uniform(jax.random.split(rng)[1], g.token.shape, F32))
        return Proposal(g.token.astype(jnp.int32), conf, jnp.zeros_like(conf))
    raw = logits = logits.astype(F32)
    if exclude_mask:
        raw = logits = logits.at[..., mask_id].set(NEG)
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    if top_k is not None and top_k > 0:
        logits = top_k_filter(logits, top_k)
    k_tok, k_conf = jax.random.split(rng)
    gumbel_token = None
    if temperature > 0 and gumbel:
        wide = jnp.float64 if jax.config.jax_enable_x64 else F32
        u = jax.random.uniform(k_tok, logits.shape, dtype=wide, minval=jnp.finfo(wide).tiny)
        gumbel_token = first_argmax(logits.astype(wide) - jnp.log(-jnp.log(u)))
        # Confidences from the untempered distribution, over the tokens the filters kept.
        logits = jnp.where(logits == NEG, NEG, raw) if filtered else raw
    lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    full = bf16_confidence or alg == "entropy" or need_entropy
    probs = jnp.exp(logits - lse) if full else None
    if bf16_confidence:
        probs = probs.astype(jnp.bfloat16).astype(F32)
    if gumbel_token is not None:
        token = gumbel_token
    elif temperature > 0:
        token = jax.random.categorical(k_tok, logits, axis=-1)
    else:
        token = first_argmax(probs if bf16_confidence else logits)
    token = token.astype(jnp.int32)
    if bf16_confidence:
        p_tok = jnp.take_along_axis(probs, token[..., None], axis=-1)[..., 0]
    else:
        p_tok = jnp.exp(jnp.take_along_axis(logits, token[..., None], axis=-1) - lse)[..., 0]
    entropy = jnp.zeros_like(p_tok)
    if need_entropy:
        entropy = -jnp.sum(jnp.where(probs > 0, probs * (logits - lse), 0.0), axis=-1)
    if alg == "maskgit_plus":
        conf = p_tok
    elif alg == "topk_margin":
        top2 = jnp.exp(jax.lax.top_k(logits, 2)[0] - lse)
        if bf16_confidence:
            top2 = top2.astype(jnp.bfloat16).astype(F32)
        conf = top2[..., 0] - top2[..., 1]
    elif alg == "entropy":
        conf = jnp.sum(probs * jnp.log(probs + 1e-10), axis=-1)
    else:
        conf = jax.random.uniform(k_conf, p_tok.shape, F32)
    return Proposal(token, conf.astype(F32), entropy.astype(F32))
