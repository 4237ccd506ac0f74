"""Speed of every cache and decoder in one run: `python -m experiments.benchmark --preset=cpu-medium`.

Random weights of the preset's shape (or --checkpoint). Compile and warm-up are excluded from the
timings and reported apart; each configuration runs --repeats times (median and spread). Speedups
are computed against cache=none with the vanilla decoder measured in the same run. Throughput
counts every generated position (all gen_length tokens are decoded; random weights put EOS
anywhere, so cutting at EOS would make methods incomparable).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from d2cache_jax import cli, files, flops, model, op_profile
from d2cache_jax import config as config_lib
from d2cache_jax import params as params_lib
from d2cache_jax.cache import d2cache, rollout
from d2cache_jax.cache import dllm as dllm_cache
from d2cache_jax.cache.base import StepInfo
from d2cache_jax.config import ModelConfig
from d2cache_jax.decoding.sampling import propose
from d2cache_jax.generation import generate, make_options, option_values
from d2cache_jax.generation import step as step_lib
from d2cache_jax.generation.generate import lower, prepare
from d2cache_jax.generation.options import GenOptions
from d2cache_jax.generation.state import GenState
from d2cache_jax.generation.step import propose_kw
from experiments import distributed

PRESETS = {
    "cpu-small": lambda: config_lib.tiny_llada(vocab_size=4096).replace(
        d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, head_dim=64, mlp_hidden=768, max_seq_len=4096),
    "cpu-medium": lambda: config_lib.tiny_llada(vocab_size=32000).replace(
        d_model=1024, n_layers=8, n_heads=16, n_kv_heads=16, head_dim=64, mlp_hidden=2816, max_seq_len=4096),
    # The issue-17 shape: cpu-medium's layers with LLaDA's real vocabulary and special ids, so the
    # output head weighs as much against the layers as it does in LLaDA (run it with prompt 64 + gen 128).
    "cpu-vocab": lambda: config_lib.tiny_llada(vocab_size=126464).replace(
        d_model=1024, n_layers=8, n_heads=16, n_kv_heads=16, head_dim=64, mlp_hidden=2816, max_seq_len=4096,
        mask_token_id=126336, eos_token_id=126081, pad_token_id=126081, bos_token_id=126080),
    "llada-8b": config_lib.llada_8b_base,
    "dream-7b": config_lib.dream_7b_base,
}
# Trained models shipped in `d2cache_jax/assets`, run on their task's held-out prompts, with the
# task's generation length and block length; each result also reports the task's accuracy.
TRAINED_PRESETS = {"tiny-trace": ("tiny_trace", "trace"), "tiny-arith": ("tiny_arith", "synthetic")}
# Each method's settings as the seeds run it (prefix/dual with 32-token blocks; d2Cache defaults).
METHOD_OPTIONS = {
    "none": dict(cache="none"),
    "prefix": dict(cache="prefix", block_length=32),
    "dual": dict(cache="dual", block_length=32),
    "dllm": dict(cache="dllm"),
    "d2cache": dict(cache="d2cache"),
    "d2cache_nocp": dict(cache="d2cache", sigma=0.0),  # the certainty prior off
}
DECODER_OPTIONS = {"vanilla": dict(decoder="vanilla"), "threshold": dict(decoder="threshold", threshold=0.9),
                   "factor": dict(decoder="factor", factor=1.0)}

PRESET = flags.DEFINE_enum("preset", "cpu-small", list(PRESETS) + list(TRAINED_PRESETS),
                           "Model shape (random weights), or a shipped trained model on its task's prompts.")
CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Use this checkpoint instead of random weights.")
METHODS = flags.DEFINE_list("methods", ["none", "prefix", "dual", "dllm", "d2cache"],
                            f"Methods to compare, of {', '.join(METHOD_OPTIONS)}.")
DECODERS = flags.DEFINE_list("decoders", ["vanilla", "threshold"], "Decoders to compare.")
GEN_LENGTH = flags.DEFINE_integer("gen_length", None, "Generated tokens (default: 256, or a trained preset's task's).",
                                  lower_bound=1)
PROMPT_LEN = flags.DEFINE_integer("prompt_len", 128, "Prompt tokens (random ids; a trained preset uses its task's).",
                                  lower_bound=1)
BATCH_SIZE = flags.DEFINE_integer("batch_size", 1, "Batch size.", lower_bound=1)
REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats per configuration.", lower_bound=1)
DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Param dtype (default: fp32 on CPU presets).")
SWEEP = flags.DEFINE_enum("sweep", None, ["gen_length", "batch_size"], "Cost growth sweep.")
SWEEP_VALUES = flags.DEFINE_list("sweep_values", None, "Values of the sweep (default 64,128,256,512 / 1,2,4,8).")
OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Write the JSON document here (also printed).")
PLOT = flags.DEFINE_string("plot", None, "With --sweep: draw time per token against the swept value (PNG).")
EXTRA = flags.DEFINE_string("options", "{}", "JSON dict of extra generation options for every method.")
PROFILE = flags.DEFINE_bool("profile", False, "Also time one step of each method by phase (timed sub-programs).")
OP_PROFILE = flags.DEFINE_bool("op_profile", False, "Also record each method's partial step under jax.profiler "
                                "and list its compiled ops by time (d2cache_jax/op_profile.py).")
PROFILE_REPEATS = flags.DEFINE_integer("profile_repeats", 5, "Timed calls per profiled sub-program (the "
                                       "fastest is kept).", lower_bound=1)
COMPILE_ONLY = flags.DEFINE_bool("compile_only", False, "Only lower and compile each cache x decoder program, with "
                                 "abstract params (nothing allocated): seconds and XLA's memory analysis.")
MATMUL_CEILING = flags.DEFINE_bool(
    "matmul_ceiling", True, "Also time the model's own matmuls alone at each method's mean row counts (a "
    "ceiling that knows how fast this machine multiplies skinny matrices); needs a second copy of the layer weights.")
LAYERS = flags.DEFINE_integer("layers", None, "Override the preset's number of layers (e.g. 8 vs 32 for compile time).",
                              lower_bound=1)


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


def run_options(method: str, decoder: str, gen_length: int, extra: dict) -> dict:
    """Generation options of one cache x decoder, --options last. A method's own block (32) that does
    not divide gen_length becomes one block; a block_length given in --options is kept as given."""
    opts = {**METHOD_OPTIONS[method], **DECODER_OPTIONS[decoder], "gen_length": gen_length}
    if opts.get("block_length") and gen_length % opts["block_length"]:
        opts["block_length"] = gen_length
    return {**opts, **extra}


def extra_options(text: str) -> dict:
    """--options: a JSON object of generation options, each checked as the generation flags are."""
    try:
        extra = json.loads(text)
    except json.JSONDecodeError as e:
        raise app.UsageError(f"--options is not valid JSON: {e}") from e
    if not isinstance(extra, dict):
        raise app.UsageError(f"--options must be a JSON object of generation options, got {text}")
    unknown = sorted(set(extra) - option_values.FIELD_NAMES)
    if unknown:
        raise app.UsageError(f"--options: unknown generation option(s) {', '.join(unknown)}")
    for name, value in extra.items():
        wrong = option_values.problem(name, value)
        if wrong:
            raise app.UsageError(f"--options: {name}={json.dumps(value)}: {wrong}")
    return extra


def sweep_values(values: list[str]) -> list[int]:
    """--sweep_values: integers >= 1."""
    try:
        out = [int(v) for v in values]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise app.UsageError(f"--sweep_values must be integers >= 1, got {','.join(values)}")
    return out


def run_one(cfg, p, prompts, method: str, decoder: str, gen_length: int, repeats: int, extra: dict,
            mesh=None, accuracy: Callable[[np.ndarray], float] | None = None) -> dict:
    opts = run_options(method, decoder, gen_length, extra)
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
                head_rows_per_step=runs[0].stats["head_rows"] / steps,
                flops_per_generation=generation_flops(cfg, make_options(**opts), len(prompts[0]), steps,
                                                      runs[0].stats["recompute_share"], len(prompts),
                                                      runs[0].stats["head_rows"]),
                **({} if accuracy is None else {"accuracy": accuracy(np.asarray(runs[0].tokens))}),
                options=opts)


@dataclasses.dataclass(frozen=True)
class Workload:
    """A trained preset's held-out prompts, and the task's accuracy of generated ids [B, G]."""

    prompts: list[list[int]]
    accuracy: Callable[[np.ndarray], float]
    gen_length: int
    block_length: int


def trained_workload(preset: str, batch_size: int) -> Workload:
    """The first `batch_size` held-out items of the preset's task."""
    import importlib

    task = importlib.import_module(f"d2cache_jax.evaluation.tasks.{TRAINED_PRESETS[preset][1]}")
    items = task.make_items("eval", batch_size)
    accuracy = lambda ids: float(np.mean([task.check(it, task.decode(row)) for it, row in zip(items, ids)]))
    return Workload([task.encode_prompt(it) for it in items], accuracy, task.GEN_LENGTH,
                    task.GENERATION_DEFAULTS["block_length"])


