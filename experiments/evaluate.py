"""Evaluate a diffusion LM on a benchmark with any decoder and cache.

    python -m experiments.evaluate --task=gsm8k --data=PATH --fewshot_data=TRAIN_PATH \
        --checkpoint=DIR --cache=d2cache --output_dir=runs/gsm8k_d2cache [--limit=N --shard=i/n]

Writes OUTPUT_DIR/samples.jsonl (one line per sample, appended as it goes; rerun the same command
to resume) and OUTPUT_DIR/metrics.json. Generation and cache flags are those of experiments.generate;
what they leave unset follows the task, model and cache defaults of ALGORITHMS.md §4.3.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from d2cache_jax import cli
from d2cache_jax.evaluation import data as data_lib
from d2cache_jax.evaluation import defaults as defaults_lib
from d2cache_jax.evaluation import sandbox
from d2cache_jax.evaluation.runner import prepare_items, run_evaluation
from d2cache_jax.evaluation.tasks import get_task, task_names
from d2cache_jax.evaluation.tasks.base import ScoreOptions, Task
from experiments import distributed, flags_common

TASK = flags.DEFINE_string("task", None, f"Benchmark: one of {', '.join(task_names())}.")
DATA = flags.DEFINE_string("data", None, "JSONL/JSON/parquet/arrow file, or a local Hugging Face dataset "
                                         "folder (cache, hub snapshot or save_to_disk output).")
SPLIT = flags.DEFINE_string("split", None, "Split to read from a dataset folder (default: the task's, test).")
FEWSHOT_DATA = flags.DEFINE_string("fewshot_data", None, "File or folder with the split that random few-shot "
                                                         "examples come from (gsm8k: train).")
NUM_FEWSHOT = flags.DEFINE_integer("num_fewshot", None, "Few-shot examples (default: the task's).")
FEWSHOT_SEED = flags.DEFINE_integer("fewshot_seed", 42, "Seed of random few-shot draws (upstream: its seed, 42).")
CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Converted or Hugging Face checkpoint directory (default: "
                                 "the model shipped for the task, for the synthetic tasks).")
MODEL_KIND = flags.DEFINE_enum("model_kind", "auto", ["auto", "base", "instruct"],
                               "Instruct models get the chat template; auto: instruct if the checkpoint "
                               "folder's name says so.")
OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where samples.jsonl and metrics.json go.")
LIMIT = flags.DEFINE_integer("limit", None, "Evaluate only the first N items.")
SHARD = flags.DEFINE_string("shard", "0/1", "i/n: evaluate the i-th of n contiguous parts (separate jobs; the "
                                           "processes of one multi-process job split their shard again).")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 1, "Prompts per generate call (speed numbers use 1); with more than "
                                                 "1, prompts are batched by similar length.")
METHOD_NAME = flags.DEFINE_string("method_name", None, "Label of this run in reports (default: cache+decoder).")
CODE_TIMEOUT = flags.DEFINE_float("code_timeout_s", 10.0, "Wall-time limit of one code test run.")
CODE_MEMORY = flags.DEFINE_integer("code_memory_mb", 1024, "Memory limit of one code test run.")
UNSAFE_CODE_EXEC = flags.DEFINE_bool("unsafe_code_exec", False,
                                     "Run generated code even when the OS sandbox (namespaces) cannot be set up: "
                                     "then it runs in plain processes with only rlimits and a Python guard.")
PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar with running accuracy and tokens/s.")


def validate_flags() -> tuple[Task, tuple[int, int]]:
    """The task and shard, or a usage error that says what is wrong."""
    if not TASK.value:
        raise app.UsageError(f"--task is required (one of {', '.join(task_names())})")
    try:
        task = get_task(TASK.value)
        shard = data_lib.parse_shard(SHARD.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    if not OUTPUT_DIR.value:
        raise app.UsageError("--output_dir is required")
    if CHECKPOINT.value is None and task.default_checkpoint:
        flags.FLAGS.checkpoint = os.path.join(cli.ASSETS_DIR, task.default_checkpoint)
    if not CHECKPOINT.value:
        shipped = ", ".join(sorted(n for n in task_names() if get_task(n).default_checkpoint))
        raise app.UsageError(f"--checkpoint is required for task {task.name!r} (a checkpoint directory; only "
                             f"{shipped} default to a shipped model)")
    if not os.path.isdir(CHECKPOINT.value):
        raise app.UsageError(f"--checkpoint must be a checkpoint directory, got {CHECKPOINT.value!r}")
    if DATA.value is None and task.needs_data:
        hint = f" ({task.data_hint})" if task.data_hint else ""
        raise app.UsageError(f"--data is required for task {task.name!r}{hint}")
    if DATA.value is not None and not os.path.exists(DATA.value):
        raise app.UsageError(f"--data path does not exist: {DATA.value}")
    for flag, low in ((LIMIT, 1), (BATCH_SIZE, 1), (NUM_FEWSHOT, 0)):
        if flag.value is not None and flag.value < low:
            raise app.UsageError(f"--{flag.name} must be >= {low}, got {flag.value}")
    if CODE_TIMEOUT.value <= 0 or CODE_MEMORY.value < 64:
        raise app.UsageError("--code_timeout_s must be > 0 and --code_memory_mb >= 64")
    if task.runs_code and not UNSAFE_CODE_EXEC.value:
        try:
            sandbox.require_isolation()
        except sandbox.IsolationUnavailable as e:
            raise app.UsageError(str(e)) from e
    return task, shard


def load_docs(task: Task) -> list[dict]:
    """The task's records (from --data, or generated by the task), checked and cut to --limit."""
    if DATA.value is None:
        docs = task.make_docs(LIMIT.value, FEWSHOT_SEED.value)
        source = f"generated {task.name} items"
    else:
        docs = data_lib.load_records(DATA.value, SPLIT.value or task.split)
        source = DATA.value
    data_lib.check_fields(docs, task.fields, source, task.name)
    return docs[:LIMIT.value] if LIMIT.value else docs


