"""Every cache x decoder on the `trace` task's held-out split with the shipped `tiny_trace` model, one
`experiments.evaluate` run each (batch 1, one after another), then `experiments.report`'s table and plot.

    python -m tools.trace_table --out=runs/trace --limit=200

A configuration whose folder already holds metrics.json is not run again, so a stopped sweep resumes.
Every prompt (28-43 tokens) is padded to one 48-token bucket, so each configuration compiles once.
Run it with nothing else on the machine: the speeds of all configurations are compared in one table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

from d2cache_jax import cli
from d2cache_jax.evaluation.tasks.trace import KINDS

OUT = flags.DEFINE_string("out", "runs/trace", "Parent folder of the run folders.")
LIMIT = flags.DEFINE_integer("limit", 200, "Held-out items per configuration.")
METHODS = flags.DEFINE_list("methods", ["none", "prefix", "dual", "dllm", "d2cache", "d2cache_nocp"],
                            "Methods (d2cache_nocp: d2Cache with the certainty prior off).")
DECODERS = flags.DEFINE_list("decoders", ["vanilla", "threshold", "factor"], "Decoders.")
CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model to evaluate (default: the shipped tiny_trace).")
TIMEOUT = flags.DEFINE_integer("timeout_s", 3600, "Wall-time limit of one configuration.")

METHOD_FLAGS = {"none": ["--cache=none"], "prefix": ["--cache=prefix"], "dual": ["--cache=dual"],
                "dllm": ["--cache=dllm"], "d2cache": ["--cache=d2cache"],
                "d2cache_nocp": ["--cache=d2cache", "--sigma=0"]}
METHOD_LABELS = {"d2cache": "d2cache (CP on)", "d2cache_nocp": "d2cache (CP off)"}
DECODER_FLAGS = {"vanilla": ["--decoder=vanilla"], "threshold": ["--decoder=threshold", "--threshold=0.9"],
                 "factor": ["--decoder=factor", "--factor=1.0"]}


def kind_table(folders: list[str]) -> str:
    """Accuracy per item kind and mean token accuracy of each run, from its samples.jsonl."""
    lines = ["| run | " + " | ".join(f"{k} acc %" for k in KINDS) + " | token acc % |",
             "|---|" + "---:|" * (len(KINDS) + 1)]
    for folder in folders:
        with open(os.path.join(folder, "samples.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        cells = []
        for k in KINDS:
            hits = [r["correct"] for r in rows if r["details"]["kind"] == k]
            cells.append(f"{100 * sum(hits) / len(hits):.1f}" if hits else "-")
        tok = 100 * sum(r["details"]["token_acc"] for r in rows) / max(len(rows), 1)
        lines.append(f"| {os.path.basename(folder)} | " + " | ".join(cells) + f" | {tok:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    for name in METHODS.value:
        if name not in METHOD_FLAGS:
            raise app.UsageError(f"unknown method {name!r}; known: {', '.join(METHOD_FLAGS)}")
    for name in DECODERS.value:
        if name not in DECODER_FLAGS:
            raise app.UsageError(f"unknown decoder {name!r}; known: {', '.join(DECODER_FLAGS)}")
    folders = []
    for m in METHODS.value:
        for d in DECODERS.value:
            folder = os.path.join(OUT.value, f"{m}_{d}")
            folders.append(folder)
            if os.path.exists(os.path.join(folder, "metrics.json")):
                continue
            label = METHOD_LABELS.get(m, m) + ("" if d == "vanilla" else f" + {d}")
            cmd = [sys.executable, "-m", "experiments.evaluate", "--task=trace", f"--limit={LIMIT.value}",
                   "--batch_size=1", "--prompt_bucket=48", f"--output_dir={folder}", f"--method_name={label}",
                   "--noprogress",
                   *METHOD_FLAGS[m], *DECODER_FLAGS[d]]
            if CHECKPOINT.value:
                cmd.append(f"--checkpoint={CHECKPOINT.value}")
            print(" ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True, timeout=TIMEOUT.value)
    kinds = kind_table(folders)
    print(kinds, end="")
    with open(os.path.join(OUT.value, "kinds.md"), "w") as f:
        f.write(kinds)
    subprocess.run([sys.executable, "-m", "experiments.report", *(f"--runs={f}" for f in folders),
                    f"--plot={os.path.join(OUT.value, 'accuracy_vs_throughput.png')}",
                    f"--table={os.path.join(OUT.value, 'table.md')}"], check=True)


if __name__ == "__main__":
    cli.run(main)
