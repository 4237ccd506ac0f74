"""Model configuration: one frozen dataclass for both families, read from a checkpoint's config.json."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

FAMILIES = ("llada", "dream")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes, numerics and special ids of a bidirectional masked-diffusion Transformer."""

    family: str  # "llada" (no logit shift, MHA, no biases) or "dream" (GQA, qkv bias, shifted logits)
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_hidden: int
    rms_norm_eps: float
    rope_theta: float
    qkv_bias: bool
    max_seq_len: int
    mask_token_id: int
    eos_token_id: int
    pad_token_id: int
    bos_token_id: int | None = None
    eot_token_id: int | None = None  # end-of-turn of instruct chat templates (LLaDA <|eot_id|>)
    param_dtype: str = "bfloat16"

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.param_dtype not in ("bfloat16", "float32"):
            raise ValueError(f"param_dtype must be bfloat16 or float32, got {self.param_dtype!r}")

    @property
    def shift_logits(self) -> bool:
        """Dream predicts token i from hidden state i-1."""
        return self.family == "dream"

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        ids = [self.eos_token_id] + ([self.eot_token_id] if self.eot_token_id is not None else [])
        return tuple(dict.fromkeys(ids))

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown or missing fields are errors that name the field."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(d))
        if missing:
            raise ValueError(f"missing ModelConfig field(s): {', '.join(missing)}")
        return cls(**d)


# --- Hugging Face config.json readers -------------------------------------------------------

# Fields of the published LLaDA config.json (OLMo-style) that we read, and the ones we know and ignore.
_LLADA_USED = ("d_model", "n_heads", "n_layers", "mlp_hidden_size", "rms_norm_eps", "rope_theta",
               "max_sequence_length", "mask_token_id", "eos_token_id", "pad_token_id")
_LLADA_IGNORED = (
    "activation_type", "alibi", "alibi_bias_max", "architectures", "attention_dropout",
    "attention_layer_norm", "attention_layer_norm_with_affine", "auto_map", "bias_for_layer_norm",
    "block_group_size", "block_type", "embedding_dropout", "embedding_size", "flash_attention",
    "include_bias", "include_qkv_bias", "init_cutoff_factor", "init_device", "init_fn", "init_std",
    "input_emb_norm", "layer_norm_type", "layer_norm_with_affine", "mlp_ratio", "model_type",
    "multi_query_attention", "n_kv_heads", "precision", "residual_dropout", "rope",
    "rope_full_precision", "scale_logits", "transformers_version", "use_cache", "vocab_size",
    "weight_tying", "bos_token_id", "eot_token_id", "torch_dtype", "dtype", "clip_qkv",
    "layer_norm_eps", "new_embedding_size",
)
# Fields of the published Dream config.json (Qwen2-style).
_DREAM_USED = ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
               "intermediate_size", "rms_norm_eps", "rope_theta", "max_position_embeddings",
               "vocab_size", "mask_token_id", "eos_token_id", "pad_token_id")
_DREAM_IGNORED = (
    "architectures", "attention_dropout", "auto_map", "bos_token_id", "hidden_act",
    "initializer_range", "max_window_layers", "model_type", "rope_scaling", "sliding_window",
    "tie_word_embeddings", "torch_dtype", "dtype", "transformers_version", "use_cache",
    "use_sliding_window", "head_dim", "layer_types", "rope_parameters", "attention_bias",
)


def _check_fields(cfg: dict[str, Any], used: tuple[str, ...], ignored: tuple[str, ...], what: str):
    unknown = sorted(set(cfg) - set(used) - set(ignored))
    if unknown:
        raise ValueError(f"{what} config.json has unknown field(s): {', '.join(unknown)}")
    missing = [k for k in used if k not in cfg]
    if missing:
        raise ValueError(f"{what} config.json is missing field(s): {', '.join(missing)}")


def detect_family(hf_cfg: dict[str, Any]) -> str:
    """Tell LLaDA (OLMo-style names) from Dream (Qwen2 names) by the config's own keys."""
    mt = str(hf_cfg.get("model_type", "")).lower()
    if mt == "llada" or "d_model" in hf_cfg:
        return "llada"
    if mt == "dream" or "hidden_size" in hf_cfg:
        return "dream"
    raise ValueError(f"cannot tell the model family from config.json (model_type={mt!r})")


