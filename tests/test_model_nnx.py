"""The NNX model: one traced layer whatever the depth, and the modules' own API."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from d2cache_jax import config, model
from d2cache_jax import params as params_lib
from d2cache_jax.generation import make_options
from d2cache_jax.generation.generate import lower, prepare
from tests import reference


def _dots(text: str) -> int:
    return text.count("dot_general")


def _generation_text(cfg, cache: str) -> str:
    opts = make_options(cache=cache, gen_length=16, block_length=8, decoder="threshold")
    state = jax.eval_shape(lambda: prepare(cfg, [[1, 2, 3, 4]], opts))
    return lower(cfg, opts, params_lib.abstract_params(cfg), state).as_text()


@pytest.mark.parametrize("cache", ["none", "prefix", "dual", "dllm", "d2cache"])
def test_program_size_does_not_grow_with_depth(cache):
    """The layers are scanned, not unrolled: 2 and 7 layers lower to the same number of matmuls."""
    shallow = config.tiny_llada().replace(n_layers=2)
    deep = shallow.replace(n_layers=7)
    a, b = _generation_text(shallow, cache), _generation_text(deep, cache)
    assert _dots(a) == _dots(b) > 0


def test_forward_program_size_does_not_grow_with_depth():
    cfg = config.tiny_dream()
    tokens = jax.ShapeDtypeStruct((1, 12), jnp.int32)
    mask = jax.ShapeDtypeStruct((1, 12), bool)
    texts = [model._forward_jit.lower(c, params_lib.abstract_params(c), tokens, mask).as_text()
             for c in (cfg.replace(n_layers=1), cfg.replace(n_layers=5))]
    assert _dots(texts[0]) == _dots(texts[1])


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_modules_match_a_layer_by_layer_statement(family):
    """`model.init` (NNX initialisers) gives params in the documented layout, and the scanned
    Transformer equals the layers applied one after another from raw weights."""
    cfg = config.tiny_llada() if family == "llada" else config.tiny_dream()
    m = model.init(cfg, seed=3)
    p = model.params_of(m)
    assert jax.tree.map(lambda a: tuple(a.shape), p) == params_lib.param_shapes(cfg)
    tokens = jnp.asarray([[3, 1, 4, 1, 5, 9, 2, 6]])
    pos = jnp.broadcast_to(jnp.arange(8), tokens.shape)
    x = p["embed"]["embedding"][tokens]
    for lp in reference.flat_layers(p):
        q, k, v = reference.qkv(lp, cfg, model.rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps), pos)
        o, _ = model.attention(cfg, q, k, v, jnp.ones((1, 8), bool))
        x = x + jnp.einsum("bqnh,nhd->bqd", o, lp["wo"])
        x = x + reference.mlp(lp, model.rms_norm(x, lp["mlp_norm"], cfg.rms_norm_eps))
    want = model.rms_norm(x, p["final_norm"]["scale"], cfg.rms_norm_eps) @ p["lm_head"]
    got = m(tokens)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("family", ["llada", pytest.param("dream", marks=pytest.mark.slow)])
def test_per_layer_layout_generates_the_same_tokens(family):
    """`unstack_layers` (one buffer per layer, a Python loop over the layers) runs every cache to the
    same tokens and commit steps as the scanned stack, and converts back exactly."""
    from d2cache_jax.generation import generate

    cfg = config.tiny_llada() if family == "llada" else config.tiny_dream()
    p = params_lib.init_params(cfg, jax.random.key(0))
    u = model.unstack_layers(p)
    assert isinstance(u["layers"], list) and len(u["layers"]) == cfg.n_layers
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), model.stack_layers(u), p))
    assert jax.tree.map(jnp.shape, model.params_of(model.init(cfg, scan_layers=False))) == jax.tree.map(jnp.shape, u)
    for cache in ("none", "prefix", "dual", "dllm", "d2cache"):
        kw = dict(cache=cache, gen_length=16, block_length=8, decoder="vanilla")
        a = generate(cfg, p, [[5, 6, 7, 8], [9, 10, 11]], **kw)
        b = generate(cfg, u, [[5, 6, 7, 8], [9, 10, 11]], **kw)
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_array_equal(a.commit_step, b.commit_step)


def test_per_layer_shardings_drop_the_layer_axis():
    from jax.sharding import PartitionSpec

    from d2cache_jax import sharding

    cfg = config.tiny_dream()
    mesh = sharding.make_mesh("data:2,model:4")
    stacked = sharding.param_shardings(cfg, mesh)
    per_layer = sharding.param_shardings(cfg, mesh, scan_layers=False)
    assert len(per_layer["layers"]) == cfg.n_layers
    for s, one in zip(jax.tree.leaves(stacked["layers"]), jax.tree.leaves(per_layer["layers"][1])):
        assert s.spec[0] is None and PartitionSpec(*tuple(s.spec)[1:]) == one.spec
    assert per_layer["layers"][0]["mlp"]["w_up"].spec == PartitionSpec(None, "model")
