"""Synthetic task with long, multi-block answers written left to right: the `tiny_trace` model's task.

A mixture of two kinds of item, each a short prompt and a worked answer of 132 or 205 tokens (over
several 32-token blocks of a 256-token canvas), every token checkable and depending on the prompt:

- ``edit`` (copy with edits): prompt ``E``, a shift k in 1-3, ``:`` and 32 lowercase letters.
  Answer: four lines, each ended by ``;``: the word with each letter shifted k on (a->b for k=1,
  z->a); that line in upper case; that line shifted k on again; that line in lower case (132 tokens).
- ``count`` (running count, then digit shifts): prompt ``C:`` and 40 bits. Answer: five lines of 40
  digits, each ended by ``;``: the running count mod 10 of the ones among the bits, then four lines
  that each add one (mod 10) to every digit of the line above (205 tokens).

Every line is computed left to right, from the prompt and the line above, so a cache that serves
stale keys or values can break it. Splits are disjoint twice over: item seeds come from disjoint
ranges (train [0, 2**40), eval [2**40, 2**41)), and problems are split by a hash of the prompt
(eval: bucket 0 of 16, rejection-sampled; train never).

Three earlier mixtures fell short within the training budget (`docs/tiny_model.md`): a
pointer-chasing walk, a substitution rule and running sums mod 10; running parity; and count lines
that each counted the odd digits of the line above. Sums mod 10 and parity give no signal for either
input alone (XOR-like); the content lookups had not formed by step 900; and a count step that needs
a 10-way digit test plus its left neighbour kept slipping (1 of 32 held-out count items exact, with
every first error past line 1). Each step of the running count is the digit to its left, or that plus
one, decided by a one-token test; each later digit is a one-token map of the digit above.
"""

from __future__ import annotations

import string
import zlib
from typing import Any, NamedTuple

import numpy as np

from d2cache_jax.evaluation.tasks import seeded
from d2cache_jax.evaluation.tasks.base import Score, ScoreOptions, Task
from d2cache_jax.evaluation.tasks.chartok import EOS, CharVocab
from d2cache_jax.evaluation.tasks.seeded import EVAL_SEED_RANGE, SPLITS, TRAIN_SEED_RANGE, item_seeds  # noqa: F401 (re-exported)

VOCAB_CHARS = string.digits + string.ascii_lowercase + string.ascii_uppercase + ";:>"
_VOCAB = CharVocab(VOCAB_CHARS)
VOCAB = _VOCAB.vocab
VOCAB_SIZE = _VOCAB.size
EOS_ID, BOS_ID, MASK_ID, UNK_ID, PAD_ID = _VOCAB.eos_id, _VOCAB.bos_id, _VOCAB.mask_id, _VOCAB.unk_id, _VOCAB.pad_id
encode, decode = _VOCAB.encode, _VOCAB.decode

KINDS = ("edit", "count")
EDIT_LEN, MAX_SHIFT, COUNT_LEN, COUNT_LINES = 32, 3, 40, 5
MAX_PROMPT_LEN = 1 + 2 + COUNT_LEN  # BOS + the longest prompt ("C:" + 40 bits)
MAX_ANSWER_LEN = COUNT_LINES * (COUNT_LEN + 1)
GEN_LENGTH = 256
BLOCK_LENGTH = 32
GENERATION_DEFAULTS: dict[str, Any] = dict(gen_length=GEN_LENGTH, steps=GEN_LENGTH, block_length=BLOCK_LENGTH)

_EVAL_BUCKETS = 16


class Item(NamedTuple):
    """One problem: its kind, the prompt text and the full reference answer text."""

    seed: int
    kind: str
    prompt: str
    answer: str


def _problem_bucket(prompt: str) -> int:
    """A fixed hash of the problem (not of the seed) that assigns it to train or eval."""
    return zlib.crc32(prompt.encode()) % _EVAL_BUCKETS


def _shift(c: str, k: int) -> str:
    base = ord("a") if c.islower() else ord("A")
    return chr((ord(c) - base + k) % 26 + base)


