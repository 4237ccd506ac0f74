"""The Generator protocol the evaluation runs against, and `ModelGenerator`, which wraps the project API."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True)
class Completion:
    """One generated answer and what it cost."""

    text: str  # final text, cut at the first EOS or stop word
    num_tokens: int  # generated tokens before the first EOS
    steps: int  # denoising steps this sequence took
    forward_passes: int  # model forward passes of its batch
    wall_s: float  # generation wall time of its batch, compilation excluded
    tokens_per_step: float | None = None  # None: num_tokens / steps
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    committed: int | None = None  # positions committed in all, EOS and after included (None: unknown)
    commit_step: list[int] | None = None  # per generated position, the step it was committed at (-1: never)
    commit_conf: list[float | None] | None = None  # per generated position, its confidence then (None: never)


class Generator(Protocol):
    """Turns prompt texts into completions; `until` lists stop words that end the text.

    `prefixes` (passed only when a task has them): per prompt, the start of the answer that the model
    continues (lm-eval's gen_prefix); the completion's text is what follows it.
    """

    def generate(self, prompts: Sequence[str], until: Sequence[str] = (),
                 prefixes: Sequence[str | None] | None = None) -> list[Completion]: ...


def cut_at_stop_words(text: str, stop_words: Sequence[str]) -> str:
    """The text before the earliest occurrence of any stop word."""
    cut = len(text)
    for word in stop_words:
        if word:
            at = text.find(word)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]


def final_text(tokenizer: Any, token_ids: Sequence[int], until: Sequence[str]) -> str:
    """Decode generated ids as upstream does: keep specials, cut at stop words, then drop specials."""
    raw = tokenizer.decode(list(token_ids), skip_special_tokens=False)
    eos = getattr(tokenizer, "eos_token", None)
    cut = cut_at_stop_words(raw, tuple(until) + ((eos,) if eos else ()))
    ids = tokenizer.encode(cut, add_special_tokens=False)
    return tokenizer.decode(ids, skip_special_tokens=True)


def _row_stat(stats: dict[str, Any], key: str, row: int, default: Any) -> Any:
    """A per-sequence value from a stats dict that holds either one value per row or one per batch."""
    value = stats.get(key, default)
    if isinstance(value, list | tuple):
        return value[row]
    return value


class ModelGenerator:
    """Generates with `d2cache_jax.generate` from a local checkpoint directory.

    `options` are the keyword options of `d2cache_jax.generate` (gen_length, steps, cache, ...).
    `chat` applies the tokenizer's chat template (instruct models). `mesh`: restore the params into
    their shardings on this mesh and generate sharded over it.
    """

    def __init__(self, checkpoint: str, options: dict[str, Any] | None = None, chat: bool = False,
                 add_bos: bool = True, mesh: Any = None, scan_layers: bool = True):
        import d2cache_jax
        from d2cache_jax import sharding
        from d2cache_jax import tokenizer as tokenizer_lib

        self.mesh = mesh
        self.config, self.params = d2cache_jax.load(checkpoint) if mesh is None else sharding.load(checkpoint, mesh)
        if not scan_layers:
            from d2cache_jax.model import unstack_layers

            self.params = unstack_layers(self.params)
        self.tokenizer = tokenizer_lib.load_tokenizer(checkpoint)
        self.options = dict(options or {})  # may be set after loading, once the family is known
        self.chat = chat
        self.add_bos = add_bos
        self._generate = d2cache_jax.generate
        self._encode = tokenizer_lib.encode_prompts

    def generate(self, prompts: Sequence[str], until: Sequence[str] = (),
                 prefixes: Sequence[str | None] | None = None) -> list[Completion]:
        """Encode, generate one batch and decode each row to its final text."""
        ids = self._encode(self.tokenizer, list(prompts), chat=self.chat, add_bos=self.add_bos, prefixes=prefixes)
        mesh = {} if self.mesh is None else {"mesh": self.mesh}
        result = self._generate(self.config, self.params, ids, **mesh, **self.options)
        return completions_from_result(result, self.tokenizer, until, self.options)

    def prompt_length(self, prompt: str, prefix: str | None = None) -> int:
        """Tokens of one encoded prompt (for the memory estimate and length-sorted batches)."""
        return len(self._encode(self.tokenizer, [prompt], chat=self.chat, add_bos=self.add_bos,
                                prefixes=[prefix])[0])


def _text_length(tokens: Any, stop_index: int, vocab: int) -> int:
    """Tokens before the first stop token or the first id the tokenizer does not know (upstream: EOS)."""
    unknown = [i for i, t in enumerate(tokens[:stop_index]) if int(t) >= vocab]
    return unknown[0] if unknown else stop_index


def completions_from_result(result: Any, tokenizer: Any, until: Sequence[str],
                            options: dict[str, Any]) -> list[Completion]:
    """Per-row completions from a `GenerateResult` (tokens, lengths, stats)."""
    stats = dict(result.stats)
    batch = len(result.lengths)
    gen_length = int(result.tokens.shape[1])
    out = []
    vocab = len(tokenizer)
    commit = getattr(result, "commit_step", None)
    conf = getattr(result, "commit_conf", None)
    for row in range(batch):
        n = _text_length(result.tokens[row], int(result.lengths[row]), vocab)
        text = final_text(tokenizer, result.tokens[row, :n].tolist(), until)
        # Upstream counts an EOS at index 0 as "no EOS" (ALGORITHMS.md §4.1, §5 #8).
        counted = gen_length if (n == 0 and options.get("upstream_compat")) else n
        steps = int(_row_stat(stats, "steps_per_seq", row, stats.get("steps", 0)))
        if "tokens_per_step_per_seq" in stats:
            tps = float(stats["tokens_per_step_per_seq"][row])
        elif batch == 1 and "tokens_per_step" in stats:
            tps = float(stats["tokens_per_step"])
        else:
            tps = counted / max(steps, 1)
        out.append(Completion(
            text=text, num_tokens=counted, steps=steps,
            forward_passes=int(stats.get("forward_passes", steps)),
            wall_s=float(stats.get("wall_s", 0.0)), tokens_per_step=tps,
            extra={"compile_s": float(stats.get("compile_s", 0.0)), "stop_index": n},
            committed=None if commit is None else int((commit[row] >= 0).sum()),
            commit_step=None if commit is None else [int(x) for x in commit[row]],
            commit_conf=None if conf is None else [None if x != x else float(x) for x in conf[row]]))
    return out
