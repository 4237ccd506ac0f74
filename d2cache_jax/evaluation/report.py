"""Tables and the accuracy-vs-throughput plot over several evaluation runs.

A run is a folder with metrics.json (and samples.jsonl). Shards of one run (same settings, other
`shard`) are merged and their metrics recomputed from the samples. Speedup is a run's throughput over
that of the run with no cache and the vanilla decoder on the same task and checkpoint.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from typing import Any

from d2cache_jax import files
from d2cache_jax.evaluation import metrics as metrics_lib
from d2cache_jax.evaluation import paired
from d2cache_jax.evaluation.runner import METRICS_FILE, SAMPLES_FILE, read_samples


def find_runs(paths: Sequence[str]) -> list[str]:
    """Run folders named by the paths or glob patterns, or found below them."""
    found = []
    for pattern in paths:
        matches = sorted(glob.glob(pattern)) or [pattern]
        for path in matches:
            if os.path.isfile(os.path.join(path, METRICS_FILE)):
                found.append(path)
                continue
            below = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(path, "**", METRICS_FILE),
                                                                 recursive=True))
            if not below:
                raise FileNotFoundError(f"{path}: no {METRICS_FILE} here or below")
            found.extend(below)
    return list(dict.fromkeys(found))


def load_run(path: str) -> dict[str, Any]:
    with open(os.path.join(path, METRICS_FILE), encoding="utf-8") as f:
        run = json.load(f)
    run["path"] = path
    return run


def _run_key(run: dict[str, Any]) -> str:
    """Settings that identify a run, its shard aside."""
    config = {k: v for k, v in run.get("config", {}).items() if k not in ("shard", "num_items")}
    return json.dumps(config, sort_keys=True)


def merge_shards(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One run per setting: shards of the same run combined, metrics recomputed from all samples."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(_run_key(run), []).append(run)
    merged = []
    for group in groups.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        records = [r for run in group for r in read_samples(os.path.join(run["path"], SAMPLES_FILE))]
        run = {**group[0], **metrics_lib.compute_metrics(records), "path": ", ".join(r["path"] for r in group),
               "complete": all(r.get("complete") for r in group)}
        for key in ("peak_device_memory_gb", "peak_host_rss_gb"):
            values = [r.get(key) for r in group if r.get(key) is not None]
            run[key] = max(values) if values else None
        merged.append(run)
    return merged


def _is_baseline(run: dict[str, Any]) -> bool:
    generation = run.get("config", {}).get("generation", {})
    return generation.get("cache", "none") == "none" and generation.get("decoder", "vanilla") == "vanilla"


def table_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: task, method, accuracy, tok/s, speedup vs the no-cache run, and more."""
    baselines: dict[tuple, float] = {}
    for run in runs:
        config = run.get("config", {})
        key = (config.get("task"), config.get("checkpoint"))
        if _is_baseline(run) and run.get("throughput_tok_s") and key not in baselines:
            baselines[key] = run["throughput_tok_s"]
    rows = []
    for run in runs:
        config = run.get("config", {})
        base = baselines.get((config.get("task"), config.get("checkpoint")))
        tput = run.get("throughput_tok_s")
        rows.append({
            "task": config.get("task"), "method": config.get("method") or os.path.basename(run["path"]),
            "accuracy": run.get("accuracy"), "throughput_tok_s": tput,
            "speedup": tput / base if (tput and base) else None, "tokens_per_step": run.get("tokens_per_step"),
            "forward_passes": run.get("forward_passes"), "latency_s": run.get("latency_s"),
            "num_samples": run.get("num_samples"), "path": run["path"]})
    return rows


_DECODER_PARAM = {"threshold": "threshold", "factor": "factor", "eb": "gamma"}


def _decoding_key(run: dict[str, Any]) -> str:
    """What must match for two runs to be paired: task, model, items and decoder (not the cache)."""
    config = run.get("config", {})
    generation = config.get("generation", {})
    decoder = generation.get("decoder", "vanilla")
    keep = {"task": config.get("task"), "checkpoint": config.get("checkpoint"), "data": config.get("data"),
            "decoder": decoder, "param": generation.get(_DECODER_PARAM.get(decoder, ""), None),
            **{k: generation.get(k) for k in ("gen_length", "temperature", "seed")}}
    return json.dumps(keep, sort_keys=True)


def _records(run: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's sample records (a merged run's `path` lists its shards' folders)."""
    return [r for path in run["path"].split(", ") for r in read_samples(os.path.join(path, SAMPLES_FILE))]


def paired_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each cached run against the no-cache run with the same task, model and decoder, item by item
    (`paired.compare`); runs without such a baseline are left out."""
    baselines = {}
    for run in runs:
        if run.get("config", {}).get("generation", {}).get("cache", "none") == "none":
            baselines.setdefault(_decoding_key(run), run)
    base_records: dict[str, list[dict[str, Any]]] = {}  # each baseline's samples read once
    rows = []
    for run in runs:
        base = baselines.get(_decoding_key(run))
        if base is None or base is run:
            continue
        if base["path"] not in base_records:
            base_records[base["path"]] = _records(base)
        result = paired.compare(base_records[base["path"]], _records(run))
        rows.append({"task": run.get("config", {}).get("task"),
                     "method": run.get("config", {}).get("method") or os.path.basename(run["path"]),
                     "baseline": base.get("config", {}).get("method") or os.path.basename(base["path"]),
                     **result._asdict()})
    return rows


def paired_table(rows: Sequence[dict[str, Any]]) -> str:
    """The paired comparisons as a Markdown table ('' when there are none)."""
    if not rows:
        return ""
    lines = ["| task | method | baseline | right only in baseline | right only in method | items | exact McNemar p |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['method']} | {r['baseline']} | {r['lost']} | {r['gained']} | {r['n']} | "
                     f"{r['p']:.3g} |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| task | method | accuracy | tok/s | speedup | tok/step | forward passes | latency (s) | n |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        accuracy = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}"
        lines.append(f"| {r['task']} | {r['method']} | {accuracy} | {_fmt(r['throughput_tok_s'], '.1f')} | "
                     f"{_fmt(r['speedup'], '.2f')}x | {_fmt(r['tokens_per_step'], '.2f')} | "
                     f"{_fmt(r['forward_passes'], '.1f')} | {_fmt(r['latency_s'], '.2f')} | {r['num_samples']} |")
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_throughput(rows: Sequence[dict[str, Any]], path: str) -> None:
    """A scatter plot of accuracy against throughput, one colour per task, points labelled by method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    tasks = sorted({str(r["task"]) for r in rows})
    for task in tasks:
        points = [r for r in rows if str(r["task"]) == task and r["accuracy"] is not None
                  and r["throughput_tok_s"] is not None]
        ax.scatter([r["throughput_tok_s"] for r in points], [100 * r["accuracy"] for r in points], label=task)
        for r in points:
            ax.annotate(r["method"], (r["throughput_tok_s"], 100 * r["accuracy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    ax.set_xlabel("throughput (tokens/s)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs throughput")
    ax.grid(alpha=0.3)
    if tasks:
        ax.legend()
    fig.tight_layout()
    try:
        files.write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)
