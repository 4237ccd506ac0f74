"""Counts XLA compilations through jax's monitoring events (one event per backend compile, cache hits excluded)."""

from __future__ import annotations

import dataclasses
import threading

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
# Names of the generation programs (the jitted denoising loop and step); everything else is small glue.
GENERATION_PROGRAMS = ("jit(run)", "jit(step)")


@dataclasses.dataclass(frozen=True)
class CompileCount:
    """Compilations so far: all programs, the generation programs, and their seconds."""

    programs: int = 0
    generation_programs: int = 0
    seconds: float = 0.0

    def __sub__(self, other: CompileCount) -> CompileCount:
        return CompileCount(self.programs - other.programs, self.generation_programs - other.generation_programs,
                            self.seconds - other.seconds)


_lock = threading.Lock()
_count = CompileCount()
_installed = False


def _listener(event: str, duration: float, **kwargs) -> None:
    global _count
    if event != BACKEND_COMPILE_EVENT:
        return
    is_gen = kwargs.get("fun_name") in GENERATION_PROGRAMS
    with _lock:
        _count = CompileCount(_count.programs + 1, _count.generation_programs + int(is_gen),
                              _count.seconds + float(duration))


def install() -> None:
    """Start counting (once per process)."""
    global _installed
    if _installed:
        return
    from jax import monitoring

    monitoring.register_event_duration_secs_listener(_listener)
    _installed = True


def current() -> CompileCount:
    """Compilations counted since `install`."""
    with _lock:
        return _count
