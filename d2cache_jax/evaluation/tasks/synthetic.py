"""Synthetic task: binary addition with the carries written out, for the tiny trained model.

An item is two 12-bit numbers (leading bit 1). The prompt is ``a+b=`` in binary; the answer first
writes the carry row (the carry out of each column, aligned under the operands, computed right to
left: ``c_k = maj(a_k, b_k, c_{k+1})``), then ``;``, then the 13-bit sum, then EOS:

    prompt  "101100111010+110010101101="
    answer  "100000111000;1011111100111" <eos>

Every answer token depends on the prompt, each carry on the carry to its right (a chain across the
whole row) and each sum bit on a carry, so a cache that serves stale keys/values can visibly hurt
accuracy. Answers are 26 tokens + EOS in a 32-token canvas. (Decimal addition with digit-by-digit
steps was tried first: a ~1M-parameter model had not learned the 200-entry digit-sum table after
~1000 steps, more than the CPU budget allows; the binary table has 8 entries.)

Splits are disjoint twice over: item seeds come from disjoint ranges (train [0, 2**40), eval
[2**40, 2**41)), and the problems themselves are split by a hash of (a, b): eval problems have
`_problem_bucket(a, b) == 0` (1 in 16), train problems never do. So no eval problem can appear
in training, whatever the seeds.

The tokenizer is character level (``0 1 + = ;``) with LLaDA-style specials (`chartok`); `save_tokenizer`
writes it in the Hugging Face format that `transformers.AutoTokenizer.from_pretrained` reads.

This module is the task's one home: the generator and checker that `experiments.train_tiny` trains on,
and `TASK`, the evaluation task (`--task=synthetic`) that scores with the same checker plus exact match.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import numpy as np

from d2cache_jax.evaluation.tasks import seeded
from d2cache_jax.evaluation.tasks.base import Score, ScoreOptions, Task
from d2cache_jax.evaluation.tasks.chartok import EOS, CharVocab
from d2cache_jax.evaluation.tasks.seeded import EVAL_SEED_RANGE, SPLITS, TRAIN_SEED_RANGE, item_seeds  # noqa: F401 (re-exported)

# --- vocabulary -------------------------------------------------------------------------------

_VOCAB = CharVocab("01+=;")
VOCAB: dict[str, int] = _VOCAB.vocab
EOS_ID, BOS_ID, MASK_ID, UNK_ID, PAD_ID = _VOCAB.eos_id, _VOCAB.bos_id, _VOCAB.mask_id, _VOCAB.unk_id, _VOCAB.pad_id
VOCAB_SIZE = _VOCAB.size
encode, decode = _VOCAB.encode, _VOCAB.decode

# --- task constants and default generation settings -------------------------------------------

BITS = 12
MAX_PROMPT_LEN = 1 + 2 * BITS + 2  # BOS + "a+b="
ANSWER_LEN = BITS + 1 + BITS + 1  # carry row, ";", sum (without EOS)
GEN_LENGTH = 32
# Settings an evaluation harness should use by default (greedy, one token per step, no cache).
GENERATION_DEFAULTS: dict[str, Any] = dict(gen_length=GEN_LENGTH, steps=GEN_LENGTH, block_length=GEN_LENGTH)

_EVAL_BUCKETS = 16


class Item(NamedTuple):
    """One addition problem: operands, the prompt text and the full reference answer text."""

    seed: int
    a: int
    b: int
    prompt: str
    answer: str


def _problem_bucket(a: int, b: int) -> int:
    """A fixed hash of the problem (not of the seed) that assigns it to train or eval."""
    return (a * 1_000_003 + b * 7_919 + (a ^ b)) % 1_000_000_007 % _EVAL_BUCKETS


def carry_row(a: int, b: int, bits: int = BITS) -> str:
    """The carry out of each column, most significant first (aligned under the operands)."""
    out, c = [], 0
    for k in range(bits):  # from the least significant column
        x, y = (a >> k) & 1, (b >> k) & 1
        c = (x + y + c) // 2
        out.append(str(c))
    return "".join(reversed(out))


def worked_answer(a: int, b: int, bits: int = BITS) -> str:
    """The answer text for a+b (without EOS): carry row, ';', the (bits+1)-bit sum."""
    return f"{carry_row(a, b, bits)};{a + b:0{bits + 1}b}"


def item_from_seed(seed: int, split: str) -> Item:
    """The item of `split` that seed `seed` generates (rejection-sampled into the split's bucket)."""
    a, b = seeded.draw_in_split(
        seed, split, lambda rng: tuple(int(v) for v in rng.integers(2 ** (BITS - 1), 2**BITS, size=2)),
        lambda ab: _problem_bucket(*ab) == 0)
    return Item(seed, a, b, f"{a:b}+{b:b}=", worked_answer(a, b))


def make_items(split: str, n: int, seed: int = 0) -> list[Item]:
    """n items of `split` ("train" or "eval"), deterministic in (split, n, seed)."""
    return [item_from_seed(s, split) for s in item_seeds(split, n, seed)]


def prompt_of(item: Item) -> str:
    """The prompt text (the tokenizer adds nothing; callers prepend BOS, see `encode_prompt`)."""
    return item.prompt


def extract(output_text: str) -> int | None:
    """The sum a generated answer states: the binary number after the last ';' (None if absent)."""
    text = output_text.replace(EOS, "").strip()
    m = re.fullmatch(r"[01]+", text.rsplit(";", 1)[-1].strip()) if ";" in text else None
    return int(m.group(0), 2) if m else None


def check(item: Item, output_text: str) -> bool:
    """True when the generated answer's stated sum equals a+b."""
    return extract(output_text) == item.a + item.b


def check_exact(item: Item, output_text: str) -> bool:
    """Stricter: the whole answer (carry row and sum) matches the reference."""
    return output_text.replace(EOS, "").strip() == item.answer


def encode_prompt(item: Item) -> list[int]:
    """BOS + prompt ids: what the model is conditioned on."""
    return [BOS_ID] + encode(prompt_of(item))


def training_sequence(item: Item, total_len: int) -> tuple[np.ndarray, int]:
    """BOS + prompt + answer, EOS-filled to total_len; also returns the prompt length (incl. BOS)."""
    return seeded.training_sequence(encode_prompt(item), encode(item.answer), total_len, EOS_ID)


def save_tokenizer(out_dir: str) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into out_dir."""
    _VOCAB.save_tokenizer(out_dir)


# --- the evaluation task (`--task=synthetic`): the held-out split, generated from seeds (no --data) ------


class Synthetic(Task):
    """Binary addition with carries, scored by `check` (sum correct) and `check_exact` (whole answer)."""

    name = "synthetic"
    fields = ("a", "b", "prompt", "answer")
    split = "eval"
    gen_length = GEN_LENGTH
    needs_data = False
    default_checkpoint = "tiny_arith"

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return doc["prompt"]

    def doc_to_target(self, doc: dict[str, Any]) -> str:
        return doc["answer"]

    def score(self, doc: dict[str, Any], output: str, options: ScoreOptions) -> Score:
        item = Item(**{k: doc[k] for k in Item._fields})
        got = extract(output)
        return Score(correct=check(item, output), extracted=None if got is None else format(got, "b"),
                     details={"exact": check_exact(item, output)})

    def make_docs(self, count: int | None, seed: int) -> list[dict[str, Any]]:
        return [it._asdict() for it in make_items("eval", count or 200, seed)]


TASK = Synthetic()
