"""humaneval_instruct and mbpp_instruct: prompts and prefills written out from lm-eval's task yamls,
their scoring in the sandbox, and the chat rendering of a prefilled assistant turn."""

import pytest

from d2cache_jax import tokenizer as tokenizer_lib
from d2cache_jax.evaluation import runner
from d2cache_jax.evaluation.data import load_records
from d2cache_jax.evaluation.tasks import get_task
from d2cache_jax.evaluation.tasks.base import ScoreOptions
from tests.evaluation_helpers import FakeGenerator, fixture

OPTS = ScoreOptions(timeout_s=3.0, memory_mb=512)


def docs(name: str) -> list[dict]:
    return load_records(fixture(f"{name}_test.jsonl"))


def test_humaneval_instruct_prompt_prefix_and_stops():
    task, doc = get_task("humaneval_instruct"), docs("humaneval")[0]
    item = runner.prepare_items(task, [doc], task.num_fewshot)[0]
    assert item.prompt == ("Write a solution to the following problem and make sure that it passes the tests:\n"
                           "```python\n" + doc["prompt"] + "\n```\n")
    assert item.prefix == "Here is the completed function:\n```python\n" + doc["prompt"] + "\n"
    assert task.stop_words == ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


@pytest.mark.parametrize("index,output,passed", [
    (0, "    return a + b\n```\nThis adds the numbers.", True),
    (0, "    return a + b", True),
    (0, "    return a - b\n```", False),
    (0, "```python\n    return a + b\n```", False),  # nothing before the first fence: the stub alone
    (1, "    return text == text[::-1]\n```", True),
])
def test_humaneval_instruct_scoring(index, output, passed):
    score = get_task("humaneval_instruct").score(docs("humaneval")[index], output, OPTS)
    assert score.correct is passed, score.details


def test_mbpp_instruct_prompt_with_prefilled_shots():
    task, doc = get_task("mbpp_instruct"), docs("mbpp")[0]
    item = runner.prepare_items(task, [doc], task.num_fewshot)[0]
    first = ("You are an expert Python programmer, and here is your task:\nWrite a function to find the similar "
             "elements from the given two tuple lists.\nYour code should pass these tests:\n"
             "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n")
    assert item.prompt.startswith(first)
    # each shot: question, then the prefill, the code and a closing fence, then a blank line
    shot_end = "  return largest_nums\n```\n\n"
    assert item.prompt.count("\n```python\n") == 3 and item.prompt.count("\n```\n\n") == 3
    assert item.prompt.endswith(shot_end + "You are an expert Python programmer, and here is your task:\n"
                                "Write a function to square a number.\nYour code should pass these tests:\n"
                                "assert square(2) == 4\nassert square(-3) == 9\nassert square(0) == 0")
    assert "(4, 5)\nassert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\nassert similar_elements(" \
           "(11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n```python\ndef similar_elements(" in item.prompt
    assert item.prefix == "\n```python\n" and task.stop_words == () and task.gen_length == 256


@pytest.mark.parametrize("index,output,code,passed", [
    (0, "def square(x):\n    return x * x\n```\nDone.", "def square(x):\n    return x * x", True),
    (0, "def square(x):\n    return x + x\n```", "def square(x):\n    return x + x", False),
    (0, "def square(x):\n    return x * x", "", False),  # no closing fence: nothing extracted
    (1, "def reverse(s):\n    return s[::-1]\n```\n```python\nprint(1)\n```", "def reverse(s):\n    return s[::-1]",
     True),
])
def test_mbpp_instruct_scoring(index, output, code, passed):
    score = get_task("mbpp_instruct").score(docs("mbpp")[index], output, OPTS)
    assert score.extracted == code and score.correct is passed, score.details


def test_mbpp_instruct_extraction_fixes_lm_eval_first_word_bug():
    from d2cache_jax.evaluation.tasks.mbpp_instruct import extract_code

    out = "def f(x):\n    return x\n```"
    assert extract_code(out) == "def f(x):\n    return x"
    assert extract_code(out, upstream=True) == " f(x):\n    return x"  # lm-eval 0.4.13's reading
    indented = "  x = 1\n```\ntext"  # no word right after the fence: both read the same
    assert extract_code(indented) == extract_code(indented, upstream=True) == "  x = 1"
    assert extract_code("no fence at all") == extract_code("no fence at all", upstream=True) == ""


def _chat_tokenizer():
    """A character tokenizer whose chat template trims contents, as LLaDA's (Llama 3 style) does."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<u>", "<a>", "<e>"]
    vocab = {t: i for i, t in enumerate(specials + ["\n"] + [chr(c) for c in range(32, 127)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<e>"))
    tok.decoder = decoders.Fuse()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<e>")
    fast.chat_template = ("<s>{% for m in messages %}{{ '<u>' if m['role'] == 'user' else '<a>' }}"
                          "{{ m['content'] | trim }}<e>{% endfor %}{% if add_generation_prompt %}<a>{% endif %}")
    return fast


def test_chat_prefill_renders_an_open_assistant_turn():
    tok = _chat_tokenizer()
    plain, prefilled = tokenizer_lib.encode_prompts(tok, ["Q?", "Q?"], chat=True, prefixes=[None, "Here:\n```\n"])
    assert tok.decode(plain) == "<s><u>Q?<e><a>"
    # No end of turn; the template trims contents, so (as transformers renders it for lm-eval) the
    # prefill's trailing newline goes too.
    assert tok.decode(prefilled) == "<s><u>Q?<e><a>Here:\n```"
    tok.chat_template = tok.chat_template.replace(" | trim", "")
    kept = tokenizer_lib.encode_prompts(tok, ["Q?"], chat=True, prefixes=["Here:\n```\n"])[0]
    assert tok.decode(kept) == "<s><u>Q?<e><a>Here:\n```\n"
    base = tokenizer_lib.encode_prompts(tok, ["Q?"], chat=False, prefixes=["A:"])[0]
    assert tok.decode(base) == "<s>Q?A:"


def test_runner_passes_prefixes_and_keeps_generated_text_only(tmp_path):
    task = get_task("humaneval_instruct")
    items = runner.prepare_items(task, docs("humaneval")[:2], 0)
    seen = []

    class Gen(FakeGenerator):
        def generate(self, prompts, until=(), prefixes=None):
            seen.append(list(prefixes))
            return super().generate(prompts, until)

    gen = Gen(lambda p: "    return a + b\n```" if "def add" in p else "    return True\n```")
    out = runner.run_evaluation(task, items, gen, str(tmp_path), batch_size=2, progress=False)
    assert seen == [[item.prefix for item in runner.length_sorted(items, gen)]]
    records = runner.read_samples(str(tmp_path / runner.SAMPLES_FILE))
    assert [r["prefix"] for r in records] == [item.prefix for item in items]
    assert out["accuracy"] == 0.5
