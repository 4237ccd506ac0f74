"""`generate`: prompts in, generated ids and stats out. Compile time is measured apart from run time."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any

import jax
import numpy as np

from d2cache_jax import sharding
from d2cache_jax.cache import METHODS
from d2cache_jax.config import ModelConfig
from d2cache_jax.generation import step as step_lib
from d2cache_jax.generation.options import GenOptions, family_defaults, make_options
from d2cache_jax.generation.state import GenState, init_state, pad_prompts

log = logging.getLogger(__name__)


@dataclasses.dataclass
class GenerateResult:
    """Generated ids and stats. Positions still masked when the loop stopped (after the first EOS under
    `stop_at_eos`, or anywhere after an early stop) are returned as eos; `stats["masked_left"]` counts
    them per sequence and `stats["masks_before_eos"]` those before the first committed stop token
    (upstream raises there; here a warning is logged)."""

    tokens: np.ndarray  # [B, gen_length] int32 (positions never committed: eos)
    lengths: np.ndarray  # [B] int32: committed tokens before the first committed stop token
    stats: dict[str, Any]
    commit_step: np.ndarray | None = None  # [B, gen_length] int32: step each position was committed, -1 never
    commit_conf: np.ndarray | None = None  # [B, gen_length] float32: its confidence then (NaN: never committed)


# The step and the whole loop, jitted with the config and options static. The device loop is the
# default: one dispatch, no host sync per step, early exit inside `lax.while_loop`. The host loop
# calls the same jitted step from Python, for a progress bar or step-by-step inspection.
_step_jit = jax.jit(step_lib.step, static_argnums=(0, 1), donate_argnums=(3,))
_run_jit = jax.jit(step_lib.run, static_argnums=(0, 1), donate_argnums=(3,))


def _static(opts: GenOptions) -> GenOptions:
    """Options as the compiled program sees them: host-only fields normalised so they never recompile."""
    return dataclasses.replace(opts, seed=0, loop="device", prompt_bucket=0, prompt_growth=1.0)


def lower(config: ModelConfig, opts: GenOptions, params, state: GenState):
    """The generation program for these settings, lowered (params and state may be abstract:
    ShapeDtypeStructs, so nothing is allocated); `.compile()` it to run or to read its memory analysis."""
    jitted = _run_jit if opts.loop == "device" else _step_jit
    return jitted.lower(config, _static(opts), params, state)


def first_stop(cfg: ModelConfig, tokens: np.ndarray) -> np.ndarray:
    is_stop = np.isin(tokens, cfg.stop_token_ids)
    return np.where(is_stop.any(-1), is_stop.argmax(-1), tokens.shape[-1]).astype(np.int32)


def prepare(cfg: ModelConfig, prompt_ids, opts: GenOptions, attention_mask=None, batch_multiple: int = 1) -> GenState:
    ids, mask = pad_prompts(cfg, prompt_ids, opts.gen_length, opts.prompt_bucket, attention_mask,
                            opts.prompt_growth)
    if len(ids) % batch_multiple:  # pad with copies of the last prompt (dropped from the result)
        extra = batch_multiple - len(ids) % batch_multiple
        ids, mask = (np.concatenate([a, np.repeat(a[-1:], extra, 0)]) for a in (ids, mask))
    b, t = ids.shape[0], ids.shape[1] + opts.gen_length
    cache = METHODS[opts.cache].init(cfg, opts, b, t)
    return init_state(cfg, opts, ids, mask, cache, jax.random.key(opts.seed))


def generate(config: ModelConfig, params, prompt_ids, attention_mask=None, progress: bool = False,
             mesh: jax.sharding.Mesh | None = None, **options: Any) -> GenerateResult:
    """Generate `gen_length` tokens after each prompt with the chosen decoder and cache.

    `prompt_ids`: a list of id lists (any lengths; left-padded here) or an int array [B, L].
    `mesh`: run sharded over a (data, model) mesh (`d2cache_jax.sharding`); the batch is padded with
    copies of the last prompt to a multiple of the data axis.
    `options`: keyword arguments named like the flags of `experiments.generate` (see GenOptions);
    options not given take the model family's defaults (Dream: top_p 0.9), then GenOptions'.
    """
    opts = make_options(**{**family_defaults(config.family), **options})
    state = prepare(config, prompt_ids, opts, attention_mask, 1 if mesh is None else mesh.shape["data"])
    n_prompts = len(prompt_ids)
    if mesh is not None:
        params, state = sharding.place(config, opts, params, state, mesh)
    t0 = time.perf_counter()
    compiled = lower(config, opts, params, state).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if opts.loop == "device":
        state = jax.block_until_ready(compiled(params, state))
    else:
        state = _host_loop(compiled, params, state, opts, progress)
    wall_s = time.perf_counter() - t0
    return _result(config, opts, state, wall_s, compile_s, n_prompts)


def _host_loop(compiled, params, state: GenState, opts: GenOptions, progress: bool) -> GenState:
    limit = step_lib.max_steps(opts)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=opts.gen_length, desc="denoising", unit="tok")
    for _ in range(limit):
        state = compiled(params, state)
        done, block, committed = jax.device_get((state.done, state.block, (state.commit_step >= 0).sum(-1)))
        if bar is not None:
            bar.n = int(committed.min())
            bar.refresh()
        if done.all() or block >= opts.num_blocks:
            break
    if bar is not None:
        bar.close()
    return state


def _result(cfg: ModelConfig, opts: GenOptions, state: GenState, wall_s: float, compile_s: float,
            n_prompts: int | None = None):
    tokens, commit, conf, steps, rows, selected, overflow, head_rows = sharding.to_host(
        (state.tokens[:, -opts.gen_length:], state.commit_step, state.commit_conf, state.step,
         state.rows_computed, state.rows_selected, state.overflow, state.head_rows))
    tokens, commit, conf = tokens[:n_prompts], commit[:n_prompts], conf[:n_prompts]  # drop rows padded for the mesh
    tokens = np.asarray(tokens, np.int32).copy()
    lengths = first_stop(cfg, tokens)
    masked = tokens == cfg.mask_token_id
    masked_left = masked.sum(-1)
    masks_before_eos = (masked & (np.arange(tokens.shape[1]) < lengths[:, None])).sum(-1)
    if masks_before_eos.any():
        bad = np.nonzero(masks_before_eos)[0]
        log.warning("generation stopped with %d masked positions before the first EOS in %d of %d sequences "
                    "(first: sequence %d, %d positions); they are returned as eos", int(masks_before_eos.sum()),
                    len(bad), len(tokens), int(bad[0]), int(masks_before_eos[bad[0]]))
    # Positions left masked (never committed) read as eos.
    tokens[masked] = cfg.eos_token_id
    steps = int(steps)
    tps = []
    for r in range(tokens.shape[0]):
        n = int(lengths[r]) or opts.gen_length
        last = int(commit[r, :n].max()) + 1 if n else 1
        tps.append(n / max(last, 1))
    committed = int((commit >= 0).sum())
    stats = dict(
        steps=steps,
        forward_passes=steps * (2 if opts.cfg_scale > 0 else 1),
        tokens_per_step=float(np.mean(tps)),
        tokens_per_step_per_seq=[float(x) for x in tps],
        committed_per_step=committed / max(steps * tokens.shape[0], 1),
        steps_per_seq=[int(commit[r].max()) + 1 for r in range(tokens.shape[0])],
        generated_tokens=int(lengths.sum()),
        wall_s=wall_s,
        compile_s=compile_s,
        tokens_per_s=float(lengths.sum()) / wall_s if wall_s > 0 else 0.0,
        recompute_share=float(rows) / max(steps, 1),  # rows run through the layers (padded slots too)
        selected_share=float(selected) / max(steps, 1),  # rows the cache selected
        head_rows=float(head_rows),  # rows given the output head, per sequence, over the generation
        overflow_rows=int(overflow),
        masked_left=[int(x) for x in masked_left],  # positions never committed, per sequence
        masked_left_total=int(masked_left.sum()),
        masks_before_eos=[int(x) for x in masks_before_eos],  # of those, before the first stop token
        cache=opts.cache,
        decoder=opts.decoder,
    )
    return GenerateResult(tokens=tokens, lengths=lengths, stats=stats, commit_step=np.asarray(commit, np.int32),
                          commit_conf=np.asarray(conf, np.float32))


@functools.cache
def step_fn(config: ModelConfig, opts: GenOptions):
    """The jitted `state -> state` step for these static settings (for tests and tools)."""
    return functools.partial(_step_jit, config, _static(opts))