def from_hf_config(hf_cfg: dict[str, Any], family: str | None = None,
                   param_dtype: str = "bfloat16") -> ModelConfig:
    """Build a ModelConfig from a published config.json dict (LLaDA or Dream)."""
    family = family or detect_family(hf_cfg)
    if family == "llada":
        _check_fields(hf_cfg, _LLADA_USED, _LLADA_IGNORED, "LLaDA")
        if hf_cfg.get("weight_tying"):
            raise ValueError("LLaDA config.json: weight_tying=true is not supported")
        n_heads = int(hf_cfg["n_heads"])
        n_kv = hf_cfg.get("n_kv_heads") or n_heads
        vocab = int(hf_cfg.get("embedding_size") or hf_cfg.get("vocab_size"))
        return ModelConfig(
            family="llada", vocab_size=vocab, d_model=int(hf_cfg["d_model"]),
            n_layers=int(hf_cfg["n_layers"]), n_heads=n_heads, n_kv_heads=int(n_kv),
            head_dim=int(hf_cfg["d_model"]) // n_heads, mlp_hidden=int(hf_cfg["mlp_hidden_size"]),
            rms_norm_eps=float(hf_cfg["rms_norm_eps"]), rope_theta=float(hf_cfg["rope_theta"]),
            qkv_bias=bool(hf_cfg.get("include_qkv_bias") or hf_cfg.get("include_bias")),
            max_seq_len=int(hf_cfg["max_sequence_length"]),
            mask_token_id=int(hf_cfg["mask_token_id"]), eos_token_id=int(hf_cfg["eos_token_id"]),
            pad_token_id=int(hf_cfg["pad_token_id"]),
            bos_token_id=_opt_int(hf_cfg.get("bos_token_id")),
            eot_token_id=_opt_int(hf_cfg.get("eot_token_id")),
            param_dtype=param_dtype)
    if family == "dream":
        _check_fields(hf_cfg, _DREAM_USED, _DREAM_IGNORED, "Dream")
        if hf_cfg.get("tie_word_embeddings"):
            raise ValueError("Dream config.json: tie_word_embeddings=true is not supported")
        n_heads = int(hf_cfg["num_attention_heads"])
        return ModelConfig(
            family="dream", vocab_size=int(hf_cfg["vocab_size"]), d_model=int(hf_cfg["hidden_size"]),
            n_layers=int(hf_cfg["num_hidden_layers"]), n_heads=n_heads,
            n_kv_heads=int(hf_cfg["num_key_value_heads"]),
            head_dim=int(hf_cfg.get("head_dim") or int(hf_cfg["hidden_size"]) // n_heads),
            mlp_hidden=int(hf_cfg["intermediate_size"]), rms_norm_eps=float(hf_cfg["rms_norm_eps"]),
            rope_theta=float(hf_cfg["rope_theta"]), qkv_bias=True,
            max_seq_len=int(hf_cfg["max_position_embeddings"]),
            mask_token_id=int(hf_cfg["mask_token_id"]), eos_token_id=int(hf_cfg["eos_token_id"]),
            pad_token_id=int(hf_cfg["pad_token_id"]),
            bos_token_id=_opt_int(hf_cfg.get("bos_token_id")), param_dtype=param_dtype)
    raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def read_hf_config(hf_dir: str, param_dtype: str = "bfloat16") -> ModelConfig:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no config.json in {hf_dir}")
    with open(path) as f:
        return from_hf_config(json.load(f), param_dtype=param_dtype)


# --- presets ----------------------------------------------------------------------------------

def llada_8b_base() -> ModelConfig:
    return ModelConfig(family="llada", vocab_size=126464, d_model=4096, n_layers=32, n_heads=32,
                       n_kv_heads=32, head_dim=128, mlp_hidden=12288, rms_norm_eps=1e-5,
                       rope_theta=500000.0, qkv_bias=False, max_seq_len=4096,
                       mask_token_id=126336, eos_token_id=126081, pad_token_id=126081,
                       bos_token_id=126080)


def llada_8b_instruct() -> ModelConfig:
    return llada_8b_base().replace(eot_token_id=126348)


def dream_7b_base() -> ModelConfig:
    return ModelConfig(family="dream", vocab_size=152064, d_model=3584, n_layers=28, n_heads=28,
                       n_kv_heads=4, head_dim=128, mlp_hidden=18944, rms_norm_eps=1e-6,
                       rope_theta=1000000.0, qkv_bias=True, max_seq_len=131072,
                       mask_token_id=151666, eos_token_id=151643, pad_token_id=151643,
                       bos_token_id=151665)


def dream_7b_instruct() -> ModelConfig:
    # <|im_end|> ends an assistant turn in Dream's Qwen2 chat template.
    return dream_7b_base().replace(eot_token_id=151645)


def tiny_llada(vocab_size: int = 256, **kw: Any) -> ModelConfig:
    base = dict(family="llada", vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4,
                n_kv_heads=4, head_dim=16, mlp_hidden=128, rms_norm_eps=1e-5, rope_theta=10000.0,
                qkv_bias=False, max_seq_len=512, mask_token_id=vocab_size - 1,
                eos_token_id=vocab_size - 2, pad_token_id=vocab_size - 2, bos_token_id=vocab_size - 3,
                param_dtype="float32")
    base.update(kw)
    return ModelConfig(**base)


def tiny_dream(vocab_size: int = 256, **kw: Any) -> ModelConfig:
    base = dict(family="dream", vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4,
                n_kv_heads=2, head_dim=16, mlp_hidden=128, rms_norm_eps=1e-6, rope_theta=10000.0,
                qkv_bias=True, max_seq_len=512, mask_token_id=vocab_size - 1,
                eos_token_id=vocab_size - 2, pad_token_id=vocab_size - 2, bos_token_id=vocab_size - 3,
                param_dtype="float32")
    base.update(kw)
    return ModelConfig(**base)


PRESETS = {
    "llada_8b_base": llada_8b_base,
    "llada_8b_instruct": llada_8b_instruct,
    "dream_7b_base": dream_7b_base,
    "dream_7b_instruct": dream_7b_instruct,
    "tiny_llada": tiny_llada,
    "tiny_dream": tiny_dream,
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
