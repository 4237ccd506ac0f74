"""Meshes, partition rules, sharded generation equal to one device, sharded restore, memory estimate.

Runs on the 8 fake CPU devices of conftest. Every cache registered in `cache.METHODS` runs on a mesh
(the default set covers each cache and each of the four meshes once; `-m slow` adds the other family).
"""

import importlib
import math

import jax
import jax.monitoring
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec

from d2cache_jax import checkpoint, config, memory, multihost, sharding
from d2cache_jax import params as params_lib
from d2cache_jax.cache import METHODS
from d2cache_jax.evaluation import merge
from d2cache_jax.generation import generate, make_options

gen_mod = importlib.import_module("d2cache_jax.generation.generate")

MESHES = [(8, 1), (4, 2), (2, 4), (1, 8)]
FAMILIES = ("llada", "dream")
PROMPTS = [[5, 17, 33, 2, 91, 40, 7], [3, 4, 5, 6], [9, 9, 9, 1, 2]]
PROMPTS_2 = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [11, 12]]
GEN = dict(gen_length=8, steps=8, block_length=4)

_compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, *a, **k: _compiles.append(name) if "backend_compile" in name else None)


def mesh_of(shape):
    return sharding.make_mesh(f"data:{shape[0]},model:{shape[1]}")


@pytest.fixture(scope="module")
def models():
    out = {}
    for i, family in enumerate(FAMILIES):
        cfg = config.tiny_llada() if family == "llada" else config.tiny_dream()
        out[family] = (cfg, params_lib.init_params(cfg, jax.random.key(i)))
    return out


# --- meshes ------------------------------------------------------------------------------------

def test_parse_mesh():
    assert sharding.parse_mesh(None, 8) == {"data": 8, "model": 1}
    assert sharding.parse_mesh("data:2,model:4", 8) == {"data": 2, "model": 4}
    assert sharding.parse_mesh(" model:8 ", 8) == {"data": 1, "model": 8}
    assert sharding.parse_mesh("model:2,data:-1", 8) == {"data": 4, "model": 2}


