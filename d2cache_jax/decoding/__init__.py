"""Decoders: each chooses which masked positions to commit this step. Register new ones here."""

from d2cache_jax.decoding import dream, eb, factor, threshold, vanilla

DECODERS = {
    "vanilla": vanilla.select,
    "threshold": threshold.select,
    "factor": factor.select,
    "eb": eb.select,
    "dream": dream.select,
    "origin": dream.select_origin,
}
