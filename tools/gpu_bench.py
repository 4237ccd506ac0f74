"""One accelerator measurement at real scale: `python -m tools.gpu_bench OUT.json [preset] [per-layer]`.

Random bf16 weights of LLaDA-8B (or Dream-7B) drawn on the device, prompt 128 + gen 256, batch 1,
one generation per cache: ms per step against the time to stream the weights once from memory
(the bs-1 bound), compile seconds, and the speedup over no cache. Results are written after each
method so a run cut short still reports what it finished.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from d2cache_jax import config, flops, model
from d2cache_jax.generation.generate import generate

METHODS = {
    "none": dict(cache="none", block_length=32),
    "dual+threshold": dict(cache="dual", block_length=32, decoder="threshold", threshold=0.9),
    "d2cache": dict(cache="d2cache"),
}


def device_params(cfg: config.ModelConfig) -> dict:
    """Random params drawn on the device by the NNX modules' own initialisers (one jitted program)."""
    return jax.jit(lambda: model.params_of(model.init(cfg)))()


def main() -> None:
    out_path = sys.argv[1]
    preset = sys.argv[2] if len(sys.argv) > 2 else "llada_8b_instruct"
    cfg = getattr(config, preset)()
    t0 = time.perf_counter()
    p = jax.block_until_ready(device_params(cfg))
    if len(sys.argv) > 3 and sys.argv[3] == "per-layer":  # one buffer per layer instead of the scanned stack
        p = jax.block_until_ready(model.unstack_layers(p))
    doc = {"device": str(jax.devices()[0]), "jax": jax.__version__, "preset": preset,
           "layout": "scanned" if model.is_scanned(p) else "per-layer",
           "param_gib": flops.param_bytes(cfg) / 2**30, "init_s": time.perf_counter() - t0, "results": {}}
    x = jnp.ones((1 << 28,), jnp.bfloat16)  # 512 MiB: a device-to-device copy measures the bandwidth
    copy = jax.jit(lambda a: a * 1)
    jax.block_until_ready(copy(x))
    t0 = time.perf_counter()
    for _ in range(10):
        y = copy(x)
    jax.block_until_ready(y)
    bw = 2 * x.nbytes * 10 / (time.perf_counter() - t0)
    doc["copy_bytes_per_s"] = bw
    doc["weights_once_ms"] = 1e3 * flops.param_bytes(cfg) / bw
    prompt = [np.random.default_rng(0).integers(0, min(cfg.vocab_size, cfg.mask_token_id), 128).tolist()]
    for name, kw in METHODS.items():
        r = generate(cfg, p, prompt, gen_length=256, **kw)
        s = r.stats
        doc["results"][name] = dict(steps=s["steps"], wall_s=s["wall_s"], compile_s=s["compile_s"],
                                    ms_per_step=1e3 * s["wall_s"] / s["steps"],
                                    recompute_share=s["recompute_share"])
        none = doc["results"].get("none")
        if none:
            doc["results"][name]["speedup"] = none["wall_s"] / s["wall_s"]
        with open(out_path, "w") as f:
            json.dump(doc, f, indent=1)
        print(name, doc["results"][name], flush=True)
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
