"""MBPP as lm-eval's `mbpp` task: 3 fixed shots, `[DONE]` stop, first code block, pass@1 in the sandbox."""

from __future__ import annotations

from typing import Any

from d2cache_jax.evaluation.code_extract import first_code_block
from d2cache_jax.evaluation.sandbox import ProblemTests, SandboxLimits, check_solution
from d2cache_jax.evaluation.tasks.base import Score, ScoreOptions, Task
from d2cache_jax.evaluation.tasks.fewshot import load_fewshot

FUTURE_IMPORT = "from __future__ import annotations\n"


def build_solution(output: str) -> str:
    """The first fenced code block (or the raw text) after the `__future__` import, as upstream's filter does."""
    code = first_code_block(output)
    return FUTURE_IMPORT + (output if code is None else code)


def build_test_program(doc: dict[str, Any], solution: str) -> str:
    """Solution, optional setup code, then the assert lines (the upstream harness's single program)."""
    setup = doc.get("test_setup_code") or ""
    return f"{solution}\n{setup}\n" + "\n".join(doc["test_list"]) + "\n"


def problem_tests(doc: dict[str, Any]) -> ProblemTests:
    """The trusted side: the setup code, then the assert lines."""
    return ProblemTests(tests="\n".join(doc["test_list"]) + "\n", prelude=(doc.get("test_setup_code") or "") + "\n")


class Mbpp(Task):
    name = "mbpp"
    fields = ("text", "test_list")
    num_fewshot = 3
    target_delimiter = ""
    stop_words = ("[DONE]",)
    gen_length = 512
    runs_code = True

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        tests = "\n".join(doc["test_list"][:3])
        return (f"You are an expert Python programmer, and here is your task: {doc['text']} "
                f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")

    def doc_to_target(self, doc: dict[str, Any]) -> str:
        return f"{doc['code']}\n[DONE]"

    def fixed_fewshot(self) -> list[dict[str, Any]]:
        return load_fewshot("mbpp_prompt")

    def score(self, doc: dict[str, Any], output: str, options: ScoreOptions) -> Score:
        solution = build_solution(output)
        result = check_solution(solution, problem_tests(doc), SandboxLimits(timeout_s=options.timeout_s,
                                                                        memory_mb=options.memory_mb),
                                unsafe=options.unsafe)
        return Score(correct=result.passed, extracted=solution,
                     details={"status": result.status, "error": result.error_tail()})


TASK = Mbpp()
