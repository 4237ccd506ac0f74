"""The evaluation loop with a fake generator: records, metrics, resume, sharding and the CLI's checks."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from d2cache_jax.evaluation import metrics, runner
from d2cache_jax.evaluation.data import load_records
from d2cache_jax.evaluation.generator import Completion, completions_from_result, cut_at_stop_words
from d2cache_jax.evaluation.tasks import get_task
from d2cache_jax.evaluation.tasks.base import ScoreOptions
from tests.evaluation_helpers import FakeGenerator, fixture, last_question

# Known gsm8k outputs by question start: two right (one only by the flexible filter), one wrong.
GSM8K_ANSWERS = {"Tom has": "3 + 4 = 7.\n#### 7", "A shop": "So 1,200 pens.", "The temperature": "#### 5"}


def gsm8k_answer(prompt):
    question = last_question(prompt, "Question: ")
    return next(text for start, text in GSM8K_ANSWERS.items() if question.startswith(start))


def gsm8k_items(limit=None, shard=(0, 1)):
    docs = load_records(fixture("gsm8k_test.jsonl"))[:limit]
    pool = load_records(fixture("gsm8k_train.jsonl"))
    return runner.prepare_items(get_task("gsm8k"), docs, 5, pool, 42, shard)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_gsm8k_run_writes_samples_and_metrics(tmp_path):
    gen = FakeGenerator(gsm8k_answer, num_tokens=12, steps=4, wall_s=0.5, forward_passes=4)
    result = runner.run_evaluation(get_task("gsm8k"), gsm8k_items(), gen, str(tmp_path), progress=False)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["accuracy_strict_match"] == pytest.approx(1 / 3)
    assert result["accuracy_flexible_extract"] == pytest.approx(2 / 3)
    assert result["throughput_tok_s"] == pytest.approx(24.0)  # 12 tokens in 0.5 s
    assert result["tokens_per_step"] == pytest.approx(3.0) and result["forward_passes"] == 4
    assert result["latency_s"] == pytest.approx(0.5) and result["complete"] and result["num_samples"] == 3
    assert result["peak_host_rss_gb"] > 0
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert [s["index"] for s in samples] == [0, 1, 2] and [s["correct"] for s in samples] == [True, True, False]
    assert samples[2]["extracted"] == "5"
    assert samples[0]["prompt"].endswith("How many apples does he have now?\nAnswer:")
    assert samples[0]["stats"]["num_tokens"] == 12
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy"] == pytest.approx(2 / 3)
    assert all(until == ("Question:", "</s>", "<|im_end|>") for _, until in gen.calls)


@pytest.mark.parametrize("task,answers", [
    ("math500", ["$\\boxed{\\frac{14}{3}}$", "$\\boxed{(3, \\pi)}$", "The final answer is $\\text{Evelyn}$.",
                 "$\\boxed{10}$"]),
    ("humaneval", ["    return a + b\n", "    return text == text[::-1]\n", "    return [n]\n"]),
    ("mbpp", ["def square(x):\n    return x * x\n", "def reverse(s):\n    return s\n",
              "```python\ndef biggest(xs):\n    return max(xs)\n```"]),
])
def test_each_task_end_to_end(tmp_path, task, answers):
    t = get_task(task)
    docs = load_records(fixture(f"{task}_test.parquet"))
    items = runner.prepare_items(t, docs, t.num_fewshot)
    by_prompt = {item.prompt: answers[item.index] for item in items}
    result = runner.run_evaluation(t, items, FakeGenerator(by_prompt.__getitem__), str(tmp_path), batch_size=2,
                                   score_options=ScoreOptions(timeout_s=3.0, memory_mb=512), progress=False)
    # math500's verdict is Minerva's: "The final answer is X." without "Final Answer:" is not read
    # (math-verify, reported beside it, reads it).
    expected = {"math500": [True, False, False, True], "humaneval": [True, True, False],
                "mbpp": [True, False, True]}[task]
    assert [s["correct"] for s in read_jsonl(tmp_path / "samples.jsonl")] == expected
    assert result["accuracy"] == pytest.approx(sum(expected) / len(expected))
    if task == "math500":
        assert result["accuracy_minerva"] == pytest.approx(0.5)
        assert result["accuracy_math_verify"] == pytest.approx(0.75)


class Interrupted(Exception):
    pass


def test_resume_after_an_interruption(tmp_path):
    calls = []

    def flaky(prompt):
        calls.append(prompt)
        if len(calls) == 2:
            raise Interrupted
        return gsm8k_answer(prompt)

    with pytest.raises(Interrupted):
        runner.run_evaluation(get_task("gsm8k"), gsm8k_items(), FakeGenerator(flaky), str(tmp_path), progress=False)
    assert len(read_jsonl(tmp_path / "samples.jsonl")) == 1 and not (tmp_path / "metrics.json").exists()
    with open(tmp_path / "samples.jsonl", "a") as f:
        f.write('{"index": 1, "prompt": "cut off mid-wri')  # a write the interruption cut short
    again = FakeGenerator(gsm8k_answer)
    result = runner.run_evaluation(get_task("gsm8k"), gsm8k_items(), again, str(tmp_path), progress=False)
    assert sum(len(prompts) for prompts, _ in again.calls) == 2  # only the two missing samples
    assert result["num_samples"] == 3 and result["accuracy"] == pytest.approx(2 / 3)
    assert [s["index"] for s in read_jsonl(tmp_path / "samples.jsonl")] == [0, 1, 2]


def test_resume_with_other_settings_is_refused(tmp_path):
    gen = FakeGenerator(gsm8k_answer)
    runner.run_evaluation(get_task("gsm8k"), gsm8k_items(), gen, str(tmp_path), run_config={"cache": "none"},
                          progress=False)
    with pytest.raises(ValueError, match="cache: 'none' -> 'd2cache'"):
        runner.run_evaluation(get_task("gsm8k"), gsm8k_items(), gen, str(tmp_path),
                              run_config={"cache": "d2cache"}, progress=False)


def test_shards_see_the_same_prompts_as_a_whole_run():
    whole = gsm8k_items()
    parts = gsm8k_items(shard=(0, 2)) + gsm8k_items(shard=(1, 2))
    assert parts == whole and [i.index for i in gsm8k_items(shard=(1, 2))] == [1, 2]


def test_metrics_are_means_over_batches():
    def record(batch, tokens, wall, size, correct, steps=4, tps=None):
        return {"correct": correct, "details": {}, "stats": {"batch": batch, "num_tokens": tokens, "wall_s": wall,
                                                              "batch_size": size, "forward_passes": 8,
                                                              "steps": steps, "tokens_per_step": tps}}

    records = [record(0, 10, 2.0, 2, True), record(0, 30, 2.0, 2, False), record(2, 8, 1.0, 1, True, tps=1.0)]
    m = metrics.compute_metrics(records)
    assert m["throughput_tok_s"] == pytest.approx((40 / 2.0 + 8 / 1.0) / 2)
    assert m["throughput_total_tok_s"] == pytest.approx(48 / 3.0)
    assert m["latency_s"] == pytest.approx((1.0 + 1.0) / 2)
    assert m["tokens_per_step"] == pytest.approx((2.5 + 7.5 + 1.0) / 3)
    assert m["forward_passes"] == 8 and m["forward_passes_total"] == 16
    assert m["accuracy"] == pytest.approx(2 / 3) and m["total_generation_s"] == pytest.approx(3.0)


class CharTokenizer:
    """A tokenizer over characters with one special token, enough for final-text decoding."""

    eos_token = "<e>"

    def __len__(self):
        return 1000

    def decode(self, ids, skip_special_tokens=False):
        return "".join("" if (i == 0 and skip_special_tokens) else ("<e>" if i == 0 else chr(i)) for i in ids)

    def encode(self, text, add_special_tokens=False):
        out, i = [], 0
        while i < len(text):
            if text.startswith("<e>", i):
                out.append(0)
                i += 3
            else:
                out.append(ord(text[i]))
                i += 1
        return out


class FakeResult:
    def __init__(self, texts, lengths, stats):
        width = max(len(t) for t in texts)
        self.tokens = np.array([[ord(c) for c in t] + [0] * (width - len(t)) for t in texts], np.int32)
        self.lengths = np.array(lengths, np.int32)
        self.stats = stats


def test_completions_from_a_generate_result():
    result = FakeResult(["12 apples\nQuestion: next", "abc"], [22, 0],
                        {"steps": 9, "steps_per_seq": [9, 3], "forward_passes": 9, "wall_s": 1.5, "compile_s": 7.0})
    first, second = completions_from_result(result, CharTokenizer(), ("Question:",), {})
    assert first == Completion("12 apples\n", 22, 9, 9, 1.5, 22 / 9, {"compile_s": 7.0, "stop_index": 22})
    assert second.text == "" and second.num_tokens == 0 and second.steps == 3
    quirk = completions_from_result(result, CharTokenizer(), (), {"upstream_compat": True})[1]
    assert quirk.num_tokens == 24  # upstream: an EOS at index 0 counts as all gen_length (24) tokens


def test_ids_beyond_the_tokenizer_end_the_text():
    result = FakeResult(["ab" + chr(1500) + "cd"], [5], {"steps": 5, "forward_passes": 5, "wall_s": 1.0})
    (completion,) = completions_from_result(result, CharTokenizer(), (), {})
    assert completion.text == "ab" and completion.num_tokens == 2


def test_cut_at_stop_words_takes_the_earliest():
    assert cut_at_stop_words("a [DONE] b Question: c", ("Question:", "[DONE]")) == "a "
    assert cut_at_stop_words("abc", ()) == "abc"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.evaluate", *args], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=300)


def test_cli_flag_errors_are_clear(tmp_path):
    done = run_cli("--task=nope", f"--output_dir={tmp_path}", f"--checkpoint={tmp_path}")
    assert done.returncode != 0 and "unknown task 'nope'" in done.stderr
    done = run_cli("--task=gsm8k", f"--output_dir={tmp_path}", f"--checkpoint={tmp_path}", "--shard=3/2",
                   f"--data={fixture('gsm8k_test.jsonl')}")
    assert done.returncode != 0 and "shard '3/2'" in done.stderr
    done = run_cli("--task=gsm8k", f"--output_dir={tmp_path}", f"--checkpoint={tmp_path / 'missing'}")
    assert done.returncode != 0 and "--checkpoint must be a checkpoint directory" in done.stderr
    done = run_cli("--task=gsm8k", f"--output_dir={tmp_path}")
    assert done.returncode == 2 and "--checkpoint is required for task 'gsm8k'" in done.stderr
    assert "synthetic, trace default to a shipped model" in done.stderr
    done = run_cli("--task=mbpp", f"--output_dir={tmp_path}", f"--checkpoint={tmp_path}",
                   f"--data={fixture('gsm8k_test.jsonl')}")
    assert done.returncode != 0 and "record 0 lacks ['text', 'test_list']" in done.stderr
    assert "Traceback" not in done.stderr
