"""Generation options: one frozen, hashable dataclass (a static argument of the jitted step)."""

from __future__ import annotations

import dataclasses
from typing import Any

from d2cache_jax.decoding import DECODERS
from d2cache_jax.decoding.sampling import CONFIDENCE_KINDS

CACHES = ("none", "prefix", "dual", "dllm", "d2cache")
SCHEDULES = ("steps", "num_transfer_tokens", "dream")


@dataclasses.dataclass(frozen=True)
class GenOptions:
    """Everything that shapes a generation. Names match the flags of `experiments.generate`."""

    gen_length: int = 128
    steps: int | None = None  # LLaDA/Dream step count; None -> gen_length
    num_transfer_tokens: int | None = None  # upstream HEAD: fixed tokens per step (overrides steps)
    block_length: int | None = None  # None -> gen_length (d2cache) or as given
    decoder: str = "vanilla"  # vanilla | threshold | factor | eb | dream | origin
    remasking: str = "low_confidence"  # low_confidence | random (LLaDA)
    alg: str | None = None  # confidence kind: maskgit_plus | topk_margin | entropy | random
    alg_temp: float = 0.0
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    threshold: float = 0.9
    factor: float = 1.0
    gamma: float = 1e-3
    sigma: float | None = None  # certainty-prior decoding; None -> 10 with d2cache, else off
    sampling: str = "categorical"  # categorical | gumbel (LLaDA reference)
    cfg_scale: float = 0.0
    stop_at_eos: bool = False
    bf16_confidence: bool = False
    upstream_compat: bool = False
    seed: int = 0
    # caches
    cache: str = "none"
    kp: int = 50  # dLLM-Cache's (kp, kr): upstream's default for settings its table does not list
    kr: int = 4
    rou: float = 0.25
    rollout_p: float = 0.1
    current_k: int = 32
    cache_sigma: float = 10.0
    inflate_w: int = 4
    capacity: int | None = None  # rows recomputed per step by a selective cache; None -> from settings
    # runtime
    loop: str = "device"  # device: one lax.while_loop; host: a Python loop (progress bar)
    prompt_bucket: int = 16  # prompt lengths are padded to multiples of this that grow by prompt_growth
    prompt_growth: float = 1.5  # (see `state.bucket_length`); 1 = every multiple of prompt_bucket

    # --- derived ---
    @property
    def block(self) -> int:
        return self.block_length or self.gen_length

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block

    @property
    def total_steps(self) -> int:
        return self.steps or self.gen_length

    @property
    def steps_per_block(self) -> int:
        return max(self.total_steps // self.num_blocks, 1)

    @property
    def schedule(self) -> str:
        if self.num_transfer_tokens:
            return "num_transfer_tokens"
        return "dream" if self.decoder in ("dream", "origin") else "steps"

    @property
    def confidence_kind(self) -> str:
        if self.alg:
            return self.alg
        return "random" if self.remasking == "random" else "maskgit_plus"

    @property
    def cp_sigma(self) -> float:
        """Certainty-prior decoding width (0 = off)."""
        if self.sigma is None:
            return 10.0 if self.cache == "d2cache" else 0.0
        return float(self.sigma)


# Generation defaults of each model family, as upstream runs it (ALGORITHMS.md 4.3): Dream filters its
# proposals with top-p 0.9, also at temperature 0 (its confidence is then renormalised over the nucleus).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {"llada": {}, "dream": {"top_p": 0.9}}


def family_defaults(family: str) -> dict[str, Any]:
    """Options a model family generates with unless the caller sets them (`generate`, every script)."""
    return dict(FAMILY_DEFAULTS.get(family, {}))


def make_options(**kw: Any) -> GenOptions:
    """Build and validate options from keyword arguments; every problem is a ValueError naming it."""
    names = {f.name for f in dataclasses.fields(GenOptions)}
    unknown = sorted(set(kw) - names)
    if unknown:
        raise ValueError(f"unknown generation option(s): {', '.join(unknown)}")
    if kw.get("cache") == "d2cache" and kw.get("block_length") is None:
        kw["block_length"] = kw.get("gen_length", GenOptions.gen_length)
    o = GenOptions(**kw)
    validate(o)
    return o


def validate(o: GenOptions) -> None:
    def bad(msg):
        raise ValueError(msg)

    if o.gen_length <= 0:
        bad(f"gen_length must be positive, got {o.gen_length}")
    if o.block <= 0 or o.gen_length % o.block:
        bad(f"gen_length={o.gen_length} is not divisible by block_length={o.block}")
    if o.num_transfer_tokens is not None and o.num_transfer_tokens <= 0:
        bad(f"num_transfer_tokens must be positive, got {o.num_transfer_tokens}")
    if o.steps is not None and o.steps <= 0:
        bad(f"steps must be positive, got {o.steps}")
    if o.schedule != "num_transfer_tokens":
        if o.total_steps % o.num_blocks:
            bad(f"steps={o.total_steps} is not divisible by the number of blocks {o.num_blocks} "
                f"(gen_length={o.gen_length}, block_length={o.block})")
        if o.steps_per_block > o.block and o.schedule == "steps":
            bad(f"steps per block ({o.steps_per_block}) exceeds block_length={o.block}")
    if o.decoder not in DECODERS:
        bad(f"unknown decoder {o.decoder!r}; known: {', '.join(DECODERS)}")
    if o.remasking not in ("low_confidence", "random"):
        bad(f"unknown remasking {o.remasking!r}; known: low_confidence, random")
    if o.alg is not None and o.alg not in CONFIDENCE_KINDS:
        bad(f"unknown alg {o.alg!r}; known: {', '.join(CONFIDENCE_KINDS)}")
    if o.temperature < 0:
        bad(f"temperature must be >= 0, got {o.temperature}")
    if o.top_p is not None and not 0 < o.top_p <= 1:
        bad(f"top_p must be in (0, 1], got {o.top_p}")
    if o.top_k is not None and o.top_k < 0:
        bad(f"top_k must be >= 0, got {o.top_k}")
    if o.sampling not in ("categorical", "gumbel"):
        bad(f"unknown sampling {o.sampling!r}; known: categorical, gumbel")
    if o.cache not in CACHES:
        bad(f"unknown cache {o.cache!r}; known: {', '.join(CACHES)}")
    if o.cfg_scale and o.cache != "none":
        bad("cfg_scale > 0 (classifier-free guidance) is supported with cache=none only")
    if o.cfg_scale < 0:
        bad(f"cfg_scale must be >= 0, got {o.cfg_scale}")
    if o.sigma is not None and o.sigma < 0:
        bad(f"sigma must be >= 0, got {o.sigma}")
    if o.loop not in ("device", "host"):
        bad(f"loop must be device or host, got {o.loop!r}")
    if o.kp <= 0 or o.kr <= 0:
        bad(f"kp and kr must be positive, got kp={o.kp} kr={o.kr}")
    if not 0 <= o.rou <= 1:
        bad(f"rou must be in [0, 1], got {o.rou}")
    if not 0 < o.rollout_p <= 1:
        bad(f"rollout_p must be in (0, 1], got {o.rollout_p}")
    if o.current_k <= 0:
        bad(f"current_k must be positive, got {o.current_k}")
    if o.inflate_w < 0:
        bad(f"inflate_w must be >= 0, got {o.inflate_w}")
    if o.capacity is not None and o.capacity <= 0:
        bad(f"capacity must be positive, got {o.capacity}")
    if o.prompt_bucket < 0:
        bad(f"prompt_bucket must be >= 0, got {o.prompt_bucket}")
    if not 1 <= o.prompt_growth < float("inf"):
        bad(f"prompt_growth must be a finite number >= 1, got {o.prompt_growth}")
