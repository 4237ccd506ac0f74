"""Cache methods by name. A new cache is one module defining METHOD, registered here."""

from d2cache_jax.cache import none

METHODS = {
    "none": none.METHOD,
}
