"""The one map between published Hugging Face checkpoint keys and our params paths, both families.

Our paths are dotted strings into the params pytree of `d2cache_jax.model` (its NNX state as a pure
dict): `embed.embedding`, `layers.attn.wq`, `final_norm.scale`, `lm_head`. A published per-layer key
`...{i}...` is row i of the stacked leaf's leading layer axis. Each key has a transform kind, applied
to one layer's tensor:

    copy       same array (embeddings [V, d], norm weights [d])
    linear     torch Linear [out, in] -> ours [in, *out]   (q/k/v [d, H, hd], MLP [d, F] / [F, d],
               output head [d, V]); inverse: reshape to [in, out] and transpose
    heads_in   torch Linear [out, H*hd] -> ours [H, hd, out]  (attention output projection)
    bias       torch [H*hd] -> ours [H, hd]                  (q/k/v biases)

LLaDA (OLMo names; ff_proj is the gate, up_proj the up, the block's ff_out the down projection;
the top-level ff_out is the output head) and Dream (Qwen2 names). `export_hf` writes our params
back in a family's published layout, with a config.json in that family's own field names.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from d2cache_jax import files
from d2cache_jax.checkpoint import get_path, set_path  # noqa: F401  (re-exported)
from d2cache_jax.config import ModelConfig, from_hf_config
from d2cache_jax.hf.safetensors_io import DTYPES, CheckpointError, write_safetensors
from d2cache_jax.params import param_shapes

# (published key template, our leaf path, kind); "{i}" is the layer index, which is also the index into
# the leaf's leading layer axis. Bias rows are used only when the config has qkv biases.
LLADA = (
    ("model.transformer.wte.weight", "embed.embedding", "copy"),
    ("model.transformer.blocks.{i}.attn_norm.weight", "layers.attn_norm.scale", "copy"),
    ("model.transformer.blocks.{i}.q_proj.weight", "layers.attn.wq", "linear"),
    ("model.transformer.blocks.{i}.k_proj.weight", "layers.attn.wk", "linear"),
    ("model.transformer.blocks.{i}.v_proj.weight", "layers.attn.wv", "linear"),
    ("model.transformer.blocks.{i}.q_proj.bias", "layers.attn.bq", "bias"),
    ("model.transformer.blocks.{i}.k_proj.bias", "layers.attn.bk", "bias"),
    ("model.transformer.blocks.{i}.v_proj.bias", "layers.attn.bv", "bias"),
    ("model.transformer.blocks.{i}.attn_out.weight", "layers.attn.wo", "heads_in"),
    ("model.transformer.blocks.{i}.ff_norm.weight", "layers.mlp_norm.scale", "copy"),
    ("model.transformer.blocks.{i}.ff_proj.weight", "layers.mlp.w_gate", "linear"),
    ("model.transformer.blocks.{i}.up_proj.weight", "layers.mlp.w_up", "linear"),
    ("model.transformer.blocks.{i}.ff_out.weight", "layers.mlp.w_down", "linear"),
    ("model.transformer.ln_f.weight", "final_norm.scale", "copy"),
    ("model.transformer.ff_out.weight", "lm_head", "linear"),
)
DREAM = (
    ("model.embed_tokens.weight", "embed.embedding", "copy"),
    ("model.layers.{i}.input_layernorm.weight", "layers.attn_norm.scale", "copy"),
    ("model.layers.{i}.self_attn.q_proj.weight", "layers.attn.wq", "linear"),
    ("model.layers.{i}.self_attn.k_proj.weight", "layers.attn.wk", "linear"),
    ("model.layers.{i}.self_attn.v_proj.weight", "layers.attn.wv", "linear"),
    ("model.layers.{i}.self_attn.q_proj.bias", "layers.attn.bq", "bias"),
    ("model.layers.{i}.self_attn.k_proj.bias", "layers.attn.bk", "bias"),
    ("model.layers.{i}.self_attn.v_proj.bias", "layers.attn.bv", "bias"),
    ("model.layers.{i}.self_attn.o_proj.weight", "layers.attn.wo", "heads_in"),
    ("model.layers.{i}.post_attention_layernorm.weight", "layers.mlp_norm.scale", "copy"),
    ("model.layers.{i}.mlp.gate_proj.weight", "layers.mlp.w_gate", "linear"),
    ("model.layers.{i}.mlp.up_proj.weight", "layers.mlp.w_up", "linear"),
    ("model.layers.{i}.mlp.down_proj.weight", "layers.mlp.w_down", "linear"),
    ("model.norm.weight", "final_norm.scale", "copy"),
    ("lm_head.weight", "lm_head", "linear"),
)
LAYOUTS = {"llada": LLADA, "dream": DREAM}


class Entry(NamedTuple):
    path: str  # dotted path of our params leaf
    layer: int | None  # row of the leaf's layer axis this key fills; None for a leaf without one
    kind: str  # copy | linear | heads_in | bias
    shape: tuple[int, ...]  # our shape of this one tensor (no layer axis)
    hf_shape: tuple[int, ...]  # published (torch) shape


def hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Published shape of a tensor whose shape in our layout is `shape`."""
    if kind == "copy":
        return tuple(shape)
    if kind == "linear":
        return (int(np.prod(shape[1:])), shape[0])
    if kind == "heads_in":
        return (shape[-1], int(np.prod(shape[:-1])))
    if kind == "bias":
        return (int(np.prod(shape)),)
    raise ValueError(f"unknown transform kind {kind!r}")


