"""The lm-eval adapter: a small local generate_until task run through lm_eval.simple_evaluate."""

import textwrap

import pytest

from d2cache_jax.evaluation import lm_eval_adapter
from tests.evaluation_helpers import FakeGenerator, fixture


def test_requests_are_grouped_by_stop_words_in_order():
    requests = [("a", {"until": ["X"]}), ("b", {"until": "Y"}), ("c", {"until": ["X"]}), ("d", {})]
    assert lm_eval_adapter.group_requests(requests, 1) == [[0], [2], [1], [3]]
    assert lm_eval_adapter.group_requests(requests, 8) == [[0, 2], [1], [3]]


def test_simple_evaluate_on_a_local_task(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    (tmp_path / "tiny_sum.yaml").write_text(textwrap.dedent(f"""\
        task: tiny_sum
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {fixture("gsm8k_test.jsonl")}
        test_split: test
        output_type: generate_until
        doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
        doc_to_target: "{{{{answer.split('#### ')[-1]}}}}"
        generation_kwargs:
          until: ["Question:"]
          do_sample: false
        filter_list:
          - name: flexible
            filter:
              - function: regex
                group_select: -1
                regex_pattern: "(-?[0-9]+)"
              - function: take_first
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
        metadata:
          version: 1.0
        """))
    answers = {"Tom has": "7 apples Question: junk", "A shop": "It sold 1200 pens.", "The temperature": "It is 5"}

    def answer(prompt):
        text = next(a for start, a in answers.items() if prompt.split("Question: ")[-1].startswith(start))
        return text.split("Question:")[0]  # a real generator cuts at the stop words it is given

    fake = FakeGenerator(answer)
    lm = lm_eval_adapter.make_lm(fake, batch_size=2)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    results = lm_eval.simple_evaluate(model=lm, tasks=["tiny_sum"], task_manager=manager, log_samples=False)
    assert results["results"]["tiny_sum"]["exact_match,flexible"] == pytest.approx(2 / 3)
    assert all(until == ("Question:",) for _, until in fake.calls)
    assert sorted(len(prompts) for prompts, _ in fake.calls) == [1, 2] and len(lm.completions) == 3


def test_loglikelihood_is_refused():
    pytest.importorskip("lm_eval")
    with pytest.raises(NotImplementedError, match="generate_until"):
        lm_eval_adapter.make_lm(FakeGenerator(str)).loglikelihood([])
