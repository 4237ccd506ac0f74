"""The evaluation loop: generate in batches, score, append to samples.jsonl, resume, write metrics.json.

`samples.jsonl` gets one line per sample as soon as its batch is scored (flushed and fsynced), so an
interrupted run resumes where it stopped. At the end the samples are rewritten in index order and
`metrics.json` is written, both through a temporary file and an atomic rename.

With batch_size > 1 the prompts are batched by similar length (sorted by encoded length, ties in
index order), so a batch pads little and few distinct shapes are compiled; results keep their index.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from d2cache_jax.evaluation import compiles
from d2cache_jax.evaluation import metrics as metrics_lib
from d2cache_jax.evaluation.data import shard_range
from d2cache_jax.evaluation.generator import Completion, Generator
from d2cache_jax.evaluation.tasks.base import ScoreOptions, Task, build_prompts
from d2cache_jax.files import write_atomic

SAMPLES_FILE = "samples.jsonl"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "run_config.json"
_ID_FIELDS = ("task_id", "unique_id", "id")  # a record's own id, where the dataset has one


@dataclasses.dataclass(frozen=True)
class EvalItem:
    """One sample to evaluate: its index in the dataset, the record, the prompt text and the answer's prefill."""

    index: int
    doc: dict[str, Any]
    prompt: str
    prefix: str | None = None  # lm-eval gen_prefix: the start of the answer, given to the model


def prepare_items(task: Task, docs: Sequence[dict[str, Any]], num_fewshot: int,
                  pool: Sequence[dict[str, Any]] | None = None, fewshot_seed: int = 1234,
                  shard: tuple[int, int] = (0, 1)) -> list[EvalItem]:
    """Prompts for all docs (few-shot draws depend on the whole order), then this shard's items."""
    prompts = build_prompts(task, docs, num_fewshot, pool, fewshot_seed)
    return [EvalItem(i, docs[i], prompts[i], task.gen_prefix(docs[i])) for i in shard_range(len(docs), *shard)]


def length_sorted(items: Sequence[EvalItem], generator: Generator) -> list[EvalItem]:
    """Items by prompt length (the generator's token count if it has one, else characters), then index."""
    measure = getattr(generator, "prompt_length", None)

    def length(item: EvalItem) -> int:
        if measure is None:
            return len(item.prompt) + len(item.prefix or "")
        return measure(item.prompt, item.prefix) if item.prefix else measure(item.prompt)

    return sorted(items, key=lambda item: (length(item), item.index))


