"""Prompts, answer extraction and scoring of the four tasks, on known outputs."""

import pytest

from d2cache_jax.evaluation import code_extract
from d2cache_jax.evaluation.data import load_records
from d2cache_jax.evaluation.tasks import base, get_task, register_task, task_names
from d2cache_jax.evaluation.tasks import gsm8k as gsm8k_lib
from d2cache_jax.evaluation.tasks import math500 as math_lib
from tests.evaluation_helpers import fixture

OPTS = base.ScoreOptions(timeout_s=3.0, memory_mb=512)


def docs(task):
    return load_records(fixture(f"{task}_test.jsonl"))


# --- registry -------------------------------------------------------------------------------

def test_registry_names_aliases_and_errors():
    assert {"gsm8k", "math500", "humaneval", "mbpp"} <= set(task_names())
    assert get_task("math-500") is get_task("math500")
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")


def test_a_new_task_plugs_in_without_other_edits():
    class Echo(base.Task):
        name = "echo_test_task"
        fields = ("x",)
        needs_data = False

        def doc_to_text(self, doc):
            return doc["x"]

        def score(self, doc, output, options):
            return base.Score(output == doc["x"], output)

        def make_docs(self, count, seed):
            return [{"x": str(i)} for i in range(count or 3)]

    register_task(Echo())
    task = get_task("echo_test_task")
    assert "echo_test_task" in task_names() and task.make_docs(2, 0) == [{"x": "0"}, {"x": "1"}]


# --- gsm8k -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,strict,flexible", [
    ("3 + 4 = 7 apples.\n#### 7", "7", "7"),
    ("He pays $1,200.50 in total.", "[invalid]", "$1,200.50"),
    ("So -5 degrees. #### -5\n\nQuestion", "-5", "-5"),
    ("I do not know", "[invalid]", "[invalid]"),
    ("The answer is 42.", "[invalid]", "42."),
])
def test_gsm8k_extraction(text, strict, flexible):
    assert gsm8k_lib.extract_strict(text) == strict
    assert gsm8k_lib.extract_flexible(text) == flexible


def test_gsm8k_scoring_known_outputs():
    task, d = get_task("gsm8k"), docs("gsm8k")
    right = task.score(d[1], "1150 + 50 = 1,200 pens.\n#### 1,200", OPTS)
    assert right.correct and right.details == {"strict_match": True, "flexible_extract": True,
                                               "strict_answer": "1,200", "gold": "1200"}
    loose = task.score(d[0], "He has 7 apples.", OPTS)  # no '####': only the flexible filter finds it
    assert loose.correct and not loose.details["strict_match"]
    wrong = task.score(d[2], "#### 5", OPTS)
    assert not wrong.correct and not wrong.details["strict_match"] and wrong.extracted == "5"
    last_number_wins = task.score(d[0], "#### 7\nThen 3 more makes 10", OPTS)
    assert last_number_wins.details == {**last_number_wins.details, "strict_match": True,
                                        "flexible_extract": False}


def test_gsm8k_prompt_is_lm_eval_plain_text():
    task = get_task("gsm8k")
    pool = [{"question": "Q1?", "answer": "A1\n#### 1"}]
    prompt = base.build_prompts(task, [{"question": "Q2?", "answer": "x"}], 1, pool, seed=0)[0]
    assert prompt == "Question: Q1?\nAnswer: A1\n#### 1\n\nQuestion: Q2?\nAnswer:"
    assert task.stop_words == ("Question:", "</s>", "<|im_end|>") and task.gen_length == 256


def test_gsm8k_fewshot_draws_follow_lm_eval_sampler():
    samplers = pytest.importorskip("lm_eval.api.samplers")
    task, pool = get_task("gsm8k"), load_records(fixture("gsm8k_train.jsonl"))
    prompts = base.build_prompts(task, docs("gsm8k"), 5, pool, seed=1234)
    sampler = samplers.ContextSampler(pool, rnd=1234)
    for doc, prompt in zip(docs("gsm8k"), prompts):
        shots = sampler.sample(5)
        want = "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)
        assert prompt == want + f"Question: {doc['question']}\nAnswer:"


def test_gsm8k_without_fewshot_pool_is_a_clear_error():
    with pytest.raises(ValueError, match="--fewshot_data"):
        base.build_prompts(get_task("gsm8k"), docs("gsm8k"), 5, None)


# --- math500 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("index,output,correct", [
    (0, "So $\\frac{28}{6}=\\boxed{\\frac{14}{3}}$.\n"
        "Final Answer: The final answer is $\\frac{14}{3}$. I hope it is correct.", True),
    (0, "Final Answer: The final answer is $14/3$. I hope it is correct.", True),
    (0, "Final Answer: The final answer is $4.67$. I hope it is correct.", False),
    (1, "The point is $\\boxed{(3,\\frac{\\pi}{2})}$.", True),
    (1, "The point is $\\boxed{(3,\\pi)}$.", False),
    (2, "Final Answer: The final answer is $\\text{Evelyn}$. I hope it is correct.", True),
    (2, "Final Answer: The final answer is $\\text{Briana}$. I hope it is correct.", False),
    (3, "$2^3+2 = 8+2 = \\boxed{10}$", True),
    (3, "no idea", False),
])
def test_math500_equivalence(index, output, correct):
    assert get_task("math500").score(docs("math500")[index], output, OPTS).details["math_verify"] is correct


