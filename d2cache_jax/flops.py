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


def _block_steps(opts: GenOptions, steps: int) -> list[int]:
    """Steps taken in each block: `steps` spread over the blocks, earlier blocks taking the remainder."""
    nb = opts.num_blocks
    return [steps // nb + (1 if i < steps % nb else 0) for i in range(nb)]


def _prefix_rows(cfg: ModelConfig, opts: GenOptions, block: int) -> int:
    """Rows a prefix/dual partial step runs in `block`: the query set padded to its compiled capacity."""
    from d2cache_jax.cache import prefix

    n = int(prefix.query_count(cfg, opts, block))
    return next(c for c in prefix.capacities(cfg, opts) if c >= n)


def _dllm_layers(cfg: ModelConfig, opts: GenOptions, n: int, p: int, t: int) -> float:
    """dLLM-Cache step n's layers: layer 0 in full; the others by kind (n % kp, n % kr)."""
    from d2cache_jax.cache import dllm

    g, k = opts.gen_length, dllm.num_adaptive(opts)
    rp, rr = n % opts.kp == 0, n % opts.kr == 0
    if rr:
        rest = layer_flops(cfg, t if rp else g, t)
    elif opts.rou == 0:
        rest = layer_flops(cfg, p, t) if rp else 0.0
    else:
        rest = v_proj_flops(cfg, g) + layer_flops(cfg, (p if rp else 0) + k, t)
    return layer_flops(cfg, t, t) + (cfg.n_layers - 1) * rest


def _masked_before_steps(size: int, n: int) -> list[int]:
    """Masked positions of a `size`-position block before each of its n steps, when they commit
    size // n tokens each and the first size % n steps one more (the vanilla schedule)."""
    left, out = size, []
    for i in range(n):
        out.append(left)
        left -= size // n + (1 if i < size % n else 0)
    return out


def _head_fit(cfg: ModelConfig, rows: int, masked: int) -> int:
    """The head rows a step runs: the smallest compiled bucket (of at most `rows`) holding `masked`."""
    from d2cache_jax.generation.decodable import model_buckets

    sizes = model_buckets(cfg, rows)
    return next((b for b in sizes if b >= masked), rows) if masked > 0 else sizes[0]


def generation_flops(cfg: ModelConfig, opts: GenOptions, prompt_len: int, steps: int | None = None,
                     later_rows: float | None = None, batch: int = 1, head_rows: float | None = None) -> float:
    """FLOPs of one generation of `steps` steps (default: the schedule's) with `opts.cache`.

    Layers: none runs all T rows every step. prefix/dual: a block's first step is a full pass, its
    later steps run the query rows (dual: the block; prefix: the block and all later positions)
    padded to the compiled capacity. dllm: layer 0 in full, the others by step kind. d2cache: step 0
    full, later steps `later_rows` rows (the measured mean bucket; default the capacity Q).
    Head: `head_rows` (rows given the head per sequence over the generation, as measured), or by
    default the vanilla schedule's count: each step heads the still-masked positions of its block
    padded to a head bucket (`generation.decodable`); d2Cache's later steps at most min(rows, H) of
    them (an upper bound).
    """
    g = opts.gen_length
    t = prompt_len + g
    steps = opts.total_steps if steps is None else steps
    per_block = _block_steps(opts, steps)
    heads = [_head_fit(cfg, opts.block, m) for n in per_block for m in _masked_before_steps(opts.block, n)]
    if opts.cache == "none":
        layers = steps * cfg.n_layers * layer_flops(cfg, t, t)
    elif opts.cache in ("prefix", "dual"):
        layers = 0.0
        for block, n in enumerate(per_block):
            if n:
                later = cfg.n_layers * layer_flops(cfg, _prefix_rows(cfg, opts, block), t) if opts.block > 1 else 0.0
                layers += cfg.n_layers * layer_flops(cfg, t, t) + (n - 1) * later
    elif opts.cache == "dllm":
        layers = sum(_dllm_layers(cfg, opts, n, prompt_len, t) for n in range(steps))
    elif opts.cache == "d2cache":
        from d2cache_jax.cache import d2cache

        q, h = d2cache.budgets(opts, t)
        top = d2cache.row_buckets(opts, t)[-1]
        rows = q if later_rows is None else later_rows
        layers = cfg.n_layers * (layer_flops(cfg, t, t) + (steps - 1) * layer_flops(cfg, rows, t))
        masked = _masked_before_steps(g, steps)
        heads = [g] + [_head_fit(cfg, min(top, g), min(m, int(min(rows, h)))) for m in masked[1:]]
    else:
        raise ValueError(f"no FLOP formula for cache {opts.cache!r}")
    head = head_flops(cfg, sum(heads) if head_rows is None else head_rows)
    return batch * (layers + head)


def param_bytes(cfg: ModelConfig, bytes_per_param: int | None = None) -> int:
    """Bytes streamed from memory to read every weight once (the bs-1 step's lower bound)."""
    bpp = bytes_per_param or (2 if cfg.param_dtype == "bfloat16" else 4)
    return num_params(cfg) * bpp
