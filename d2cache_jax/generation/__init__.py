"""Masked-diffusion generation: options, state, the jitted step and the `generate` driver."""

from d2cache_jax.generation.generate import GenerateResult, generate
from d2cache_jax.generation.options import GenOptions, make_options

__all__ = ["GenOptions", "GenerateResult", "generate", "make_options"]
