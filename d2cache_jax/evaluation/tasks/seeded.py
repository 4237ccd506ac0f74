"""Seeded train/held-out splits shared by the synthetic tasks: item seeds, draws and training rows.

An item is a pure function of its seed. Train and held-out seeds come from disjoint ranges, and each
task also rejection-samples its problems into a hash bucket (held-out: bucket 0, train: never), so
the two splits share neither seeds nor problems.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

TRAIN_SEED_RANGE = (0, 2**40)
EVAL_SEED_RANGE = (2**40, 2**41)
SPLITS = ("train", "eval")
STREAM_LEN = 2**24  # item seeds owned by one stream seed

T = TypeVar("T")


def seed_range(split: str) -> tuple[int, int]:
    """[lo, hi) of the item seeds of `split`; a clear error for an unknown split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return TRAIN_SEED_RANGE if split == "train" else EVAL_SEED_RANGE


def item_seeds(split: str, n: int, seed: int = 0) -> list[int]:
    """The n item seeds of a stream: stream `seed` owns a run of STREAM_LEN consecutive item seeds."""
    lo, hi = seed_range(split)
    start = lo + seed * STREAM_LEN
    if n > STREAM_LEN or start + n > hi:
        raise ValueError(f"stream seed {seed} with n={n} leaves the {split} seed range")
    return list(range(start, start + n))


def draw_in_split(seed: int, split: str, draw: Callable[[np.random.Generator], T],
                  held_out: Callable[[T], bool]) -> T:
    """The first problem `draw` makes from seed `seed` that falls in `split` (`held_out` says eval)."""
    lo, hi = seed_range(split)
    if not lo <= seed < hi:
        raise ValueError(f"seed {seed} is outside the {split} seed range [{lo}, {hi})")
    rng = np.random.default_rng(seed)
    while True:
        problem = draw(rng)
        if held_out(problem) == (split == "eval"):
            return problem


def training_sequence(prompt_ids: list[int], answer_ids: list[int], total_len: int,
                      eos_id: int) -> tuple[np.ndarray, int]:
    """prompt + answer, EOS-filled to total_len (at least one EOS); also returns the prompt length."""
    used = len(prompt_ids) + len(answer_ids)
    if used + 1 > total_len:
        raise ValueError(f"item needs {used + 1} tokens, total_len is {total_len}")
    return np.array(prompt_ids + answer_ids + [eos_id] * (total_len - used), np.int32), len(prompt_ids)
