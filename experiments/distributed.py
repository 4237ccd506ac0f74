"""Mesh, multi-process and memory flags shared by the experiment scripts.

    --mesh=data:2,model:4          this process's devices as a (data, model) mesh (default: all on data)
    --distributed=auto|yes|no      join a multi-process job (auto: when a coordinator address is set)
    --coordinator_address, --num_processes, --process_id   (or JAX_COORDINATOR_ADDRESS, ...)
    --device_memory_gb             memory per device for the fit check (default: what the device reports)
    --compilation_cache_dir=DIR    JAX's persistent compilation cache: a rerun of the same shapes compiles nothing
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import threading
from typing import Any

from absl import app, flags

MESH = flags.DEFINE_string("mesh", None, "Device mesh over this process's devices, e.g. data:2,model:4 "
                                         "(default: all devices on data; one axis may be -1).")
DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "yes", "no"],
                                "Join a multi-process job: auto (when a coordinator address is set), yes "
                                "(detect TPU pods, SLURM, Open MPI where unset), no.")
COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (or JAX_COORDINATOR_ADDRESS).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (or JAX_NUM_PROCESSES).")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (or JAX_PROCESS_ID).")
DEVICE_MEMORY_GB = flags.DEFINE_float("device_memory_gb", None, "Memory of one device for the fit check "
                                                                "(default: the device's own limit; CPU: none).")

COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None, "Directory of JAX's persistent compilation cache: programs compiled once are "
                                   "stored there and loaded by later runs of the same shapes (default: off).")

_cache_events = {"/jax/compilation_cache/cache_hits": 0, "/jax/compilation_cache/cache_misses": 0}
_cache_lock = threading.Lock()
_cache_dir: str | None = None


SCAN_LAYERS = flags.DEFINE_bool(
    "scan_layers", True, "Run the layers as one scanned layer (compile time flat in depth). --noscan_layers "
    "gives each layer's weights their own buffers (every layer compiled; faster weight-bound steps).")


def apply_layout(params: dict) -> dict:
    """The params in the layout --scan_layers asks for (stacked, or one buffer per layer)."""
    from d2cache_jax import model

    return params if SCAN_LAYERS.value else model.unstack_layers(params)


def _count_cache_event(event: str, **kwargs: Any) -> None:
    if event in _cache_events:
        with _cache_lock:
            _cache_events[event] += 1


def _report_cache() -> None:
    hits, misses = _cache_events.values()
    print(f"compilation cache {_cache_dir}: {hits} program(s) loaded, {misses} compiled and stored",
          file=sys.stderr)


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache in --compilation_cache_dir (if set), for every program
    whatever its compile time or size, and report its hits and misses at exit. Call it first in main,
    before anything is compiled (JAX decides whether to use the cache at the first compile)."""
    global _cache_dir
    path = COMPILATION_CACHE_DIR.value
    if not path or _cache_dir is not None:
        return _cache_dir
    path = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise app.UsageError(f"--compilation_cache_dir={COMPILATION_CACHE_DIR.value}: cannot create it ({e})") from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise app.UsageError(f"--compilation_cache_dir={COMPILATION_CACHE_DIR.value}: not a writable directory")
    import jax
    from jax import monitoring

    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # default 1 s: small programs too
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # -1: no size limit, no override
    monitoring.register_event_listener(_count_cache_event)
    atexit.register(_report_cache)
    _cache_dir = path
    return path


@dataclasses.dataclass(frozen=True)
class Runtime:
    mesh: Any
    process_index: int
    process_count: int

    @property
    def is_main(self) -> bool:
        return self.process_index == 0


def setup() -> Runtime:
    """Join the job if asked, then build the mesh; bad settings are usage errors. Call it first in main."""
    enable_compilation_cache()
    import jax

    from d2cache_jax import multihost, sharding

    try:
        multihost.initialize(DISTRIBUTED.value, COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
        mesh = sharding.make_mesh(MESH.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    rt = Runtime(mesh, jax.process_index(), jax.process_count())
    multihost.log(f"mesh {sharding.mesh_str(mesh)} on {jax.local_device_count()} {jax.default_backend()} "
                  f"device(s) per process, process {rt.process_index} of {rt.process_count}")
    return rt


def check_memory(cfg: Any, options: dict[str, Any], batch: int, prompt_len: int, mesh: Any) -> Any:
    """Print the per-device memory estimate (process 0) and stop with a clear error if it cannot fit.

    `prompt_len`: the longest prompt's tokens (padded to its prompt bucket here, as `generate` pads it)."""
    from d2cache_jax import memory, multihost
    from d2cache_jax.generation import make_options
    from d2cache_jax.generation.state import bucket_length

    opts = make_options(**options)
    cap = max(cfg.max_seq_len - opts.gen_length, prompt_len)  # too long a prompt is refused elsewhere
    padded = bucket_length(prompt_len, opts.prompt_bucket, opts.prompt_growth, cap)
    est = memory.estimate(cfg, opts, batch, padded, mesh)
    multihost.log(est.describe())
    device_bytes = (int(DEVICE_MEMORY_GB.value * memory.GiB) if DEVICE_MEMORY_GB.value
                    else memory.device_memory())
    try:
        memory.check_fits(est, device_bytes)
    except MemoryError as e:
        raise app.UsageError(str(e)) from e
    return est
