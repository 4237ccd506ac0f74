"""MATH-500 as the d2Cache `math-500` task: Minerva 4-shot prompt, two scorers.

The verdict is Minerva's exact match (`minerva_math`: boxed or "Final Answer" extraction, normalisation,
sympy equivalence), the path lm-eval's minerva_math tasks take; math-verify on the whole output is kept
beside it. Both appear in the details, so metrics.json holds `accuracy_minerva` and `accuracy_math_verify`.
"""

from __future__ import annotations

import re
from typing import Any

from d2cache_jax.evaluation import minerva_math
from d2cache_jax.evaluation.tasks.base import Score, ScoreOptions, Task
from d2cache_jax.evaluation.tasks.fewshot import load_fewshot

# The Minerva answer sentence; the scorer appends it so that an unfinished last sentence still matches.
MINERVA_SENTENCE = re.compile(r"Final Answer: The final answer is (.*?)\. I hope it is correct\.", re.DOTALL)
MINERVA_TAIL = ". I hope it is correct."


def minerva_answer(output: str) -> str | None:
    """The answer of the first `Final Answer: The final answer is X. I hope it is correct.` sentence."""
    match = MINERVA_SENTENCE.search(output + MINERVA_TAIL)
    return match.group(1).strip() if match else None


def _plain(text: str) -> str:
    """A light string normal form for answers math-verify cannot parse."""
    text = text.strip().strip("$").strip()
    for token in ("\\left", "\\right", "\\!", "\\,", "\\ ", " "):
        text = text.replace(token, "")
    return text.rstrip(".")


def _parse(text: str) -> list:
    from math_verify import parse

    return parse(text)


def is_equivalent(gold: str, output: str) -> tuple[bool, str | None]:
    """math-verify on the whole output against the boxed gold; string match if it parses nothing."""
    from math_verify import verify

    gold_parsed = _parse("\\boxed{" + gold + "}")
    pred_parsed = _parse(output)
    extracted = pred_parsed[-1] if pred_parsed else None
    if gold_parsed and pred_parsed:
        return bool(verify(gold_parsed, pred_parsed)), str(extracted)
    answer = minerva_answer(output)
    return answer is not None and _plain(answer) == _plain(gold), answer


class Math500(Task):
    name = "math500"
    fields = ("problem", "answer")
    num_fewshot = 4
    stop_words = ("Problem:",)
    gen_length = 256

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return "Problem:\n" + doc["problem"] + "\n\nSolution:"

    def doc_to_target(self, doc: dict[str, Any]) -> str:
        return doc["solution"]

    def fixed_fewshot(self) -> list[dict[str, Any]]:
        return load_fewshot("minerva_math")

    def score(self, doc: dict[str, Any], output: str, options: ScoreOptions) -> Score:
        gold = str(doc["answer"])
        minerva, answer = minerva_math.score(output, gold)
        verified, verify_answer = is_equivalent(gold, output)
        return Score(correct=minerva, extracted=answer,
                     details={"minerva": minerva, "math_verify": verified, "math_verify_answer": verify_answer,
                              "minerva_answer": minerva_answer(output), "gold": gold})


TASK = Math500()
