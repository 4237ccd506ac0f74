import os

# Tests run on the CPU with 8 fake devices so mesh code is exercised; fp32 matmuls at full precision.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _fresh_compilation_caches():
    """Drop every module's compiled programs when it ends: one long pytest process otherwise keeps
    hundreds of executables alive (and XLA's CPU compiler has crashed in such a process)."""
    yield
    jax.clear_caches()


@pytest.fixture(scope="module")
def llada():
    """A tiny random LLaDA (config, params), shared by the generation tests."""
    from d2cache_jax import config, params

    cfg = config.tiny_llada()
    return cfg, params.init_params(cfg, jax.random.key(0))


@pytest.fixture(scope="module")
def dream():
    """A tiny random Dream (config, params), shared by the generation tests."""
    from d2cache_jax import config, params

    cfg = config.tiny_dream()
    return cfg, params.init_params(cfg, jax.random.key(1))
