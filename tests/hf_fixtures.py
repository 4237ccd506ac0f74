"""Tiny random PyTorch references (transformers Llama = LLaDA, Qwen2 = Dream, made bidirectional) and
checkpoints written from them in the exact published layouts (real key names, shards, index json)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

VOCAB, D, LAYERS, HEADS, FF = 128, 64, 2, 4, 96
THETA = 5000.0

# transformers Llama names -> published LLaDA (OLMo) names; Dream uses the Qwen2 names unchanged.
_LLAMA_TO_LLADA = (
    ("model.embed_tokens.weight", "model.transformer.wte.weight"),
    ("model.norm.weight", "model.transformer.ln_f.weight"),
    ("lm_head.weight", "model.transformer.ff_out.weight"),
    ("model.layers.", "model.transformer.blocks."),
    (".self_attn.o_proj.", ".attn_out."),
    (".self_attn.", "."),
    (".mlp.gate_proj.", ".ff_proj."),
    (".mlp.up_proj.", ".up_proj."),
    (".mlp.down_proj.", ".ff_out."),
    (".input_layernorm.", ".attn_norm."),
    (".post_attention_layernorm.", ".ff_norm."),
)

MASK_ID, EOS_ID, BOS_ID = VOCAB - 1, VOCAB - 2, VOCAB - 3


def llada_config_json(**over) -> dict:
    """An OLMo-style config.json like the published LLaDA one (with its ignored fields)."""
    cfg = {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": D,
        "embedding_dropout": 0.0, "embedding_size": VOCAB, "eos_token_id": EOS_ID, "flash_attention": False,
        "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
        "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
        "layer_norm_with_affine": True, "mask_token_id": MASK_ID, "max_sequence_length": 64,
        "mlp_hidden_size": FF, "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None,
        "n_heads": HEADS, "n_kv_heads": HEADS, "n_layers": LAYERS, "pad_token_id": EOS_ID,
        "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-5, "rope": True,
        "rope_full_precision": True, "rope_theta": THETA, "scale_logits": False,
        "transformers_version": "4.46.3", "use_cache": False, "vocab_size": VOCAB, "weight_tying": False,
    }
    cfg.update(over)
    return cfg


def dream_config_json(**over) -> dict:
    """A Qwen2-style config.json like the published Dream one."""
    cfg = {
        "architectures": ["DreamModel"], "attention_dropout": 0.0, "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID, "hidden_act": "silu", "hidden_size": D, "initializer_range": 0.02,
        "intermediate_size": FF, "mask_token_id": MASK_ID, "max_position_embeddings": 64,
        "max_window_layers": LAYERS, "model_type": "Dream", "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS, "num_key_value_heads": 2, "pad_token_id": EOS_ID, "rms_norm_eps": 1e-6,
        "rope_scaling": None, "rope_theta": THETA, "sliding_window": None, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.46.2", "use_cache": True,
        "use_sliding_window": False, "vocab_size": VOCAB,
    }
    cfg.update(over)
    return cfg


def reference(family: str, seed: int = 0) -> torch.nn.Module:
    """A random bidirectional transformers model in fp32; every norm weight and bias randomized."""
    common = dict(vocab_size=VOCAB, hidden_size=D, intermediate_size=FF, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, rope_theta=THETA, max_position_embeddings=64,
                  tie_word_embeddings=False, attn_implementation="eager")
    if family == "llada":
        cfg = transformers.LlamaConfig(num_key_value_heads=HEADS, rms_norm_eps=1e-5, attention_bias=False,
                                       mlp_bias=False, **common)
        cls = transformers.LlamaForCausalLM
    else:
        cfg = transformers.Qwen2Config(num_key_value_heads=2, rms_norm_eps=1e-6, **common)
        cls = transformers.Qwen2ForCausalLM
    cfg.is_causal = False  # bidirectional mask from masking_utils ...
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    for m in model.modules():  # ... and no causal flag in the attention modules themselves
        if hasattr(m, "is_causal"):
            m.is_causal = False
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * r)
            elif name.endswith("bias"):
                p.copy_(0.1 * r)
            elif "embed_tokens" in name:
                p.copy_(r)
            else:
                p.copy_(r / math.sqrt(p.shape[1]))
    return model


def published_name(key: str, family: str) -> str:
    """A transformers state-dict key under `family`'s published name."""
    if family == "llada":
        for a, b in _LLAMA_TO_LLADA:
            key = key.replace(a, b)
    return key