@pytest.mark.parametrize("spec,message", [
    ("data:2,expert:4", "unknown axis 'expert'"),
    ("data:2,model:2", "has 4 devices (2x2) but 8 are available"),
    ("data:two", "must be an integer, got 'two'"),
    ("data=8", "is not NAME:SIZE"),
    ("data:4,data:2", "given twice"),
    ("data:0,model:8", "must be >= 1"),
    ("data:3,model:-1", "do not divide by 3"),
])
def test_parse_mesh_errors(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sharding.parse_mesh(spec, 8)


def test_make_mesh_defaults_to_all_devices_on_data():
    mesh = sharding.make_mesh()
    assert dict(mesh.shape) == {"data": 8, "model": 1}
    assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
    assert sharding.mesh_str(sharding.make_mesh("model:8")) == "data:1,model:8"


# --- partition rules ---------------------------------------------------------------------------

def test_param_rules_llada_and_gqa():
    mesh = mesh_of((2, 4))
    sh = sharding.param_shardings(config.tiny_llada(), mesh)
    att, mlp = sh["layers"]["attn"], sh["layers"]["mlp"]
    assert sh["embed"]["embedding"].spec == PartitionSpec("model", None)
    assert sh["lm_head"].spec == PartitionSpec(None, "model")
    # Stacked leaves: the leading layer axis is never sharded.
    assert att["wq"].spec == att["wk"].spec == PartitionSpec(None, None, "model", None)
    assert att["wo"].spec == PartitionSpec(None, "model", None, None)
    assert mlp["w_gate"].spec == PartitionSpec(None, None, "model")
    assert mlp["w_down"].spec == PartitionSpec(None, "model", None)
    assert sh["layers"]["attn_norm"]["scale"].spec == PartitionSpec(None, None)
    assert sh["final_norm"]["scale"].spec == PartitionSpec(None)
    # Tiny Dream: 2 KV heads do not divide over model:4, so K/V projections are replicated.
    dl = sharding.param_shardings(config.tiny_dream(), mesh)["layers"]["attn"]
    assert dl["wq"].spec == PartitionSpec(None, None, "model", None)
    assert dl["bq"].spec == PartitionSpec(None, "model", None)
    assert dl["wk"].spec == dl["wv"].spec == PartitionSpec(None, None, None, None)
    assert dl["bk"].spec == PartitionSpec(None, None, None)
    assert sharding.param_shardings(config.tiny_dream(), mesh_of((4, 2)))["layers"]["attn"]["wk"].spec == \
        PartitionSpec(None, None, "model", None)


def test_param_axes_come_from_the_modules():
    """The logical axes are the NNX modules' `sharding_names`, one per dimension, None on the layer axis."""
    for cfg in (config.tiny_llada(), config.tiny_dream()):
        axes, shapes = sharding.param_axes(cfg), params_lib.param_shapes(cfg)
        is_shape = lambda x: isinstance(x, tuple) and all(isinstance(d, int) for d in x)
        flat_axes = jax.tree.leaves(axes, is_leaf=sharding._is_axes)
        flat_shapes = jax.tree.leaves(shapes, is_leaf=is_shape)
        assert jax.tree.structure(axes, is_leaf=sharding._is_axes) == jax.tree.structure(shapes, is_leaf=is_shape)
        assert all(len(a) == len(s) for a, s in zip(flat_axes, flat_shapes))
        assert all(a[0] is None for a in jax.tree.leaves(axes["layers"], is_leaf=sharding._is_axes))
        assert axes["layers"]["attn"]["wq"] == (None, "embed", "heads", "head_dim")
        assert axes["layers"]["mlp"]["w_down"] == (None, "mlp", "embed")
        assert axes["embed"]["embedding"] == ("vocab", "embed") and axes["lm_head"] == ("embed", "vocab")


def test_param_rules_of_the_full_size_models_on_model8():
    mesh = mesh_of((1, 8))
    ll = sharding.param_shardings(config.llada_8b_base(), mesh)
    assert ll["layers"]["attn"]["wk"].shard_shape((32, 4096, 32, 128)) == (32, 4096, 4, 128)
    assert ll["layers"]["mlp"]["w_up"].shard_shape((32, 4096, 12288)) == (32, 4096, 1536)
    assert ll["embed"]["embedding"].shard_shape((126464, 4096)) == (15808, 4096)
    dr = sharding.param_shardings(config.dream_7b_base(), mesh)
    # 28 query heads and 4 KV heads do not divide by 8: attention weights replicated; MLP and vocab split.
    dat = dr["layers"]["attn"]
    assert dat["wq"].spec == dat["wk"].spec == PartitionSpec(None, None, None, None)
    assert dr["layers"]["mlp"]["w_gate"].shard_shape((28, 3584, 18944)) == (28, 3584, 2368)
    assert dr["lm_head"].shard_shape((3584, 152064)) == (3584, 19008)
    # On model:4 both divide: 7 query heads and 1 KV head per device.
    d4 = sharding.param_shardings(config.dream_7b_base(), sharding.make_mesh("data:2,model:4"))["layers"]["attn"]
    assert d4["wq"].shard_shape((28, 3584, 28, 128)) == (28, 3584, 7, 128)
    assert d4["wk"].shard_shape((28, 3584, 4, 128)) == (28, 3584, 1, 128)


@pytest.mark.parametrize("cache", sorted(METHODS))
def test_state_rules_of_every_cache(cache, models):
    cfg, _ = models["llada"]
    opts = make_options(cache=cache, **GEN)
    state = gen_mod.prepare(cfg, PROMPTS + [[1]], opts)
    shardings = sharding.state_shardings(cfg, opts, state, mesh_of((2, 4)))
    kinds = _cache_kinds(state)
    assert len(kinds) == len(jax.tree.leaves(state))
    for x, s, kind in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), kinds):
        spec = tuple(s.spec) + (None,) * (x.ndim - len(s.spec))
        if kind == "kv":  # stacked K/V [L, B, T, Hkv, hd]: never the layer axis
            assert x.shape[:2] == (cfg.n_layers, 4) and spec == (None, "data", None, "model", None), (cache, spec)
        elif kind == "rows":  # dLLM-Cache's stacked attn/ffn outputs [L, B, T, d]
            assert x.shape[:2] == (cfg.n_layers, 4) and spec == (None, "data", None, None), (cache, spec)
        elif x.ndim and x.shape[0] == 4:
            assert spec[0] == "data" and all(a is None for a in spec[1:]), (cache, x.shape, s.spec)
        else:
            assert all(a is None for a in spec), (cache, x.shape, s.spec)
    if cache != "none":
        assert "kv" in kinds, cache  # every caching method keeps K/V
    assert ("rows" in kinds) == (cache == "dllm")
    assert sharding.state_shardings(cfg, opts, state, mesh_of((4, 2))).tokens.spec == PartitionSpec("data", None)


def _cache_kinds(state) -> list[str]:
    """Per leaf of `state`: 'kv' (a LayerKV or DllmLayer k/v), 'rows' (DllmLayer attn/ffn) or 'other'."""
    from d2cache_jax.cache.dllm import DllmLayer
    from d2cache_jax.model import LayerKV

    def kinds(x):
        if isinstance(x, LayerKV):
            return LayerKV("kv", "kv")
        if isinstance(x, DllmLayer):
            return DllmLayer("kv", "kv", "rows", "rows")
        return "other"
    return jax.tree.leaves(jax.tree.map(kinds, state, is_leaf=lambda x: isinstance(x, (LayerKV, DllmLayer))))


