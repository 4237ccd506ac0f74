"""ModelGenerator and the evaluate CLI on a tiny random LLaDA checkpoint (outputs are noise; the plumbing is not)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from d2cache_jax.evaluation import runner
from d2cache_jax.evaluation.data import load_records
from d2cache_jax.evaluation.generator import ModelGenerator, cut_at_stop_words
from d2cache_jax.evaluation.tasks import get_task
from tests.evaluation_helpers import fixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = {"gen_length": 8, "steps": 4, "block_length": 8}


def save_char_tokenizer(out: str, vocab_size: int) -> None:
    """A character tokenizer filling the tiny model's whole vocabulary, specials at hf_fixtures' ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tests import hf_fixtures

    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    vocab = {t: i for i, t in enumerate(chars)}
    specials = {"<unk>": hf_fixtures.BOS_ID - 1, "<bos>": hf_fixtures.BOS_ID, "<eos>": hf_fixtures.EOS_ID,
                "<mask>": hf_fixtures.MASK_ID}
    vocab.update({f"<f{i}>": i for i in range(len(chars), vocab_size) if i not in specials.values()})
    vocab.update(specials)
    assert sorted(vocab.values()) == list(range(vocab_size))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(specials))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<eos>",
                            unk_token="<unk>", mask_token="<mask>").save_pretrained(out)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random LLaDA in the published layout with a character tokenizer over its 128 ids."""
    from tests import hf_fixtures

    out = str(tmp_path_factory.mktemp("ckpt") / "tiny-llada-base")
    config = hf_fixtures.llada_config_json(max_sequence_length=512)
    hf_fixtures.write_published(hf_fixtures.reference("llada"), "llada", out, config=config)
    os.remove(os.path.join(out, "chat_template.jinja"))
    save_char_tokenizer(out, hf_fixtures.VOCAB)
    return out


def test_model_generator_matches_direct_generate_and_runs_an_evaluation(checkpoint, tmp_path):
    import d2cache_jax

    gen = ModelGenerator(checkpoint, OPTIONS, chat=False)
    prompts = ["Question: 12+34=", "Question: 5+6="]
    completions = gen.generate(prompts, until=("9",))
    ids = gen._encode(gen.tokenizer, prompts, chat=False)
    direct = d2cache_jax.generate(gen.config, gen.params, ids, **OPTIONS)
    assert np.asarray(direct.tokens).shape == (2, 8)
    for row, completion in enumerate(completions):
        n = int(direct.lengths[row])
        text = gen.tokenizer.decode(direct.tokens[row, :n].tolist(), skip_special_tokens=True)
        assert completion.text == cut_at_stop_words(text, ("9",))
        assert completion.num_tokens == n and 0 <= n <= 8 and completion.wall_s > 0
        assert completion.steps >= 1 and completion.forward_passes >= 1

    task = get_task("gsm8k")
    items = runner.prepare_items(task, load_records(fixture("gsm8k_test.jsonl"))[:2], 0)
    result = runner.run_evaluation(task, items, gen, str(tmp_path), batch_size=2, progress=False)
    assert result["num_samples"] == 2 and result["complete"] and 0.0 <= result["accuracy"] <= 1.0
    assert result["throughput_tok_s"] is not None and result["forward_passes"] >= 1


@pytest.mark.slow
def test_cli_end_to_end(checkpoint, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "experiments.evaluate", "--task=gsm8k", f"--data={fixture('gsm8k_test.parquet')}",
           f"--checkpoint={checkpoint}", f"--output_dir={out}", "--num_fewshot=0", "--limit=2", "--shard=1/2",
           "--gen_length=8", "--steps=4", "--noprogress"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 1 and metrics["config"]["shard"] == [1, 2]
    assert metrics["config"]["generation"]["gen_length"] == 8 and metrics["config"]["model_kind"] == "base"
    assert metrics["config"]["generation"]["block_length"] == 8  # base model: block = gen_length
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["index"] for s in samples] == [1] and samples[0]["prompt"].startswith("Question: A shop")