def to_ours(kind: str, w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Published tensor -> our layout (a transposed copy for Linear weights)."""
    if kind in ("linear", "heads_in"):
        return np.ascontiguousarray(w.T).reshape(shape)
    return w.reshape(shape)


def to_hf(kind: str, w: np.ndarray) -> np.ndarray:
    """Our tensor -> published layout; the inverse of `to_ours`."""
    if kind == "linear":
        return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)
    if kind == "heads_in":
        return np.ascontiguousarray(w.reshape(-1, w.shape[-1]).T)
    if kind == "bias":
        return w.reshape(-1)
    return w


def key_map(cfg: ModelConfig, family_layout: str | None = None) -> dict[str, Entry]:
    """Every published key of `cfg`'s checkpoint in `family_layout` (default: cfg.family), in
    model order: embedding, layer 0 .. layer n-1, final norm and head."""
    name = family_layout or cfg.family
    if name not in LAYOUTS:
        raise ValueError(f"unknown family layout {name!r}; expected one of {', '.join(LAYOUTS)}")
    rows = LAYOUTS[name]
    per_layer = [r for r in rows if "{i}" in r[0]]
    first = [r for r in rows if r[1] == "embed.embedding"]
    last = [r for r in rows if "{i}" not in r[0] and r[1] != "embed.embedding"]
    order = [(r, None) for r in first] + [(r, i) for i in range(cfg.n_layers) for r in per_layer]
    order += [(r, None) for r in last]
    shapes = param_shapes(cfg)
    out = {}
    for (hf_tpl, path, kind), i in order:
        shape = get_path(shapes, path)
        if shape is None:  # a bias row for a config without biases
            continue
        shape = tuple(shape) if i is None else tuple(shape)[1:]
        out[hf_tpl.format(i=i)] = Entry(path, i, kind, shape, hf_shape(kind, shape))
    return out


def keys_by_leaf(entries: dict[str, Entry]) -> dict[str, list[str]]:
    """Our leaf path -> its published keys, in layer order (one key for a leaf without a layer axis)."""
    out: dict[str, list[str]] = {}
    for key, e in sorted(entries.items(), key=lambda kv: kv[1].layer or 0):  # stable: leaves stay in order
        out.setdefault(e.path, []).append(key)
    return out


def leaf_shape(entries: dict[str, Entry], keys: list[str]) -> tuple[int, ...]:
    """Our shape of the leaf filled by `keys` (a leading layer axis when they are per-layer)."""
    e = entries[keys[0]]
    return e.shape if e.layer is None else (len(keys), *e.shape)


def tensor_of(params: dict, e: Entry) -> np.ndarray:
    """One published key's tensor in our layout: the leaf, or its row `e.layer`."""
    leaf = get_path(params, e.path)
    return np.asarray(leaf if e.layer is None else leaf[e.layer])


# --- config.json in each family's own field names ---------------------------------------------

def hf_config(cfg: ModelConfig, family_layout: str | None = None, dtype: str = "bfloat16") -> dict:
    """config.json for `cfg` in OLMo-style (LLaDA) or Qwen2-style (Dream) names."""
    name = family_layout or cfg.family
    ids = {"mask_token_id": cfg.mask_token_id, "eos_token_id": cfg.eos_token_id,
           "pad_token_id": cfg.pad_token_id}
    if cfg.bos_token_id is not None:
        ids["bos_token_id"] = cfg.bos_token_id
    if name == "llada":
        if cfg.head_dim * cfg.n_heads != cfg.d_model:
            raise ValueError(f"the LLaDA layout needs head_dim * n_heads == d_model, got "
                             f"{cfg.head_dim} * {cfg.n_heads} != {cfg.d_model}")
        if cfg.eot_token_id is not None:
            ids["eot_token_id"] = cfg.eot_token_id
        return {
            "architectures": ["LLaDAModelLM"], "model_type": "llada", "activation_type": "silu",
            "block_type": "llama", "layer_norm_type": "rms", "rope": True, "rope_full_precision": True,
            "alibi": False, "weight_tying": False, "include_bias": False, "include_qkv_bias": cfg.qkv_bias,
            "d_model": cfg.d_model, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
            "n_layers": cfg.n_layers, "mlp_hidden_size": cfg.mlp_hidden, "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope_theta, "max_sequence_length": cfg.max_seq_len,
            "vocab_size": cfg.vocab_size, "embedding_size": cfg.vocab_size, "torch_dtype": dtype,
            "use_cache": False, **ids,
        }
    if name == "dream":
        if not cfg.qkv_bias:
            raise ValueError("the Dream layout has q/k/v biases; this config has none")
        # Qwen2-style configs have no end-of-turn field: eot_token_id is not written.
        return {
            "architectures": ["DreamModel"], "model_type": "Dream", "hidden_act": "silu",
            "hidden_size": cfg.d_model, "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_kv_heads, "num_hidden_layers": cfg.n_layers,
            "head_dim": cfg.head_dim, "intermediate_size": cfg.mlp_hidden, "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope_theta, "max_position_embeddings": cfg.max_seq_len,
            "vocab_size": cfg.vocab_size, "tie_word_embeddings": False, "torch_dtype": dtype,
            "use_cache": False, **ids,
        }
    raise ValueError(f"unknown family layout {name!r}; expected one of {', '.join(LAYOUTS)}")


# --- export ---------------------------------------------------------------------------------

def shard_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]


