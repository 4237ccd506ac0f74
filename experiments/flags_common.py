"""Generation and cache flags shared by the experiment scripts; names match `d2cache_jax.generate`."""

from __future__ import annotations

from typing import Any

from absl import app, flags

from d2cache_jax.cli import InputError
from d2cache_jax.decoding import DECODERS
from d2cache_jax.generation import option_values
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
                                    "Reproduce upstream HEAD (its bugs and numerics; README table).")
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
PROMPT_BUCKET = flags.DEFINE_integer(
    "prompt_bucket", None, f"Prompts are left-padded to multiples of this (default {_D.prompt_bucket}) that grow "
                           "geometrically by --prompt_growth, so few shapes are compiled; 0 = no padding.")
PROMPT_GROWTH = flags.DEFINE_float(
    "prompt_growth", None, f"Growth of the padded prompt lengths (default {_D.prompt_growth}; 1 = every "
                           "multiple of --prompt_bucket, more compiles and less padding).")
LOOP = flags.DEFINE_enum("loop", _D.loop, ["device", "host"], "Step loop on device or host (progress bar).")

_ALL = [GEN_LENGTH, STEPS, NUM_TRANSFER_TOKENS, BLOCK_LENGTH, DECODER, REMASKING, ALG, ALG_TEMP, TEMPERATURE,
        TOP_P, TOP_K, THRESHOLD, FACTOR, GAMMA, SIGMA, SAMPLING, CFG_SCALE, STOP_AT_EOS, BF16_CONFIDENCE,
        UPSTREAM_COMPAT, SEED, CACHE, KP, KR, ROU, ROLLOUT_P, CURRENT_K, CACHE_SIGMA, INFLATE_W, CAPACITY, LOOP,
        PROMPT_BUCKET, PROMPT_GROWTH]


def generation_options(defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Options from the flags: values the user set win, then `defaults` (task/model), then GenOptions'."""
    opts = dict(defaults or {})
    for f in _ALL:
        if f.present or (f.name not in opts and f.value is not None):
            opts[f.name] = f.value
    return opts


def _named(name: str, value: Any, source: str | None) -> str:
    """How an option is named in an error: the flag the user set, or the field of the defaults' source."""
    flag = next((f for f in _ALL if f.name == name), None)
    if flag is not None and flag.present or source is None:
        return f"--{name}={value}"
    return f"{name}={value!r} in {source}"


def check_values(opts: dict[str, Any], source: str | None = None) -> None:
    """Every option's type and range (NaN and infinities are refused); InputError naming the flag, or
    the field of `source` (where defaults not set by a flag came from), and what is allowed."""
    for name, value in opts.items():
        wrong = option_values.problem(name, value)
        if wrong:
            raise InputError(f"{_named(name, value, source)}: {wrong}")


def checked_options(defaults: dict[str, Any] | None = None, source: str | None = None) -> dict[str, Any]:
    """`generation_options`, validated; a bad value or combination is a usage error that names it.

    `source` says where `defaults` came from (a file, or the task) for errors about values no flag set."""
    opts = generation_options(defaults)
    check_values(opts, source)
    try:
        make_options(**opts)
    except ValueError as e:
        from_defaults = sorted(k for k in (defaults or {}) if not any(f.name == k and f.present for f in _ALL))
        where = f" (with {', '.join(from_defaults)} from {source})" if source and from_defaults else ""
        raise app.UsageError(f"{e}{where}") from e
    return opts


def check_context(cfg: Any, opts: dict[str, Any], prompt_tokens: int, checkpoint: str) -> None:
    """The longest prompt plus gen_length must fit the model's context; a usage error says the limit."""
    gen_length = opts.get("gen_length", _D.gen_length)
    room = cfg.max_seq_len - prompt_tokens
    if prompt_tokens + gen_length <= cfg.max_seq_len:
        return
    if room < 1:
        raise app.UsageError(f"the prompt has {prompt_tokens} tokens; the model's context ({checkpoint}) is "
                             f"{cfg.max_seq_len} tokens, which leaves no room to generate")
    flag = "--gen_length" if GEN_LENGTH.present else "gen_length (not set by --gen_length)"
    raise app.UsageError(f"{flag}={gen_length} plus the prompt's {prompt_tokens} tokens exceeds the model's "
                         f"context of {cfg.max_seq_len} tokens ({checkpoint}): use --gen_length <= {room}")


FIELD_NAMES = option_values.FIELD_NAMES
