"""Mesh, multi-process and memory flags shared by the experiment scripts.

    --mesh=data:2,model:4          this process's devices as a (data, model) mesh (default: all on data)
    --distributed=auto|yes|no      join a multi-process job (auto: when a coordinator address is set)
    --coordinator_address, --num_processes, --process_id   (or JAX_COORDINATOR_ADDRESS, ...)
    --device_memory_gb             memory per device for the fit check (default: what the device reports)
"""

from __future__ import annotations

import dataclasses
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

    `prompt_len`: the longest prompt's tokens (rounded up to the prompt bucket here)."""
    from d2cache_jax import memory, multihost
    from d2cache_jax.generation import make_options

    opts = make_options(**options)
    bucket = max(opts.prompt_bucket, 1)
    est = memory.estimate(cfg, opts, batch, -(-prompt_len // bucket) * bucket, mesh)
    multihost.log(est.describe())
    device_bytes = (int(DEVICE_MEMORY_GB.value * memory.GiB) if DEVICE_MEMORY_GB.value
                    else memory.device_memory())
    try:
        memory.check_fits(est, device_bytes)
    except MemoryError as e:
        raise app.UsageError(str(e)) from e
    return est
