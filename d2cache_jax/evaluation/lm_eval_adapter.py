"""lm-evaluation-harness model adapter: run harness tasks (generate_until) with any decoder and cache.

    from d2cache_jax.evaluation.lm_eval_adapter import make_lm
    import lm_eval
    lm = make_lm(checkpoint="ckpt/llada-8b-instruct", cache="d2cache", gen_length=256)
    lm_eval.simple_evaluate(model=lm, tasks=["gsm8k"], apply_chat_template=True)

or, after `register()`, `--model d2cache_jax --model_args checkpoint=DIR,cache=d2cache,gen_length=256`.
As upstream, only the request's `until` is used; `max_gen_toks` and `temperature` are ignored (the
generation options decide). lm-eval is imported only here, when the adapter is used.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from d2cache_jax.evaluation.generator import Completion, Generator

MODEL_NAME = "d2cache_jax"


def _until(gen_kwargs: dict[str, Any]) -> tuple[str, ...]:
    until = gen_kwargs.get("until") or ()
    return (until,) if isinstance(until, str) else tuple(until)


def group_requests(requests: Sequence[tuple[str, dict[str, Any]]], batch_size: int) -> list[list[int]]:
    """Request positions in batches of at most `batch_size` that share their stop words, in order."""
    by_until: dict[tuple[str, ...], list[int]] = {}
    for i, (_, gen_kwargs) in enumerate(requests):
        by_until.setdefault(_until(gen_kwargs), []).append(i)
    return [idx[s:s + batch_size] for idx in by_until.values() for s in range(0, len(idx), batch_size)]


@functools.cache
def lm_class() -> type:
    """The adapter class, a subclass of `lm_eval.api.model.LM` (built on first use)."""
    from lm_eval.api.model import LM

    class D2CacheLM(LM):
        """Generation-only lm-eval model over a `Generator`."""

        def __init__(self, generator: Generator | None = None, checkpoint: str | None = None,
                     batch_size: int | str = 1, **options: Any):
            super().__init__()
            if generator is None:
                if checkpoint is None:
                    raise ValueError("give a generator or a checkpoint directory")
                from d2cache_jax.evaluation.generator import ModelGenerator

                # lm-eval renders chat templates itself (apply_chat_template=True), so no template here.
                generator = ModelGenerator(checkpoint, options=options, chat=False)
            self.generator = generator
            self.batch_size = int(batch_size)
            self.completions: list[Completion] = []  # every completion, with its stats, in request order

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            args = [req.args for req in requests]
            texts: list[str | None] = [None] * len(args)
            for batch in group_requests(args, self.batch_size):
                completions = self.generator.generate([args[i][0] for i in batch],
                                                      until=_until(args[batch[0]][1]))
                for i, completion in zip(batch, completions):
                    texts[i] = completion.text
                    self.completions.append(completion)
                    self.cache_hook.add_partial("generate_until", args[i], completion.text)
            return texts

        def loglikelihood(self, requests):
            raise NotImplementedError("d2cache_jax evaluates generation tasks only (generate_until)")

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError("d2cache_jax evaluates generation tasks only (generate_until)")

        @property
        def tokenizer_name(self) -> str:
            tokenizer = getattr(self.generator, "tokenizer", None)
            return str(getattr(tokenizer, "name_or_path", MODEL_NAME)).replace("/", "__")

        def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True):
            tokenizer = getattr(self.generator, "tokenizer", None)
            if tokenizer is None:
                raise NotImplementedError("this generator has no tokenizer with a chat template")
            # lm-eval asks for no generation prompt when the last message is a gen_prefix to continue.
            return tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                 add_generation_prompt=add_generation_prompt,
                                                 continue_final_message=not add_generation_prompt)

    return D2CacheLM


def make_lm(generator: Generator | None = None, **kwargs: Any):
    """An lm-eval `LM` over a generator, or over a `ModelGenerator` built from `checkpoint=` and options."""
    return lm_class()(generator=generator, **kwargs)


def register() -> None:
    """Make `--model d2cache_jax` known to lm-eval."""
    from lm_eval.api.registry import register_model

    register_model(MODEL_NAME)(lm_class())