def test_batch_must_divide_the_data_axis(models):
    cfg, p = models["llada"]
    opts = make_options(**GEN)
    state = gen_mod.prepare(cfg, PROMPTS, opts)
    with pytest.raises(ValueError, match="batch of 3 does not divide over the mesh's data axis of 2"):
        sharding.place(cfg, opts, p, state, mesh_of((2, 4)))
    assert gen_mod.prepare(cfg, PROMPTS, opts, batch_multiple=4).tokens.shape[0] == 4


# --- sharded generation == one device --------------------------------------------------------------

def _cases():
    caches = sorted(METHODS)
    fast = [(FAMILIES[i % 2], c, MESHES[i % 4]) for i, c in enumerate(caches)]
    slow = [(FAMILIES[(i + 1) % 2], c, MESHES[(i + 2) % 4]) for i, c in enumerate(caches)]
    return [pytest.param(*c, id=f"{c[0]}-{c[1]}-{c[2][0]}x{c[2][1]}") for c in fast] + \
           [pytest.param(*c, id=f"{c[0]}-{c[1]}-{c[2][0]}x{c[2][1]}", marks=pytest.mark.slow) for c in slow]


@pytest.mark.parametrize("family,cache,shape", _cases())
def test_sharded_generation_matches_one_device(family, cache, shape, models, monkeypatch):
    cfg, p = models[family]
    mesh = mesh_of(shape)
    want = generate(cfg, p, PROMPTS, cache=cache, **GEN)

    seen = {}
    place, result = sharding.place, gen_mod._result

    def layout(tree):  # (spec, first shard's shape) of every array, read before the state is donated
        return [(tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec)), x.sharding.mesh.shape,
                 x.addressable_shards[0].data.shape) for x in jax.tree.leaves(tree)]

    def spy_place(*a):
        params, state = place(*a)
        seen["params"], seen["placed"] = params, (state, layout(state))
        return params, state

    def spy_result(cfg_, opts_, state, *a):
        seen["final"] = (state, layout(state))
        return result(cfg_, opts_, state, *a)

    monkeypatch.setattr(sharding, "place", spy_place)
    monkeypatch.setattr(gen_mod, "_result", spy_result)
    got = generate(cfg, p, PROMPTS, mesh=mesh, cache=cache, **GEN)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.lengths, want.lengths)
    assert got.stats["steps"] == want.stats["steps"]

    # Params and state really are sharded, and stay so through the loop.
    w_up = seen["params"]["layers"]["mlp"]["w_up"]
    assert w_up.sharding.spec == PartitionSpec(None, None, "model" if shape[1] > 1 else None)
    assert w_up.sharding.mesh.shape == mesh.shape
    assert w_up.addressable_shards[0].data.shape == (cfg.n_layers, cfg.d_model, cfg.mlp_hidden // shape[1])
    rows = -(-len(PROMPTS) // shape[0]) * shape[0]
    data = "data" if shape[0] > 1 else None
    kv_heads = "model" if shape[1] > 1 and cfg.n_kv_heads % shape[1] == 0 else None
    for state, lay in (seen["placed"], seen["final"]):
        assert state.tokens.shape[0] == rows
        for x, (spec, mesh_shape, shard), kind in zip(jax.tree.leaves(state), lay, _cache_kinds(state)):
            assert mesh_shape == mesh.shape
            if kind in ("kv", "rows"):  # stacked [L, B, T, ...]: whole layer axis, batch split
                assert spec[0] is None and shard[0] == cfg.n_layers
                assert spec[1] == data and shard[1] == rows // shape[0]
            elif x.ndim and x.shape[0] == rows:
                assert spec[0] == data and shard[0] == rows // shape[0]
            if kind == "kv":
                assert spec[3] == kv_heads
                assert shard[3] == cfg.n_kv_heads // (shape[1] if kv_heads else 1)

    # The whole loop compiled once: new prompts of the same bucket compile nothing.
    before = len(_compiles)
    again = generate(cfg, p, PROMPTS_2, mesh=mesh, cache=cache, **GEN)
    assert len(_compiles) == before and again.tokens.shape == (3, 8)


# --- checkpoints restore into their shardings -------------------------------------------------------

def test_converted_checkpoint_restores_sharded(models, tmp_path):
    cfg, p = models["dream"]
    path = checkpoint.save(cfg, p, str(tmp_path / "ckpt"))
    mesh = mesh_of((4, 2))
    cfg2, restored = sharding.load(path, mesh)
    assert cfg2 == cfg
    want = sharding.param_shardings(cfg, mesh)
    for x, ref, s in zip(jax.tree.leaves(restored), jax.tree.leaves(p), jax.tree.leaves(want)):
        assert x.sharding == s
        np.testing.assert_array_equal(np.asarray(x), np.asarray(ref))
    wq = restored["layers"]["attn"]["wq"]
    assert {sh.data.shape for sh in wq.addressable_shards} == {(cfg.n_layers, cfg.d_model, cfg.n_heads // 2,
                                                                cfg.head_dim)}


# --- memory estimate ------------------------------------------------------------------------------

def test_memory_estimate_against_the_compiled_program():
    cfg = config.tiny_llada(vocab_size=2048).replace(d_model=256, n_heads=8, n_kv_heads=8, head_dim=32,
                                                     mlp_hidden=512)
    p = params_lib.init_params(cfg, jax.random.key(0))
    opts = make_options(cache="d2cache", gen_length=32)
    mesh = mesh_of((2, 4))
    state = gen_mod.prepare(cfg, np.ones((4, 64), np.int32), opts)
    ps, st = sharding.place(cfg, opts, p, state, mesh)
    compiled = gen_mod._run_jit.lower(cfg, gen_mod._static(opts), ps, st).compile()
    got = memory.measure(compiled, ps, st)
    est = memory.estimate(cfg, opts, 4, 64, mesh)
    assert est.params == got["params"] and est.state == got["state"]
    assert got["temp"] / 2 <= est.activations <= 3 * got["temp"], (est, got)
    assert "params" in est.describe() and "data:2,model:4" in est.describe()


def test_memory_estimate_scales_with_the_mesh_and_cannot_fit_errors():
    cfg = config.llada_8b_base()
    opts = make_options(cache="d2cache", gen_length=256)
    one = memory.estimate(cfg, opts, 1, 512, {"data": 1, "model": 1})
    eight = memory.estimate(cfg, opts, 1, 512, {"data": 1, "model": 8})
    n = params_lib.num_params(cfg)
    assert one.params == 2 * n and math.isclose(eight.params, 2 * n / 8, rel_tol=1e-3)
    assert eight.activations < one.activations
    memory.check_fits(one, 80 * memory.GiB)  # one 80 GB GPU
    memory.check_fits(eight, 16 * memory.GiB)  # a v5e chip of a v5e-8
    memory.check_fits(one, None)  # unknown device memory: no check
    with pytest.raises(MemoryError, match=r"does not fit: .* but a device has 16.00 GiB .*--mesh"):
        memory.check_fits(one, 16 * memory.GiB)


# --- multi-process helpers (single process here) ----------------------------------------------------

def test_gather_and_merge_parts(tmp_path):
    assert multihost.gather_objects({"a": [1, 2]}) == [{"a": [1, 2]}]
    assert merge.process_dir("out", 0, 1) == "out" and merge.process_dir("out", 2, 4).endswith("process_002")
    assert merge.process_items(list(range(10)), 1, 3) == [3, 4, 5]
    rec = lambda i, ok: {"index": i, "correct": ok, "stats": {"num_tokens": 4, "steps": 2, "forward_passes": 2,
                                                              "wall_s": 0.5, "tokens_per_step": 2.0, "batch": i,
                                                              "batch_size": 1}}
    parts = [{"records": [rec(2, True)], "metrics": {"peak_host_rss_gb": 1.0}},
             {"records": [rec(0, False), rec(1, True)], "metrics": {"peak_host_rss_gb": 3.0}}]
    out = merge.merge_parts(str(tmp_path), parts, {"task": "t", "num_items": 3})
    assert out["num_samples"] == 3 and out["complete"] and out["processes"] == 2
    assert out["peak_host_rss_gb"] == 3.0 and abs(out["accuracy"] - 2 / 3) < 1e-9
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert [int(line.split('"index": ')[1].split(",")[0]) for line in lines] == [0, 1, 2]
    with pytest.raises(ValueError, match="item 2 was evaluated by two processes"):
        merge.merge_parts(str(tmp_path), parts + parts[:1], {"task": "t", "num_items": 3})


def test_initialize_modes(monkeypatch):
    for key in multihost.ENV.values():
        monkeypatch.delenv(key, raising=False)
    assert multihost.initialize("auto") is False and multihost.initialize("no") is False
    with pytest.raises(ValueError, match="needs a coordinator address"):
        multihost.initialize("auto", num_processes=2)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    assert multihost.settings()["num_processes"] == 4
    with pytest.raises(ValueError, match="auto, yes or no"):
        multihost.initialize("maybe")
