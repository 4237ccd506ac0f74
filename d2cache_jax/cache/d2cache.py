"""d2Cache (ALGORITHMS.md 3.4): recompute a chosen row subset per step, keep every other row's K/V.

Step 0 is a full pass: every row's K/V is stored, the attention rollout runs over the full maps and
all gen positions are decoded. At every later step only the rows `q_idx` chosen at the end of the
previous step run through all layers (one selection shared by every layer), attending over the
cached K/V; logits come back for those rows only. `jax.lax.switch` on `started` and the selection
size keeps every case in one compiled step with static shapes: the full pass, or the partial step
at the smallest of a few compiled row counts (`row_buckets`) that holds the selection.

After each step (`after_step`) the next selection is built:
  (a) confidence cache: by default, positions whose logits were computed this step and were masked
      before it take this step's confidence. `upstream_compat`: frozen at step 0 (bug 5 #1).
  (b) window: from `current_k` and the block mask. Default: the block mask is the current block.
      `upstream_compat`: block AND still-masked-at-step-start (HEAD's in-place mutation, bug 5 #3).
  (c) stage 1: S = conf_cache * certainty_density(decoded, cache_sigma), +max(S) inside the block
      (per row; over the batch under `upstream_compat`, bug 5 #12); the `current_k` best masked
      positions of the window. Dream recomputes row j-1 for gen j.
  (d) positions committed this step are recomputed next step, at their own rows.
  (e) stage 2: nucleus over the rollout importance with `rollout_p`. Default: only prompt and decoded
      rows are candidates (bug 5 #10 fixed); `upstream_compat`: masked rows too. Dream's last prompt
      row follows sel[0]: OR by default, overwrite under `upstream_compat` (bug 5 #9).
  (f) inflation: gaps of width <= inflate_w between selected rows are filled (whole T, prompt too).
  Batch top-up (upstream equalises selection counts across the batch) runs only under
  `upstream_compat`; by default each row keeps its own count and the slots it does not need are
  unused, so a row's result does not depend on its batch mates. Bug 5 #2 (zero-logit positions
  decodable) is handled by the step itself. Left-padding rows are never selected.

Static capacity Q (`budgets`): the selection is packed into Q slots by priority, stage 1 (with
Dream's shifted rows) > committed > stage 2 > inflation > top-up; rows beyond Q are dropped and
counted in `overflow`. Q covers the most the rules can choose, inflation included, so the defaults
never overflow. Every recomputed row that predicts a still-masked gen position gets logits (the
step's head, `generation.decodable`; at most H = min(Q, G) rows). The rollout and importance
follow the model's dtype only in upstream (bf16 for a bf16 model); here they are float32 in both
modes.

Rows with nothing to commit in a step (done, or idle in their block while batch mates still work)
recompute nothing and keep their cache state, as upstream skips inactive rows, so a row's tokens do
not depend on its batch mates. Not reproduced from upstream: stage 1 never fills its top-k with
masked positions outside the window (upstream's top-k over -inf ties can, only when the window
holds fewer than k).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from d2cache_jax import model
from d2cache_jax.cache import rollout
from d2cache_jax.cache import select_rules as rules
from d2cache_jax.cache.base import CacheMethod, ForwardOut, StepInfo, active_rows, empty_kv, gen_rows, rows_to_gen

PARALLEL_DECODERS = ("threshold", "factor", "eb", "dream", "origin")
N_FINE, N_COARSE, BUCKET_GAP = 4, 4, 8  # compiled sizes of the partial step (see `row_buckets`)


class D2State(NamedTuple):
    """d2Cache's pytree, carried in GenState.cache."""

    kv: model.LayerKV  # [L, B, T, Hkv, hd]
    conf: jax.Array  # [B, G] f32 confidence cache
    q_idx: jax.Array  # [B, Q] int32 rows to recompute next step, ascending; T = unused slot
    importance: jax.Array  # [B, T] f32 rollout column sums of the last forward
    density: jax.Array  # [B, G] f32 stage-1 score S (with the block boost) of the last selection
    started: jax.Array  # () bool: the step-0 full pass has run
    overflow: jax.Array  # () int32: rows the last selection could not fit