def split_shards(sizes: list[int], n: int) -> list[int]:
    """Shard index of each tensor: contiguous runs of about equal bytes, none empty."""
    if not 1 <= n <= len(sizes):
        raise ValueError(f"num_shards must be in [1, {len(sizes)}], got {n}")
    total, out, k, acc = sum(sizes), [], 0, 0
    for j, s in enumerate(sizes):
        # Next shard once this one holds its share, or when each shard left needs one of the keys left.
        if j > 0 and k < n - 1 and (acc >= total * (k + 1) / n or len(sizes) - j == n - 1 - k):
            k += 1
        out.append(k)
        acc += s
    return out


def export_hf(cfg: ModelConfig, params: dict, out_dir: str, family_layout: str | None = None,
              num_shards: int = 1, dtype: str = "bfloat16") -> str:
    """Write `params` as a published-layout checkpoint: safetensors shards (+ index json when more
    than one) and a config.json that `from_hf_config` reads back. Atomic: temp dir, then rename."""
    name = family_layout or cfg.family
    dt = {"bfloat16": DTYPES["BF16"], "float32": DTYPES["F32"], "float16": DTYPES["F16"]}.get(dtype)
    if dt is None:
        raise ValueError(f"dtype must be bfloat16, float32 or float16, got {dtype!r}")
    if os.path.exists(out_dir):
        raise FileExistsError(f"output directory already exists: {out_dir}")
    config = hf_config(cfg, name, dtype)
    back = from_hf_config(config, param_dtype=cfg.param_dtype)
    if back != cfg.replace(eot_token_id=back.eot_token_id):  # Dream's config has no eot field
        raise ValueError(f"config does not round-trip through the {name} config.json: {back} != {cfg}")
    entries = key_map(cfg, name)
    keys = list(entries)
    for path, leaf_keys in keys_by_leaf(entries).items():
        got, want = get_path(params, path), leaf_shape(entries, leaf_keys)
        if got is None or tuple(got.shape) != want:
            raise CheckpointError(f"params {path}: expected shape {want}, "
                                  f"got {None if got is None else tuple(got.shape)}")
    sizes = [int(np.prod(entries[k].shape)) * dt.itemsize for k in keys]
    shard_of = split_shards(sizes, num_shards)
    shard_files = shard_names(num_shards)
    with files.atomic_dir(out_dir) as tmp:
        for s, fname in enumerate(shard_files):
            specs = {k: (dt, entries[k].hf_shape) for k, sh in zip(keys, shard_of) if sh == s}
            get = lambda k: to_hf(entries[k].kind, tensor_of(params, entries[k]))
            write_safetensors(os.path.join(tmp, fname), specs, get, {"format": "pt"})
        if num_shards > 1:
            index = {"metadata": {"total_size": sum(sizes)},
                     "weight_map": {k: shard_files[sh] for k, sh in zip(keys, shard_of)}}
            files.write_json(os.path.join(tmp, "model.safetensors.index.json"), index)
        files.write_json(os.path.join(tmp, "config.json"), config)
    return out_dir


