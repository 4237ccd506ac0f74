"""Allowed types and ranges of generation option values, shared by every entry point that reads them
(flags, generation-defaults files, the benchmark's --options); no flags are defined here."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from d2cache_jax.generation.options import GenOptions

FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(GenOptions))
SEED_MAX = 2**32 - 1  # jax.random.key keeps 32 bits without jax_enable_x64: larger seeds would collide
BOOLS = ("stop_at_eos", "bf16_confidence", "upstream_compat")


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# option -> (type check, range check, what is allowed); None is allowed where the option's default is None.
_POS_INT = (_integer, lambda v: v >= 1, "an integer >= 1")
RULES: dict[str, tuple[Any, Any, str]] = {
    "gen_length": _POS_INT, "steps": _POS_INT, "num_transfer_tokens": _POS_INT, "block_length": _POS_INT,
    "kp": _POS_INT, "kr": _POS_INT, "current_k": _POS_INT, "capacity": _POS_INT,
    "top_k": (_integer, lambda v: v >= 0, "an integer >= 0"),
    "inflate_w": (_integer, lambda v: v >= 0, "an integer >= 0"),
    "prompt_bucket": (_integer, lambda v: v >= 0, "an integer >= 0"),
    "prompt_growth": (_number, lambda v: v >= 1, "a finite number >= 1"),
    "seed": (_integer, lambda v: 0 <= v <= SEED_MAX, f"an integer in [0, {SEED_MAX}]"),
    "threshold": (_number, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "top_p": (_number, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "rou": (_number, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "rollout_p": (_number, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "temperature": (_number, lambda v: v >= 0, "a finite number >= 0"),
    "alg_temp": (_number, lambda v: v >= 0, "a finite number >= 0"),
    "gamma": (_number, lambda v: v >= 0, "a finite number >= 0"),
    "sigma": (_number, lambda v: v >= 0, "a finite number >= 0"),
    "cfg_scale": (_number, lambda v: v >= 0, "a finite number >= 0"),
    "factor": (_number, lambda v: v > 0, "a finite number > 0"),
    "cache_sigma": (_number, lambda v: v > 0, "a finite number > 0"),
}


def problem(name: str, value: Any) -> str | None:
    """What is wrong with one option's value ("must be ..."), or None if it is allowed."""
    if name in BOOLS:
        return None if isinstance(value, bool) else "must be true or false"
    if name in RULES and value is not None:
        is_type, in_range, allowed = RULES[name]
        if not is_type(value) or not in_range(value):
            return f"must be {allowed}"
    return None
