"""One evaluation run split over processes: each evaluates a contiguous part of the items into
OUTPUT_DIR/process_NNN (resumable on its own), then process 0 gathers every part's samples and
writes the run's samples.jsonl and metrics.json in OUTPUT_DIR.

Parts travel through a collective gather, so hosts need no shared file system. Once merged, each
part's own metrics.json is removed (its samples.jsonl stays for resuming), so that a report over the
folder finds the merged run only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from d2cache_jax.evaluation import metrics as metrics_lib
from d2cache_jax.evaluation.data import shard_range
from d2cache_jax.evaluation.runner import METRICS_FILE, SAMPLES_FILE, read_samples
from d2cache_jax.files import write_atomic

PEAK_KEYS = ("peak_device_memory_gb", "peak_host_rss_gb")


def process_dir(output_dir: str, index: int, count: int) -> str:
    """Where process `index` of `count` writes its part (OUTPUT_DIR itself for a single process)."""
    return output_dir if count == 1 else os.path.join(output_dir, f"process_{index:03d}")


def process_items(items: Sequence[Any], index: int, count: int) -> list[Any]:
    """The contiguous part of `items` that process `index` of `count` evaluates."""
    return [items[i] for i in shard_range(len(items), index, count)]


def merge_parts(output_dir: str, parts: Sequence[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """Write samples.jsonl (index order) and metrics.json for parts {'records': [...], 'metrics': {...}}."""
    by_index = {}
    for part in parts:
        for r in part["records"]:
            if r["index"] in by_index:
                raise ValueError(f"item {r['index']} was evaluated by two processes")
            by_index[r["index"]] = r
    records = [by_index[i] for i in sorted(by_index)]
    os.makedirs(output_dir, exist_ok=True)
    write_atomic(os.path.join(output_dir, SAMPLES_FILE), "".join(json.dumps(r) + "\n" for r in records))
    result = {**metrics_lib.compute_metrics(records), "config": config,
              "complete": len(records) == config["num_items"], "processes": len(parts)}
    for key in PEAK_KEYS:
        values = [p["metrics"].get(key) for p in parts if p["metrics"].get(key) is not None]
        result[key] = max(values) if values else None
    write_atomic(os.path.join(output_dir, METRICS_FILE), json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def gather_and_merge(output_dir: str, part_metrics: dict[str, Any], config: dict[str, Any]) -> dict[str, Any] | None:
    """Run by every process after its part: process 0 writes and returns the merged metrics, the others None."""
    import jax

    from d2cache_jax import multihost

    index, count = jax.process_index(), jax.process_count()
    part = process_dir(output_dir, index, count)
    mine = {"records": read_samples(os.path.join(part, SAMPLES_FILE)),
            "metrics": {k: part_metrics.get(k) for k in PEAK_KEYS}}
    parts = multihost.gather_objects(mine)
    merged = merge_parts(output_dir, parts, config) if index == 0 else None
    multihost.barrier("d2cache_eval_merged")
    if count > 1 and os.path.exists(os.path.join(part, METRICS_FILE)):
        os.remove(os.path.join(part, METRICS_FILE))
    return merged
