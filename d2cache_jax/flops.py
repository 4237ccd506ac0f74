"""Analytic FLOP and byte counts of a denoising step (for rooflines and benchmark efficiency).

FLOPs count the matmuls (projections, attention scores and weighted values, MLP, output head) as
2 x multiply-adds; norms, RoPE, softmax, gathers, scatters, the proposal and the selection rules are
left out (they are the per-phase profile's business). `generation_flops` gives the work of one whole
generation per cache method, as the implementation runs it (padded slots of a compiled row count
included), so `none / method` is the speedup a purely FLOP-bound machine would show.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from d2cache_jax.config import ModelConfig
from d2cache_jax.params import num_params

if TYPE_CHECKING:
    from d2cache_jax.generation.options import GenOptions


def layer_flops(cfg: ModelConfig, rows: float, keys: int) -> float:
    """Multiply-adds x2 of one layer recomputing `rows` rows that attend over `keys` keys."""
    d, h, kv, hd, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_hidden
    proj = 2 * rows * d * (h * hd + 2 * kv * hd) + 2 * rows * h * hd * d
    attn = 2 * 2 * rows * keys * h * hd  # scores and weighted values
    ffn = 2 * rows * d * f * 3
    return proj + attn + ffn


def head_flops(cfg: ModelConfig, rows: float) -> float:
    """The output head on `rows` rows: 2 rows d V."""
    return 2 * rows * cfg.d_model * cfg.vocab_size


def v_proj_flops(cfg: ModelConfig, rows: float) -> float:
    """dLLM-Cache's V-verify: the V projection alone on `rows` rows."""
    return 2 * rows * cfg.d_model * cfg.n_kv_heads * cfg.head_dim


def step_flops(cfg: ModelConfig, seq_len: int, rows: float, head_rows: float, batch: int = 1) -> float:
    """One step: every layer on `rows` of `seq_len` positions, the output head on `head_rows`."""
    return batch * (cfg.n_layers * layer_flops(cfg, rows, seq_len) + head_flops(cfg, head_rows))


def _block_steps(opts: GenOptions, steps: int) -> list[int]:
    """Steps taken in each block: `steps` spread over the blocks, earlier blocks taking the remainder."""
    nb = opts.num_blocks
    return [steps // nb + (1 if i < steps % nb else 0) for i in range(nb)]


def _prefix_rows(cfg: ModelConfig, opts: GenOptions, block: int) -> int:
    """Rows a prefix/dual partial step runs in `block`: the query set padded to its compiled capacity."""
    from d2cache_jax.cache import prefix

    n = int(prefix.query_count(cfg, opts, block))
    return next(c for c in prefix.capacities(cfg, opts) if c >= n)


def _dllm_step(cfg: ModelConfig, opts: GenOptions, n: int, p: int, t: int) -> float:
    """dLLM-Cache step n: layer 0 in full; the others by kind (n % kp, n % kr); head on the block's rows."""
    from d2cache_jax.cache import dllm

    g, k = opts.gen_length, dllm.num_adaptive(opts)
    rp, rr = n % opts.kp == 0, n % opts.kr == 0
    if rr:
        rest = layer_flops(cfg, t if rp else g, t)
    elif opts.rou == 0:
        rest = layer_flops(cfg, p, t) if rp else 0.0
    else:
        rest = v_proj_flops(cfg, g) + layer_flops(cfg, (p if rp else 0) + k, t)
    return layer_flops(cfg, t, t) + (cfg.n_layers - 1) * rest + head_flops(cfg, opts.block)


def generation_flops(cfg: ModelConfig, opts: GenOptions, prompt_len: int, steps: int | None = None,
                     later_rows: float | None = None, batch: int = 1) -> float:
    """FLOPs of one generation of `steps` steps (default: the schedule's) with `opts.cache`.

    none: every layer on all T rows, the head on the block's rows. prefix/dual: a block's first step
    is a full pass, its later steps run the query rows (dual: the block; prefix: the block and all
    later positions) padded to the compiled capacity; the head on the block's rows. dllm: see
    `_dllm_step`. d2cache: step 0 full with the head on all G gen rows; later steps `later_rows` rows
    (the measured mean bucket; default the capacity Q) through the layers and the head on
    min(later_rows, H) of them (H = min(Q, G); an upper bound when the bucket varies across H).
    """
    g = opts.gen_length
    t = prompt_len + g
    steps = opts.total_steps if steps is None else steps
    if opts.cache == "none":
        total = steps * step_flops(cfg, t, t, opts.block)
    elif opts.cache in ("prefix", "dual"):
        total = 0.0
        for block, n in enumerate(_block_steps(opts, steps)):
            if n:
                later = step_flops(cfg, t, _prefix_rows(cfg, opts, block), opts.block) if opts.block > 1 else 0.0
                total += step_flops(cfg, t, t, opts.block) + (n - 1) * later
    elif opts.cache == "dllm":
        total = sum(_dllm_step(cfg, opts, n, prompt_len, t) for n in range(steps))
    elif opts.cache == "d2cache":
        from d2cache_jax.cache import d2cache

        q, h = d2cache.budgets(opts, t)
        rows = q if later_rows is None else later_rows
        total = step_flops(cfg, t, t, g) + (steps - 1) * step_flops(cfg, t, rows, min(rows, h))
    else:
        raise ValueError(f"no FLOP formula for cache {opts.cache!r}")
    return batch * total


def param_bytes(cfg: ModelConfig, bytes_per_param: int | None = None) -> int:
    """Bytes streamed from memory to read every weight once (the bs-1 step's lower bound)."""
    bpp = bytes_per_param or (2 if cfg.param_dtype == "bfloat16" else 4)
    return num_params(cfg) * bpp
