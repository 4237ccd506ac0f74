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
        k, word = int(prompt[1]), prompt[3:]
        first = "".join(ALPHA[(ALPHA.index(c) + k) % 26] for c in word)
        third = "".join(ALPHA[(ALPHA.index(c) + 2 * k) % 26] for c in word)
        lines = [first, first.upper(), third.upper(), third]
    else:
        assert prompt[:2] == "C:"
        total, first = 0, []
        for c in prompt[2:]:
            total = (total + 1) % 10 if c == "1" else total
            first.append(total)
        lines = ["".join(str((v + j) % 10) for v in first) for j in range(5)]
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
    assert task.VOCAB_SIZE >= 64


def test_every_kind_depends_on_the_whole_prompt():
    """Changing any one character of the prompt's data (the shift, a letter, a bit) changes the answer."""
    rng = np.random.default_rng(0)
    for it in task.make_items("eval", 40):
        positions = [1, *range(3, len(it.prompt))] if it.kind == "edit" else range(2, len(it.prompt))
        for pos in positions:
            p = list(it.prompt)
            chars = "123" if (it.kind == "edit" and pos == 1) else ALPHA if it.kind == "edit" else "01"
            p[pos] = rng.choice([c for c in chars if c != p[pos]])
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


def test_block_noise_is_the_state_a_block_decoder_sees():
    """block_mask=1: answer blocks before one block are clean, that block is masked at rate t, every later
    answer position is masked, and only that block's masked positions carry loss (weight 1/t/len)."""
    b = jax.tree.map(jnp.asarray, train_tiny.train_batch(0, 5, 64, 4, "trace"))
    cfg = train_tiny.model_config(d_model=32, n_layers=1, n_heads=2, mlp_hidden=64, task="trace")
    n = train_tiny.add_noise(cfg, b, jax.random.key(3), block_mask=1.0, block_length=32)
    masked, weight, t = np.asarray(n.masked), np.asarray(n.weight), np.asarray(n.t)
    blocks_seen = set()
    for r in range(64):
        plen, vlen = int(b["prompt_len"][r]), int(b["valid_len"][r])
        row = masked[r, plen:vlen]
        assert not masked[r, :plen].any() and not masked[r, vlen:].any()
        scored = np.flatnonzero(weight[r, plen:vlen])
        if not row.any():  # the last block drawn, and its coin masked nothing
            assert not len(scored)
            continue
        # The drawn block: the one scored, or (when its coin masked nothing) the one before the suffix.
        blk = scored[0] // 32 if len(scored) else int(np.argmax(row)) // 32 - 1
        blocks_seen.add(blk)
        end = min((blk + 1) * 32, vlen - plen)
        assert not row[:blk * 32].any() and row[end:].all()
        np.testing.assert_array_equal(scored, np.flatnonzero(row[:end]))
        assert (scored // 32 == blk).all()
        np.testing.assert_allclose(weight[r, plen + scored], 1 / t[r] / (end - blk * 32), rtol=1e-5)
    assert len(blocks_seen) >= 5  # the block is drawn over the whole answer
    # block_mask=0 is LLaDA's uniform process, drawn as before block noise existed: t from the first
    # half of the key, each answer position's coin from the second.
    u = train_tiny.add_noise(cfg, b, jax.random.key(3))
    k_t, k_m = jax.random.split(jax.random.key(3))
    t_ref = np.asarray(jax.random.uniform(k_t, (64,), minval=1e-3, maxval=1.0))
    coin = np.asarray(jax.random.uniform(k_m, b["tokens"].shape)) < t_ref[:, None]
    np.testing.assert_array_equal(np.asarray(u.masked), coin & np.asarray(u.answer))
    assert abs(np.asarray(u.masked).sum() / np.asarray(u.answer).sum() - np.asarray(u.t).mean()) < 0.05


@pytest.mark.slow
def test_trainer_block_greedy_matches_generate():
    """The trainer's held-out check decodes in the task's blocks: same tokens as `d2cache_jax.generate`
    (no cache, vanilla, block 32), an independent implementation of semi-AR low-confidence decoding."""
    import d2cache_jax
    from d2cache_jax.cli import ASSETS_DIR

    cfg, params = d2cache_jax.load(f"{ASSETS_DIR}/tiny_trace")
    items = task.make_items("eval", 4)
    prompts = [task.encode_prompt(it) for it in items]
    ours = train_tiny.greedy_generate(cfg, params, prompts, task.GEN_LENGTH, block_length=task.BLOCK_LENGTH)
    ref = d2cache_jax.generate(cfg, params, prompts, **task.GENERATION_DEFAULTS, cache="none", decoder="vanilla")
    for mine, theirs in zip(ours, ref.tokens):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs)[:len(mine)])


