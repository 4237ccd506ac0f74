"""What every decoder receives: per gen position scores and eligibility, per row a token budget."""

from __future__ import annotations

from typing import NamedTuple

import jax


class DecodeInputs(NamedTuple):
    score: jax.Array  # [B, G] float32: confidence, times the certainty density under CP decoding
    conf: jax.Array  # [B, G] float32: raw confidence of the proposed token
    entropy: jax.Array  # [B, G] float32: predictive entropy (EB sampler)
    eligible: jax.Array  # [B, G] bool: masked, in the current block, recomputed, before the first EOS
    budget: jax.Array  # [B] int32: tokens the schedule asks for this step (a minimum for parallel rules)
    reveal_p: jax.Array  # [B] float32: Dream's per-position reveal probability 1 - s/t this step
    # Scores are bf16 values (bf16 confidences, no certainty prior): upstream then compares them with
    # constants cast to bf16 (ALGORITHMS.md 2.2). Static.
    bf16: bool = False
