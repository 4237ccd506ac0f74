"""Generation and cache flags shared by the experiment scripts; names match `d2cache_jax.generate`."""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import app, flags

from d2cache_jax.decoding import DECODERS
from d2cache_jax.generation.options import CACHES, GenOptions, make_options

_D = GenOptions()

GEN_LENGTH = flags.DEFINE_integer("gen_length", None, "Tokens to generate (default: the model's/task's).")
STEPS = flags.DEFINE_integer("steps", None, "Denoising steps (LLaDA split over blocks); default gen_length.")
NUM_TRANSFER_TOKENS = flags.DEFINE_integer(
    "num_transfer_tokens", None, "Fixed tokens per step (upstream HEAD); overrides --steps.")
BLOCK_LENGTH = flags.DEFINE_integer("block_length", None, "Semi-autoregressive block length.")
DECODER = flags.DEFINE_enum("decoder", _D.decoder, list(DECODERS), "Decoder.")
REMASKING = flags.DEFINE_enum("remasking", _D.remasking, ["low_confidence", "random"], "LLaDA remasking.")
ALG = flags.DEFINE_enum("alg", None, ["maskgit_plus", "topk_margin", "entropy", "random"],
                        "Confidence kind (Dream's alg).")
ALG_TEMP = flags.DEFINE_float("alg_temp", _D.alg_temp, "Dream: sample positions from softmax(conf/alg_temp).")
TEMPERATURE = flags.DEFINE_float("temperature", _D.temperature, "Sampling temperature (0 = greedy).")
TOP_P = flags.DEFINE_float("top_p", None, "Nucleus filter (Dream default 0.9).")
TOP_K = flags.DEFINE_integer("top_k", None, "Top-k filter.")
THRESHOLD = flags.DEFINE_float("threshold", _D.threshold, "Confidence threshold (decoder=threshold).")
FACTOR = flags.DEFINE_float("factor", _D.factor, "Factor (decoder=factor).")
GAMMA = flags.DEFINE_float("gamma", _D.gamma, "Entropy bound (decoder=eb).")
SIGMA = flags.DEFINE_float("sigma", None, "Certainty-prior decoding width; default 10 with d2cache, 0 = off.")
SAMPLING = flags.DEFINE_enum("sampling", _D.sampling, ["categorical", "gumbel"], "Sampling at temperature > 0.")
CFG_SCALE = flags.DEFINE_float("cfg_scale", _D.cfg_scale, "Classifier-free guidance scale (cache=none).")
STOP_AT_EOS = flags.DEFINE_bool("stop_at_eos", _D.stop_at_eos, "Stop decoding past the first EOS.")
BF16_CONFIDENCE = flags.DEFINE_bool("bf16_confidence", _D.bf16_confidence, "Round probabilities to bf16.")
UPSTREAM_COMPAT = flags.DEFINE_bool("upstream_compat", _D.upstream_compat,
                                    "Reproduce upstream HEAD's d2Cache behaviour (bugs #1-#3).")
SEED = flags.DEFINE_integer("seed", _D.seed, "Random seed.")
CACHE = flags.DEFINE_enum("cache", _D.cache, list(CACHES), "Cache method.")
KP = flags.DEFINE_integer("kp", _D.kp, "dLLM-Cache: prompt refresh interval.")
KR = flags.DEFINE_integer("kr", _D.kr, "dLLM-Cache: response refresh interval.")
ROU = flags.DEFINE_float("rou", _D.rou, "dLLM-Cache: share of response rows refreshed by V-verify.")
ROLLOUT_P = flags.DEFINE_float("rollout_p", _D.rollout_p, "d2Cache: nucleus mass of rollout selection.")
CURRENT_K = flags.DEFINE_integer("current_k", _D.current_k, "d2Cache: masked rows recomputed per step.")
CACHE_SIGMA = flags.DEFINE_float("cache_sigma", _D.cache_sigma, "d2Cache: certainty density sigma (stage 1).")
INFLATE_W = flags.DEFINE_integer("inflate_w", _D.inflate_w, "d2Cache: fill gaps up to this width.")
CAPACITY = flags.DEFINE_integer("capacity", None, "Rows a selective cache recomputes per step (override).")
LOOP = flags.DEFINE_enum("loop", _D.loop, ["device", "host"], "Step loop on device or host (progress bar).")

_ALL = [GEN_LENGTH, STEPS, NUM_TRANSFER_TOKENS, BLOCK_LENGTH, DECODER, REMASKING, ALG, ALG_TEMP, TEMPERATURE,
        TOP_P, TOP_K, THRESHOLD, FACTOR, GAMMA, SIGMA, SAMPLING, CFG_SCALE, STOP_AT_EOS, BF16_CONFIDENCE,
        UPSTREAM_COMPAT, SEED, CACHE, KP, KR, ROU, ROLLOUT_P, CURRENT_K, CACHE_SIGMA, INFLATE_W, CAPACITY, LOOP]


def generation_options(defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Options from the flags: values the user set win, then `defaults` (task/model), then GenOptions'."""
    opts = dict(defaults or {})
    for f in _ALL:
        if f.present or (f.name not in opts and f.value is not None):
            opts[f.name] = f.value
    return opts


def checked_options(defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """`generation_options`, validated; a bad combination is a usage error that names it."""
    opts = generation_options(defaults)
    try:
        make_options(**opts)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    return opts


FIELD_NAMES = {f.name for f in dataclasses.fields(GenOptions)}
