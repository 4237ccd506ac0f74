"""Positions left masked when a run stops are counted (`masked_left`, `masks_before_eos`) against the
tokens a host loop of the same step sees, still returned as eos, and a warning says so."""

import functools
import importlib
import logging

import jax
import numpy as np
import pytest

from d2cache_jax import config, params
from d2cache_jax.generation import step as step_lib
from tests import reference

gen_lib = importlib.import_module("d2cache_jax.generation.generate")
PROMPTS = [[1, 2, 3, 4, 5], [9, 8, 7]]
LOGGER = "d2cache_jax.generation.generate"


@functools.cache
def llada():
    cfg = config.tiny_llada()
    return cfg, params.init_params(cfg, jax.random.key(0))


def host_tokens(cfg, p, n_steps, **kw):
    """The gen tokens after `n_steps` of the jitted step (or fewer if all rows are done)."""
    opts = gen_lib.make_options(**kw)
    state = gen_lib.prepare(cfg, PROMPTS, opts)
    step = gen_lib.step_fn(cfg, opts)
    for _ in range(n_steps):
        state = step(p, state)
        if bool(np.asarray(state.done).all()):
            break
    return np.asarray(state.tokens[:, -opts.gen_length:])


def counts(cfg, gen):
    """Per row: (positions masked, masked positions before the first stop token), by a plain scan."""
    left, before = [], []
    for row in gen.tolist():
        stops = [i for i, x in enumerate(row) if x in cfg.stop_token_ids]
        first = stops[0] if stops else len(row)
        left.append(sum(x == cfg.mask_token_id for x in row))
        before.append(sum(x == cfg.mask_token_id for x in row[:first]))
    return left, before


def test_step_limit_reports_masks_before_eos(monkeypatch, caplog):
    cfg, p = llada()
    kw = dict(gen_length=16, block_length=8, loop="host")
    gen = host_tokens(cfg, p, 5, **kw)
    left, before = counts(cfg, gen)
    assert sum(before) > 0  # the run below stops with masks before any EOS
    monkeypatch.setattr(step_lib, "max_steps", lambda opts: 5)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        res = gen_lib.generate(cfg, p, PROMPTS, **kw)
    assert res.stats["steps"] == 5
    assert res.stats["masked_left"] == left and res.stats["masked_left_total"] == sum(left)
    assert res.stats["masks_before_eos"] == before
    want = np.where(gen == cfg.mask_token_id, cfg.eos_token_id, gen)  # returned as eos, as documented
    np.testing.assert_array_equal(res.tokens, want)
    msgs = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(msgs) == 1 and f"{sum(before)} masked positions before the first EOS" in msgs[0]


def test_stop_at_eos_leaves_masks_after_eos_only(caplog):
    cfg, p = llada()
    biased = reference.prefer(p, cfg.eos_token_id)
    kw = dict(gen_length=16, stop_at_eos=True, loop="host")
    gen = host_tokens(cfg, biased, 100, **kw)
    left, before = counts(cfg, gen)
    assert sum(left) > 0 and sum(before) == 0
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        res = gen_lib.generate(cfg, biased, PROMPTS, **kw)
    assert res.stats["masked_left"] == left and res.stats["masks_before_eos"] == [0, 0]
    assert res.stats["masked_left_total"] == sum(left)
    assert not [r for r in caplog.records if r.name == LOGGER]
    np.testing.assert_array_equal(res.tokens, np.where(gen == cfg.mask_token_id, cfg.eos_token_id, gen))


@pytest.mark.parametrize("loop", ["device"])
def test_complete_run_has_no_masks_left(loop, caplog):
    cfg, p = llada()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        res = gen_lib.generate(cfg, p, PROMPTS, gen_length=16, block_length=8, loop=loop)
    assert res.stats["masked_left"] == [0, 0] and res.stats["masks_before_eos"] == [0, 0]
    assert res.stats["masked_left_total"] == 0 and not caplog.records
