"""Parity of converter + load + forward against transformers Llama (LLaDA) / Qwen2 (Dream) made
bidirectional, on tiny random weights written in the exact published layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from checkpoints_convert.convert import convert
from d2cache_jax.checkpoint import load
from d2cache_jax.model import forward
from tests import hf_fixtures as H

FAMILIES = ("llada", "dream")
FP32_TOL = 1e-4  # max |ours - ref| / max |ref|
# bf16 compute vs an fp32 reference on the same bf16 weights: every matmul output, norm and residual
# is rounded to bf16 (relative error <= 2^-9 ~ 2e-3 each). Over 2 layers that is ~20 roundings whose
# errors add roughly like a random walk, sqrt(20) * 2e-3 ~ 1e-2 of the logit scale, and a few
# aligned ones can double it: 3e-2 bounds it with margin while a wrong key or transform (errors of
# order 1) still fails. Measured: 7.3e-3 (LLaDA) and 6.6e-3 (Dream).
BF16_TOL = 3e-2


def rel_err(ours, ref) -> float:
    return float(np.abs(np.asarray(ours, np.float32) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Per family: the reference, an fp32 and a bf16 published checkpoint, and their conversions."""
    root = tmp_path_factory.mktemp("parity")
    out = {}
    for fam in FAMILIES:
        model = H.reference(fam, seed=1)
        H.write_published(model, fam, str(root / f"{fam}_f32"), torch.float32, num_shards=2)
        H.write_published(model, fam, str(root / f"{fam}_bf16"), torch.bfloat16, num_shards=3)
        convert(str(root / f"{fam}_f32"), str(root / f"{fam}_f32_conv"), fam)
        convert(str(root / f"{fam}_bf16"), str(root / f"{fam}_bf16_conv"), fam)
        out[fam] = dict(model=model, dir=root)
    return out


def tokens(batch=2, length=12, seed=0):
    return np.random.RandomState(seed).randint(0, H.VOCAB, (batch, length))


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_parity_and_bidirectional(ckpts, family):
    model, root = ckpts[family]["model"], ckpts[family]["dir"]
    cfg, params = load(str(root / f"{family}_f32_conv"))
    assert cfg.family == family and cfg.param_dtype == "float32"
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    t = tokens()
    ours, ref = forward(cfg, params, t), H.ref_logits(model, t)
    print(f"{family} fp32 rel err {rel_err(ours, ref):.2e}")
    assert rel_err(ours, ref) <= FP32_TOL, rel_err(ours, ref)
    # Bidirectional in both: changing the last token changes the first position's logits.
    t2 = t.copy()
    t2[:, -1] = (t2[:, -1] + 1) % H.VOCAB
    ours2, ref2 = np.asarray(forward(cfg, params, t2)), H.ref_logits(model, t2)
    assert np.abs(ref2[:, 0] - ref[:, 0]).max() > 1e-2
    assert np.abs(ours2[:, 0] - np.asarray(ours)[:, 0]).max() > 1e-2
    assert rel_err(ours2, ref2) <= FP32_TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_checkpoint_converted_exactly(ckpts, family):
    """bf16 stays bf16, bit for bit: upcast after loading, it matches the fp32 reference on the same
    bf16-rounded weights to fp32 tolerance."""
    root = ckpts[family]["dir"]
    cfg, params = load(str(root / f"{family}_bf16_conv"))
    assert cfg.param_dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    cfg32, params32 = load(str(root / f"{family}_bf16_conv"), dtype="float32")
    assert cfg32.param_dtype == "float32"
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params32)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b))
    ref_model = H.round_to(H.reference(family, seed=1), torch.bfloat16)
    t = tokens(seed=1)
    err = rel_err(forward(cfg32, params32, t), H.ref_logits(ref_model, t))
    print(f"{family} bf16 file, fp32 compute rel err {err:.2e}")
    assert err <= FP32_TOL, err


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_parity(ckpts, family):
    root = ckpts[family]["dir"]
    cfg, params = load(str(root / f"{family}_bf16_conv"))
    ref_model = H.round_to(H.reference(family, seed=1), torch.bfloat16)
    t = tokens(seed=2)
    err = rel_err(forward(cfg, params, t), H.ref_logits(ref_model, t))
    print(f"{family} bf16 rel err {err:.2e}")
    assert err <= BF16_TOL, err


@pytest.mark.parametrize("family", FAMILIES)
def test_load_hf_dir_directly(ckpts, family):
    """`load` on the published directory converts in memory to the same params."""
    root = ckpts[family]["dir"]
    cfg_a, pa = load(str(root / f"{family}_bf16"))
    cfg_b, pb = load(str(root / f"{family}_bf16_conv"))
    assert cfg_a == cfg_b
    for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_dream_left_padded_batch(ckpts):
    """Left padding: same attention mask and position ids cumsum(mask)-1 as the reference; real
    positions also match an unpadded run of each sequence alone."""
    model, root = ckpts["dream"]["model"], ckpts["dream"]["dir"]
    cfg, params = load(str(root / "dream_f32_conv"))
    t = tokens(batch=3, length=10, seed=3)
    mask = np.ones_like(t)
    mask[0, :4] = 0
    mask[1, :1] = 0
    t = np.where(mask == 1, t, cfg.pad_token_id)
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    ours = np.asarray(forward(cfg, params, t, mask))
    ref = H.ref_logits(model, t, attention_mask=mask, position_ids=pos)
    real = mask.astype(bool)
    err = np.abs(ours[real] - ref[real]).max() / np.abs(ref[real]).max()
    print(f"dream left-padded rel err {err:.2e}")
    assert err <= FP32_TOL, err
    alone = np.asarray(forward(cfg, params, t[:1, real[0]]))[0]  # the row with 4 pads, unpadded
    assert rel_err(ours[0, real[0]], alone) <= FP32_TOL