def test_math500_minerva_answer_and_prompt():
    assert math_lib.minerva_answer("Final Answer: The final answer is $24$. I hope it is correct.") == "$24$"
    assert math_lib.minerva_answer("Final Answer: The final answer is $24$") == "$24$"  # cut by a stop word
    assert math_lib.minerva_answer("nothing") is None
    task = get_task("math500")
    prompt = base.build_prompts(task, docs("math500")[:1], 4)[0]
    assert prompt.startswith("Problem:\nFind the domain of the expression")
    assert prompt.count("I hope it is correct.\n\nProblem:\n") == 4
    assert prompt.endswith("Problem:\nCompute $\\frac{28}{6}$ in lowest terms.\n\nSolution:")


# --- humaneval -------------------------------------------------------------------------------

HUMANEVAL_OUTPUTS = [
    (0, "    return a + b\n", True),
    (0, "    return a + b\n\n\nprint(add(1, 2))\nif __name__ == '__main__':\n    import sys\n    sys.exit(1)\n", True),
    (0, "Sure:\n```python\ndef add(a: int, b: int) -> int:\n    return a + b\n```\nIt adds.", True),
    (0, "    return a - b\n", False),
    (1, "    return _rev(text) == text\n\n\ndef _rev(s):\n    return s[::-1]\n", True),
    (1, "    return text == text[::-1]\n\n this line is not python", True),
    (1, "    return True\n", False),
    (2, "    while True:\n        pass\n", False),
    (2, "    return list(range(n + 1))\n", False),
]


@pytest.mark.parametrize("index,output,passed", HUMANEVAL_OUTPUTS)
def test_humaneval_pass_at_1(index, output, passed):
    score = get_task("humaneval").score(docs("humaneval")[index], output, OPTS)
    assert score.correct is passed, score.details


def test_humaneval_prompt_and_stop_words():
    task = get_task("humaneval")
    assert base.build_prompts(task, docs("humaneval"), task.num_fewshot)[0] == docs("humaneval")[0]["prompt"]
    assert task.stop_words == () and task.gen_length == 512


def test_sanitize_keeps_what_the_entry_point_reaches():
    code = ("import math\nfrom os import path\n\nTABLE = {1: 2}\n\n\ndef helper(x):\n    return TABLE[x]\n\n\n"
            "def unused():\n    return 0\n\n\ndef noreturn():\n    pass\n\n\ndef f(x):\n    return helper(x)\n\n\n"
            "print(f(1))\nassert False\n")
    out = code_extract.sanitize(code, "f")
    assert out == ("import math\nfrom os import path\nTABLE = {1: 2}\ndef helper(x):\n    return TABLE[x]\n"
                   "def f(x):\n    return helper(x)\n")


def test_longest_valid_span_drops_prose():
    code = "Here is the code\ndef f():\n    return 1\nThat was it, and this is prose again"
    assert code_extract.longest_valid_span(code) == "def f():\n    return 1"


# --- mbpp ------------------------------------------------------------------------------------

MBPP_OUTPUTS = [
    (0, "def square(x):\n    return x * x\n", True),
    (0, "```python\ndef square(x):\n    return x ** 2\n```\nThis squares.", True),
    (0, "def square(x):\n    return x + x\n", False),
    (1, "def reverse(s):\n    return ''.join(reversed(s))", True),
    (1, "def reverse(s):\n    return s", False),
    (2, "def biggest(xs):\n    return sorted(xs)[-1]\n", True),
    (2, "def biggest(xs) return max(xs)", False),  # a syntax error fails
]


@pytest.mark.parametrize("index,output,passed", MBPP_OUTPUTS)
def test_mbpp_pass_at_1(index, output, passed):
    score = get_task("mbpp").score(docs("mbpp")[index], output, OPTS)
    assert score.correct is passed, score.details


def test_mbpp_prompt_with_three_fixed_shots():
    task = get_task("mbpp")
    prompt = base.build_prompts(task, docs("mbpp")[:1], 3)[0]
    assert prompt.startswith("You are an expert Python programmer, and here is your task: Write a function to "
                             "find the similar elements from the given two tuple lists. Your code should pass")
    assert prompt.count("\n[DONE]\n\n") == 3
    assert prompt.endswith("task: Write a function to square a number. Your code should pass these tests:\n\n"
                           "assert square(2) == 4\nassert square(-3) == 9\nassert square(0) == 0\n[BEGIN]\n")
    assert task.stop_words == ("[DONE]",)
