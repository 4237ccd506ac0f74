"""Why certainty-prior decoding loses points on `tiny_arith`: decode order against the task's carries.

`python -m tools.cp_order [N]` runs the shipped model on N held-out items (default 200), greedy,
vanilla decoder, one token per step, in four settings (no cache and d2Cache, each with the
certainty prior off and on) and prints JSON: accuracy, how often a carry was committed before the
carry to its right (the one it depends on, `c_k = maj(a_k, b_k, c_{k+1})`), how often such an early
carry was wrong, and the mean commit step of the carry row's first and last columns.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

import d2cache_jax
from d2cache_jax.evaluation.tasks import synthetic as task

ASSET = os.path.join(os.path.dirname(d2cache_jax.__file__), "assets", "tiny_arith")
SETTINGS = {
    "none, CP off": dict(cache="none", sigma=0.0),
    "none, CP on (sigma 10)": dict(cache="none", sigma=10.0),
    "d2cache, CP off": dict(cache="d2cache", sigma=0.0),
    "d2cache, CP on (sigma 10)": dict(cache="d2cache", sigma=10.0),
}


def order_stats(items, tokens: np.ndarray, commit: np.ndarray) -> dict:
    """Accuracy and carry-order statistics of one run."""
    bits = task.BITS
    early = early_wrong = carries_wrong = 0
    correct = 0
    for item, toks, steps in zip(items, tokens, commit):
        text = task.decode(toks)
        correct += task.check(item, text)
        want = task.carry_row(item.a, item.b)
        got = text[:bits]
        for k in range(bits - 1):  # column k depends on column k + 1 (to its right)
            wrong = k >= len(got) or got[k] != want[k]
            carries_wrong += wrong
            if steps[k] < steps[k + 1]:
                early += 1
                early_wrong += wrong
    n = len(items)
    pairs = n * (bits - 1)
    return dict(accuracy=correct / n, carry_committed_before_its_right_neighbour=early / pairs,
                carry_errors_per_item=carries_wrong / n,
                share_of_early_carries_wrong=early_wrong / max(early, 1),
                share_of_carry_errors_that_were_early=early_wrong / max(carries_wrong, 1),
                mean_commit_step_leftmost_carry=float(commit[:, 0].mean()),
                mean_commit_step_rightmost_carry=float(commit[:, bits - 1].mean()))


def main(argv: list[str]) -> None:
    n = int(argv[1]) if len(argv) > 1 else 200
    cfg, params = d2cache_jax.load(ASSET)
    items = task.make_items("eval", n)
    prompts = [task.encode_prompt(it) for it in items]
    out = {"items": n}
    for name, kw in SETTINGS.items():
        res = d2cache_jax.generate(cfg, params, prompts, **task.GENERATION_DEFAULTS, decoder="vanilla", **kw)
        out[name] = order_stats(items, np.asarray(res.tokens), np.asarray(res.commit_step))
        print(json.dumps({name: out[name]}), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv)