def benchmark(cfg, p, methods, decoders, gen_length, prompt_len, batch_size, repeats, extra, mesh=None,
              workload: Workload | None = None) -> list[dict]:
    if workload is None:
        rng = np.random.default_rng(0)
        hi = min(cfg.vocab_size, cfg.mask_token_id)
        prompts = [list(rng.integers(0, hi, prompt_len)) for _ in range(batch_size)]
    else:
        prompts = workload.prompts
        extra = {"block_length": workload.block_length, **extra}
    results = []
    for m in methods:
        for d in decoders:
            r = run_one(cfg, p, prompts, m, d, gen_length, repeats, extra, mesh,
                        workload.accuracy if workload else None)
            print(json.dumps({k: v for k, v in r.items() if k != "options"}), flush=True)
            results.append(r)
    base = next((r for r in results if r["method"] == "none" and r["decoder"] == "vanilla"), None)
    for r in results:
        same = next((x for x in results if x["method"] == "none" and x["decoder"] == r["decoder"]), None)
        r["speedup_vs_none"] = r["tokens_per_s"] / base["tokens_per_s"] if base else None
        r["speedup_vs_none_same_decoder"] = r["tokens_per_s"] / same["tokens_per_s"] if same else None
        r["flops_per_step"] = r["flops_per_generation"] / r["steps"]
        # What a purely FLOP-bound machine would give, and how much of it the measured speedup reaches.
        r["flop_speedup_ceiling"] = base["flops_per_generation"] / r["flops_per_generation"] if base else None
        r["fraction_of_ceiling"] = r["speedup_vs_none"] / r["flop_speedup_ceiling"] if base else None
    return results


