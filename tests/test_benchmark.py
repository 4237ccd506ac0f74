"""The benchmark script's JSON: schema, and speedups computed from the same run (no timing asserts)."""

import json
import os
import subprocess
import sys

import pytest

from d2cache_jax.cache import METHODS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, *args):
    out = tmp_path / "bench.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run([sys.executable, "-m", "experiments.benchmark", *args, f"--output_json={out}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_benchmark_json_schema(tmp_path):
    methods = [m for m in ("none", "prefix", "dual", "dllm", "d2cache") if m in METHODS]
    doc = _run(tmp_path, "--preset=cpu-small", f"--methods={','.join(methods)}", "--decoders=vanilla,threshold",
               "--gen_length=32", "--prompt_len=8", "--repeats=1")
    for key in ("preset", "machine", "roofline_flops", "results", "none_step_roofline_fraction"):
        assert key in doc
    assert doc["roofline_flops"] > 0
    assert {(r["method"], r["decoder"]) for r in doc["results"]} == {
        (m, d) for m in methods for d in ("vanilla", "threshold")}
    none = next(r for r in doc["results"] if r["method"] == "none" and r["decoder"] == "vanilla")
    for r in doc["results"]:
        for key in ("tokens_per_s", "ms_per_step", "forward_passes", "recompute_share", "peak_memory_bytes",
                    "speedup_vs_none", "compile_s"):
            assert r[key] is not None, key
        assert r["speedup_vs_none"] == pytest.approx(r["tokens_per_s"] / none["tokens_per_s"], rel=1e-12)
        assert 0 < r["recompute_share"] <= 1.0
        assert r["forward_passes"] == r["steps"]
    assert none["recompute_share"] == 1.0 and none["forward_passes"] == 32


def test_benchmark_sweep_and_bad_flags(tmp_path):
    doc = _run(tmp_path, "--preset=cpu-small", "--methods=none", "--decoders=vanilla", "--sweep=gen_length",
               "--sweep_values=8,16", "--prompt_len=8", "--repeats=1", f"--plot={tmp_path / 'sweep.png'}")
    assert [r["gen_length"] for r in doc["results"]] == [8, 16]
    assert (tmp_path / "sweep.png").stat().st_size > 0
    proc = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--methods=bogus"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown method 'bogus'" in proc.stderr