def _commit_budget(opts) -> int:
    k = min(opts.current_k, opts.gen_length)
    if opts.decoder in PARALLEL_DECODERS:
        return max(k // 2, 1)
    if opts.num_transfer_tokens:
        return opts.num_transfer_tokens
    return math.ceil(opts.block / opts.steps_per_block)


def budgets(opts, total_len: int) -> tuple[int, int]:
    """Static (Q, H): rows recomputed per step after step 0, and of those, rows given logits.

    Q is `opts.capacity`, or the most rows the rules can ask for, so the defaults never overflow:
    stages 1-2 choose n <= k + c + floor(p (T - k - c)) + 2 rows (k stage-1 rows, c committed, a
    nucleus of mass <= p over the other rows holds at most p of them plus the top one, Dream's row
    P-1); inflation then fills gaps of at most inflate_w - 1 rows between consecutive chosen rows,
    at most n - 1 gaps. H = min(Q, G): the most recomputed rows that can predict a gen position
    (each gets logits while its position is masked, so no recomputed masked position is left
    undecodable).
    """
    k, c = min(opts.current_k, opts.gen_length), _commit_budget(opts)
    n = k + c + math.floor(opts.rollout_p * max(total_len - k - c, 0)) + 2
    inflated = n + (n - 1) * max(opts.inflate_w - 1, 0)
    q = min(opts.capacity or inflated, total_len)
    return q, min(q, opts.gen_length)


def row_buckets(opts, total_len: int) -> tuple[int, ...]:
    """Compiled row counts for the partial step, ascending, the last = Q. Each step runs the smallest
    one holding its selection (`lax.switch`), so the cost follows the rows actually chosen instead of
    the worst-case Q. Selections cluster just above stage 1 + committed (stage 2 and inflation add a
    few to a few tens of rows; stage 1 shrinks once few masked positions are left), so N_FINE
    buckets BUCKET_GAP rows apart start at stage 1 + committed; then at most N_COARSE
    steps of a constant ratio reach Q (each bucket is one more trace of a layer to compile)."""
    q, _ = budgets(opts, total_len)
    lo = min(q, min(opts.current_k, opts.gen_length) + _commit_budget(opts))
    sizes = {min(q, lo + BUCKET_GAP * i) for i in range(N_FINE)}
    top = max(sizes)
    n = min(N_COARSE, (q - top) // BUCKET_GAP)
    ratio = (q / top) ** (1.0 / max(n, 1))
    sizes |= {min(q, round(top * ratio**i)) for i in range(1, n + 1)} | {q}
    return tuple(sorted(sizes))


def init(cfg, opts, batch: int, total_len: int) -> D2State:
    q, _ = budgets(opts, total_len)
    return D2State(
        kv=empty_kv(cfg, batch, total_len, model.dtype_of(cfg)),
        conf=jnp.zeros((batch, opts.gen_length), jnp.float32),
        q_idx=jnp.full((batch, q), total_len, jnp.int32),
        importance=jnp.zeros((batch, total_len), jnp.float32),
        density=jnp.zeros((batch, opts.gen_length), jnp.float32),
        started=jnp.zeros((), bool),
        overflow=jnp.zeros((), jnp.int32))


def _pad_rows(hidden: jax.Array, gen_idx: jax.Array, r: int, g: int):
    """Pad [B, n, d] hidden states and [B, n] gen indices to r rows (zeros / unused index G)."""
    n = hidden.shape[1]
    if n == r:
        return hidden, gen_idx
    hidden = jnp.pad(hidden, ((0, 0), (0, r - n), (0, 0)))
    return hidden, jnp.pad(gen_idx, ((0, 0), (0, r - n)), constant_values=g)


def forward(cfg, opts, params, state, phase: str | None = None) -> ForwardOut:
    """Step 0 (full pass, the G gen-predicting rows) or a partial step (its recomputed rows, padded to
    the largest bucket Q), chosen on device; R = max(G, Q) rows when the phase is not given.

    A loop that knows the phase statically may pass `phase="first"` (R = G) or `phase="later"` (R = Q).
    The step runs the head on the rows that predict still-masked positions.
    """
    c: D2State = state.cache
    b, t = state.tokens.shape
    g = opts.gen_length
    p = t - g
    sizes = row_buckets(opts, t)
    r = {"first": g, "later": sizes[-1]}.get(phase, max(g, sizes[-1]))
    dt = c.kv.k.dtype
    # Rows with nothing to commit this step (done, or idle in the block while batch mates work)
    # recompute nothing and keep their selection, as upstream skips inactive rows: a row's result
    # does not depend on its batch mates.
    active = active_rows(cfg, opts, state.tokens, state.block, state.done)
    q_all = jnp.where(active[:, None], c.q_idx, t)

    def full(_):
        out = model.forward_rows(cfg, params, state.tokens, state.positions, state.key_mask, need_weights=True)
        gen_idx = jnp.broadcast_to(jnp.arange(g, dtype=jnp.int32), (b, g))
        all_rows = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        imp = rollout.rollout_importance(out.attn, all_rows, t)
        kv = jax.tree.map(lambda x: x.astype(dt), out.kv)
        return (*_pad_rows(out.hidden[:, gen_rows(cfg, p, g)], gen_idx, r, g), kv, imp)

    def partial(q, _):
        q_idx = q_all[:, :q]  # ascending, unused slots (T) last: the first q hold the selection
        out = model.forward_rows(cfg, params, state.tokens, state.positions, state.key_mask,
                                 q_idx=q_idx, kv=c.kv, need_weights=True)
        gen_idx = rows_to_gen(cfg, q_idx, p, g).astype(jnp.int32)
        imp = jnp.where(active[:, None], rollout.rollout_importance(out.attn, q_idx, t), c.importance)
        return (*_pad_rows(out.hidden, gen_idx, r, g), out.kv, imp)

    count = (q_all < t).sum(-1)
    bucket = jnp.searchsorted(jnp.asarray(sizes), count.max())
    branches = [functools.partial(partial, q) for q in sizes]
    if phase == "first":
        branch, branches = jnp.int32(0), [full]
    elif phase == "later":
        branch = bucket
    else:
        branch, branches = jnp.where(c.started, 1 + bucket, 0), [full] + branches
    hidden, gen_idx, kv, imp = jax.lax.switch(branch, branches, None)
    # Rows run: the bucket's size for every sequence (padded slots go through the layers too).
    ran = jnp.where(c.started, jnp.asarray(sizes, jnp.float32)[bucket] / t, 1.0).astype(jnp.float32)
    selected = jnp.where(c.started, jnp.mean(count / t), 1.0).astype(jnp.float32)
    return ForwardOut(hidden, gen_idx, c._replace(kv=kv, importance=imp), ran, c.overflow, selected)


def is_first(state) -> jax.Array:
    """() bool: the next step is d2Cache's full pass (for loops that split the phases statically)."""
    return ~state.cache.started


def after_step(cfg, opts, state, info: StepInfo) -> D2State:
    c: D2State = state.cache
    b, t = state.tokens.shape
    g = opts.gen_length
    p = t - g
    compat = opts.upstream_compat
    shift = 1 if cfg.shift_logits else 0
    remaining = state.tokens[:, p:] == cfg.mask_token_id  # after this step's commits
    masked_before = remaining | info.transfer

    # (a) confidence cache.
    if compat:
        conf = jnp.where(c.started, c.conf, info.conf)
    else:
        conf = jnp.where(info.valid & masked_before, info.conf, c.conf)

    # (b) window and (c) stage 1.
    block_mask = info.eligible if compat else info.block_mask
    window = rules.search_window(remaining, block_mask, opts.current_k)
    scores = rules.stage1_scores(conf, remaining, block_mask, opts.cache_sigma, batch_max=compat)
    sel = rules.stage1_select(scores, remaining, window, opts.current_k)

    # (d) committed rows, and the upstream query mask before stage 2 (Dream's sel[0] is not in it yet).
    resp = jnp.concatenate([sel[:, shift:], jnp.zeros((b, shift), bool)], axis=1) | info.transfer
    q_pre = rules.gen_to_rows(resp, p, 0, False)

    # (e) stage 2 over the rollout importance, then Dream's last prompt row.
    allowed = state.key_mask
    candidates = allowed & ~q_pre
    if not compat:
        candidates &= rules.gen_to_rows(~remaining, p, 0, True)  # prompt and decoded rows only
    nuc = rules.nucleus_select(c.importance, opts.rollout_p, candidates)
    if shift and compat:
        nuc = nuc.at[:, p - 1].set(nuc[:, p - 1] & sel[:, 0])  # overwrite drops a stage-2 choice
    s1_rows = rules.gen_to_rows(sel, p, shift, False)  # Dream: includes row P-1 for sel[0]
    committed = rules.gen_to_rows(info.transfer, p, 0, False)
    chosen = s1_rows | committed | nuc

    # (f) inflation, then upstream's batch top-up.
    want = rules.inflate(chosen, opts.inflate_w) & allowed
    topped, top_score = want, jnp.zeros((b, t), jnp.float32)
    if compat:
        active = active_rows(cfg, opts, state.tokens, state.block, state.done)  # next step's active rows
        top_score = jnp.where(want | ~allowed, -jnp.inf, c.importance)
        top_score = top_score + rules.gen_to_rows(jnp.max(top_score) + scores, p, 0, 0.0)
        target = jnp.max(jnp.where(active, want.sum(-1), 0))
        topped = rules.top_up(want, top_score, allowed, jnp.where(active, target, 0))

    tier = jnp.select([s1_rows, committed, nuc, want, topped], [5, 4, 3, 2, 1], 0)
    within = jnp.select([s1_rows, nuc, topped & ~want],
                        [rules.gen_to_rows(scores, p, shift, 0.0), c.importance, top_score], 0.0)
    q_idx, dropped = rules.pack_rows(tier, within, c.q_idx.shape[1])
    # Rows that were inactive this step keep what they had (upstream updates active rows only).
    was_active = info.active | ~c.started
    keep = lambda new, old: jnp.where(was_active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)  # noqa: E731
    return c._replace(conf=keep(conf, c.conf), q_idx=keep(q_idx, c.q_idx), density=keep(scores, c.density),
                      started=jnp.ones((), bool), overflow=(dropped * was_active).sum().astype(jnp.int32))


METHOD = CacheMethod(init=init, forward=forward, after_step=after_step, is_first=is_first)
