"""The benchmark script's JSON: schema, and speedups computed from the same run (no timing asserts)."""

import json
import os
import subprocess
import sys

import pytest

from d2cache_jax import config as config_lib
from d2cache_jax import flops
from d2cache_jax.cache import METHODS
from d2cache_jax.generation import make_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, *args):
    out = tmp_path / "bench.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run([sys.executable, "-m", "experiments.benchmark", *args, f"--output_json={out}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
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
        for key in ("flops_per_generation", "flops_per_step", "flop_speedup_ceiling", "fraction_of_ceiling"):
            assert r[key] > 0, key
        assert r["fraction_of_ceiling"] == pytest.approx(r["speedup_vs_none"] / r["flop_speedup_ceiling"], rel=1e-9)
        assert r["flop_speedup_ceiling"] == pytest.approx(
            none["flops_per_generation"] / r["flops_per_generation"], rel=1e-9)
        for key in ("matmul_ms_per_step", "matmul_speedup_ceiling", "head_rows_per_step"):
            assert r[key] > 0, key
        assert r["fraction_of_matmul_ceiling"] == pytest.approx(r["speedup_vs_none"] / r["matmul_speedup_ceiling"])
        assert r["non_matmul_ms_per_step"] == pytest.approx(r["ms_per_step"] - r["matmul_ms_per_step"])
    assert none["recompute_share"] == 1.0 and none["forward_passes"] == 32
    assert none["flop_speedup_ceiling"] == 1.0 and none["matmul_speedup_ceiling"] == pytest.approx(1.0)
    # cpu-small's head (2 x 256 x 4096 FLOPs a row) is too cheap for more than one head bucket:
    # every step heads the whole block of 32 rows.
    assert none["head_rows_per_step"] == 32
    mm = doc["matmul_times"]
    assert mm["rows"][-1] == 40 and len(mm["layers_ms"]) == len(mm["head_ms"]) == len(mm["rows"])


@pytest.mark.slow
def test_benchmark_profile_schema(tmp_path):
    methods = [m for m in ("none", "prefix", "dual", "dllm", "d2cache") if m in METHODS]
    doc = _run(tmp_path, "--preset=cpu-small", f"--methods={','.join(methods)}", "--decoders=vanilla",
               "--gen_length=16", "--prompt_len=8", "--repeats=1", "--profile", "--profile_repeats=1",
               '--options={"block_length": 8}')
    assert [r["method"] for r in doc["profile"]] == methods
    for r in doc["profile"]:
        assert r["step_first_ms"] > 0 and r["step_later_ms"] > 0
        assert 0 < r["layer_rows"] <= r["total_len"] and r["head_rows"] > 0
        for key in ("attention_in_layers", "head", "propose"):
            assert r["phases_ms"][key] > 0, (r["method"], key)
    d2 = next((r for r in doc["profile"] if r["method"] == "d2cache"), None)
    if d2:
        for key in ("rollout_importance", "after_step_selection", "kv_scatter"):
            assert d2["phases_ms"][key] > 0, key


# Independent hand count for tiny_llada(vocab 256): d 64, 2 layers, 4 heads x 16, MLP 128.
# Per row of a layer: q, k, v, o projections 4 * 2 * 64 * 64 = 32768; SwiGLU 3 * 2 * 64 * 128 = 49152;
# attention 2 * 2 * (4 * 16) = 256 per key. Head: 2 * 64 * 256 = 32768 per row. V-verify: 2 * 64 * 64 per row.
ROW, KEY, HEAD, VPROJ, LAYERS = 32768 + 49152, 256, 32768, 8192, 2
P, G, T = 8, 16, 24


def _layer(rows, keys=T):
    return rows * (ROW + KEY * keys)


def _step(rows, head_rows):
    return LAYERS * _layer(rows) + head_rows * HEAD


def _flops(**opts):
    cfg = config_lib.tiny_llada(vocab_size=256)
    later, head = opts.pop("later_rows", None), opts.pop("head_rows", None)
    return flops.generation_flops(cfg, make_options(gen_length=G, **opts), P, None, later, head_rows=head)


# The head runs on a block's still-masked rows padded to a bucket; with a bucket for every count
# (`every_bucket`) one token per step heads 16, 15, ..., 1 rows of a 16-row block.
HEAD16, HEAD8, HEAD4 = sum(range(1, 17)), sum(range(1, 9)), sum(range(1, 5))


@pytest.fixture
def every_bucket(monkeypatch):
    from d2cache_jax.generation import decodable

    monkeypatch.setattr(decodable, "MIN_BUCKET_FLOPS", 0)


def test_flops_head_default_buckets():
    # tiny_llada's head is cheap: one bucket, every step heads its whole block.
    assert _flops(cache="none") == 16 * _step(T, G)
    assert _flops(cache="dual", block_length=8) == 2 * (_step(T, 8) + 7 * _step(8, 8))


