"""HumanEval as the d2Cache `humaneval` task: the stub as prompt, sanitized completion, pass@1 in the sandbox."""

from __future__ import annotations

from typing import Any

from d2cache_jax.evaluation.code_extract import after_python_fence, sanitize
from d2cache_jax.evaluation.sandbox import SandboxLimits, run_program
from d2cache_jax.evaluation.tasks.base import Score, ScoreOptions, Task


def build_solution(doc: dict[str, Any], output: str) -> str:
    """The model's code for one problem: text after a python fence, after the prompt, sanitized."""
    return sanitize(doc["prompt"] + after_python_fence(output), doc["entry_point"])


def build_test_program(doc: dict[str, Any], solution: str) -> str:
    """Solution, the problem's tests, and the call that runs them."""
    return f"{solution}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


class HumanEval(Task):
    name = "humaneval"
    fields = ("prompt", "test", "entry_point")
    stop_words = ()  # upstream stops HumanEval at EOS only (ALGORITHMS.md §1.9)
    gen_length = 512

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return doc["prompt"]

    def score(self, doc: dict[str, Any], output: str, options: ScoreOptions) -> Score:
        solution = build_solution(doc, output)
        result = run_program(build_test_program(doc, solution),
                             SandboxLimits(timeout_s=options.timeout_s, memory_mb=options.memory_mb))
        return Score(correct=result.passed, extracted=solution,
                     details={"status": result.status, "error": result.error_tail()})


TASK = HumanEval()
