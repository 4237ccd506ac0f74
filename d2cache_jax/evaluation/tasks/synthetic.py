"""The tiny model's synthetic task (binary addition with a carry row) as an evaluation task.

Items come from `d2cache_jax.tasks.synthetic` (held-out eval split, generated from seeds), so
`--data` is not needed; scoring is that module's checker, plus exact match of the whole answer.
"""

from __future__ import annotations

from typing import Any

from d2cache_jax.evaluation.tasks.base import Score, ScoreOptions, Task
from d2cache_jax.tasks import synthetic as syn


class Synthetic(Task):
    name = "synthetic"
    fields = ("a", "b", "prompt", "answer")
    split = "eval"
    gen_length = syn.GEN_LENGTH
    needs_data = False

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return doc["prompt"]

    def doc_to_target(self, doc: dict[str, Any]) -> str:
        return doc["answer"]

    def score(self, doc: dict[str, Any], output: str, options: ScoreOptions) -> Score:
        item = syn.Item(**{k: doc[k] for k in syn.Item._fields})
        got = syn.extract(output)
        return Score(correct=syn.check(item, output), extracted=None if got is None else format(got, "b"),
                     details={"exact": syn.check_exact(item, output)})

    def make_docs(self, count: int | None, seed: int) -> list[dict[str, Any]]:
        return [it._asdict() for it in syn.make_items("eval", count or 200, seed)]


TASK = Synthetic()