def read_samples(path: str) -> list[dict[str, Any]]:
    """Records of a samples file; a cut-off last line (an interrupted write) is dropped."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if lineno < len(lines) - 1:  # not the last line: the file is damaged, not just cut off
                raise ValueError(f"{path}:{lineno}: damaged line in a samples file") from None
            continue
        index = record.get("index") if isinstance(record, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError(f"{path}:{lineno}: a samples record must be a JSON object with an integer "
                             f"'index' >= 0, got {line[:80]!r}; move the file away to start over")
        records.append(record)
    return records


def check_output_dir(output_dir: str, config: dict[str, Any] | None = None) -> None:
    """Before any work: `output_dir` must be a writable folder (or creatable), its samples file
    readable, and a run already there must have the same settings as `config` (when given)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output_dir={output_dir} is not a directory")
    parent = os.path.abspath(output_dir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--output_dir={output_dir}: cannot write there ({parent} is not a writable directory)")
    if os.path.isdir(output_dir):
        read_samples(os.path.join(output_dir, SAMPLES_FILE))
        if config is not None:
            _check_config(os.path.join(output_dir, CONFIG_FILE), config, write=False)


def _check_config(path: str, config: dict[str, Any], write: bool = True) -> None:
    """Write the run's settings, or check that a resumed run has the same ones."""
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a readable JSON file ({e}); move it away to start over") from None
        if not isinstance(old, dict):
            raise ValueError(f"{path}: must hold a JSON object; move it away to start over")
        changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        if changed:
            diffs = "; ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in changed)
            raise ValueError(f"{os.path.dirname(path)} holds a run with other settings ({diffs}); "
                             "use another --output_dir")
        return
    if write:
        write_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def make_record(item: EvalItem, completion: Completion, task: Task, options: ScoreOptions,
                batch_id: int, batch_size: int, batch_stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score one completion and describe it as a samples.jsonl line.

    `commit_step` is the decode order: per generated position, the step that committed it (-1: never);
    `commit_conf` its confidence at that step (the decoder's raw confidence, before any certainty prior).
    """
    score = task.score(item.doc, completion.text, options)
    stats = {"num_tokens": completion.num_tokens, "steps": completion.steps,
             "forward_passes": completion.forward_passes, "wall_s": completion.wall_s,
             "tokens_per_step": completion.tokens_per_step, "batch": batch_id, "batch_size": batch_size,
             "committed": completion.committed, **completion.extra, **(batch_stats or {})}
    doc_id = next((item.doc[k] for k in _ID_FIELDS if k in item.doc), None)
    record = {"index": item.index, "doc_id": doc_id, "prompt": item.prompt, "output": completion.text,
              "extracted": score.extracted, "correct": bool(score.correct), "details": score.details,
              "stats": stats, "commit_step": completion.commit_step, "commit_conf": completion.commit_conf}
    if item.prefix:
        record["prefix"] = item.prefix
    return record


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="sample", dynamic_ncols=True)


def run_evaluation(task: Task, items: Sequence[EvalItem], generator: Generator, output_dir: str,
                   batch_size: int = 1, score_options: ScoreOptions | None = None,
                   run_config: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate `items` (skipping those already in output_dir/samples.jsonl) and return the metrics."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    score_options = score_options or ScoreOptions()
    os.makedirs(output_dir, exist_ok=True)
    config = {"task": task.name, "num_items": len(items), **(run_config or {})}
    _check_config(os.path.join(output_dir, CONFIG_FILE), config)
    samples_path = os.path.join(output_dir, SAMPLES_FILE)
    wanted = {item.index for item in items}
    records = {r["index"]: r for r in read_samples(samples_path) if r["index"] in wanted}
    todo = [item for item in items if item.index not in records]
    write_atomic(samples_path, "".join(json.dumps(records[i]) + "\n" for i in sorted(records)))
    if batch_size > 1:
        todo = length_sorted(todo, generator)
    bar = _progress_bar(len(items), len(records), progress)
    compiles.install()
    tokens, seconds = 0, 0.0
    with open(samples_path, "a", encoding="utf-8") as out:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            t0, before = time.perf_counter(), compiles.current()
            prefixes = [item.prefix for item in batch]
            extra = {"prefixes": prefixes} if any(prefixes) else {}
            completions = generator.generate([item.prompt for item in batch], until=task.stop_words, **extra)
            if len(completions) != len(batch):
                raise RuntimeError(f"generator returned {len(completions)} completions for {len(batch)} prompts")
            compiled = compiles.current() - before
            batch_stats = {"compiles": compiled.programs, "generation_compiles": compiled.generation_programs,
                           "compile_event_s": compiled.seconds}
            scored = [make_record(item, completion, task, score_options, batch[0].index, len(batch), batch_stats)
                      for item, completion in zip(batch, completions)]
            for record in scored:
                record["stats"]["batch_wall_s"] = time.perf_counter() - t0  # generate, decode and score
                records[record["index"]] = record
                out.write(json.dumps(record) + "\n")
            out.flush()
            os.fsync(out.fileno())
            tokens += sum(c.num_tokens for c in completions)
            seconds += completions[0].wall_s if completions else 0.0
            accuracy = sum(r["correct"] for r in records.values()) / len(records)
            bar.set_postfix(acc=f"{accuracy:.3f}", tok_s=f"{tokens / seconds:.1f}" if seconds > 0 else "-")
            bar.update(len(batch))
    bar.close()
    return finish_run(output_dir, [records[i] for i in sorted(records)], config)


def finish_run(output_dir: str, records: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """Rewrite samples.jsonl in order, then write metrics.json; both atomically."""
    write_atomic(os.path.join(output_dir, SAMPLES_FILE), "".join(json.dumps(r) + "\n" for r in records))
    result = {**metrics_lib.compute_metrics(records), **_peak_memory(output_dir), "config": config,
              "complete": len(records) == config["num_items"]}
    write_atomic(os.path.join(output_dir, METRICS_FILE), json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def _peak_memory(output_dir: str) -> dict[str, float | None]:
    """This process's peaks, or an earlier session's where those were higher (a resumed run)."""
    now = metrics_lib.peak_memory()
    path = os.path.join(output_dir, METRICS_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        for key, value in now.items():
            if old.get(key) is not None and (value is None or old[key] > value):
                now[key] = old[key]
    return now
