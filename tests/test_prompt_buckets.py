"""Few compiles per run: prompt lengths padded to geometric buckets (capped by the context), and the
persistent compilation cache (`--compilation_cache_dir`) that lets a rerun of the same shapes compile nothing."""

import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from d2cache_jax import config
from d2cache_jax.generation import make_options
from d2cache_jax.generation.state import bucket_length, pad_prompts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "d2cache_jax", "assets", "tiny_arith")


def test_default_rule_is_the_options():
    o = make_options()
    assert (o.prompt_bucket, o.prompt_growth) == (16, 1.5)
    with pytest.raises(ValueError, match="prompt_growth"):
        make_options(prompt_growth=0.9)
    with pytest.raises(ValueError, match="prompt_growth"):
        make_options(prompt_growth=float("nan"))
    with pytest.raises(ValueError, match="prompt_bucket"):
        make_options(prompt_bucket=-1)


@pytest.mark.parametrize("bucket,growth", [(16, 1.5), (16, 1.25), (8, 2.0), (32, 1.3)])
def test_buckets_fit_pad_little_and_are_few(bucket, growth):
    """Stated without the rule's formula: every prompt fits; the size is a multiple of `bucket`; padding
    stays below a factor `growth` (plus one bucket); sizes never shrink as prompts grow, and a size is
    its own bucket (so it is the smallest size that holds the prompt); the number of distinct sizes over
    [a, b] is at most log(b / a) / log(growth) + 2."""
    ns = np.arange(1, 2001)
    sizes = np.array([bucket_length(int(n), bucket, growth) for n in ns])
    assert (sizes >= ns).all()
    assert (sizes % bucket == 0).all()
    assert (sizes < growth * ns + bucket).all()
    assert (np.diff(sizes) >= 0).all()
    assert all(bucket_length(int(s), bucket, growth) == s for s in set(sizes.tolist()))
    for a, b in [(30, 900), (1, 2000), (100, 400), (500, 501)]:
        distinct = len(set(sizes[a - 1:b].tolist()))
        assert distinct <= math.log(b / a) / math.log(growth) + 2, (a, b, distinct)


def test_30_to_900_is_a_handful_not_dozens():
    """The default rule: ten shapes for prompts of 30 to 900 tokens; the old rule (every multiple of 16,
    growth 1) compiled 56."""
    new = {bucket_length(n) for n in range(30, 901)}
    old = {bucket_length(n, 16, 1.0) for n in range(30, 901)}
    assert old == set(range(32, 913, 16)) and len(old) == 56
    assert new == {32, 48, 64, 96, 128, 192, 288, 416, 624, 928}
    assert {bucket_length(n, 16, 1.25) for n in range(30, 901)} < set(range(32, 1121, 16))


def test_no_padding_and_linear_rules():
    assert [bucket_length(n, 0) for n in (1, 17, 900)] == [1, 17, 900]
    assert [bucket_length(n, 1, 1.5) for n in (1, 17, 900)] == [1, 17, 900]
    assert [bucket_length(n, 16, 1.0) for n in (1, 16, 17, 33, 900)] == [16, 16, 32, 48, 912]


def test_cap_is_the_context_left_after_generation():
    """Never padded past `max_seq_len - gen_length`: a prompt whose bucket would pass it gets exactly the
    context that is left; one that does not fit is refused."""
    assert bucket_length(700, cap=800) == 800  # the 928 bucket, cut to the cap
    assert bucket_length(600, cap=800) == 624
    assert bucket_length(800, cap=800) == 800
    with pytest.raises(ValueError):
        bucket_length(801, cap=800)
    cfg = config.tiny_llada().replace(max_seq_len=256)
    ids, mask = pad_prompts(cfg, [[5] * 100, [6] * 3], gen_length=64)
    assert ids.shape == (2, 128) and mask.sum(1).tolist() == [100, 3]
    ids, mask = pad_prompts(cfg, [[5] * 150], gen_length=64)  # bucket 192, but 256 - 64 = 192 fits exactly
    assert ids.shape == (1, 192)
    ids, mask = pad_prompts(cfg, [[5] * 150], gen_length=96)  # bucket 192 > 256 - 96 = 160: capped
    assert ids.shape == (1, 160) and mask[0, -150:].all() and not mask[0, :10].any()
    assert (ids[0, -150:] == 5).all()


def _generate(cache_dir: str) -> tuple[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-m", "experiments.generate", f"--checkpoint={TINY}", "--prompt=12+34=",
                          "--gen_length=16", "--steps=16", "--block_length=16",
                          f"--compilation_cache_dir={cache_dir}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return res.stdout, res.stderr


def _cache_line(stderr: str) -> tuple[int, int]:
    m = re.search(r"compilation cache .*: (\d+) program\(s\) loaded, (\d+) compiled and stored", stderr)
    assert m, stderr
    return int(m.group(1)), int(m.group(2))


def test_second_run_compiles_nothing(tmp_path):
    """The first run stores every program in the cache directory; the second, same shapes, loads them all
    (JAX's own cache-hit and cache-miss events, counted by the script) and prints the same text."""
    d = str(tmp_path / "jax_cache")
    out1, err1 = _generate(d)
    loaded, compiled = _cache_line(err1)
    entries = [f for f in os.listdir(d) if f.endswith("-cache")]
    assert loaded == 0 and compiled > 0 and len(entries) >= compiled
    assert any(f.startswith("jit_run-") for f in entries)  # the denoising loop itself
    out2, err2 = _generate(d)
    assert _cache_line(err2) == (compiled, 0)
    assert out2.splitlines()[-2] == out1.splitlines()[-2]  # the generated text
