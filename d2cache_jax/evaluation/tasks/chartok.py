"""Character-level tokenizers for the synthetic tasks: one id per character, LLaDA-style specials first.

Ids 0-3 are `<|endoftext|>` (EOS, also PAD as in LLaDA), `<|startoftext|>` (BOS), `<|mdm_mask|>`
(mask) and `<|unk|>`; the task's characters follow. The Hugging Face files written by
`save_tokenizer` encode exactly as `CharVocab.encode` does.
"""

from __future__ import annotations

import json
import os

import numpy as np

EOS, BOS, MASK, UNK = "<|endoftext|>", "<|startoftext|>", "<|mdm_mask|>", "<|unk|>"
SPECIALS = (EOS, BOS, MASK, UNK)


class CharVocab:
    """A vocabulary of `SPECIALS` plus one token per character of `chars`."""

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars):
            raise ValueError("characters of a vocabulary must be distinct")
        self.vocab: dict[str, int] = {t: i for i, t in enumerate(SPECIALS + tuple(chars))}
        self.eos_id, self.bos_id, self.mask_id, self.unk_id = (self.vocab[t] for t in SPECIALS)
        self.pad_id = self.eos_id
        self.size = len(self.vocab)
        self._chars = {i: t for t, i in self.vocab.items() if i >= len(SPECIALS)}

    def encode(self, text: str) -> list[int]:
        """Ids of plain text (no specials added)."""
        return [self.vocab.get(c, self.unk_id) for c in text]

    def decode(self, ids) -> str:
        """Text of ids, cut at the first EOS; the mask shows as '_' so partial canvases read well."""
        out = []
        for i in np.asarray(ids).tolist():
            if i == self.eos_id:
                break
            out.append("_" if i == self.mask_id else self._chars.get(i, "?") if i >= len(SPECIALS) else "")
        return "".join(out)

    def build_tokenizer(self):
        """A `tokenizers.Tokenizer`: one token per character, specials as added tokens."""
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel(vocab=dict(self.vocab), unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
        tok.decoder = decoders.Fuse()
        tok.add_special_tokens(list(SPECIALS))
        return tok

    def save_tokenizer(self, out_dir: str, model_max_length: int = 512) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into out_dir."""
        os.makedirs(out_dir, exist_ok=True)
        self.build_tokenizer().save(os.path.join(out_dir, "tokenizer.json"))
        specials = dict(bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=UNK, mask_token=MASK)
        tok_cfg = dict(specials, tokenizer_class="PreTrainedTokenizerFast", model_max_length=model_max_length,
                       clean_up_tokenization_spaces=False, add_bos_token=False, add_eos_token=False)
        for name, obj in (("tokenizer_config.json", tok_cfg), ("special_tokens_map.json", specials)):
            with open(os.path.join(out_dir, name), "w") as f:
                json.dump(obj, f, indent=2)
                f.write("\n")