def test_flops_none_prefix_dual_by_hand(every_bucket):
    assert flops.layer_flops(config_lib.tiny_llada(vocab_size=256), 3, 5) == 3 * (ROW + 5 * KEY)
    assert _flops(cache="none") == 16 * _step(T, 0) + HEAD16 * HEAD
    assert _flops(cache="none", head_rows=50) == 16 * _step(T, 0) + 50 * HEAD  # measured head rows
    assert _flops(cache="none", block_length=8) == 16 * _step(T, 0) + 2 * HEAD8 * HEAD
    # dual, blocks of 8: per block one full pass, then 7 steps on the block's 8 rows.
    assert _flops(cache="dual", block_length=8) == 2 * (_step(T, 0) + 7 * _step(8, 0)) + 2 * HEAD8 * HEAD
    # prefix: block 0 runs its 16 query rows (capacity 16), block 1 its 8 (capacity 8).
    want = _step(T, 0) + 7 * _step(16, 0) + _step(T, 0) + 7 * _step(8, 0) + 2 * HEAD8 * HEAD
    assert _flops(cache="prefix", block_length=8) == want
    # prefix with 4 blocks of 4: query rows 16, 12, 8, 4 padded to capacities 16, 16, 8, 4.
    want = sum(_step(T, 0) + 3 * _step(c, 0) for c in (16, 16, 8, 4)) + 4 * HEAD4 * HEAD
    assert _flops(cache="prefix", block_length=4) == want


def test_flops_dllm_by_hand(every_bucket):
    # kp 4, kr 2, rou 0.25 (4 adaptive rows): layer 0 always full; n % 4 == 0 full; n even response
    # (16 rows); n odd V-verify of the 16 response rows + 4 rows. Head on the block's masked rows.
    full = LAYERS * _layer(T)
    resp = _layer(T) + _layer(G)
    adapt = _layer(T) + VPROJ * G + _layer(4)
    want = sum(full if n % 4 == 0 else resp if n % 2 == 0 else adapt for n in range(16)) + HEAD16 * HEAD
    assert _flops(cache="dllm", kp=4, kr=2, rou=0.25) == want
    # kp 3, kr 2: n % 3 == 0 and odd -> prompt refresh + V-verify (8 + 4 rows); rou 0 -> prompt rows only.
    def kind(n, rou_rows):
        rp, rr = n % 3 == 0, n % 2 == 0
        if rr:
            return _layer(T if rp else G)
        if rou_rows == 0:
            return _layer(P) if rp else 0
        return VPROJ * G + _layer((P if rp else 0) + rou_rows)
    for rou, k in ((0.25, 4), (0.0, 0)):
        want = sum(_layer(T) + kind(n, k) for n in range(16)) + HEAD16 * HEAD
        assert _flops(cache="dllm", kp=3, kr=2, rou=rou) == want, rou


def test_flops_d2cache_by_hand(every_bucket):
    # Q: k 16 + 1 committed + floor(0.1 * 7) + 2 = 19 rows, inflated 19 + 18 * 3 = 73 -> all 24; H = min(Q, G) = 16.
    # Step 0 full with the head on the 16 gen rows; 15 later steps of the mean bucket through the layers,
    # the head on at most min(rows, H) of the 15, 14, ..., 1 masked positions (every count a bucket).
    # rows 10.5: heads of min(m, 10) = 10 x 6, then 9, 8, ..., 1.
    head = 16 + 60 + 45
    assert _flops(cache="d2cache", later_rows=10.5) == pytest.approx(15 * _step(10.5, 0) + _step(T, 0) + head * HEAD)
    head = 16 + sum(range(1, 16))  # 16 for step 0, then 15, 14, ..., 1
    assert _flops(cache="d2cache", later_rows=20) == pytest.approx(_step(T, 0) + 15 * _step(20, 0) + head * HEAD)
    assert _flops(cache="d2cache") == pytest.approx(_step(T, 0) + 15 * _step(24, 0) + head * HEAD)


def test_benchmark_sweep_and_bad_flags(tmp_path):
    doc = _run(tmp_path, "--preset=cpu-small", "--methods=none", "--decoders=vanilla", "--sweep=gen_length",
               "--sweep_values=8,16", "--prompt_len=8", "--repeats=1", f"--plot={tmp_path / 'sweep.png'}")
    assert [r["gen_length"] for r in doc["results"]] == [8, 16]
    assert (tmp_path / "sweep.png").stat().st_size > 0
    proc = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--methods=bogus"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown method 'bogus'" in proc.stderr


@pytest.mark.slow
def test_compile_only_allocates_no_weights(tmp_path):
    """`--compile_only` lowers and compiles on abstract params: at LLaDA-8B's width (two layers,
    2.8 GB of bf16 weights) the process never holds the weights, and every program reports its
    compile time and XLA's memory analysis (arguments = the weights and the state)."""
    doc = _run(tmp_path, "--compile_only", "--preset=llada-8b", "--layers=2", "--methods=none,d2cache",
               "--decoders=vanilla", "--gen_length=32", "--prompt_len=16")
    weights = doc["params"] * 2
    assert doc["compile_only"] and doc["n_layers"] == 2 and weights > 2.5e9
    assert [(r["method"], r["decoder"]) for r in doc["results"]] == [("none", "vanilla"), ("d2cache", "vanilla")]
    for r in doc["results"]:
        assert r["lower_s"] > 0 and r["compile_s"] > 0
        assert r["memory"]["argument_size_in_bytes"] >= weights
    assert doc["peak_memory_bytes"] < weights / 2
