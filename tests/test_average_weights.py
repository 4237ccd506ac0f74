"""`experiments.average_weights`: the mean of published-layout checkpoints, against torch's own mean of
the tensors, and its bad input (one error line, nothing written)."""

import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from d2cache_jax.checkpoint import read_config
from experiments.average_weights import average
from tests import hf_fixtures as H
from tests.test_bad_input import ROOT, TINY, assert_one_line, run_all, write_text

TRACE = os.path.join(ROOT, "d2cache_jax", "assets", "tiny_trace")


def _published(family: str, seed: int, out_dir: str, num_shards: int) -> dict[str, torch.Tensor]:
    return H.write_published(H.reference(family, seed=seed), family, out_dir, torch.bfloat16, num_shards)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_mean_of_three_checkpoints_equals_torch_mean(tmp_path, family):
    """bf16 inputs in the published layout (sharded, with index json): the output holds every published
    key, each equal to torch's float32 mean of the three tensors rounded to bf16; the config and the
    non-weight files carry over."""
    dirs = [str(tmp_path / f"in{s}") for s in range(3)]
    states = [_published(family, s, d, num_shards=2 + s % 2) for s, d in enumerate(dirs)]
    out = average(dirs, str(tmp_path / "mean"))

    got = load_file(os.path.join(out, "model.safetensors"))
    assert sorted(got) == sorted(states[0])
    for k, v in got.items():
        want = (sum(s[k].float() for s in states) / 3).to(torch.bfloat16)
        assert v.dtype == torch.bfloat16 and torch.equal(v, want), k
    assert any(not torch.equal(got[k], states[0][k]) for k in got)  # the inputs really differ
    assert read_config(out) == read_config(dirs[0])
    for name in ("tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        with open(os.path.join(out, name)) as a, open(os.path.join(dirs[0], name)) as b:
            assert a.read() == b.read()
    assert sorted(os.listdir(tmp_path)) == ["in0", "in1", "in2", "mean"]  # no partial folder left


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    other_tok = str(tmp_path / "tok")
    shutil.copytree(TINY, other_tok)
    write_text(os.path.join(other_tok, "tokenizer_config.json"), "{}")
    exists = str(tmp_path / "exists")
    os.makedirs(exists)
    out = str(tmp_path / "out")
    m = ("experiments.average_weights",)
    results = run_all(
        (*m, f"--out={out}", TINY, TRACE),
        (*m, f"--out={out}", TINY, other_tok),
        (*m, f"--out={out}", TINY),
        (*m, f"--out={exists}", TINY, TINY),
        (*m, TINY, TINY),
        (*m, f"--out={out}", TINY, str(tmp_path / "missing")),
        (*m, f"--out={out}", "--dtype=int8", TINY, TINY),
    )
    assert_one_line(results[0], TRACE, "model config differs")
    assert_one_line(results[1], os.path.join(other_tok, "tokenizer_config.json"), "differs")
    assert_one_line(results[2], "at least two")
    assert_one_line(results[3], exists, "already exists")
    assert_one_line(results[4], "--out")
    assert_one_line(results[5], "missing")
    assert_one_line(results[6], "dtype", "int8")
    assert sorted(os.listdir(tmp_path)) == ["exists", "tok"]
