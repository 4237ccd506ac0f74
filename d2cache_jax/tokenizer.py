"""Tokenizer helpers: the checkpoint's own Hugging Face tokenizer files, loaded from disk only."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

# Files that hold a vocabulary: a fast tokenizer, a sentencepiece model, BPE or WordPiece vocabularies.
VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


def load_tokenizer(path: str):
    """The transformers tokenizer saved beside a checkpoint (no download, no remote code).

    A folder without tokenizer files, or with files transformers cannot read, is an InputError naming it."""
    from d2cache_jax.cli import InputError

    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    if not any(os.path.isfile(os.path.join(path, n)) for n in VOCAB_FILES):
        raise InputError(f"no tokenizer in {path}: expected one of {', '.join(VOCAB_FILES)} (copy the "
                         "tokenizer files of the original checkpoint there)")
    from transformers import AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()  # our LLaDA/Dream config.json names a model type transformers lacks
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"cannot load the tokenizer in {path}: {why}") from None


def encode_prompts(tokenizer, texts: Sequence[str], chat: bool = False, add_bos: bool = True,
                   prefixes: Sequence[str | None] | None = None) -> list[list[int]]:
    """Token ids per prompt. `chat` applies the checkpoint's chat template (instruct models) with the
    assistant turn opened; otherwise BOS is put in front unless already there (as upstream does).

    `prefixes`: per prompt, the start of the answer (lm-eval's gen_prefix) or None. With `chat` it is
    the open assistant message (the template's `continue_final_message`); otherwise it follows the text.
    """
    out = []
    for row, text in enumerate(texts):
        prefix = prefixes[row] if prefixes is not None else None
        if chat and prefix:
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}, {"role": "assistant", "content": prefix}],
                tokenize=False, continue_final_message=True)
            ids = list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        elif chat:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                                add_generation_prompt=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            ids = list(ids)
        else:
            ids = list(tokenizer(text + (prefix or ""), add_special_tokens=False)["input_ids"])
            bos = tokenizer.bos_token_id
            if add_bos and bos is not None and (not ids or ids[0] != bos):
                ids = [bos] + ids
        out.append([int(i) for i in ids])
    return out


def decode(tokenizer, ids: np.ndarray | Sequence[int], length: int | None = None) -> str:
    """Text of the generated ids up to `length` (the first stop token), special tokens dropped."""
    ids = [int(i) for i in (ids if length is None else ids[:length])]
    return tokenizer.decode(ids, skip_special_tokens=True)


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer carries a chat template (instruct checkpoints do)."""
    return bool(getattr(tokenizer, "chat_template", None))
