"""Speed of every cache and decoder in one run: `python -m experiments.benchmark --preset=cpu-medium`.

Random weights of the preset's shape (or --checkpoint). Compile and warm-up are excluded from the
timings and reported apart; each configuration runs --repeats times (median and spread). Speedups
are computed against cache=none with the vanilla decoder measured in the same run. Throughput
counts every generated position (all gen_length tokens are decoded; random weights put EOS
anywhere, so cutting at EOS would make methods incomparable).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from d2cache_jax import config as config_lib
from d2cache_jax import files, flops
from d2cache_jax import params as params_lib
from d2cache_jax.generation import generate, make_options
from d2cache_jax.generation.options import CACHES
from experiments import distributed

PRESETS = {
    "cpu-small": lambda: config_lib.tiny_llada(vocab_size=4096).replace(
        d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, head_dim=64, mlp_hidden=768, max_seq_len=4096),
    "cpu-medium": lambda: config_lib.tiny_llada(vocab_size=32000).replace(
        d_model=1024, n_layers=8, n_heads=16, n_kv_heads=16, head_dim=64, mlp_hidden=2816, max_seq_len=4096),
    "llada-8b": config_lib.llada_8b_base,
    "dream-7b": config_lib.dream_7b_base,
}
# Each method's settings as the seeds run it (prefix/dual with 32-token blocks; d2Cache defaults).
METHOD_OPTIONS = {
    "none": dict(cache="none"),
    "prefix": dict(cache="prefix", block_length=32),
    "dual": dict(cache="dual", block_length=32),
    "dllm": dict(cache="dllm"),
    "d2cache": dict(cache="d2cache"),
}
DECODER_OPTIONS = {"vanilla": dict(decoder="vanilla"), "threshold": dict(decoder="threshold", threshold=0.9)}

PRESET = flags.DEFINE_enum("preset", "cpu-small", list(PRESETS), "Model shape (random weights).")
CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Use this checkpoint instead of random weights.")
METHODS = flags.DEFINE_list("methods", list(METHOD_OPTIONS), "Caches to compare.")
DECODERS = flags.DEFINE_list("decoders", ["vanilla", "threshold"], "Decoders to compare.")
GEN_LENGTH = flags.DEFINE_integer("gen_length", 256, "Generated tokens.")
PROMPT_LEN = flags.DEFINE_integer("prompt_len", 128, "Prompt tokens (random ids).")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 1, "Batch size.")
REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats per configuration.")
DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Param dtype (default: fp32 on CPU presets).")
SWEEP = flags.DEFINE_enum("sweep", None, ["gen_length", "batch_size"], "Cost growth sweep.")
SWEEP_VALUES = flags.DEFINE_list("sweep_values", None, "Values of the sweep (default 64,128,256,512 / 1,2,4,8).")
OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Write the JSON document here (also printed).")
PLOT = flags.DEFINE_string("plot", None, "With --sweep: draw time per token against the swept value (PNG).")
EXTRA = flags.DEFINE_string("options", "{}", "JSON dict of extra generation options for every method.")


def machine() -> dict:
    dev = jax.devices()[0]
    return dict(platform=dev.platform, device_kind=dev.device_kind, device_count=jax.device_count(),
                host=platform.node(), cpu_count=os.cpu_count(), jax=jax.__version__)


def roofline(cfg, dtype, rows: int, repeats: int = 5) -> dict:
    """Best achieved FLOP/s of a jitted matmul with the model's own shapes ([rows, d] x [d, F])."""
    a = jnp.ones((rows, cfg.d_model), dtype)
    b = jnp.ones((cfg.d_model, cfg.mlp_hidden), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = min(_timed(lambda: f(a, b).block_until_ready()) for _ in range(repeats))
    out = dict(roofline_flops=2 * rows * cfg.d_model * cfg.mlp_hidden / best,
               roofline_shape=[rows, cfg.d_model, cfg.mlp_hidden])
    if jax.devices()[0].platform != "cpu":
        x = jnp.ones((256 * 1024 * 1024,), jnp.bfloat16)  # 512 MiB
        g = jax.jit(lambda v: v * 2)
        g(x).block_until_ready()
        t = min(_timed(lambda: g(x).block_until_ready()) for _ in range(repeats))
        bw = 2 * x.nbytes / t
        out.update(hbm_bytes_per_s=bw, bs1_step_hbm_bound_ms=1e3 * flops.param_bytes(cfg) / bw)
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def peak_memory() -> int | None:
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # host RSS on CPU


def run_one(cfg, p, prompts, method: str, decoder: str, gen_length: int, repeats: int, extra: dict,
            mesh=None) -> dict:
    opts = {**METHOD_OPTIONS[method], **DECODER_OPTIONS[decoder], "gen_length": gen_length, **extra}
    if opts.get("block_length") and gen_length % opts["block_length"]:
        opts["block_length"] = gen_length
    make_options(**opts)  # validate before spending time
    distributed.check_memory(cfg, opts, len(prompts), len(prompts[0]), mesh or {"data": 1, "model": 1})
    # generate() compiles ahead of time and times the run alone, so no warm-up generation is needed.
    runs = [generate(cfg, p, prompts, mesh=mesh, **opts) for _ in range(repeats)]
    warm = runs[0]
    walls = [r.stats["wall_s"] for r in runs]
    med = statistics.median(walls)
    steps = runs[0].stats["steps"]
    n_tok = len(prompts) * gen_length
    return dict(method=method, decoder=decoder, gen_length=gen_length, batch_size=len(prompts),
                tokens_per_s=n_tok / med, ms_per_step=1e3 * med / steps, ms_per_token=1e3 * med / n_tok,
                forward_passes=runs[0].stats["forward_passes"], steps=steps,
                tokens_per_step=n_tok / (steps * len(prompts)), recompute_share=runs[0].stats["recompute_share"],
                selected_share=runs[0].stats["selected_share"], overflow_rows=runs[0].stats["overflow_rows"],
                wall_s_median=med,
                wall_s_min=min(walls), wall_s_max=max(walls), compile_s=warm.stats["compile_s"],
                peak_memory_bytes=peak_memory(),
                options=opts)


def benchmark(cfg, p, methods, decoders, gen_length, prompt_len, batch_size, repeats, extra, mesh=None) -> list[dict]:
    rng = np.random.default_rng(0)
    hi = min(cfg.vocab_size, cfg.mask_token_id)
    prompts = [list(rng.integers(0, hi, prompt_len)) for _ in range(batch_size)]
    results = []
    for m in methods:
        for d in decoders:
            r = run_one(cfg, p, prompts, m, d, gen_length, repeats, extra, mesh)
            print(json.dumps({k: v for k, v in r.items() if k != "options"}), flush=True)
            results.append(r)
    base = next((r for r in results if r["method"] == "none" and r["decoder"] == "vanilla"), None)
    for r in results:
        same = next((x for x in results if x["method"] == "none" and x["decoder"] == r["decoder"]), None)
        r["speedup_vs_none"] = r["tokens_per_s"] / base["tokens_per_s"] if base else None
        r["speedup_vs_none_same_decoder"] = r["tokens_per_s"] / same["tokens_per_s"] if same else None
    return results


def load_model(dtype):
    if CHECKPOINT.value:
        import d2cache_jax

        return d2cache_jax.load(CHECKPOINT.value, dtype=dtype)
    cfg = PRESETS[PRESET.value]()
    cfg = cfg.replace(param_dtype=dtype)
    return cfg, params_lib.init_params(cfg, jax.random.key(0))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for m in METHODS.value:
        if m not in METHOD_OPTIONS:
            raise app.UsageError(f"unknown method {m!r} in --methods; known: {', '.join(CACHES)}")
    for d in DECODERS.value:
        if d not in DECODER_OPTIONS:
            raise app.UsageError(f"unknown decoder {d!r} in --decoders; known: {', '.join(DECODER_OPTIONS)}")
    try:
        extra = json.loads(EXTRA.value)
    except json.JSONDecodeError as e:
        raise app.UsageError(f"--options is not valid JSON: {e}") from e
    dtype = DTYPE.value or ("float32" if PRESET.value.startswith("cpu") else "bfloat16")
    # One device unless --mesh is given (then the mesh's devices, params placed once).
    mesh = distributed.setup().mesh if distributed.MESH.value else None
    cfg, p = load_model(dtype)
    if mesh is not None:
        from d2cache_jax import sharding

        p = jax.device_put(p, sharding.param_shardings(cfg, mesh))
    t = PROMPT_LEN.value + GEN_LENGTH.value
    doc = dict(preset=None if CHECKPOINT.value else PRESET.value, checkpoint=CHECKPOINT.value,
               machine=machine(), dtype=dtype, params=params_lib.num_params(cfg),
               prompt_len=PROMPT_LEN.value, mesh=mesh and dict(mesh.shape), **roofline(cfg, jnp.dtype(dtype), rows=t))
    if SWEEP.value:
        default = "64,128,256,512" if SWEEP.value == "gen_length" else "1,2,4,8"
        values = [int(v) for v in (SWEEP_VALUES.value or default.split(","))]
        doc["sweep"] = SWEEP.value
        doc["results"] = []
        for v in values:
            g = v if SWEEP.value == "gen_length" else GEN_LENGTH.value
            b = v if SWEEP.value == "batch_size" else BATCH_SIZE.value
            doc["results"] += benchmark(cfg, p, METHODS.value, DECODERS.value, g, PROMPT_LEN.value, b,
                                        REPEATS.value, extra, mesh)
        if PLOT.value:
            plot_sweep(doc, PLOT.value)
    else:
        doc["results"] = benchmark(cfg, p, METHODS.value, DECODERS.value, GEN_LENGTH.value, PROMPT_LEN.value,
                                   BATCH_SIZE.value, REPEATS.value, extra, mesh)
        none = next((r for r in doc["results"] if r["method"] == "none" and r["decoder"] == "vanilla"), None)
        if none:
            f = flops.step_flops(cfg, t, t, GEN_LENGTH.value, BATCH_SIZE.value)
            doc["none_step_flops"] = f
            doc["none_step_flops_per_s"] = f / (none["ms_per_step"] / 1e3)
            doc["none_step_roofline_fraction"] = doc["none_step_flops_per_s"] / doc["roofline_flops"]
    text = json.dumps(doc, indent=1)
    print(text)
    if OUTPUT_JSON.value:
        files.write_json_atomic(OUTPUT_JSON.value, doc)


def plot_sweep(doc: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    key = doc["sweep"]
    for (m, d) in sorted({(r["method"], r["decoder"]) for r in doc["results"]}):
        rs = sorted((r for r in doc["results"] if r["method"] == m and r["decoder"] == d), key=lambda r: r[key])
        ax.plot([r[key] for r in rs], [r["ms_per_token"] for r in rs], marker="o", label=f"{m}/{d}")
    ax.set_xlabel(key)
    ax.set_ylabel("ms per generated token")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title(f"cost growth ({doc.get('preset') or doc.get('checkpoint')})")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


if __name__ == "__main__":
    app.run(main)
