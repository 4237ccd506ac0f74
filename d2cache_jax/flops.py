"""Analytic FLOP and byte counts of a denoising step (for rooflines and benchmark efficiency)."""

from __future__ import annotations

from d2cache_jax.config import ModelConfig
from d2cache_jax.params import num_params


def layer_flops(cfg: ModelConfig, rows: int, keys: int) -> int:
    """Multiply-adds x2 of one layer recomputing `rows` rows that attend over `keys` keys."""
    d, h, kv, hd, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_hidden
    proj = 2 * rows * d * (h * hd + 2 * kv * hd) + 2 * rows * h * hd * d
    attn = 2 * 2 * rows * keys * h * hd  # scores and weighted values
    ffn = 2 * rows * d * f * 3
    return proj + attn + ffn


def step_flops(cfg: ModelConfig, seq_len: int, rows: int, head_rows: int, batch: int = 1) -> int:
    """One step: every layer on `rows` of `seq_len` positions, the output head on `head_rows`."""
    return batch * (cfg.n_layers * layer_flops(cfg, rows, seq_len) + 2 * head_rows * cfg.d_model * cfg.vocab_size)


def param_bytes(cfg: ModelConfig, bytes_per_param: int | None = None) -> int:
    """Bytes streamed from memory to read every weight once (the bs-1 step's lower bound)."""
    bpp = bytes_per_param or (2 if cfg.param_dtype == "bfloat16" else 4)
    return num_params(cfg) * bpp
