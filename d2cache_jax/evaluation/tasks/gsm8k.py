"""GSM8K as lm-eval's `gsm8k` task: 5 random train shots, exact match after strict and flexible extraction."""

from __future__ import annotations

import re
from typing import Any

from d2cache_jax.evaluation.tasks.base import Score, ScoreOptions, Task

# lm-eval gsm8k.yaml (v3): the two answer filters and the exact_match settings.
STRICT_PATTERN = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE_PATTERNS = (",", r"\$", r"(?s).*#### ", r"\.$")
INVALID = "[invalid]"


def _group(match: str | tuple[str, ...]) -> str:
    """A regex hit as lm-eval's filter reads it: the first non-empty group of a tuple."""
    if isinstance(match, tuple):
        match = next((m for m in match if m), INVALID)
    return match.strip()


def extract_strict(text: str) -> str:
    """The number after the first `#### `, or `[invalid]`."""
    hits = STRICT_PATTERN.findall(text)
    return _group(hits[0]) if hits else INVALID


def extract_flexible(text: str) -> str:
    """The last number-like run in the text, or `[invalid]`."""
    hits = FLEXIBLE_PATTERN.findall(text)
    return _group(hits[-1]) if hits else INVALID


def normalize(text: str) -> str:
    """exact_match's normalisation: drop the ignored patterns, then lower-case."""
    for pattern in IGNORE_PATTERNS:
        text = re.sub(pattern, "", text)
    return text.lower()


def gold_answer(answer_field: str) -> str:
    """The reference number of a GSM8K solution (`... #### 72` -> `72`)."""
    return normalize(answer_field)


class Gsm8k(Task):
    name = "gsm8k"
    fields = ("question", "answer")
    num_fewshot = 5
    fewshot_split = "train"
    stop_words = ("Question:", "</s>", "<|im_end|>")
    gen_length = 256

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return f"Question: {doc['question']}\nAnswer:"

    def doc_to_target(self, doc: dict[str, Any]) -> str:
        return doc["answer"]

    def score(self, doc: dict[str, Any], output: str, options: ScoreOptions) -> Score:
        """Primary verdict: flexible-extract; strict-match is kept in the details."""
        gold = gold_answer(doc["answer"])
        strict, flexible = extract_strict(output), extract_flexible(output)
        details = {"strict_match": normalize(strict) == gold, "flexible_extract": normalize(flexible) == gold,
                   "strict_answer": strict, "gold": gold}
        return Score(correct=details["flexible_extract"], extracted=flexible, details=details)


TASK = Gsm8k()
