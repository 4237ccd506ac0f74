"""Published Hugging Face checkpoints (LLaDA, Dream): the safetensors format, the key layout and the reader.

`d2cache_jax.checkpoint.load` reads a published checkpoint through `reader`; the converters in
`checkpoints_convert` use this package too (they depend on the library, never the other way).
"""
