"""Converter, load, save and export_hf: round trips, shardings, the CLI, and every bad input."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoints_convert.convert import convert
from d2cache_jax.checkpoint import FORMAT, leaf_shapes, load, nest, read_config, save
from d2cache_jax.cli import InputError
from d2cache_jax.config import tiny_dream, tiny_llada
from d2cache_jax.hf import layout
from d2cache_jax.hf.safetensors_io import CheckpointError, read_header
from d2cache_jax.model import forward, layer_params
from tests import hf_fixtures as H

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "d2cache_jax", "assets", "tiny_arith")
INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def llada_model():
    return H.reference("llada", seed=2)


@pytest.fixture
def hf_dir(tmp_path, llada_model):
    """A fresh 3-shard fp32 LLaDA checkpoint per test (tests damage it)."""
    path = str(tmp_path / "hf")
    H.write_published(llada_model, "llada", path, torch.float32, num_shards=3)
    return path


def edit_shard(hf_dir: str, key: str, fn) -> None:
    """Rewrite the shard holding `key` with `fn(state_dict)` and keep the index in step."""
    with open(os.path.join(hf_dir, INDEX)) as f:
        index = json.load(f)
    name = index["weight_map"][key]
    state = load_file(os.path.join(hf_dir, name))
    fn(state)
    save_file(state, os.path.join(hf_dir, name), metadata={"format": "pt"})
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != name}
    index["weight_map"].update(dict.fromkeys(state, name))
    with open(os.path.join(hf_dir, INDEX), "w") as f:
        json.dump(index, f)


def assert_nothing_written(out: str) -> None:
    parent, base = os.path.split(out)
    assert not os.path.exists(out)
    assert not [n for n in os.listdir(parent) if n.startswith(f".{base}.partial")]


def tree_equal(a, b) -> None:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- happy paths --------------------------------------------------------------------------------

def test_converted_layout_and_files(hf_dir, tmp_path):
    out = str(tmp_path / "conv")
    cfg = convert(hf_dir, out, "llada")
    names = set(os.listdir(out))
    assert {"manifest.json", "model_config.json", "params", "tokenizer_config.json",
            "generation_config.json", "chat_template.jinja"} <= names
    shapes = leaf_shapes(cfg)
    assert sorted(os.listdir(os.path.join(out, "params"))) == sorted(shapes)
    assert "layers.attn.wq" in shapes and "embed.embedding" in shapes and "lm_head" in shapes
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["format"] == FORMAT == "d2cache-jax/converted-v2"
    assert manifest["family"] == "llada" and manifest["param_dtype"] == "float32"
    assert manifest["params"] == {p: list(s) for p, s in shapes.items()}
    assert manifest["params"]["layers.mlp.w_up"] == [H.LAYERS, H.D, H.FF]  # one item holds every layer
    assert cfg.mask_token_id == H.MASK_ID and cfg.n_layers == H.LAYERS


def test_single_file_checkpoint(tmp_path, llada_model):
    path = str(tmp_path / "hf1")
    H.write_published(llada_model, "llada", path, torch.bfloat16, num_shards=1)
    cfg, params = load(path)
    assert cfg.param_dtype == "bfloat16" and params["embed"]["embedding"].dtype == jax.numpy.bfloat16


def test_float16_checkpoint_loads_as_float32(tmp_path, llada_model):
    path = str(tmp_path / "hf16")
    state = H.write_published(llada_model, "llada", path, torch.float16, num_shards=2)
    cfg, params = load(path)
    assert cfg.param_dtype == "float32"
    np.testing.assert_array_equal(np.asarray(params["embed"]["embedding"]),
                                  state["model.transformer.wte.weight"].float().numpy())
    for i in range(H.LAYERS):  # row i of a stacked leaf is layer i's tensor
        np.testing.assert_array_equal(np.asarray(params["layers"]["mlp"]["w_up"][i]),
                                      state[f"model.transformer.blocks.{i}.up_proj.weight"].float().numpy().T)


def test_dtype_cast_on_convert(hf_dir, tmp_path):
    cfg = convert(hf_dir, str(tmp_path / "conv"), dtype="bfloat16")
    _, params = load(str(tmp_path / "conv"))
    assert cfg.param_dtype == "bfloat16"
    assert {x.dtype for x in jax.tree.leaves(params)} == {jax.numpy.dtype("bfloat16")}


def test_load_into_shardings(hf_dir, tmp_path):
    """Restore targets carry the shardings: arrays come back already sharded as asked."""
    mesh = jax.make_mesh((4,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
    named = lambda *spec: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
    cfg = convert(hf_dir, str(tmp_path / "conv"))
    heads = named(None, None, "x", None)  # [L, d, H, hd] split over heads
    specs = nest({p: named("x", None) if p == "embed.embedding" else named(None, "x") if p == "lm_head"
                  else heads if p in ("layers.attn.wq", "layers.attn.wk", "layers.attn.wv") else named()
                  for p in leaf_shapes(cfg)})
    _, ref = load(str(tmp_path / "conv"))
    for path in (str(tmp_path / "conv"), hf_dir):
        _, params = load(path, shardings=specs)
        assert params["embed"]["embedding"].sharding == specs["embed"]["embedding"]
        wq = params["layers"]["attn"]["wq"]
        assert wq.sharding == heads and len(wq.addressable_shards) == 4
        assert {sh.data.shape for sh in wq.addressable_shards} == {(cfg.n_layers, cfg.d_model, 1, cfg.head_dim)}
        tree_equal(params, ref)


def test_save_load_round_trip(tmp_path):
    cfg = tiny_dream()
    params = H.random_params(cfg, 3)
    save(cfg, params, str(tmp_path / "s"))
    cfg2, params2 = load(str(tmp_path / "s"))
    assert cfg2 == cfg
    tree_equal(params2, params)
    old = {"embed": params["embed"]["embedding"], "layers": [layer_params(params, i) for i in range(cfg.n_layers)]}
    with pytest.raises(ValueError, match=r"params do not match the config's layout .*: missing embed\.embedding, "
                                         r"final_norm\.scale, .*; unexpected embed, layers\.\[0\]"):
        save(cfg, old, str(tmp_path / "old_layout"))
    assert_nothing_written(str(tmp_path / "old_layout"))


def test_converted_and_hf_dir_load_identical(tmp_path):
    """The shipped model (published LLaDA safetensors) loaded straight from its folder and from its
    conversion: the same config and the same stacked params, bit for bit, plain and into shardings."""
    from d2cache_jax import sharding

    out = str(tmp_path / "tiny_conv")
    convert(TINY, out)
    cfg_hf, from_hf = load(TINY)
    cfg_conv, from_conv = load(out)
    assert cfg_hf == cfg_conv and cfg_hf.param_dtype == "bfloat16"
    assert from_hf["layers"]["attn"]["wq"].shape == (cfg_hf.n_layers, cfg_hf.d_model, cfg_hf.n_heads,
                                                     cfg_hf.head_dim)
    assert jax.tree.structure(from_hf) == jax.tree.structure(from_conv)
    tree_equal(from_hf, from_conv)
    mesh = sharding.make_mesh("data:2,model:4")
    _, a = sharding.load(TINY, mesh)
    _, b = sharding.load(out, mesh)
    for x, y, s in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                       jax.tree.leaves(sharding.param_shardings(cfg_hf, mesh))):
        assert x.sharding == y.sharding == s
    tree_equal(a, from_hf)
    tree_equal(b, from_hf)


def test_v1_checkpoint_asks_to_convert_again(tmp_path):
    """A directory written by the previous format (per-layer groups) is one clear InputError with the command."""
    out = str(tmp_path / "old")
    convert(TINY, out)
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    v1 = {"format": "d2cache-jax/converted-v1", "family": "llada", "param_dtype": "bfloat16",
          "groups": {"embed": ["embed"], "layer_000": ["layers.0.wq"]}, "source": manifest["source"]}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(v1, f)
    want = (rf"{out} was converted by an older version of d2cache-jax \(format 'd2cache-jax/converted-v1'.*\); "
            rf"convert the model again: python -m checkpoints_convert\.llada --hf_dir={TINY} --out=")
    for fn in (load, read_config):
        with pytest.raises(InputError, match=want):
            fn(out)
    v1["source"] = {}  # no source recorded: the command still shows what to fill in
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(v1, f)
    with pytest.raises(InputError, match=r"convert the model again: python -m checkpoints_convert\.llada "
                                         r"--hf_dir=<published dir> --out=<new dir>"):
        load(out)


def test_manifest_not_matching_the_config(tmp_path):
    out = str(tmp_path / "conv")
    convert(TINY, out)
    with open(os.path.join(out, "model_config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(out, "model_config.json"), "w") as f:
        json.dump({**cfg, "n_layers": cfg["n_layers"] + 1}, f)
    with pytest.raises(InputError, match=r"manifest\.json: its params leaves and shapes do not match "
                                         r"model_config\.json; convert the model again"):
        load(out)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_export_hf_round_trip(tmp_path, family):
    """export_hf -> load is the identity (fp32), and bf16 exports round once."""
    cfg = (tiny_llada if family == "llada" else tiny_dream)(eot_token_id=7 if family == "llada" else None)
    params = H.random_params(cfg, 4)
    out = layout.export_hf(cfg, params, str(tmp_path / "x"), family, num_shards=3, dtype="float32")
    files = sorted(os.listdir(out))
    assert files.count(INDEX) == 1 and sum(f.endswith(".safetensors") for f in files) == 3
    cfg2, params2 = load(out)
    assert cfg2 == cfg
    tree_equal(params2, params)
    out16 = layout.export_hf(cfg, params, str(tmp_path / "y"), family, num_shards=1)
    assert os.listdir(out16).count(INDEX) == 0
    cfg3, params3 = load(out16)
    assert cfg3.param_dtype == "bfloat16"
    tree_equal(params3, jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16), params))
    with pytest.raises(FileExistsError, match="already exists"):
        layout.export_hf(cfg, params, out, family)


def test_export_hf_llada_loads_in_transformers(tmp_path):
    """The LLaDA-layout export, renamed back to Llama names, runs in transformers with equal logits."""
    cfg = tiny_llada(vocab_size=H.VOCAB, d_model=H.D, n_layers=H.LAYERS, n_heads=H.HEADS, n_kv_heads=H.HEADS,
                     head_dim=H.D // H.HEADS, mlp_hidden=H.FF, rope_theta=H.THETA)
    params = H.random_params(cfg, 5)
    out = layout.export_hf(cfg, params, str(tmp_path / "x"), "llada", num_shards=2, dtype="float32")
    state = {}
    for name in os.listdir(out):
        if name.endswith(".safetensors"):
            state.update(load_file(os.path.join(out, name)))
    model = H.reference("llada")
    names = {H.published_name(k, "llada"): k for k in model.state_dict()}
    assert set(names) == set(state)
    model.load_state_dict({names[k]: v for k, v in state.items()}, strict=True)
    t = np.random.RandomState(0).randint(0, H.VOCAB, (2, 9))
    ours, ref = np.asarray(forward(cfg, params, t)), H.ref_logits(model, t)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()


def test_blocked_transpose_matches_to_ours(hf_dir):
    """Reading Linear weights block by block (tiny blocks here) gives exactly `to_ours`."""
    from d2cache_jax.hf.reader import inspect_hf, read_ours
    from d2cache_jax.hf.safetensors_io import read_tensor

    src = inspect_hf(hf_dir)
    for path, hdr in src.shards:
        with open(path, "rb") as f:
            for key, info in hdr.items():
                e = src.entries[key]
                want = layout.to_ours(e.kind, read_tensor(f, info, path), e.shape)
                for block in (1, 200, 1 << 20):
                    got = read_ours(f, info, e, np.dtype(np.float32), path, block_bytes=block)
                    np.testing.assert_array_equal(got, want)


# --- the command line ---------------------------------------------------------------------------

def _cli(family: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", f"checkpoints_convert.{family}", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_cli_converts_dream_and_reports_errors(tmp_path):
    src = str(tmp_path / "dream_hf")
    model = H.reference("dream", seed=4)
    H.write_published(model, "dream", src, torch.bfloat16, num_shards=2)
    out = str(tmp_path / "dream_conv")
    res = _cli("dream", f"--hf_dir={src}", f"--out={out}", "--dtype=float32")
    assert res.returncode == 0, res.stderr
    cfg, params = load(out)
    assert cfg.family == "dream" and cfg.param_dtype == "float32"
    # The LLaDA entry point refuses a Dream checkpoint, naming the config and the right tool.
    res = _cli("llada", f"--hf_dir={src}", f"--out={tmp_path / 'other'}")
    assert res.returncode != 0 and "is a dream config" in res.stderr and "config.json" in res.stderr
    assert_nothing_written(str(tmp_path / "other"))


# --- bad inputs: a clear error naming the problem and file/key; nothing left behind --------------

def _fails(hf_dir: str, tmp_path, match: str, exc=CheckpointError) -> None:
    out = str(tmp_path / "out")
    with pytest.raises(exc, match=match):
        convert(hf_dir, out)
    assert_nothing_written(out)
    with pytest.raises(exc, match=match):
        load(hf_dir)


def test_missing_shard(hf_dir, tmp_path):
    os.remove(os.path.join(hf_dir, "model-00002-of-00003.safetensors"))
    _fails(hf_dir, tmp_path, r"missing shard file .*model-00002-of-00003\.safetensors")


def test_truncated_shard(hf_dir, tmp_path):
    path = os.path.join(hf_dir, "model-00003-of-00003.safetensors")
    os.truncate(path, os.path.getsize(path) - 100)
    _fails(hf_dir, tmp_path, r"truncated shard .*model-00003-of-00003\.safetensors")


def test_truncated_header(hf_dir, tmp_path):
    path = os.path.join(hf_dir, "model-00001-of-00003.safetensors")
    os.truncate(path, 20)
    with pytest.raises(CheckpointError, match=r"truncated shard .*model-00001-of-00003"):
        read_header(path)
    _fails(hf_dir, tmp_path, "truncated shard")


def test_wrong_shape(hf_dir, tmp_path):
    key = "model.transformer.blocks.1.up_proj.weight"
    edit_shard(hf_dir, key, lambda s: s.update({key: s[key][:-1].contiguous()}))
    _fails(hf_dir, tmp_path, rf"wrong shape for {key} in .*safetensors: \[95, 64\], expected \[96, 64\]")


def test_wrong_dtype(hf_dir, tmp_path):
    key = "model.transformer.blocks.0.attn_norm.weight"
    edit_shard(hf_dir, key, lambda s: s.update({key: s[key].double()}))
    _fails(hf_dir, tmp_path, rf"wrong dtype F64 for {key} in .*safetensors")


def test_missing_key(hf_dir, tmp_path):
    key = "model.transformer.blocks.1.ff_norm.weight"
    edit_shard(hf_dir, key, lambda s: s.pop(key))
    _fails(hf_dir, tmp_path, rf"missing key {key}")


def test_unknown_key(hf_dir, tmp_path):
    key = "model.transformer.blocks.0.ff_norm.weight"
    extra = "model.transformer.blocks.0.q_norm.weight"
    edit_shard(hf_dir, key, lambda s: s.update({extra: torch.ones(H.D)}))
    _fails(hf_dir, tmp_path, rf"unknown key {extra} in .*safetensors")


def test_key_missing_from_index(hf_dir, tmp_path):
    with open(os.path.join(hf_dir, INDEX)) as f:
        index = json.load(f)
    index["weight_map"].pop("model.transformer.ln_f.weight")
    with open(os.path.join(hf_dir, INDEX), "w") as f:
        json.dump(index, f)
    _fails(hf_dir, tmp_path, r"model\.transformer\.ln_f\.weight is in .* but .*index\.json")


def test_unknown_config_field(hf_dir, tmp_path):
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(H.llada_config_json(sliding_window_size=4), f)
    _fails(hf_dir, tmp_path, r"config\.json: LLaDA config\.json has unknown field\(s\): sliding_window_size")


def test_output_dir_exists(hf_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=f"already exists: {out}"):
        convert(hf_dir, str(out))
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert not [n for n in os.listdir(tmp_path) if ".partial" in n]


def test_error_mid_stream_leaves_nothing(hf_dir, tmp_path, monkeypatch):
    """A failure after some groups were written removes the temporary output."""
    from d2cache_jax.hf import reader as conv

    real = conv.read_ours
    calls = {"n": 0}

    def flaky(f, info, e, dt, path="?", **kw):
        calls["n"] += 1
        if calls["n"] > 12:  # the embedding and five stacked leaves are written by then
            raise CheckpointError(f"truncated shard {path}: short read")
        return real(f, info, e, dt, path, **kw)

    monkeypatch.setattr(conv, "read_ours", flaky)
    _fails(hf_dir, tmp_path, "short read")
