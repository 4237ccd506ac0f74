"""MBPP for instruct models as lm-eval's `mbpp_instruct` task: 3 fixed shots, a python-fence prefill.

Each shot's answer is the prefill, its code and a closing fence; the doc's answer is prefilled with
the opening fence. No stop words (256 tokens); the code tested is the first fenced block of
"```" + output, as lm-eval's `extract_code_blocks` reads it (empty when there is none).

Behaviour we adopt where upstream has a bug: lm-eval's pattern takes any word right after the fence
as a language tag, so code continuing the prefill ("def f(...") loses its first word and fails
(lm-eval issue #3447). Here a language tag must end its line; `extract_code(..., upstream=True)`
reproduces lm-eval's reading.
"""

from __future__ import annotations

import re
from typing import Any

from d2cache_jax.evaluation.sandbox import SandboxLimits, run_program
from d2cache_jax.evaluation.tasks.base import Score, ScoreOptions, Task
from d2cache_jax.evaluation.tasks.fewshot import load_fewshot
from d2cache_jax.evaluation.tasks.mbpp import build_test_program

PREFIX = "\n```python\n"
_BLOCK = re.compile(r"```(?:\w+[ \t]*\n)?\n?(.*?)\n?```", re.DOTALL)
_BLOCK_UPSTREAM = re.compile(r"```(?:\w+)?\n?(.*?)\n?```", re.DOTALL)


def extract_code(output: str, upstream: bool = False) -> str:
    """The first fenced block of "```" + output (the prefill opened it); else of the output with
    its "```python" fences made plain; else "". `upstream`: lm-eval's pattern (see the module doc)."""
    block = _BLOCK_UPSTREAM if upstream else _BLOCK
    found = block.findall("```" + output)
    if not found:
        found = block.findall(output.replace("```python", "```"))
    return found[0] if found else ""


class MbppInstruct(Task):
    name = "mbpp_instruct"
    fields = ("text", "test_list")
    num_fewshot = 3
    target_delimiter = ""
    stop_words = ()
    gen_length = 256

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        tests = "\n".join(doc["test_list"][:3])
        return (f"You are an expert Python programmer, and here is your task:\n{doc['text']}\n"
                f"Your code should pass these tests:\n{tests}")

    def doc_to_target(self, doc: dict[str, Any]) -> str:
        return f"{doc['code']}\n```"

    def gen_prefix(self, doc: dict[str, Any]) -> str:
        return PREFIX

    def fixed_fewshot(self) -> list[dict[str, Any]]:
        return load_fewshot("mbpp_prompt")

    def score(self, doc: dict[str, Any], output: str, options: ScoreOptions) -> Score:
        code = extract_code(output)
        result = run_program(build_test_program(doc, code),
                             SandboxLimits(timeout_s=options.timeout_s, memory_mb=options.memory_mb))
        return Score(correct=result.passed, extracted=code,
                     details={"status": result.status, "error": result.error_tail()})


TASK = MbppInstruct()
