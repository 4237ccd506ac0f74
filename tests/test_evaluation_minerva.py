"""Minerva MATH scoring against lm-eval's own functions (verdicts recorded by make_minerva_reference.py
with sympy's antlr LaTeX parser) and math-verify against hand-labelled truth."""

import json

import pytest

from d2cache_jax.evaluation import minerva_math as mm
from d2cache_jax.evaluation.tasks import get_task
from d2cache_jax.evaluation.tasks.base import ScoreOptions
from tests.evaluation_helpers import fixture

with open(fixture("math500_scoring.jsonl"), encoding="utf-8") as _f:
    CASES = [json.loads(line) for line in _f if line.strip()]

# Cases where math-verify's verdict is not the hand-labelled truth: \sqrt[3]2, a bare "(C)", sin 60 degrees.
MATH_VERIFY_MISSES = {31, 34, 37}
# Where the two scorers disagree (for the report): tuple without \left, a cut-off Final Answer sentence,
# \sqrt[3]2, 10\%, a bare "(C)", an unordered pair, trailing words in the answer.
DISAGREE = {5, 12, 31, 32, 37, 38, 39}


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_minerva_matches_lm_eval_reference(case):
    correct, answer = mm.score(case["output"], case["gold"])
    assert answer == case["lm_eval_answer"]
    assert correct is case["lm_eval_minerva"]


def test_math500_task_reports_both_scorers():
    task, options = get_task("math500"), ScoreOptions()
    disagree = set()
    for i, case in enumerate(CASES):
        score = task.score({"answer": case["gold"], "problem": ""}, case["output"], options)
        assert score.correct is score.details["minerva"] is case["lm_eval_minerva"]
        assert (score.details["math_verify"] == case["truth"]) is (i not in MATH_VERIFY_MISSES), i
        if score.details["minerva"] != score.details["math_verify"]:
            disagree.add(i)
    assert disagree == DISAGREE


@pytest.mark.parametrize("raw,normal", [
    ("x = 5", "5"), ("10 dollars", "10"), ("\\left(1,2\\right)", "\\left(1,2\\right)"), ("1,000", "1000"),
    ("1,2", "1,2"), ("\\frac12", "\\frac{1}{2}"), ("\\sqrt2", "\\sqrt{2}"), ("\\sqrt[3]8", "\\sqrt[3]{8}"),
    ("\\text{Evelyn}", "Evelyn"), ("30^\\circ", "30"), ("$\\boxed{7}$", "7"), ("5\\text{ cm}", "5"),
])
def test_normalize_final_answer(raw, normal):
    assert mm.normalize_final_answer(raw) == normal


def test_extraction():
    assert mm.last_boxed("a \\boxed{1} b \\boxed{\\frac{2}{3}} c") == "\\boxed{\\frac{2}{3}}"
    assert mm.last_boxed("\\boxed 5$ and") == "\\boxed 5"
    assert mm.last_boxed("\\boxed{unclosed") is None
    assert mm.extract_answer("Final Answer: The final answer is $7$. I hope it is correct.") == "$7$"
    assert mm.extract_answer("nothing here") == mm.INVALID
    assert not mm.is_equiv("\\frac{1}{", "\\frac{1}{2}")  # unparsable: False, no exception
