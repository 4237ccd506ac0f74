"""Paired comparison of two runs on the same items: how many answers each gets right that the other
gets wrong, and the exact two-sided McNemar p-value, so a cache's accuracy loss against no cache can
be told from the noise of a finite item set."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple


class Paired(NamedTuple):
    """Over the items both runs answered: `lost` right only in the baseline, `gained` right only in
    the run, `n` items paired, `p` the exact McNemar p-value of lost against gained."""

    lost: int
    gained: int
    n: int
    p: float


def exact_mcnemar(lost: int, gained: int) -> float:
    """Two-sided exact McNemar test: 2 P(X <= min) for X ~ Binomial(lost + gained, 1/2), at most 1."""
    n = lost + gained
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(lost, gained) + 1))
    return min(1.0, 2 * tail / 2**n)


def compare(baseline: Sequence[dict[str, Any]], run: Sequence[dict[str, Any]]) -> Paired:
    """Pair two runs' sample records by item `index` (items only one run holds are left out)."""
    base = {r["index"]: bool(r["correct"]) for r in baseline if r.get("correct") is not None}
    other = {r["index"]: bool(r["correct"]) for r in run if r.get("correct") is not None}
    common = base.keys() & other.keys()
    lost = sum(1 for i in common if base[i] and not other[i])
    gained = sum(1 for i in common if other[i] and not base[i])
    return Paired(lost, gained, len(common), exact_mcnemar(lost, gained))