@pytest.mark.slow
def test_stale_kv_training_scores_a_block_as_the_dual_cache_decodes_it():
    """--stale_kv: the first sequences' block logits are those of the dual cache's in-block step (its
    full pass at the block's start with the block all masked, then the block's rows over those frozen
    states), which differ from a fresh full pass over the same canvas. --stale_first: the prompt and
    suffix rows are instead those of the first step's pass over the all-masked answer (d2Cache's)."""
    from d2cache_jax import model
    from d2cache_jax.cache import prefix
    from d2cache_jax.generation.options import make_options
    from d2cache_jax.generation.state import init_state
    from d2cache_jax.params import init_params

    p_len, g_len, bl = 40, 96, 32
    cfg = train_tiny.model_config(d_model=32, n_layers=2, n_heads=2, mlp_hidden=64, task="trace")
    params = init_params(cfg, jax.random.key(1))
    rng = np.random.default_rng(0)
    batch = dict(tokens=jnp.asarray(rng.integers(4, cfg.vocab_size, (3, p_len + g_len)), jnp.int32),
                 prompt_len=jnp.full((3,), p_len, jnp.int32), valid_len=jnp.full((3,), p_len + g_len, jnp.int32))
    opts = make_options(gen_length=g_len, block_length=bl, steps=g_len, cache="dual")
    blocks = set()
    for seed in range(2):  # these two keys draw every block
        n = train_tiny.add_noise(cfg, batch, jax.random.key(seed), block_mask=0.0, block_length=bl, n_block=3)
        logits, idx = train_tiny.stale_block_logits(cfg, params, n, bl)
        logits_first, _ = train_tiny.stale_block_logits(cfg, params, n, bl, n_first=3)
        for r in range(3):
            block = (int(n.block_start[r]) - p_len) // bl
            blocks.add(block)
            np.testing.assert_array_equal(np.asarray(idx[r]), p_len + block * bl + np.arange(bl))
            prompt, canvas = np.asarray(batch["tokens"][r:r + 1, :p_len]), np.asarray(n.noisy[r:r + 1])
            at_start = canvas.copy()
            at_start[:, p_len + block * bl:p_len + (block + 1) * bl] = cfg.mask_token_id
            state = init_state(cfg, opts, prompt, np.ones_like(prompt, bool),
                               prefix.init(cfg, opts, 1, p_len + g_len), jax.random.key(0))
            first_kv = prefix.forward(cfg, opts, params, state).cache  # the all-masked answer's pass
            state = state.replace(tokens=jnp.asarray(at_start), block=jnp.int32(block))
            state = state.replace(cache=prefix.forward(cfg, opts, params, state).cache)  # the block's first step
            in_block = state.replace(tokens=jnp.asarray(canvas), block_step=jnp.int32(3))
            ref = model.head(params, cfg, prefix.forward(cfg, opts, params, in_block).hidden)
            np.testing.assert_allclose(np.asarray(logits[r]), np.asarray(ref[0]), rtol=2e-4, atol=2e-4)
            rows = np.arange(p_len + g_len)
            old = jnp.asarray(((rows < p_len) | (rows >= p_len + (block + 1) * bl))[None, None, :, None, None])
            mixed = jax.tree.map(lambda a0, a1, o=old: jnp.where(o, a0, a1), first_kv, state.cache)
            ref_first = model.head(params, cfg, prefix.forward(cfg, opts, params, in_block.replace(cache=mixed)).hidden)
            np.testing.assert_allclose(np.asarray(logits_first[r]), np.asarray(ref_first[0]), rtol=2e-4, atol=2e-4)
            if block:  # block 0 starts from the all-masked answer: the two stalenesses coincide
                assert np.abs(np.asarray(ref_first[0]) - np.asarray(ref[0])).max() > 1e-2
            fresh = model.forward(cfg, params, canvas)[0, p_len + block * bl:p_len + (block + 1) * bl]
            assert np.abs(np.asarray(fresh) - np.asarray(ref[0])).max() > 1e-2
    assert blocks == {0, 1, 2}