# ---- the matmul ceiling: the model's matmuls alone, at the row counts each method ran ----

def _layer_matmuls(cfg: ModelConfig, layers: list, x: jax.Array) -> jax.Array:
    """Every layer's projections and MLP on rows x [B, R, d], nothing else (no attention, norms, RoPE)."""
    for w in layers:
        a, m = w["attn"], w["mlp"]
        qkv = [model.dense(x, a[k]) for k in ("wq", "wk", "wv")]
        heads = qkv[0] + jnp.repeat(qkv[1] + qkv[2], cfg.n_heads // cfg.n_kv_heads, axis=2)
        x = x + 1e-3 * model.dense(heads, a["wo"], n_in=2)
        h = jax.nn.silu(model.dense(x, m["w_gate"])) * model.dense(x, m["w_up"])
        x = x + 1e-3 * model.dense(h, m["w_down"])
    return x


def matmul_times(cfg: ModelConfig, p: dict, batch: int, total_len: int, repeats: int = 5) -> dict:
    """Measured ms of the layer matmuls (all layers) and of the head, at a grid of row counts (the
    fastest of `repeats` calls: a ceiling, and the least disturbed by the machine's other work)."""
    layers = model.unstack_layers(p)["layers"]
    grid = sorted({r for r in (1, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512) if r < total_len} | {total_len})
    lay = jax.jit(lambda ws, x: _layer_matmuls(cfg, ws, x))
    hd = jax.jit(lambda p, x: model.dense(x, p["lm_head"], out_dtype=jnp.float32))
    dt = model.dtype_of(cfg)
    out = dict(rows=grid, layers_ms=[], head_ms=[])
    for r in grid:
        x = jnp.ones((batch, r, cfg.d_model), dt)
        out["layers_ms"].append(_ms(lay, layers, x, repeats=repeats))
        out["head_ms"].append(_ms(hd, p, x, repeats=repeats))
    return out


def add_matmul_ceiling(results: list[dict], mm: dict, total_len: int) -> None:
    """Per result: the step time its matmuls alone would take (piecewise-linear in the mean rows run
    through the layers and given the head), the speedup over none that this gives, and how much of it
    the measured speedup reaches. `non_matmul_ms_per_step` is the rest of the measured step."""
    base = next((r for r in results if r["method"] == "none" and r["decoder"] == "vanilla"), None)
    for r in results:
        rows = r["recompute_share"] * total_len
        r["matmul_ms_per_step"] = float(np.interp(rows, mm["rows"], mm["layers_ms"])
                                        + np.interp(r["head_rows_per_step"], mm["rows"], mm["head_ms"]))
        r["non_matmul_ms_per_step"] = r["ms_per_step"] - r["matmul_ms_per_step"]
    for r in results:
        if base:
            r["matmul_speedup_ceiling"] = (base["matmul_ms_per_step"] * base["steps"]) / (r["matmul_ms_per_step"]
                                                                                     * r["steps"])
            r["fraction_of_matmul_ceiling"] = r["speedup_vs_none"] / r["matmul_speedup_ceiling"]


def compile_one(cfg: ModelConfig, method: str, decoder: str, gen_length: int, prompt_len: int, batch_size: int,
                extra: dict) -> dict:
    """Lower and compile one generation program on abstract params and state: seconds and memory."""
    opts = run_options(method, decoder, gen_length, extra)
    gopts = make_options(**opts)
    prompts = [[0] * prompt_len for _ in range(batch_size)]
    state = jax.eval_shape(lambda: prepare(cfg, prompts, gopts))
    t0 = time.perf_counter()
    abstract = params_lib.abstract_params(cfg)
    if not distributed.SCAN_LAYERS.value:
        abstract = jax.eval_shape(model.unstack_layers, abstract)
    lowered = lower(cfg, gopts, abstract, state)
    lower_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes")
    return dict(method=method, decoder=decoder, gen_length=gen_length, batch_size=batch_size, lower_s=lower_s,
                compile_s=compile_s, lower_plus_compile_s=lower_s + compile_s,
                memory={k: getattr(mem, k, None) for k in fields} if mem is not None else None, options=opts)


def generation_flops(cfg: ModelConfig, opts: GenOptions, prompt_len: int, steps: int, recompute_share: float,
                     batch: int, head_rows: float | None = None) -> float:
    """Analytic FLOPs of one measured generation: d2Cache's later steps take the measured mean bucket,
    every method the measured head rows."""
    later = None
    if opts.cache == "d2cache" and steps > 1:
        t = prompt_len + opts.gen_length
        later = (recompute_share * steps - 1.0) * t / (steps - 1)  # step 0 counts as all T rows
    return flops.generation_flops(cfg, opts, prompt_len, steps, later, batch, head_rows)


def model_config(dtype) -> ModelConfig:
    """The preset's (or checkpoint's) config in `dtype`, with --layers applied."""
    if checkpoint_dir():
        from d2cache_jax import checkpoint

        cfg = checkpoint.read_config(checkpoint_dir())
    else:
        cfg = PRESETS[PRESET.value]()
    cfg = cfg.replace(param_dtype=dtype)
    return cfg.replace(n_layers=LAYERS.value) if LAYERS.value else cfg


def checkpoint_dir() -> str | None:
    """--checkpoint, or the shipped model of a trained preset."""
    if CHECKPOINT.value:
        return CHECKPOINT.value
    if PRESET.value in TRAINED_PRESETS:
        from d2cache_jax.cli import ASSETS_DIR

        return os.path.join(ASSETS_DIR, TRAINED_PRESETS[PRESET.value][0])
    return None


def load_model(dtype):
    if checkpoint_dir():
        import d2cache_jax

        if LAYERS.value:
            raise app.UsageError("--layers applies to presets (random weights), not to checkpoints")
        return d2cache_jax.load(checkpoint_dir(), dtype=dtype)
    cfg = model_config(dtype)
    return cfg, params_lib.init_params(cfg, jax.random.key(0))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.enable_compilation_cache()
    for m in METHODS.value:
        if m not in METHOD_OPTIONS:
            raise app.UsageError(f"unknown method {m!r} in --methods; known: {', '.join(METHOD_OPTIONS)}")
    for d in DECODERS.value:
        if d not in DECODER_OPTIONS:
            raise app.UsageError(f"unknown decoder {d!r} in --decoders; known: {', '.join(DECODER_OPTIONS)}")
    extra = extra_options(EXTRA.value)
    if SWEEP.value:
        default = "64,128,256,512" if SWEEP.value == "gen_length" else "1,2,4,8"
        values = sweep_values(SWEEP_VALUES.value or default.split(","))
    trained = PRESET.value in TRAINED_PRESETS and not CHECKPOINT.value
    dtype = DTYPE.value or ("float32" if PRESET.value.startswith("cpu") or trained else "bfloat16")
    workload = trained_workload(PRESET.value, BATCH_SIZE.value) if trained else None
    gen_length = GEN_LENGTH.value or (workload.gen_length if workload else 256)
    prompt_len = max(len(q) for q in workload.prompts) if workload else PROMPT_LEN.value
    for m in METHODS.value:
        for d in DECODERS.value:
            try:
                make_options(**run_options(m, d, gen_length, extra))
            except (TypeError, ValueError) as e:
                raise app.UsageError(f"{m} + {d} with --options={EXTRA.value}: {e}") from e
    if trained and (SWEEP.value or PROFILE.value or OP_PROFILE.value or COMPILE_ONLY.value):
        raise app.UsageError(f"--preset={PRESET.value} runs its task's prompts; --sweep, --profile, --op_profile "
                             "and --compile_only take a random-weight preset")
    if COMPILE_ONLY.value:
        cfg = model_config(dtype)
        doc = dict(preset=None if CHECKPOINT.value else PRESET.value, checkpoint=checkpoint_dir(),
                   machine=machine(), dtype=dtype, n_layers=cfg.n_layers, params=params_lib.num_params(cfg),
                   scan_layers=distributed.SCAN_LAYERS.value,
                   prompt_len=prompt_len, compile_only=True, results=[])
        for m in METHODS.value:
            for d in DECODERS.value:
                r = compile_one(cfg, m, d, gen_length, prompt_len, BATCH_SIZE.value, extra)
                print(json.dumps({k: v for k, v in r.items() if k not in ("options", "memory")}), flush=True)
                doc["results"].append(r)
        doc["peak_memory_bytes"] = peak_memory()  # of this process: the weights are never allocated
        print(json.dumps(doc, indent=1))
        if OUTPUT_JSON.value:
            files.write_json_atomic(OUTPUT_JSON.value, doc)
        return
    # One device unless --mesh is given (then the mesh's devices, params placed once).
    mesh = distributed.setup().mesh if distributed.MESH.value else None
    cfg, p = load_model(dtype)
    p = distributed.apply_layout(p)
    if mesh is not None:
        from d2cache_jax import sharding

        p = jax.device_put(p, sharding.param_shardings(cfg, mesh, model.is_scanned(p)))
    t = prompt_len + gen_length
    doc = dict(preset=None if CHECKPOINT.value else PRESET.value, checkpoint=checkpoint_dir(),
               machine=machine(), dtype=dtype, params=params_lib.num_params(cfg), scan_layers=model.is_scanned(p),
               prompt_len=prompt_len, mesh=mesh and dict(mesh.shape), **roofline(cfg, jnp.dtype(dtype), rows=t))
    if SWEEP.value:
        doc["sweep"] = SWEEP.value
        doc["results"] = []
        for v in values:
            g = v if SWEEP.value == "gen_length" else gen_length
            b = v if SWEEP.value == "batch_size" else BATCH_SIZE.value
            doc["results"] += benchmark(cfg, p, METHODS.value, DECODERS.value, g, prompt_len, b,
                                        REPEATS.value, extra, mesh)
        if PLOT.value:
            plot_sweep(doc, PLOT.value)
    else:
        doc["results"] = benchmark(cfg, p, METHODS.value, DECODERS.value, gen_length, prompt_len,
                                   BATCH_SIZE.value, REPEATS.value, extra, mesh, workload)
        if MATMUL_CEILING.value and mesh is None:
            doc["matmul_times"] = matmul_times(cfg, p, BATCH_SIZE.value, t)
            add_matmul_ceiling(doc["results"], doc["matmul_times"], t)
        none = next((r for r in doc["results"] if r["method"] == "none" and r["decoder"] == "vanilla"), None)
        if none:
            f = none["flops_per_step"]  # its mean step: all T rows, the head on the masked rows of the block
            doc["none_step_flops"] = f
            doc["none_step_flops_per_s"] = f / (none["ms_per_step"] / 1e3)
            doc["none_step_roofline_fraction"] = doc["none_step_flops_per_s"] / doc["roofline_flops"]
        if PROFILE.value:
            doc["profile"] = profile_all(cfg, p, METHODS.value, gen_length, prompt_len,
                                         BATCH_SIZE.value, PROFILE_REPEATS.value, extra)
        if OP_PROFILE.value:
            doc["op_profile"] = op_profile_all(cfg, p, METHODS.value, gen_length, prompt_len, BATCH_SIZE.value,
                                               PROFILE_REPEATS.value, extra)
    text = json.dumps(doc, indent=1)
    print(text)
    if OUTPUT_JSON.value:
        files.write_json_atomic(OUTPUT_JSON.value, doc)


# ---- per-phase profile of one step (timed sub-programs) ----
# A step without buffer donation, so the same input state can be timed again and again.
_STEP = jax.jit(step_lib.step, static_argnums=(0, 1))


_ms = op_profile.fastest_ms


def _method_opts(method: str, gen_length: int, extra: dict) -> GenOptions:
    return make_options(**run_options(method, "vanilla", gen_length, extra))


def _later_rows(cfg: ModelConfig, opts: GenOptions, state: GenState) -> int:
    """Rows through the layers of the step that `state` is about to take."""
    t = state.tokens.shape[1]
    if opts.cache == "none":
        return t
    if opts.cache in ("prefix", "dual"):
        return flops._prefix_rows(cfg, opts, int(state.block))
    if opts.cache == "dllm":
        return dllm_cache.num_adaptive(opts)
    sizes = d2cache.row_buckets(opts, t)
    count = int((np.asarray(state.cache.q_idx) < t).sum(-1).max())
    return sizes[int(np.searchsorted(sizes, count))]


def profile_method(cfg: ModelConfig, p: dict, prompts: list, method: str, gen_length: int, repeats: int,
                   extra: dict) -> dict:
    """One method's step split by phase: each piece jitted alone on inputs of the shapes the step's
    second (partial) step uses, plus the whole first and second steps. `unattributed_ms` is the second
    step minus its timed pieces (decoder, scatters to gen positions, branch selection, copies)."""
    opts = _method_opts(method, gen_length, extra)
    sopts = dataclasses.replace(opts, seed=0, loop="device", prompt_bucket=0)
    s0 = prepare(cfg, prompts, opts)
    s1 = _STEP(cfg, sopts, p, s0)
    b, t = s1.tokens.shape
    n_layers, g = cfg.n_layers, opts.gen_length
    rows = _later_rows(cfg, opts, s1)
    head_rows = int(_STEP(cfg, sopts, p, s1).head_rows - s1.head_rows)  # the bucket the step itself ran
    out = dict(method=method, total_len=t, layer_rows=rows, head_rows=head_rows,
               step_first_ms=_ms(_STEP, cfg, sopts, p, s0, repeats=repeats),
               step_later_ms=_ms(_STEP, cfg, sopts, p, s1, repeats=repeats))
    key = jax.random.key(1)
    k1, k2, k3 = jax.random.split(key, 3)
    hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    dt = model.dtype_of(cfg)
    weights = method == "d2cache"
    ph = {}
    # Attention alone (scores, softmax, weighted values) for the step's query rows over all T keys.
    q = jax.random.normal(k1, (b, rows, nh, hd), dt)
    kk = jax.random.normal(k2, (b, t, nkv, hd), dt)
    vv = jax.random.normal(k3, (b, t, nkv, hd), dt)
    kmask = s1.key_mask
    attn = jax.jit(lambda q, k, v, m: model.attention(cfg, q, k, v, m, weights))
    ph["attention_in_layers"] = n_layers * _ms(attn, q, kk, vv, kmask, repeats=repeats)
    q_idx = jnp.broadcast_to(jnp.arange(rows, dtype=jnp.int32) + (t - rows), (b, rows))
    if method == "none":
        full = jax.jit(lambda p, s: model.forward_rows(cfg, p, s.tokens, s.positions, s.key_mask).hidden)
        ph["layers"] = _ms(full, p, s1, repeats=repeats)
    elif method in ("prefix", "dual", "d2cache"):
        kv = s1.cache.kv if method == "d2cache" else s1.cache
        if method == "d2cache":
            q_idx = s1.cache.q_idx[:, :rows]
        part = jax.jit(lambda p, s, qi, kv: model.forward_rows(cfg, p, s.tokens, s.positions, s.key_mask,
                                                               q_idx=qi, kv=kv, need_weights=weights))
        ph["layers"] = _ms(part, p, s1, q_idx, kv, repeats=repeats)
        k_new = jax.random.normal(k1, (b, rows, nkv, hd), dt)
        scat = jax.jit(lambda c, qi, x: c.at[jnp.arange(b)[:, None], qi].set(x, mode="drop"))
        ph["kv_scatter"] = 2 * n_layers * _ms(scat, kv.k[0], q_idx, k_new, repeats=repeats)
        gath = jax.jit(lambda p, s, qi: (model.embed(p, model.gather_rows(s.tokens, qi)),
                                         model.gather_rows(s.positions, qi)))
        ph["row_gather"] = _ms(gath, p, s1, q_idx, repeats=repeats)
    else:  # dllm, an adaptive step: layer 0 in full, then V-verify and k rows per layer
        x = model.embed(p, s1.tokens)
        lay0 = jax.jit(lambda p, x, c, s: dllm_cache.layer(cfg, model.bind(cfg, p).layer(0), x, c, jnp.int32(0),
                                                           s.positions, s.key_mask)[0])
        ph["layer0_full"] = _ms(lay0, p, x, s1.cache, s1, repeats=repeats)
        pl = t - g
        vv_ = jax.jit(lambda p, x, c: dllm_cache.v_verify(model.bind(cfg, p).layer(1), x, c.v[1], pl, rows))
        ph["v_verify"] = (n_layers - 1) * _ms(vv_, p, x, s1.cache, repeats=repeats)
        idx, vals = vv_(p, x, s1.cache)
        lay = jax.jit(lambda p, x, c, s, i, vals: dllm_cache.layer(cfg, model.bind(cfg, p).layer(1), x, c, jnp.int32(1),
                                                                   s.positions, s.key_mask, i, (pl, vals))[0])
        ph["layers_adaptive_rows"] = (n_layers - 1) * _ms(lay, p, x, s1.cache, s1, idx, vals, repeats=repeats)
    hidden = jax.random.normal(k1, (b, head_rows, cfg.d_model), dt)
    hd_fn = jax.jit(lambda p, h: model.head(p, cfg, h))
    ph["head"] = _ms(hd_fn, p, hidden, repeats=repeats)
    logits = hd_fn(p, hidden)
    prop = jax.jit(lambda lg, k: propose(lg, k, **propose_kw(cfg, opts)))
    ph["propose"] = _ms(prop, logits, key, repeats=repeats)
    if method == "d2cache":
        a = jax.nn.softmax(jax.random.normal(jax.random.key(0), (n_layers, b, rows, t)), -1)
        roll = jax.jit(lambda a, qi: rollout.rollout_importance(a, qi, t))
        ph["rollout_importance"] = _ms(roll, a, q_idx, repeats=repeats)
        gmask = s1.tokens[:, t - g:] == cfg.mask_token_id
        info = StepInfo(transfer=jnp.zeros((b, g), bool).at[:, 0].set(True),
                        conf=jax.random.uniform(k2, (b, g)), valid=jnp.ones((b, g), bool),
                        block_mask=jnp.ones((b, g), bool), eligible=gmask, active=jnp.ones((b,), bool))
        after = jax.jit(lambda s, i: d2cache.after_step(cfg, opts, s, i))
        ph["after_step_selection"] = _ms(after, s1, info, repeats=repeats)
    out["phases_ms"] = ph
    out["layer_matmuls_est_ms"] = max(ph.get("layers", 0.0) - ph["attention_in_layers"] - ph.get("kv_scatter", 0.0)
                                      - ph.get("row_gather", 0.0), 0.0) if "layers" in ph else None
    out["unattributed_ms"] = out["step_later_ms"] - sum(v for k, v in ph.items() if k != "attention_in_layers")
    return out


def profile_all(cfg: ModelConfig, p: dict, methods: list[str], gen_length: int, prompt_len: int, batch_size: int,
                repeats: int, extra: dict) -> list[dict]:
    rng = np.random.default_rng(0)
    hi = min(cfg.vocab_size, cfg.mask_token_id)
    prompts = [list(rng.integers(0, hi, prompt_len)) for _ in range(batch_size)]
    out = []
    for m in methods:
        r = profile_method(cfg, p, prompts, m, gen_length, repeats, extra)
        print(json.dumps(r), flush=True)
        out.append(r)
    return out


def op_profile_all(cfg: ModelConfig, p: dict, methods: list[str], gen_length: int, prompt_len: int,
                   batch_size: int, calls: int, extra: dict) -> list[dict]:
    """Each method's second step (its first partial one, as `--profile` times) op by op."""
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, min(cfg.vocab_size, cfg.mask_token_id), prompt_len)) for _ in range(batch_size)]
    out = []
    for m in methods:
        opts = _method_opts(m, gen_length, extra)
        sopts = dataclasses.replace(opts, seed=0, loop="device", prompt_bucket=0)
        s1 = _STEP(cfg, sopts, p, prepare(cfg, prompts, opts))
        prof = op_profile.profile(_STEP, cfg, sopts, p, s1, calls=calls)
        print(op_profile.summary(m, prof), flush=True)
        out.append(dict(method=m, **prof))
    return out


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
    try:
        files.write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


if __name__ == "__main__":
    cli.run(main)
