"""Multi-process runs: joining the job, who logs, and gathering Python objects onto every process.

Each process drives a mesh over its own devices (`sharding.make_mesh`) and works on its own part of
the data; nothing crosses hosts but the final gather of results. `initialize` must run before
anything touches a JAX backend.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np

ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}


def settings(coordinator_address: str | None = None, num_processes: int | None = None,
             process_id: int | None = None) -> dict[str, Any]:
    """Explicit values win, then the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)."""
    given = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
    out = {}
    for key, value in given.items():
        env = os.environ.get(ENV[key])
        if value is None and env not in (None, ""):
            value = env if key == "coordinator_address" else int(env)
        out[key] = value
    return out


def initialize(mode: str = "auto", coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Join a multi-process job; True if this run is one.

    mode `auto`: only when a coordinator address is set (flag or environment);
    `yes`: always (settings left unset are detected: TPU pod slices, SLURM, Open MPI, Kubernetes);
    `no`: never.
    """
    if mode not in ("auto", "yes", "no"):
        raise ValueError(f"distributed mode must be auto, yes or no, got {mode!r}")
    s = settings(coordinator_address, num_processes, process_id)
    if mode == "no":
        return False
    if mode == "auto" and s["coordinator_address"] is None:
        if s["num_processes"] not in (None, 1):
            raise ValueError("num_processes > 1 needs a coordinator address (--coordinator_address=HOST:PORT), "
                             "or --distributed=yes where the cluster is detected (TPU pods, SLURM)")
        return False
    jax.distributed.initialize(**s)
    if jax.process_index() != 0:
        quiet()
    return True


def is_main() -> bool:
    return jax.process_index() == 0


def quiet() -> None:
    """Warnings and errors only, on a process other than 0."""
    logging.getLogger().setLevel(logging.WARNING)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:
        pass


def log(*args: Any) -> None:
    """print() on process 0 only."""
    if is_main():
        print(*args, flush=True)


def gather_objects(obj: Any) -> list[Any]:
    """Every process's JSON-serialisable `obj`, in process order, on every process."""
    if jax.process_count() == 1:
        return [json.loads(json.dumps(obj))]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    blobs = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(blobs[i, :int(n)].tobytes().decode()) for i, n in enumerate(sizes)]


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
