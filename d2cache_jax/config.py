"""Model configuration: one frozen dataclass for both families, read from a checkpoint's config.json."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

FAMILIES = ("llada", "dream")
SIZE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_hidden",
               "max_seq_len")
ID_FIELDS = ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id", "eot_token_id")
OPTIONAL_IDS = ("bos_token_id", "eot_token_id")
POSITIVE_FLOATS = ("rms_norm_eps", "rope_theta")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_values(values: dict[str, Any], names: dict[str, str] | None = None) -> None:
    """Check config values (ModelConfig field names) once, for both families; a ValueError names the
    field as `names` spells it (e.g. the config.json key) and says what is allowed.

    Sizes are positive integers, ids integers inside the vocabulary, eps and theta finite and positive,
    heads divide d_model and n_kv_heads divide n_heads, head_dim is even (RoPE).
    """
    names = names or {}

    def name(f: str) -> str:
        return names.get(f, f)

    for f in SIZE_FIELDS:
        if f in values and (not _is_int(values[f]) or values[f] < 1):
            raise ValueError(f"{name(f)} must be a positive integer, got {values[f]!r}")
        if f == "n_kv_heads" and f in values:  # every head count is known here: check they divide
            d, h, kv = values.get("d_model"), values.get("n_heads"), values["n_kv_heads"]
            if d is not None and h is not None and d % h:
                raise ValueError(f"{name('n_heads')}={h} does not divide {name('d_model')}={d}")
            if h is not None and h % kv:
                raise ValueError(f"{name('n_kv_heads')}={kv} does not divide {name('n_heads')}={h}")
    if values.get("head_dim") is not None and values["head_dim"] % 2:
        raise ValueError(f"{name('head_dim')} must be even for RoPE, got {values['head_dim']}")
    for f in POSITIVE_FLOATS:
        v = values.get(f)
        if f in values and (not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v)
                            or v <= 0):
            raise ValueError(f"{name(f)} must be a finite number > 0, got {v!r}")
    vocab = values.get("vocab_size")
    for f in ID_FIELDS:
        if f not in values or (values[f] is None and f in OPTIONAL_IDS):
            continue
        v = values[f]
        if not _is_int(v) or v < 0 or (vocab is not None and v >= vocab):
            limit = f"[0, {vocab - 1}] ({name('vocab_size')}={vocab})" if vocab is not None else ">= 0"
            raise ValueError(f"{name(f)} must be a token id in {limit}, got {v!r}")
    if "qkv_bias" in values and not isinstance(values["qkv_bias"], bool):
        raise ValueError(f"{name('qkv_bias')} must be true or false, got {values['qkv_bias']!r}")


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
        validate_values(dataclasses.asdict(self))
        for f in POSITIVE_FLOATS:  # an integer eps or theta (JSON 1 vs 1.0) is the same float
            object.__setattr__(self, f, float(getattr(self, f)))
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


# Our field names -> the config.json keys they come from (error messages name the file's key).
_LLADA_NAMES = {"vocab_size": "vocab_size", "d_model": "d_model", "n_layers": "n_layers", "n_heads": "n_heads",
                "n_kv_heads": "n_kv_heads", "mlp_hidden": "mlp_hidden_size", "rms_norm_eps": "rms_norm_eps",
                "rope_theta": "rope_theta", "max_seq_len": "max_sequence_length",
                "head_dim": "head_dim (d_model / n_heads)"}
_DREAM_NAMES = {"vocab_size": "vocab_size", "d_model": "hidden_size", "n_layers": "num_hidden_layers",
                "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
                "mlp_hidden": "intermediate_size", "rms_norm_eps": "rms_norm_eps", "rope_theta": "rope_theta",
                "max_seq_len": "max_position_embeddings"}


def from_hf_config(hf_cfg: dict[str, Any], family: str | None = None,
                   param_dtype: str = "bfloat16") -> ModelConfig:
    """Build a ModelConfig from a published config.json dict (LLaDA or Dream).

    Every value is checked (`validate_values`); a ValueError names the config.json key."""
    if not isinstance(hf_cfg, dict):
        raise ValueError(f"config.json must hold a JSON object, got a JSON {type(hf_cfg).__name__}")
    family = family or detect_family(hf_cfg)
    ids = {k: hf_cfg.get(k) for k in ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id")}
    if family == "llada":
        _check_fields(hf_cfg, _LLADA_USED, _LLADA_IGNORED, "LLaDA")
        if hf_cfg.get("weight_tying"):
            raise ValueError("LLaDA config.json: weight_tying=true is not supported")
        names = dict(_LLADA_NAMES, vocab_size="embedding_size" if hf_cfg.get("embedding_size") else "vocab_size")
        raw = dict(vocab_size=hf_cfg.get("embedding_size") or hf_cfg.get("vocab_size"), d_model=hf_cfg["d_model"],
                   n_layers=hf_cfg["n_layers"], n_heads=hf_cfg["n_heads"],
                   n_kv_heads=hf_cfg.get("n_kv_heads") or hf_cfg["n_heads"],
                   mlp_hidden=hf_cfg["mlp_hidden_size"], rms_norm_eps=hf_cfg["rms_norm_eps"],
                   rope_theta=hf_cfg["rope_theta"], max_seq_len=hf_cfg["max_sequence_length"],
                   eot_token_id=hf_cfg.get("eot_token_id"), **ids)
        validate_values(raw, names)
        raw["head_dim"] = raw["d_model"] // raw["n_heads"]
        validate_values(raw, names)
        qkv_bias = bool(hf_cfg.get("include_qkv_bias") or hf_cfg.get("include_bias"))
        return ModelConfig(family="llada", qkv_bias=qkv_bias, param_dtype=param_dtype, **raw)
    if family == "dream":
        _check_fields(hf_cfg, _DREAM_USED, _DREAM_IGNORED, "Dream")
        if hf_cfg.get("tie_word_embeddings"):
            raise ValueError("Dream config.json: tie_word_embeddings=true is not supported")
        raw = dict(vocab_size=hf_cfg["vocab_size"], d_model=hf_cfg["hidden_size"],
                   n_layers=hf_cfg["num_hidden_layers"], n_heads=hf_cfg["num_attention_heads"],
                   n_kv_heads=hf_cfg["num_key_value_heads"], mlp_hidden=hf_cfg["intermediate_size"],
                   rms_norm_eps=hf_cfg["rms_norm_eps"], rope_theta=hf_cfg["rope_theta"],
                   max_seq_len=hf_cfg["max_position_embeddings"], **ids)
        validate_values(raw, _DREAM_NAMES)
        raw["head_dim"] = hf_cfg.get("head_dim") or raw["d_model"] // raw["n_heads"]
        validate_values(raw, _DREAM_NAMES)
        return ModelConfig(family="dream", qkv_bias=True, param_dtype=param_dtype, **raw)
    raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")


def read_json(path: str) -> Any:
    """A JSON file's content; unreadable or malformed JSON is an InputError naming the file."""
    from d2cache_jax.cli import InputError

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"missing file {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable JSON file ({e})") from None


def read_hf_config(hf_dir: str, param_dtype: str = "bfloat16", family: str | None = None) -> ModelConfig:
    """The ModelConfig of a published checkpoint's config.json; any problem is an InputError naming the
    file and the key."""
    from d2cache_jax.cli import InputError

    path = os.path.join(hf_dir, "config.json")
    hf_cfg = read_json(path)
    try:
        return from_hf_config(hf_cfg, family=family, param_dtype=param_dtype)
    except (ValueError, TypeError, KeyError) as e:
        raise InputError(f"{path}: {e}") from None


def read_model_config(path: str) -> ModelConfig:
    """`ModelConfig.from_dict` of a converted checkpoint's model_config.json, errors naming the file."""
    from d2cache_jax.cli import InputError

    d = read_json(path)
    if not isinstance(d, dict):
        raise InputError(f"{path}: must hold a JSON object, got a JSON {type(d).__name__}")
    try:
        return ModelConfig.from_dict(d)
    except (ValueError, TypeError) as e:
        raise InputError(f"{path}: {e}") from None


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