def load_fewshot_pool(task: Task, num_fewshot: int) -> list[dict] | None:
    """Records that random few-shot examples are drawn from, when the task draws them."""
    if num_fewshot == 0 or task.fixed_fewshot() is not None or task.fewshot_split is None:
        return None
    path = FEWSHOT_DATA.value
    if path is None and DATA.value and os.path.isdir(DATA.value):
        path = DATA.value  # a dataset folder usually holds the train split too
    if path is None:
        raise app.UsageError(f"task {task.name!r} draws {num_fewshot} few-shot examples from its "
                             f"{task.fewshot_split!r} split: pass --fewshot_data, or --num_fewshot=0")
    pool = data_lib.load_records(path, task.fewshot_split)
    data_lib.check_fields(pool, task.fields, path, task.name)
    return pool


def method_label(options: dict) -> str:
    """A short run label: the cache, plus the decoder when it is not vanilla."""
    label = options.get("cache", "none")
    decoder = options.get("decoder", "vanilla")
    return label if decoder == "vanilla" else f"{label}+{decoder}"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.enable_compilation_cache()
    task, shard = validate_flags()
    num_fewshot = task.num_fewshot if NUM_FEWSHOT.value is None else NUM_FEWSHOT.value
    try:
        docs = load_docs(task)
        pool = load_fewshot_pool(task, num_fewshot)
        items = prepare_items(task, docs, num_fewshot, pool, FEWSHOT_SEED.value, shard)
    except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(str(e)) from e
    instruct = (MODEL_KIND.value == "instruct" or
                (MODEL_KIND.value == "auto" and defaults_lib.is_instruct_checkpoint(CHECKPOINT.value)))

    from d2cache_jax import checkpoint
    from d2cache_jax.evaluation import merge, runner
    from d2cache_jax.evaluation.generator import ModelGenerator
    from d2cache_jax.tokenizer import has_chat_template

    # Every file and value is checked before the params are loaded and anything is generated.
    config = checkpoint.read_config(CHECKPOINT.value)
    task_defaults = defaults_lib.generation_defaults(
        task.name, task.gen_length, config.family, instruct, flags_common.CACHE.value,
        flags_common.GEN_LENGTH.value, task.block_length)
    generation = flags_common.checked_options(task_defaults, f"the defaults of task {task.name}")
    options = {k: v for k, v in generation.items() if k != "loop"}
    data = os.path.abspath(DATA.value) if DATA.value else None
    run_config = {"checkpoint": os.path.abspath(CHECKPOINT.value), "data": data,
                  "model_kind": "instruct" if instruct else "base", "num_fewshot": num_fewshot,
                  "fewshot_seed": FEWSHOT_SEED.value, "limit": LIMIT.value, "shard": list(shard),
                  "batch_size": BATCH_SIZE.value, "generation": options,
                  "method": METHOD_NAME.value or method_label(options),
                  "code_limits": {"timeout_s": CODE_TIMEOUT.value, "memory_mb": CODE_MEMORY.value,
                                  "unsafe": UNSAFE_CODE_EXEC.value}}
    try:
        runner.check_output_dir(OUTPUT_DIR.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from e

    rt = distributed.setup()
    num_items = len(items)
    items = merge.process_items(items, rt.process_index, rt.process_count)
    part_config = run_config if rt.process_count == 1 else {**run_config, "process": [rt.process_index,
                                                                                       rt.process_count]}
    part_dir = merge.process_dir(OUTPUT_DIR.value, rt.process_index, rt.process_count)
    try:
        runner.check_output_dir(part_dir, {"task": task.name, "num_items": len(items), **part_config})
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    generator = ModelGenerator(CHECKPOINT.value, chat=instruct, mesh=rt.mesh, scan_layers=distributed.SCAN_LAYERS.value)
    generator.options = generation
    if instruct and not has_chat_template(generator.tokenizer):
        raise app.UsageError(f"an instruct model needs a chat template, but the tokenizer in {CHECKPOINT.value} "
                             "has none; use --model_kind=base")
    longest = max((generator.prompt_length(item.prompt) for item in items), default=1)
    flags_common.check_context(generator.config, generator.options, longest, CHECKPOINT.value)
    distributed.check_memory(generator.config, generator.options, BATCH_SIZE.value, longest, rt.mesh)
    metrics = run_evaluation(task, items, generator, part_dir, BATCH_SIZE.value,
                             ScoreOptions(CODE_TIMEOUT.value, CODE_MEMORY.value, UNSAFE_CODE_EXEC.value), part_config,
                             progress=PROGRESS.value and rt.is_main)
    if rt.process_count > 1:
        metrics = merge.gather_and_merge(OUTPUT_DIR.value, metrics,
                                         {"task": task.name, "num_items": num_items, **run_config})
    if not rt.is_main:
        return
    summary = {k: metrics.get(k) for k in ("num_samples", "accuracy", "throughput_tok_s", "full_throughput_tok_s",
                                            "tokens_per_step", "forward_passes", "latency_s", "compiles",
                                            "compile_s", "generation_s", "eval_wall_s")}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    cli.run(main)
