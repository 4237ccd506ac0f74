"""Cache methods by name. A new cache is one module defining METHOD, registered here."""

from d2cache_jax.cache import d2cache, dllm, none, prefix

METHODS = {
    "none": none.METHOD,
    "d2cache": d2cache.METHOD,
    "prefix": prefix.METHOD,
    "dual": prefix.METHOD,
    "dllm": dllm.METHOD,
}
