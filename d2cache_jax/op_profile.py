"""One jitted call's time op by op, from `jax.profiler`: each compiled HLO instruction's time, with the
JAX operation it was lowered from (the HLO's `op_name` metadata: a fusion reads as the primitive at its
root, `dot_general`, `transpose`, `select_n`, ...). `experiments.benchmark --op_profile` runs it on
every method's step; this is how the transposed weight copies, the unvectorised arg-max and the
logits copies in docs/performance.md were found. Ops the runtime runs concurrently are each counted
in full, so the rows can add up to more than the call's wall time (timed apart).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax

_NAME = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+) ")
_OPCODE = re.compile(r" ([a-z][\w-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
# Instructions whose time is their children's (loops, branches, calls): left out of the rows.
CONTAINERS = ("while", "conditional", "call")


def instructions(hlo_text: str) -> dict[str, tuple[str, str, str]]:
    """Instruction name -> (output shape, JAX op_name, HLO opcode) for every instruction of a module."""
    out = {}
    for line in hlo_text.splitlines():
        m = _NAME.match(line)
        if m:
            op, code = _OP_NAME.search(line), _OPCODE.search(line, m.start(2) - 1)
            shape = line[m.start(2):code.start()] if code else m.group(2)
            out[m.group(1)] = (shape, op.group(1) if op else "", code.group(1) if code else "")
    return out


def op_times(trace_file: str, known: dict[str, tuple[str, str, str]], calls: int) -> list[dict]:
    """Per-call ms of each instruction of `known` in a perfetto trace (.json.gz), largest first; loops,
    branches and calls are left out (their time is that of the instructions inside them)."""
    with gzip.open(trace_file) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in known and known[e["name"]][2] not in CONTAINERS:
            total[e["name"]] += e.get("dur", 0)
            count[e["name"]] += 1
    rows = []
    for name, us in total.most_common():
        shape, op, code = known[name]
        rows.append(dict(op=name, ms=us / calls / 1e3, count=count[name] / calls,
                         jax_op=op.rsplit("/", 1)[-1] if op else f"({code})", shape=shape, op_name=op))
    return rows


def fastest_ms(fn: Callable, *args: Any, repeats: int) -> float:
    """Fastest wall time (ms) of `repeats` calls of a jitted function, compiled and warmed first: a
    fixed amount of work is timed best by its fastest run, which others' load can only slow."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def profile(fn: Callable, *args: Any, calls: int = 5, top: int = 25) -> dict:
    """Wall ms per call of the jitted `fn(*args)` (the fastest of `calls`), then its ops under the
    profiler: the `top` rows, and every op's ms summed by JAX operation."""
    wall_ms = fastest_ms(fn, *args, repeats=calls)
    known = instructions(fn.lower(*args).compile().as_text())
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(calls):
                jax.block_until_ready(fn(*args))
        found = glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True)
        if not found:
            raise RuntimeError(f"jax.profiler wrote no perfetto trace under {tmp}")
        rows = op_times(found[0], known, calls)
    by_op = collections.Counter()
    for r in rows:
        by_op[r["jax_op"]] += r["ms"]
    return dict(wall_ms=wall_ms, ops_ms_sum=sum(r["ms"] for r in rows),
                by_jax_op={k: round(v, 3) for k, v in by_op.most_common()}, top_ops=rows[:top])


def summary(name: str, prof: dict, top: int = 12) -> str:
    """A few printable lines of one profile."""
    lines = [f"{name}: {prof['wall_ms']:.1f} ms wall, ops {prof['ops_ms_sum']:.1f} ms (concurrent ops each counted); "
             + ", ".join(f"{k} {v:.1f}" for k, v in list(prof["by_jax_op"].items())[:6])]
    for r in prof["top_ops"][:top]:
        lines.append(f"  {r['ms']:8.2f} ms x{r['count']:<3g} {r['jax_op']:<16} {r['shape']:<30} {r['op']}")
    return "\n".join(lines)
