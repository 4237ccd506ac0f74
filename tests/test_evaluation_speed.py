"""Length-sorted batches, compile counting, time split, full throughput and the per-sample decode order."""

import jax
import numpy as np
import pytest

from d2cache_jax.evaluation import compiles, metrics, runner
from d2cache_jax.evaluation.tasks import get_task
from tests.evaluation_helpers import FakeGenerator


def test_full_throughput_and_time_split_by_hand():
    def record(batch, tokens, committed, wall, steps, compile_s, batch_wall, n_compiles):
        return {"correct": True, "details": {}, "stats": {
            "batch": batch, "num_tokens": tokens, "committed": committed, "wall_s": wall, "batch_size": 2,
            "forward_passes": steps, "steps": steps, "tokens_per_step": None, "compile_s": compile_s,
            "batch_wall_s": batch_wall, "compiles": n_compiles, "generation_compiles": 1}}

    records = [record(0, 10, 32, 2.0, 16, 5.0, 7.5, 20), record(0, 20, 32, 2.0, 12, 5.0, 7.6, 20),
               record(4, 6, 16, 1.0, 8, 0.0, 1.2, 0), record(4, 8, 16, 1.0, 8, 0.0, 1.1, 0)]
    m = metrics.compute_metrics(records)
    assert m["throughput_tok_s"] == pytest.approx((30 / 2 + 14 / 1) / 2)
    assert m["full_throughput_tok_s"] == pytest.approx((64 / 2 + 32 / 1) / 2)
    assert m["full_tokens_per_step"] == pytest.approx((64 / 16 + 32 / 8) / 2)
    assert m["compiles"] == 20 and m["num_batches"] == 2
    assert m["compile_s"] == pytest.approx(5.0) and m["generation_s"] == pytest.approx(3.0)
    assert m["eval_wall_s"] == pytest.approx(7.6 + 1.2)
    assert m["other_s"] == pytest.approx(7.6 + 1.2 - 5.0 - 3.0)


class ShapeGenerator(FakeGenerator):
    """Compiles one small program per distinct padded shape [batch, longest prompt], as a model would."""

    def generate(self, prompts, until=(), prefixes=None):
        width = max(len(p) for p in prompts)
        x = np.zeros((len(prompts), width), np.int32)  # numpy: no glue program compiled for the input
        jax.jit(lambda a: a * 3 + 1)(x).block_until_ready()
        return super().generate(prompts, until)


def test_length_sorted_batches_keep_the_original_order_and_count_compiles(tmp_path):
    task = get_task("synthetic")
    rng = np.random.default_rng(0)
    docs = task.make_docs(12, 0)
    for doc in docs:  # prompts of varied lengths
        doc["prompt"] = "x" * int(rng.integers(1, 6)) + doc["prompt"]
    items = runner.prepare_items(task, docs, 0)
    gen = ShapeGenerator(lambda p: p)
    out = runner.run_evaluation(task, items, gen, str(tmp_path), batch_size=4, progress=False)
    lengths = [[len(p) for p in call[0]] for call in gen.calls]
    flat = [n for call in lengths for n in call]
    assert flat == sorted(len(item.prompt) for item in items)  # batches by increasing length
    records = runner.read_samples(str(tmp_path / runner.SAMPLES_FILE))
    assert [r["index"] for r in records] == list(range(12))
    assert all(r["output"] == r["prompt"] for r in records)  # each answer stayed with its prompt
    # one compile per distinct [4, longest] shape (jax caches repeated shapes)
    assert out["compiles"] == len({max(call) for call in lengths})
    assert out["generation_compiles"] == 0 and out["num_batches"] == 3


def test_compile_counter_sees_new_shapes_only():
    compiles.install()
    f = jax.jit(lambda a: a - 7)
    before = compiles.current()
    f(np.zeros(3, np.float32)).block_until_ready()
    f(np.ones(3, np.float32)).block_until_ready()
    f(np.zeros(5, np.float32)).block_until_ready()
    assert (compiles.current() - before).programs == 2


def test_decode_order_matches_the_steps_observed_one_by_one():
    """commit_step from generate() against the masked positions seen disappearing step by step."""
    import importlib

    import d2cache_jax

    gen_lib = importlib.import_module("d2cache_jax.generation.generate")  # the module, not the function
    from d2cache_jax.evaluation.tasks import synthetic as syn
    from d2cache_jax.generation.options import make_options
    from d2cache_jax.generation.step import max_steps

    cfg, params = d2cache_jax.load("d2cache_jax/assets/tiny_arith")
    from d2cache_jax import tokenizer as tok_lib

    tok = tok_lib.load_tokenizer("d2cache_jax/assets/tiny_arith")
    prompts = tok_lib.encode_prompts(tok, [it.prompt for it in syn.make_items("eval", 2, 3)])
    kw = {"gen_length": syn.GEN_LENGTH, "block_length": 8, "stop_at_eos": False}
    result = d2cache_jax.generate(cfg, params, prompts, **kw)
    opts = make_options(**kw)
    state, step = gen_lib.prepare(cfg, prompts, opts), gen_lib.step_fn(cfg, opts)
    from d2cache_jax.model import forward

    seen = np.full((2, opts.gen_length), -1)
    conf = np.full((2, opts.gen_length), np.nan)
    for k in range(max_steps(opts)):
        before = np.asarray(state.tokens[:, -opts.gen_length:]) == cfg.mask_token_id
        # The confidence of each proposal: top probability of the no-cache logits, mask id excluded.
        logits = np.asarray(forward(cfg, params, state.tokens, state.key_mask), np.float64)[:, -opts.gen_length:]
        logits[..., cfg.mask_token_id] = -np.inf
        prob = np.exp(logits - logits.max(-1, keepdims=True))
        top = prob.max(-1) / prob.sum(-1)
        state = step(params, state)
        after = np.asarray(state.tokens[:, -opts.gen_length:]) == cfg.mask_token_id
        seen[before & ~after] = k
        conf[before & ~after] = top[before & ~after]
        if not after.any():
            break
    np.testing.assert_array_equal(result.commit_step, seen)
    np.testing.assert_allclose(result.commit_conf, conf, rtol=1e-4)
    assert sorted(seen[0]) == sorted(seen[1]) == list(range(opts.gen_length))  # one per step, as vanilla
