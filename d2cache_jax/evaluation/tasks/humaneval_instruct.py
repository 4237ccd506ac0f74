"""HumanEval for instruct models as lm-eval's `humaneval_instruct` task (v4).

The user turn asks for a solution and shows the stub in a python fence; the assistant's answer is
prefilled with "Here is the completed function:" and the open fence with the stub, so the model
continues the function body. The program tested is the stub plus the output up to the first fence.
"""

from __future__ import annotations

from typing import Any

from d2cache_jax.evaluation.sandbox import SandboxLimits, run_program
from d2cache_jax.evaluation.tasks.base import Score, ScoreOptions, Task
from d2cache_jax.evaluation.tasks.humaneval import build_test_program

FENCE = "```"


def build_solution(doc: dict[str, Any], output: str) -> str:
    """lm-eval's `build_predictions_instruct`: the stub, then the output cut at its first fence."""
    at = output.find(FENCE)
    return doc["prompt"] + (output if at == -1 else output[:at])


class HumanEvalInstruct(Task):
    name = "humaneval_instruct"
    fields = ("prompt", "test", "entry_point")
    stop_words = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # humaneval.yaml `until`
    gen_length = 512

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return ("Write a solution to the following problem and make sure that it passes the tests:\n"
                f"```python\n{doc['prompt']}\n```\n")

    def gen_prefix(self, doc: dict[str, Any]) -> str:
        return f"Here is the completed function:\n```python\n{doc['prompt']}\n"

    def score(self, doc: dict[str, Any], output: str, options: ScoreOptions) -> Score:
        solution = build_solution(doc, output)
        result = run_program(build_test_program(doc, solution),
                             SandboxLimits(timeout_s=options.timeout_s, memory_mb=options.memory_mb))
        return Score(correct=result.passed, extracted=solution,
                     details={"status": result.status, "error": result.error_tail()})


TASK = HumanEvalInstruct()
