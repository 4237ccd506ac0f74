"""What every task provides: fields, prompt pieces, few-shot source, stop words, defaults and a scorer."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Score:
    """The verdict on one output: correct or not, the answer read from it, and per-filter details."""

    correct: bool
    extracted: str | None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ScoreOptions:
    """Settings of scorers that run code."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    unsafe: bool = False  # run code without OS isolation when the sandbox cannot be set up


class Task:
    """A benchmark in lm-eval's terms. Subclasses set the class attributes and the four methods."""

    name: str = ""
    fields: tuple[str, ...] = ()  # fields every record must have
    split: str = "test"
    num_fewshot: int = 0
    fewshot_split: str | None = None  # split that random few-shot examples come from, if not fixed
    target_delimiter: str = " "  # between a few-shot question and its answer
    fewshot_delimiter: str = "\n\n"  # after each few-shot answer
    stop_words: tuple[str, ...] = ()  # lm-eval `until`
    gen_length: int = 512  # default generated tokens (ALGORITHMS.md §4.3)
    needs_data: bool = True  # False: `make_docs` generates the items (no --data)
    data_hint: str = ""  # how to do without --data, for the error message
    runs_code: bool = False  # scoring runs generated code (needs the sandbox)
    default_checkpoint: str | None = None  # a model in `d2cache_jax/assets` evaluated when no checkpoint is given
    block_length: int | None = None  # the task's block length for every cache (None: the model's and cache's)

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        raise NotImplementedError

    def doc_to_target(self, doc: dict[str, Any]) -> str:
        """The answer text of a few-shot example."""
        raise NotImplementedError

    def gen_prefix(self, doc: dict[str, Any]) -> str | None:
        """lm-eval `gen_prefix`: the start of the assistant's answer, given to the model (None: none)."""
        return None

    def fixed_fewshot(self) -> list[dict[str, Any]] | None:
        """Fixed few-shot examples, taken first-n; None if they are drawn from `fewshot_split`."""
        return None

    def score(self, doc: dict[str, Any], output: str, options: ScoreOptions) -> Score:
        raise NotImplementedError

    def make_docs(self, count: int | None, seed: int) -> list[dict[str, Any]] | None:
        """Generated items, for tasks whose `needs_data` is False."""
        return None


def requires_delimiter(left: str, right: str) -> bool:
    """lm-eval's rule: a delimiter goes between two texts when neither has whitespace at the join."""
    return bool(left) and bool(right) and not (left[-1].isspace() or right[0].isspace())


def _shot(task: Task, shot: dict[str, Any]) -> str:
    """One answered example as lm-eval renders it (with a gen_prefix, the answer follows the prefix)."""
    question, answer, prefix = task.doc_to_text(shot), task.doc_to_target(shot), task.gen_prefix(shot)
    if not prefix:
        return question + task.target_delimiter + answer + task.fewshot_delimiter
    delimiter = task.target_delimiter if requires_delimiter(question, prefix) else ""
    answer = prefix + (" " if requires_delimiter(prefix, answer) else "") + answer
    return question + delimiter + answer + task.fewshot_delimiter


def fewshot_prompt(task: Task, doc: dict[str, Any], shots: Sequence[dict[str, Any]]) -> str:
    """The lm-eval context (the user turn): each shot as question, delimiter, answer, delimiter; then the question.

    The doc's own gen_prefix is not part of it: the generator puts it at the start of the answer.
    """
    return "".join(_shot(task, s) for s in shots) + task.doc_to_text(doc)


def random_fewshot_indices(num_docs: int, pool_size: int, n: int, seed: int) -> list[list[int]]:
    """Few-shot pool indices per doc as lm-eval's default sampler draws them: one RNG, docs in order."""
    if n > pool_size:
        raise ValueError(f"{n} few-shot examples requested but the pool has only {pool_size}")
    rng = random.Random(seed)
    return [rng.sample(range(pool_size), n) for _ in range(num_docs)]


def build_prompts(task: Task, docs: Sequence[dict[str, Any]], num_fewshot: int,
                  pool: Sequence[dict[str, Any]] | None = None, seed: int = 1234) -> list[str]:
    """Prompts for all docs of a task, in order (the order matters for random few-shot draws)."""
    if num_fewshot <= 0:
        return [task.doc_to_text(d) for d in docs]
    fixed = task.fixed_fewshot()
    if fixed is not None:
        if num_fewshot > len(fixed):
            raise ValueError(f"task {task.name!r} has {len(fixed)} fixed few-shot examples, "
                             f"{num_fewshot} requested")
        return [fewshot_prompt(task, d, fixed[:num_fewshot]) for d in docs]
    if not pool:
        raise ValueError(f"task {task.name!r} draws {num_fewshot} few-shot examples from its "
                         f"{task.fewshot_split!r} split: pass --fewshot_data (or --num_fewshot=0)")
    picks = random_fewshot_indices(len(docs), len(pool), num_fewshot, seed)
    return [fewshot_prompt(task, d, [pool[i] for i in idx]) for d, idx in zip(docs, picks)]
