"""Generate text with a diffusion LM: `python -m experiments.generate [--checkpoint=DIR --prompt=...]`.

With no flags it runs the tiny arithmetic model shipped in `d2cache_jax/assets/tiny_arith` on a
sample prompt, so it needs no download.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from d2cache_jax import files
from experiments import distributed, flags_common

DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "d2cache_jax", "assets", "tiny_arith")
DEFAULT_PROMPT = "111111011101+101111110110="  # a held-out item of the tiny model's binary-addition task

CHECKPOINT = flags.DEFINE_string("checkpoint", DEFAULT_CHECKPOINT,
                                 "Converted or Hugging Face checkpoint directory.")
PROMPT = flags.DEFINE_string("prompt", DEFAULT_PROMPT, "Prompt text.")
CHAT = flags.DEFINE_enum("chat", "auto", ["auto", "yes", "no"],
                         "Apply the tokenizer's chat template (auto: if the checkpoint has one).")
OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Write text, token ids and stats here.")
PROGRESS = flags.DEFINE_bool("progress", False, "Show a progress bar (runs the host loop).")


def model_defaults(checkpoint: str) -> dict:
    """Generation defaults a checkpoint ships in `d2cache_generation.json` (the tiny model does)."""
    path = os.path.join(checkpoint, "d2cache_generation.json")
    if os.path.exists(path):
        with open(path) as f:
            return {k: v for k, v in json.load(f).items() if k in flags_common.FIELD_NAMES}
    return {}



def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not PROMPT.value:
        raise app.UsageError("--prompt is empty")
    if not os.path.isdir(CHECKPOINT.value):
        raise app.UsageError(f"--checkpoint directory not found: {CHECKPOINT.value}")
    options = flags_common.checked_options(model_defaults(CHECKPOINT.value))
    if PROGRESS.value:
        options["loop"] = "host"

    import d2cache_jax
    from d2cache_jax import sharding
    from d2cache_jax import tokenizer as tok_lib

    rt = distributed.setup()
    cfg, params = sharding.load(CHECKPOINT.value, rt.mesh)
    tok = tok_lib.load_tokenizer(CHECKPOINT.value)
    chat = CHAT.value == "yes" or (CHAT.value == "auto" and tok_lib.has_chat_template(tok))
    ids = tok_lib.encode_prompts(tok, [PROMPT.value], chat=chat)
    distributed.check_memory(cfg, options, len(ids), max(len(i) for i in ids), rt.mesh)
    try:
        res = d2cache_jax.generate(cfg, params, ids, progress=PROGRESS.value and rt.is_main, mesh=rt.mesh,
                                   **options)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    if not rt.is_main:
        return
    text = tok_lib.decode(tok, res.tokens[0], int(res.lengths[0]))
    s = res.stats
    print(text)
    print(f"[{s['cache']}/{s['decoder']}] {s['generated_tokens']} tokens, {s['steps']} steps, "
          f"{s['forward_passes']} forward passes, {s['tokens_per_step']:.2f} tok/step, "
          f"{s['tokens_per_s']:.1f} tok/s (run {s['wall_s']:.3f}s, compile {s['compile_s']:.1f}s)")
    if OUTPUT_JSON.value:
        files.write_json_atomic(OUTPUT_JSON.value, dict(prompt=PROMPT.value, text=text,
                                                  tokens=res.tokens[0].tolist(), options=options, stats=s))


if __name__ == "__main__":
    app.run(main)