def published_state(model: torch.nn.Module, family: str) -> dict[str, torch.Tensor]:
    """The model's state dict under the published key names of `family`."""
    return {published_name(k, family): v.detach().clone() for k, v in model.state_dict().items()}


def write_published(model: torch.nn.Module, family: str, out_dir: str, dtype: torch.dtype = torch.float32,
                    num_shards: int = 2, config: dict | None = None) -> dict[str, torch.Tensor]:
    """Write shards (+ index json when sharded), config.json and tokenizer files; return the state."""
    os.makedirs(out_dir)
    state = {k: v.to(dtype).contiguous() for k, v in published_state(model, family).items()}
    keys = list(state)
    if num_shards == 1:
        save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        per = math.ceil(len(keys) / num_shards)
        for s in range(num_shards):
            name = f"model-{s + 1:05d}-of-{num_shards:05d}.safetensors"
            part = {k: state[k] for k in keys[s * per:(s + 1) * per]}
            save_file(part, os.path.join(out_dir, name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, name))
        total = sum(v.numel() * v.element_size() for v in state.values())
        _dump(os.path.join(out_dir, "model.safetensors.index.json"),
              {"metadata": {"total_size": total}, "weight_map": weight_map})
    if config is None:
        config = llada_config_json() if family == "llada" else dream_config_json()
    _dump(os.path.join(out_dir, "config.json"), config)
    _dump(os.path.join(out_dir, "tokenizer_config.json"), {"model_max_length": 64})
    _dump(os.path.join(out_dir, "generation_config.json"), {"eos_token_id": EOS_ID})
    with open(os.path.join(out_dir, "chat_template.jinja"), "w") as f:
        f.write("{{ messages }}")
    return state


def _dump(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def ref_logits(model: torch.nn.Module, tokens, attention_mask=None, position_ids=None):
    """Reference fp32 logits as numpy."""
    with torch.no_grad():
        t = torch.as_tensor(tokens, dtype=torch.long)
        kw = {}
        if attention_mask is not None:
            kw["attention_mask"] = torch.as_tensor(attention_mask, dtype=torch.long)
        if position_ids is not None:
            kw["position_ids"] = torch.as_tensor(position_ids, dtype=torch.long)
        return model(input_ids=t, **kw).logits.float().numpy()


def round_to(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Round the model's weights through `dtype` in place (stays fp32): the reference for a bf16 file."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).float())
    return model


def random_params(cfg, seed: int = 0) -> dict:
    """Random params for `cfg` in NumPy (fast; init_params compiles one op per shape), in the stacked
    layout of `params.param_shapes`: norms near 1, biases small, matrices scaled by 1/sqrt(fan_in)."""
    import jax

    from d2cache_jax.params import param_shapes

    rng = np.random.default_rng(seed)

    def one(path, shape: tuple) -> np.ndarray:
        name = str(path[-1].key)
        per_layer = shape[1:] if str(path[0].key) == "layers" else shape
        r = rng.standard_normal(shape)
        if name == "scale":  # attn_norm, mlp_norm, final_norm
            r = 1.0 + 0.2 * r
        elif name in ("bq", "bk", "bv"):
            r = 0.1 * r
        elif name != "embedding":
            r = r / np.sqrt(per_layer[0] * per_layer[1] if name == "wo" else per_layer[0])
        return r.astype(np.float32)

    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(d, int) for d in x)
    return jax.tree.map_with_path(one, param_shapes(cfg), is_leaf=is_shape)
