"""d2Cache vs no cache, per step, under the same machine load: `python -m tools.d2cache_speed`.

Random LLaDA-shaped weights (cpu-medium: d 1024, 8 layers, 16 heads, mlp 2816, vocab 32000), a
random prompt, temperature 0, batch 1. Both jitted steps are compiled first; then d2Cache runs its
whole generation step by step and every `--none_every`-th step one no-cache step runs on its own
state, so both are timed under the same (shared-machine) load. A no-cache step costs the same at
every step, so its sampled steps give its time per step; d2Cache's steps are all timed. One token
is committed per step in both (steps = gen_length).
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
from absl import flags

from d2cache_jax import cli
from d2cache_jax import config as config_lib
from d2cache_jax import params as params_lib
from d2cache_jax.generation.generate import prepare, step_fn
from d2cache_jax.generation.options import make_options

GEN = flags.DEFINE_integer("gen_length", 256, "Generated tokens.")
PROMPT = flags.DEFINE_integer("prompt_len", 128, "Prompt tokens (random ids).")
NONE_EVERY = flags.DEFINE_integer("none_every", 4, "One no-cache step per this many d2Cache steps.")
DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Param dtype.")
EXTRA = flags.DEFINE_string("options", "{}", "JSON dict of extra d2Cache options (e.g. capacity).")


def timed_step(step, params, state):
    t0 = time.perf_counter()
    state = jax.block_until_ready(step(params, state))
    return state, time.perf_counter() - t0


def main(argv):
    del argv
    cfg = config_lib.tiny_llada(vocab_size=32000).replace(
        d_model=1024, n_layers=8, n_heads=16, n_kv_heads=16, head_dim=64, mlp_hidden=2816, max_seq_len=4096,
        param_dtype=DTYPE.value)
    params = params_lib.init_params(cfg, jax.random.key(0))
    prompt = [list(np.random.default_rng(0).integers(0, cfg.mask_token_id, PROMPT.value))]
    d2_opts = make_options(cache="d2cache", gen_length=GEN.value, **json.loads(EXTRA.value))
    none_opts = make_options(cache="none", gen_length=GEN.value, sigma=d2_opts.cp_sigma)
    d2, none = step_fn(cfg, d2_opts), step_fn(cfg, none_opts)
    t0 = time.perf_counter()
    jax.block_until_ready((d2(params, prepare(cfg, prompt, d2_opts)), none(params, prepare(cfg, prompt, none_opts))))
    compile_s = time.perf_counter() - t0
    d2_state, none_state = prepare(cfg, prompt, d2_opts), prepare(cfg, prompt, none_opts)
    d2_state, d2_first = timed_step(d2, params, d2_state)  # step 0: the full pass
    none_state, dt = timed_step(none, params, none_state)
    d2_times, none_times = [d2_first], [dt]
    while not bool(d2_state.done.all()):
        d2_state, dt = timed_step(d2, params, d2_state)
        d2_times.append(dt)
        if len(d2_times) % NONE_EVERY.value == 0 and not bool(none_state.done.all()):
            none_state, dt = timed_step(none, params, none_state)
            none_times.append(dt)
    t = d2_state.tokens.shape[1]
    steps = int(d2_state.step)
    d2_total = sum(d2_times)
    none_ms = 1e3 * float(np.median(none_times))
    q = d2_state.cache.q_idx.shape[1]
    doc = dict(
        model=dict(d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, mlp_hidden=cfg.mlp_hidden,
                   vocab=cfg.vocab_size, dtype=DTYPE.value),
        prompt_len=PROMPT.value, gen_length=GEN.value, total_len=t, capacity_rows=q,
        compile_and_first_steps_s=compile_s, d2cache_step0_ms=1e3 * d2_first,
        d2cache=dict(forward_passes=steps, ms_per_step=1e3 * d2_total / steps, tokens_per_s=GEN.value / d2_total,
                     ms_per_step_after_step0_median=1e3 * float(np.median(d2_times[1:])),
                     recompute_share=float(d2_state.rows_computed) / steps,
                     selected_share=float(d2_state.rows_selected) / steps,
                     capacity_share=q / t, overflow_rows=int(d2_state.overflow)),
        none=dict(forward_passes=GEN.value, ms_per_step=none_ms, tokens_per_s=1e3 / none_ms,
                  sampled_steps=len(none_times)),
    )
    doc["speedup"] = doc["d2cache"]["tokens_per_s"] / doc["none"]["tokens_per_s"]
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    cli.run(main)
