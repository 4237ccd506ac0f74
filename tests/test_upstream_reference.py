"""`upstream_compat=True` against recorded runs of the upstream PyTorch code (../shared/upstream_reference).

The recording holds, for 8 methods x 2 block lengths on a tiny LLaDA checkpoint (fp32, built by the
generator script beside it), the 64 generated ids, the step at which upstream committed every
position, and the rows upstream recomputed at every forward. Every run must agree on all three,
so a departure names the step where it starts, not only a changed token.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

import d2cache_jax
from d2cache_jax.generation.options import make_options
from d2cache_jax.generation.step import max_steps

gen_lib = importlib.import_module("d2cache_jax.generation.generate")

REF_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "upstream_reference")
REF_JSON = os.path.join(REF_DIR, "upstream_sharp_llada_results.json")

# Upstream's run settings (each run's `cache` and `generation_kwargs`) in our option names.
METHODS = {
    "vanilla": dict(cache="none"),
    "prefix_cache": dict(cache="prefix"),
    "dual_cache": dict(cache="dual"),
    "dllm_cache": dict(cache="dllm", kp=50, kr=2, rou=0.25),
    "d2cache": dict(cache="d2cache", rollout_p=0.1, current_k=32, cache_sigma=10.0, inflate_w=4, sigma=10.0),
    "d2cache_inflate0": dict(cache="d2cache", rollout_p=0.1, current_k=32, cache_sigma=10.0, inflate_w=0,
                             sigma=10.0),
    "vanilla_thr0.9": dict(cache="none", decoder="threshold", threshold=0.9),
    "dual_cache_thr0.9": dict(cache="dual", decoder="threshold", threshold=0.9),
}
BLOCKS = ("block64", "block16")

pytestmark = pytest.mark.skipif(not os.path.exists(REF_JSON), reason="../shared/upstream_reference is not here")


@pytest.fixture(scope="module")
def reference():
    with open(REF_JSON) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def sharp_model(reference, tmp_path_factory):
    """The recorded checkpoint, written in its published layout by the generator beside the recording
    and read back through `d2cache_jax.load` (fp32, as upstream ran it)."""
    spec = importlib.util.spec_from_file_location("make_sharp_llada", os.path.join(REF_DIR, "make_sharp_llada.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    out = tmp_path_factory.mktemp("sharp_llada")
    save_file(gen.build(), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(reference["checkpoint"]["config"]))
    cfg, params = d2cache_jax.load(str(out))
    assert cfg.param_dtype == "float32"
    return cfg, params


def run_steps(cfg, params, prompt, opts):
    """Drive the jitted step from Python; returns (state, rows recomputed per forward as sorted lists
    for d2Cache, else None)."""
    state = gen_lib.prepare(cfg, [prompt], opts)
    step = gen_lib.step_fn(cfg, opts)
    t = state.tokens.shape[1]
    rows = []
    for _ in range(max_steps(opts)):
        if opts.cache == "d2cache":
            started, q_idx = jax.device_get((state.cache.started, state.cache.q_idx[0]))
            rows.append(None if not started else sorted(int(r) for r in q_idx if r < t))
        state = step(params, state)
        if bool(state.done.all()) or int(state.block) >= opts.num_blocks:
            break
    return state, rows if opts.cache == "d2cache" else None


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("block", BLOCKS)
def test_upstream_run_token_exact(reference, sharp_model, block, method):
    """Same tokens, same commit step per position, same forward count, and (d2Cache) the same rows
    recomputed at every forward as upstream."""
    cfg, params = sharp_model
    run = reference["runs"][block][method]
    common = reference["common_generation"]
    opts = make_options(gen_length=common["gen_length"], block_length=int(block[len("block"):]),
                        num_transfer_tokens=common["num_transfer_tokens"], upstream_compat=True,
                        **METHODS[method])
    state, rows = run_steps(cfg, params, reference["prompt"]["ids"], opts)
    g = opts.gen_length
    tokens = np.asarray(state.tokens[0, -g:])
    commit = np.asarray(state.commit_step[0])
    up_commit = np.asarray(run["decode_step_per_position"])
    first_step_off = int(np.nonzero(commit != up_commit)[0].size and
                         min(commit[commit != up_commit].min(), up_commit[commit != up_commit].min()))
    assert (commit == up_commit).all(), f"decode order departs from upstream at step {first_step_off}"
    np.testing.assert_array_equal(tokens, run["tokens"])
    assert int(state.step) == run["nfe"]
    if rows is not None:
        up_rows = run["active_q_positions_per_forward"]
        assert len(rows) == len(up_rows)
        for i, (ours, theirs) in enumerate(zip(rows, up_rows)):
            assert ours == (None if theirs is None else sorted(theirs)), f"rows recomputed differ at forward {i}"
