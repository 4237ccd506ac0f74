"""The long-answer synthetic task (`tasks/trace.py`): answers re-derived here from their definitions,
disjoint splits, canvas fit, the tokenizer files, the evaluation task and the trainer's batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from d2cache_jax.evaluation import defaults
from d2cache_jax.evaluation.tasks import get_task
from d2cache_jax.evaluation.tasks import trace as task
from d2cache_jax.evaluation.tasks.base import ScoreOptions
from experiments import train_tiny

ALPHA = "abcdefghijklmnopqrstuvwxyz"


def _reference(prompt: str) -> str:
    """The answer of a prompt, straight from the task's definition (written apart from the generator)."""
    if prompt[0] == "E":
        x, y, word = prompt[1], prompt[3], prompt[5:]
        edited = "".join(y if c == x else c for c in word)
        shifted = "".join(ALPHA[(ALPHA.index(c) + 1) % 26] for c in edited)
        lines = [edited, edited.upper(), shifted, shifted.upper()]
    elif prompt[0] == "W":
        pairs, start = prompt[1:-2], prompt[-1]
        nxt = {pairs[i]: pairs[i + 1] for i in range(0, len(pairs), 2)}
        walk, x = [], start
        for _ in range(192):
            x = nxt[x]
            walk.append(x)
        lines = ["".join(walk[i:i + 16]) for i in range(0, 192, 16)]
    else:
        assert prompt[:2] == "S:"
        row, lines = [int(c) for c in prompt[2:]], []
        for _ in range(4):
            acc, new = 0, []
            for v in row:
                acc = (acc + v) % 10
                new.append(acc)
            row = new
            lines.append("".join(map(str, row)))
    return "".join(line + ";" for line in lines)


def test_answers_match_their_definition_and_fit_the_canvas():
    items = task.make_items("train", 300) + task.make_items("eval", 300)
    assert {it.kind for it in items} == set(task.KINDS)
    for it in items:
        assert it.answer == _reference(it.prompt)
        assert 128 <= len(it.answer) <= 256 and len(it.answer) + 1 <= task.GEN_LENGTH
        assert len(it.answer) > 3 * task.BLOCK_LENGTH  # the answer spans at least four blocks
        assert len(task.encode_prompt(it)) <= task.MAX_PROMPT_LEN
        assert task.UNK_ID not in task.encode(it.prompt + it.answer)
        if it.kind == "walk":  # every pair of the prompt is used: the walk visits all 12 keys
            assert set(it.answer.replace(";", "")) == set(it.prompt[1:-2])
    assert task.VOCAB_SIZE >= 64


def test_every_kind_depends_on_the_whole_prompt():
    """Changing any one character of the prompt's data changes the answer."""
    rng = np.random.default_rng(0)
    for it in task.make_items("eval", 60):
        if it.kind == "edit":
            start, chars = 5, ALPHA
        elif it.kind == "sums":
            start, chars = 2, "0123456789"
        else:  # swap the targets of two pairs: still a map of the keys, but a different walk
            p = list(it.prompt)
            i, j = rng.choice(np.arange(2, 2 + 2 * task.WALK_KEYS, 2), size=2, replace=False)
            p[i], p[j] = p[j], p[i]
            assert _reference("".join(p)) != it.answer
            continue
        for pos in range(start, len(it.prompt)):
            p = list(it.prompt)
            p[pos] = rng.choice([c for c in chars if c not in (p[pos], it.prompt[1], it.prompt[3])])
            assert _reference("".join(p)) != it.answer, (it.prompt, pos)


def test_splits_are_disjoint():
    assert task.make_items("eval", 30, 0) == task.make_items("eval", 30, 0)
    assert task.make_items("eval", 30, 0) != task.make_items("eval", 30, 1)
    train, held_out = task.make_items("train", 3000), task.make_items("eval", 300)
    lo, _ = task.EVAL_SEED_RANGE
    assert task.TRAIN_SEED_RANGE[1] <= lo and all(it.seed >= lo for it in held_out)
    assert not {it.prompt for it in train} & {it.prompt for it in held_out}
    import zlib

    assert all(zlib.crc32(it.prompt.encode()) % 16 == 0 for it in held_out)
    assert all(zlib.crc32(it.prompt.encode()) % 16 != 0 for it in train)
    with pytest.raises(ValueError):
        task.item_from_seed(lo, "train")


def test_tokenizer_files_encode_like_the_task(tmp_path):
    from transformers import AutoTokenizer

    task.save_tokenizer(str(tmp_path))
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(tok) == task.VOCAB_SIZE
    assert (tok.mask_token_id, tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (
        task.MASK_ID, task.EOS_ID, task.PAD_ID, task.BOS_ID)
    for it in task.make_items("eval", 15):
        text = it.prompt + it.answer
        ids = tok(text)["input_ids"]
        assert ids == task.encode(text) and tok.decode(ids) == text == task.decode(ids)


def test_evaluation_task_scores_every_token():
    t = get_task("trace")
    assert t.default_checkpoint == "tiny_trace" and t.gen_length == 256 and not t.needs_data
    docs = t.make_docs(6, 0)
    for d in docs:
        good = t.score(d, d["answer"] + "<|endoftext|>", ScoreOptions())
        assert good.correct and good.details["token_acc"] == 1.0 and good.details["kind"] == d["kind"]
        i = len(d["answer"]) // 2
        bad = d["answer"][:i] + ("0" if d["answer"][i] != "0" else "1") + d["answer"][i + 1:]
        s = t.score(d, bad, ScoreOptions())
        assert not s.correct and s.details["token_acc"] == 1 - 1 / len(d["answer"])
        assert not t.score(d, d["answer"][:-1], ScoreOptions()).correct
    # Every cache runs the task's 32-token blocks over the 256-token canvas.
    for cache in ("none", "prefix", "dual", "dllm", "d2cache"):
        opts = defaults.generation_defaults("trace", t.gen_length, "llada", False, cache, None, t.block_length)
        assert (opts["gen_length"], opts["block_length"]) == (256, 32)


def test_trainer_batches_for_the_task():
    b = train_tiny.train_batch(0, 3, 12, 16, "trace")
    assert b["tokens"].shape == (12, task.MAX_PROMPT_LEN + task.GEN_LENGTH)
    assert all(np.array_equal(b[k], v) for k, v in train_tiny.train_batch(0, 3, 12, 16, "trace").items())
    items = task.make_items("train", 3 * 12 + 12)[36:]
    for row, plen, it in zip(b["tokens"], b["prompt_len"], items):
        assert plen == len(it.prompt) + 1
        assert task.decode(row[1:plen]) == it.prompt and task.decode(row[plen:]) == it.answer
    cfg = train_tiny.model_config(d_model=32, n_layers=1, n_heads=2, mlp_hidden=64, task="trace")
    assert cfg.vocab_size == task.VOCAB_SIZE and cfg.max_seq_len >= b["tokens"].shape[1]
    n = train_tiny.add_noise(cfg, jax.tree.map(jnp.asarray, b), jax.random.key(0))
    assert not np.asarray(n.masked)[np.arange(b["tokens"].shape[1])[None] < b["prompt_len"][:, None]].any()
    with pytest.raises(ValueError, match="unknown training task"):
        train_tiny.model_config(task="nope")
