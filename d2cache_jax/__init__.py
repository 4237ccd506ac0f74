"""d2cache-jax: diffusion LLM inference (LLaDA, Dream) with training-free caches, in JAX."""

from d2cache_jax.checkpoint import load
from d2cache_jax.config import ModelConfig
from d2cache_jax.generation import GenerateResult, GenOptions, generate
from d2cache_jax.model import forward

__all__ = ["GenOptions", "GenerateResult", "ModelConfig", "forward", "generate", "load"]