def edit_answer(k: int, word: str) -> str:
    """The four lines of an edit item: shifted by k, upper, shifted by k again, lower."""
    first = "".join(_shift(c, k) for c in word)
    third = "".join(_shift(c, k) for c in first.upper())
    return "".join(line + ";" for line in (first, first.upper(), third, third.lower()))


def count_answer(bits: str) -> str:
    """COUNT_LINES lines: the running count mod 10 of the ones among the bits, then each line the one
    above with every digit plus one, mod 10."""
    row = np.cumsum([c == "1" for c in bits]) % 10
    lines = []
    for _ in range(COUNT_LINES):
        lines.append("".join(str(int(v)) for v in row) + ";")
        row = (row + 1) % 10
    return "".join(lines)


def _draw(rng: np.random.Generator) -> tuple[str, str, str]:
    """(kind, prompt, answer) of one random problem."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    if kind == "edit":
        k = int(rng.integers(1, MAX_SHIFT + 1))
        word = "".join(rng.choice(list(string.ascii_lowercase), size=EDIT_LEN))
        return kind, f"E{k}:{word}", edit_answer(k, word)
    bits = "".join(str(int(d)) for d in rng.integers(0, 2, size=COUNT_LEN))
    return kind, f"C:{bits}", count_answer(bits)


def item_from_seed(seed: int, split: str) -> Item:
    """The item of `split` that seed `seed` generates (rejection-sampled into the split's bucket)."""
    kind, prompt, answer = seeded.draw_in_split(seed, split, _draw, lambda p: _problem_bucket(p[1]) == 0)
    return Item(seed, kind, prompt, answer)


def make_items(split: str, n: int, seed: int = 0) -> list[Item]:
    """n items of `split` ("train" or "eval"), deterministic in (split, n, seed)."""
    return [item_from_seed(s, split) for s in item_seeds(split, n, seed)]


def prompt_of(item: Item) -> str:
    """The prompt text (callers prepend BOS, see `encode_prompt`)."""
    return item.prompt


def _answer_text(output_text: str) -> str:
    """The answer a generation states: its text up to the first EOS."""
    return output_text.split(EOS, 1)[0].strip()


def check(item: Item, output_text: str) -> bool:
    """True when the whole worked answer matches the reference (every token is checked)."""
    return _answer_text(output_text) == item.answer


check_exact = check


def token_accuracy(item: Item, output_text: str) -> float:
    """Fraction of reference answer characters reproduced at their position."""
    out = _answer_text(output_text)
    return sum(a == b for a, b in zip(out, item.answer)) / len(item.answer)


def encode_prompt(item: Item) -> list[int]:
    """BOS + prompt ids: what the model is conditioned on."""
    return [BOS_ID] + encode(prompt_of(item))


def training_sequence(item: Item, total_len: int) -> tuple[np.ndarray, int]:
    """BOS + prompt + answer, EOS-filled to total_len; also returns the prompt length (incl. BOS)."""
    return seeded.training_sequence(encode_prompt(item), encode(item.answer), total_len, EOS_ID)


def save_tokenizer(out_dir: str) -> None:
    """Write the Hugging Face tokenizer files into out_dir."""
    _VOCAB.save_tokenizer(out_dir)


class Trace(Task):
    """The held-out split, scored by exact match of the whole answer (plus token accuracy and kind)."""

    name = "trace"
    fields = ("kind", "prompt", "answer")
    split = "eval"
    gen_length = GEN_LENGTH
    block_length = BLOCK_LENGTH
    needs_data = False
    default_checkpoint = "tiny_trace"

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return doc["prompt"]

    def doc_to_target(self, doc: dict[str, Any]) -> str:
        return doc["answer"]

    def score(self, doc: dict[str, Any], output: str, options: ScoreOptions) -> Score:
        item = Item(**{k: doc[k] for k in Item._fields})
        return Score(correct=check(item, output), extracted=_answer_text(output),
                     details={"kind": item.kind, "token_acc": token_accuracy(item, output)})

    def make_docs(self, count: int | None, seed: int) -> list[dict[str, Any]]:
        return [it._asdict() for it in make_items("eval", count or 200, seed)]


TASK = Trace()
