"""Per-device memory of a generation run: `python -m tools.memory_estimate --preset=llada_8b_base
--mesh_shapes=data:1,model:8 --device_memory_gb=16`.

Estimates need no devices (any mesh shape). With --measure the run is compiled on this machine's
devices with random weights (the mesh must match them) and the estimate is set against the placed
params and state shards and XLA's temporary buffers of the compiled loop, all on the busiest device.
"""

from __future__ import annotations

import json

from absl import app, flags

from d2cache_jax import cli
from d2cache_jax import config as config_lib
from d2cache_jax.generation.options import CACHES

# Model shapes: the config presets, and experiments.benchmark's CPU shapes.
PRESETS = {
    **config_lib.PRESETS,
    "cpu-medium": lambda: config_lib.tiny_llada(vocab_size=32000).replace(
        d_model=1024, n_layers=8, n_heads=16, n_kv_heads=16, head_dim=64, mlp_hidden=2816, max_seq_len=4096),
}

PRESET = flags.DEFINE_enum("preset", "llada_8b_base", list(PRESETS), "Model shape.")
MESH_SHAPES = flags.DEFINE_string("mesh_shapes", "data:1,model:8",
                                  "Mesh shapes separated by '+', e.g. data:8+data:2,model:4 (no devices needed).")
CACHES_FLAG = flags.DEFINE_list("caches", ["none", "d2cache"], f"Caches ({', '.join(CACHES)}).")
BATCH = flags.DEFINE_integer("batch_size", 1, "Batch size.")
PROMPT_LEN = flags.DEFINE_integer("prompt_len", 512, "Prompt tokens (after bucketing).")
GEN_LENGTH = flags.DEFINE_integer("gen_length", 256, "Generated tokens.")
BLOCK_LENGTH = flags.DEFINE_integer("block_length", 32, "Block length (prefix/dual/dllm); d2cache uses gen_length.")
DTYPE = flags.DEFINE_enum("dtype", None, ["bfloat16", "float32"], "Param dtype (default: the preset's).")
DEVICE_MEMORY_GB = flags.DEFINE_float("device_memory_gb", None, "Say whether the run fits in this much per device.")
MEASURE = flags.DEFINE_bool("measure", False, "Compile on the local devices and measure too.")
OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Write the rows here as JSON.")


def options(cache: str):
    from d2cache_jax.generation import make_options

    block = None if cache == "d2cache" else min(BLOCK_LENGTH.value, GEN_LENGTH.value)
    return make_options(cache=cache, gen_length=GEN_LENGTH.value, block_length=block)


def measure(cfg, opts, mesh_spec: str) -> dict:
    """Place random params and the state on the local devices, compile the loop, read the busiest device."""
    import importlib

    import jax
    import numpy as np

    from d2cache_jax import memory, sharding
    from d2cache_jax.params import init_params

    gen = importlib.import_module("d2cache_jax.generation.generate")
    mesh = sharding.make_mesh(mesh_spec)
    params = jax.jit(lambda k: init_params(cfg, k), out_shardings=sharding.param_shardings(cfg, mesh))(
        jax.random.key(0))
    state = gen.prepare(cfg, np.ones((BATCH.value, PROMPT_LEN.value), np.int32), opts, None, mesh.shape["data"])
    params, state = sharding.place(cfg, opts, params, state, mesh)
    compiled = gen._run_jit.lower(cfg, gen._static(opts), params, state).compile()
    return memory.measure(compiled, params, state)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from d2cache_jax import memory, sharding

    cfg = PRESETS[PRESET.value]()
    if DTYPE.value:
        cfg = cfg.replace(param_dtype=DTYPE.value)
    rows = []
    for spec in MESH_SHAPES.value.split("+"):
        try:
            sizes = sharding.parse_mesh(spec)
        except ValueError as e:
            raise app.UsageError(str(e)) from e
        for cache in CACHES_FLAG.value:
            if cache not in CACHES:
                raise app.UsageError(f"unknown cache {cache!r}; known: {', '.join(CACHES)}")
            opts = options(cache)
            est = memory.estimate(cfg, opts, BATCH.value, PROMPT_LEN.value, sizes)
            row = dict(preset=PRESET.value, dtype=cfg.param_dtype, mesh=est.mesh, cache=cache, batch=BATCH.value,
                       total_len=est.total_len, est_params_gib=est.params / memory.GiB,
                       est_state_gib=est.state / memory.GiB, est_activations_gib=est.activations / memory.GiB,
                       est_total_gib=est.total / memory.GiB)
            if DEVICE_MEMORY_GB.value:
                try:
                    memory.check_fits(est, int(DEVICE_MEMORY_GB.value * memory.GiB))
                    row["fits"] = True
                except MemoryError:
                    row["fits"] = False
            if MEASURE.value:
                got = measure(cfg, opts, spec)
                row.update({f"measured_{k}_gib": v / memory.GiB for k, v in got.items()})
            rows.append(row)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
    if OUTPUT_JSON.value:
        with open(OUTPUT_JSON.value, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    cli.run(main)
