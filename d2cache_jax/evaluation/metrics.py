"""Run metrics from per-sample records, as ALGORITHMS.md §4.1 defines them (per sequence for any batch size).

Every record holds its sample's `correct` flag and `stats`: `num_tokens` (generated tokens before the
first EOS), `steps`, `tokens_per_step`, and its batch's `batch` id, `batch_size`, `wall_s` and
`forward_passes`. Speed numbers are means over batches, as upstream reports them (with batch size 1,
means over samples). `full_*` numbers count every committed position (EOS and what follows it
included), as upstream's `full_throughput` and `full_tps` do; the plain ones count tokens up to EOS.

Run time is split per batch into compilation (`compile_s`, measured by `generate`), generation
(`wall_s`) and the rest of `batch_wall_s` (tokenizing, decoding, scoring); `compiles` counts the
XLA programs compiled while a batch ran (`generation_compiles`: those of the denoising loop).
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Sequence
from typing import Any

GIB = 1024**3


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def _batches(records: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(record["stats"]["batch"], []).append(record)
    return list(groups.values())


def accuracy_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """`accuracy` and one `accuracy_<name>` per boolean detail (e.g. gsm8k's strict_match)."""
    out = {"accuracy": _mean([float(r["correct"]) for r in records])}
    names = sorted({k for r in records for k, v in r.get("details", {}).items() if isinstance(v, bool)})
    for name in names:
        out[f"accuracy_{name}"] = _mean([float(r["details"][name]) for r in records if name in r["details"]])
    return out


def speed_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Throughput (up to EOS and full), tokens per step, forward passes and latency."""
    batches = _batches(records)
    per_batch_tput, latencies, passes, total_time, total_tokens = [], [], [], 0.0, 0
    full_tput, full_tps = [], []
    for batch in batches:
        wall = max(r["stats"]["wall_s"] for r in batch)
        tokens = sum(r["stats"]["num_tokens"] for r in batch)
        size = batch[0]["stats"].get("batch_size", len(batch))
        if wall > 0:
            per_batch_tput.append(tokens / wall)
        committed = [r["stats"].get("committed") for r in batch]
        if all(c is not None for c in committed):
            if wall > 0:
                full_tput.append(sum(committed) / wall)
            full_tps.append(sum(committed) / max(max(r["stats"]["steps"] for r in batch), 1))
        latencies.append(wall / size)
        passes.append(batch[0]["stats"]["forward_passes"])
        total_time += wall
        total_tokens += tokens
    return {
        "throughput_tok_s": _mean(per_batch_tput),
        "throughput_total_tok_s": total_tokens / total_time if total_time > 0 else None,
        "full_throughput_tok_s": _mean(full_tput),
        "full_tokens_per_step": _mean(full_tps),
        "tokens_per_step": _mean([_tokens_per_step(r["stats"]) for r in records]),
        "forward_passes": _mean(passes),
        "forward_passes_total": int(sum(passes)),
        "steps": _mean([r["stats"]["steps"] for r in records]),
        "latency_s": _mean(latencies),
        "generated_tokens": _mean([r["stats"]["num_tokens"] for r in records]),
        "total_generation_s": total_time,
    }


def _tokens_per_step(stats: dict[str, Any]) -> float:
    value = stats.get("tokens_per_step")
    return float(value) if value is not None else stats["num_tokens"] / max(stats["steps"], 1)


def time_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float | int | None]:
    """Compiled programs and the run's time split into compilation, generation and the rest."""
    batches = _batches(records)

    def total(key: str) -> float:
        return float(sum(max(r["stats"].get(key) or 0.0 for r in batch) for batch in batches))

    wall = total("batch_wall_s")
    compile_s, generation_s = total("compile_s"), total("wall_s")
    return {
        "num_batches": len(batches),
        "compiles": int(total("compiles")),
        "generation_compiles": int(total("generation_compiles")),
        "compile_s": compile_s,
        "generation_s": generation_s,
        "other_s": max(wall - compile_s - generation_s, 0.0) if wall > 0 else None,
        "eval_wall_s": wall if wall > 0 else None,
    }


def compute_metrics(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """All metrics of a run from its sample records."""
    return {"num_samples": len(records), **accuracy_metrics(records), **speed_metrics(records),
            **time_metrics(records)}


def peak_memory() -> dict[str, float | None]:
    """Peak accelerator memory (GiB, None on CPU or when unknown) and this process's peak RSS (GiB)."""
    device_peak = None
    jax = sys.modules.get("jax")  # only if the model already imported it
    if jax is not None:
        try:
            peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
            peaks = [p for p in peaks if p is not None]
            device_peak = max(peaks) / GIB if peaks else None
        except Exception:  # backends without memory stats
            device_peak = None
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_device_memory_gb": device_peak, "peak_host_rss_gb": rss_kib * 1024 / GIB}
