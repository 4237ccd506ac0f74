"""Cache methods by name. A new cache is one module defining METHOD, registered here."""

from d2cache_jax.cache import dllm, none, prefix

METHODS = {
    "none": none.METHOD,
    "prefix": prefix.METHOD,
    "dual": prefix.METHOD,
    "dllm": dllm.METHOD,
}
