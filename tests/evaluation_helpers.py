"""Shared pieces of the evaluation tests: fixture paths and a fake generator with known outputs."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from d2cache_jax.evaluation.generator import Completion

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "eval")


def fixture(name: str) -> str:
    return os.path.join(FIXTURES, name)


class FakeGenerator:
    """Returns `answer(prompt)` for each prompt with fixed costs; records every call."""

    def __init__(self, answer: Callable[[str], str], num_tokens: int = 10, steps: int = 5,
                 wall_s: float = 0.5, forward_passes: int = 5):
        self.answer = answer
        self.num_tokens, self.steps, self.wall_s, self.forward_passes = num_tokens, steps, wall_s, forward_passes
        self.calls: list[tuple[list[str], tuple[str, ...]]] = []

    def generate(self, prompts: Sequence[str], until: Sequence[str] = ()) -> list[Completion]:
        self.calls.append((list(prompts), tuple(until)))
        return [Completion(text=self.answer(p), num_tokens=self.num_tokens, steps=self.steps,
                           forward_passes=self.forward_passes, wall_s=self.wall_s) for p in prompts]


def last_question(prompt: str, marker: str) -> str:
    """The text after the last `marker` of a few-shot prompt (the question being asked)."""
    return prompt.rsplit(marker, 1)[-1]
