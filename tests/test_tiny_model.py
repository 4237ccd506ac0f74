"""The tiny trained model: objective, tokenizer, task generator and the shipped asset's accuracy."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from d2cache_jax.cli import InputError
from d2cache_jax.config import read_hf_config
from d2cache_jax.evaluation.tasks import synthetic as task
from experiments import train_tiny

ASSET = os.path.join(os.path.dirname(os.path.dirname(__file__)), "d2cache_jax", "assets", "tiny_arith")
N_HELD_OUT = 40
# Measured with greedy one-token-per-step decoding, no cache: 40/40 on these items with the trainer's
# loop, 199/200 on the first 200 with `generate` (docs/tiny_model.md). The floor sits a little under.
ACC_FLOOR = 0.9


def test_few_steps_lower_the_loss():
    cfg = train_tiny.model_config(d_model=32, n_layers=1, n_heads=2, mlp_hidden=64)
    opt = train_tiny.make_optimizer(3e-3, 5, 40, 0.0)
    params = train_tiny.init_params(cfg, jax.random.key(0), randomize_norms=False)
    state = dict(params=params, opt_state=opt.init(params))
    probe = jax.tree.map(jnp.asarray, train_tiny.train_batch(1, 0, 32, 4))
    keys = jax.random.split(jax.random.key(3), 4)
    probe_loss = lambda p: np.mean([float(train_tiny.diffusion_loss(cfg, p, probe, k)[0]) for k in keys])
    before = probe_loss(state["params"])
    for step in range(25):
        batch = jax.tree.map(jnp.asarray, train_tiny.train_batch(0, step, 16, 4))
        state, m = train_tiny.train_step(cfg, opt, 1e-3, state, batch, jax.random.key(step))
        assert np.isfinite(float(m["loss"]))
    after = probe_loss(state["params"])
    assert after < 0.7 * before, (before, after)


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    kw = dict(model=dict(d_model=32, n_layers=1, n_heads=2, mlp_hidden=64), batch_size=4, warmup=2,
              ckpt_every=2, progress=False)
    _, straight = train_tiny.train(str(tmp_path / "a"), 4, **kw)
    train_tiny.train(str(tmp_path / "b"), 4, stop_after=2, **kw)  # interrupted after the step-2 save
    _, resumed = train_tiny.train(str(tmp_path / "b"), 4, **kw)
    for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # A run directory already past --steps is refused, not silently exported as the earlier step.
    with pytest.raises(InputError, match="holds a checkpoint at step 4, past --steps=3"):
        train_tiny.train(str(tmp_path / "b"), 3, **kw)


def test_noise_masks_only_answer_tokens_at_rate_t():
    cfg = train_tiny.model_config(d_model=32, n_layers=1, n_heads=2, mlp_hidden=64)
    batch = jax.tree.map(jnp.asarray, train_tiny.train_batch(0, 0, 256, 4))
    n = train_tiny.add_noise(cfg, batch, jax.random.key(0))
    tokens, masked = np.asarray(batch["tokens"]), np.asarray(n.masked)
    pos = np.arange(tokens.shape[1])[None]
    answer = (pos >= np.asarray(batch["prompt_len"])[:, None]) & (pos < np.asarray(batch["valid_len"])[:, None])
    np.testing.assert_array_equal(np.asarray(n.answer), answer)
    assert not (masked & ~answer).any()  # prompt and truncated tail never masked
    np.testing.assert_array_equal(np.asarray(n.noisy), np.where(masked, task.MASK_ID, tokens))
    t = np.asarray(n.t)
    assert ((t >= 1e-3) & (t < 1)).all()
    rate = masked.sum(1) / answer.sum(1)
    assert abs(np.mean(rate - t)) < 0.02 and np.corrcoef(rate, t)[0, 1] > 0.95


def test_loss_ignores_positions_past_the_valid_length():
    cfg = train_tiny.model_config(d_model=32, n_layers=1, n_heads=2, mlp_hidden=64)
    params = train_tiny.init_params(cfg, jax.random.key(0), randomize_norms=False)
    batch = jax.tree.map(jnp.asarray, train_tiny.train_batch(0, 0, 4, 4))
    batch["valid_len"] = jnp.full((4,), batch["tokens"].shape[1] - 3, jnp.int32)
    other = dict(batch, tokens=batch["tokens"].at[:, -3:].set(task.VOCAB["1"]))
    key = jax.random.key(1)
    np.testing.assert_allclose(float(train_tiny.diffusion_loss(cfg, params, batch, key)[0]),
                               float(train_tiny.diffusion_loss(cfg, params, other, key)[0]), rtol=1e-6)


def test_train_batches_are_pure_functions_of_seed_and_step():
    a, b = train_tiny.train_batch(0, 5, 8, 8), train_tiny.train_batch(0, 5, 8, 8)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["tokens"], train_tiny.train_batch(0, 6, 8, 8)["tokens"])
    toks, plen = a["tokens"], a["prompt_len"]
    assert (toks[:, 0] == task.BOS_ID).all() and (toks[:, -1] == task.EOS_ID).all()
    assert (toks != task.MASK_ID).all() and (plen <= task.MAX_PROMPT_LEN).all()


def test_tokenizer_round_trips_through_transformers(tmp_path):
    from transformers import AutoTokenizer

    task.save_tokenizer(str(tmp_path))
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert (tok.mask_token_id, tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (
        task.MASK_ID, task.EOS_ID, task.PAD_ID, task.BOS_ID)
    assert len(tok) == task.VOCAB_SIZE
    for it in task.make_items("train", 20) + task.make_items("eval", 20):
        text = it.prompt + it.answer
        ids = tok(text)["input_ids"]
        assert ids == task.encode(text)
        assert tok.decode(ids) == text
        assert task.decode(ids) == text
        assert tok.decode([task.BOS_ID] + ids + [task.EOS_ID] * 3, skip_special_tokens=True) == text


def test_task_generator_is_deterministic_and_splits_are_disjoint():
    assert task.make_items("eval", 30, 0) == task.make_items("eval", 30, 0)
    assert task.make_items("eval", 30, 0) != task.make_items("eval", 30, 1)
    train, held_out = task.make_items("train", 3000), task.make_items("eval", 300)
    lo, hi = task.EVAL_SEED_RANGE
    assert all(lo <= it.seed < hi for it in held_out)
    assert not {it.seed for it in train} & {it.seed for it in held_out}
    assert task.TRAIN_SEED_RANGE[1] <= lo
    # The problems themselves are split by a hash bucket, so no seed can make a train item an eval one.
    assert not {(it.a, it.b) for it in train} & {(it.a, it.b) for it in held_out}
    assert all(task._problem_bucket(it.a, it.b) == 0 for it in held_out)
    assert all(task._problem_bucket(it.a, it.b) != 0 for it in train)
    with pytest.raises(ValueError):
        task.item_from_seed(lo, "train")


def test_answers_check_and_fit_the_canvas():
    for it in task.make_items("eval", 200):
        assert task.check(it, it.answer) and task.check_exact(it, it.answer)
        assert task.extract(it.answer) == it.a + it.b
        assert len(it.answer) == task.ANSWER_LEN < task.GEN_LENGTH
        assert len(task.encode_prompt(it)) == task.MAX_PROMPT_LEN
        # Carry out of column k, straight from the definition: the low k+1 bits overflow.
        bits = task.BITS
        ref = "".join(str(((it.a % 2 ** (k + 1)) + (it.b % 2 ** (k + 1))) >> (k + 1)) for k in range(bits))
        assert it.answer.split(";")[0] == ref[::-1]
        assert it.prompt == f"{it.a:b}+{it.b:b}="
    assert task.worked_answer(0b101100111010, 0b110010101101) == "100000111000;1011111100111"
    it = task.make_items("eval", 1)[0]
    assert not task.check(it, it.answer[:-1])
    assert not task.check(it, "") and task.extract("0101") is None
    assert task.extract("0011;101<|endoftext|>") == 5


# --- the shipped model ------------------------------------------------------------------------

def _held_out():
    items = task.make_items("eval", N_HELD_OUT, 0)
    return items, [task.encode_prompt(it) for it in items]


def test_shipped_asset_is_consistent():
    from transformers import AutoTokenizer

    cfg = read_hf_config(ASSET)
    tok = AutoTokenizer.from_pretrained(ASSET)
    assert cfg.family == "llada" and cfg.vocab_size == len(tok) == task.VOCAB_SIZE
    assert (cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id) == (
        tok.mask_token_id, tok.eos_token_id, tok.pad_token_id, tok.bos_token_id)
    with open(os.path.join(ASSET, "config.json")) as f:
        assert json.load(f)["mask_token_id"] == task.MASK_ID
    size = sum(os.path.getsize(os.path.join(ASSET, f)) for f in os.listdir(ASSET))
    assert size < 16 * 2**20


def test_shipped_model_accuracy_own_greedy_loop():
    from d2cache_jax.checkpoint import load

    cfg, params = load(ASSET)
    items, prompts = _held_out()
    gen = train_tiny.greedy_generate(cfg, params, prompts, task.GEN_LENGTH)
    acc = np.mean([task.check(it, task.decode(g)) for it, g in zip(items, gen)])
    assert acc >= ACC_FLOOR, acc


def test_shipped_model_accuracy_generate():
    import d2cache_jax

    if not hasattr(d2cache_jax, "generate"):
        pytest.skip("d2cache_jax.generate is not available")
    cfg, params = d2cache_jax.load(ASSET)
    items, prompts = _held_out()
    res = d2cache_jax.generate(cfg, params, prompts, **task.GENERATION_DEFAULTS, decoder="vanilla",
                               cache="none")
    texts = [task.decode(t) for t in res.tokens]
    acc = np.mean([task.check(it, t) for it, t in zip(items, texts)])
    assert acc >= ACC_FLOOR, acc


def test_converted_tiny_model_keeps_its_generation_defaults(tmp_path):
    """The converter carries `d2cache_generation.json` along, so the converted model generates with the
    same defaults as the Hugging Face folder it came from."""
    from checkpoints_convert.convert import convert

    out = str(tmp_path / "converted")
    convert(ASSET, out, "llada")
    name = "d2cache_generation.json"
    with open(os.path.join(ASSET, name)) as f:
        shipped = json.load(f)
    assert shipped, "the shipped model has generation defaults"
    with open(os.path.join(out, name)) as f:
        assert json.load(f) == shipped
