"""Generate text with a diffusion LM: `python -m experiments.generate [--checkpoint=DIR --prompt=...]`.

With no flags it runs the tiny arithmetic model shipped in `d2cache_jax/assets/tiny_arith` on a
sample prompt, so it needs no download.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from d2cache_jax import cli, files
from d2cache_jax.cli import InputError
from d2cache_jax.config import read_json
from experiments import distributed, flags_common

DEFAULT_CHECKPOINT = os.path.join(cli.ASSETS_DIR, "tiny_arith")
DEFAULT_PROMPT = "111111011101+101111110110="  # a held-out item of the tiny model's binary-addition task

CHECKPOINT = flags.DEFINE_string("checkpoint", DEFAULT_CHECKPOINT,
                                 "Converted or Hugging Face checkpoint directory.")
PROMPT = flags.DEFINE_string("prompt", DEFAULT_PROMPT, "Prompt text.")
CHAT = flags.DEFINE_enum("chat", "auto", ["auto", "yes", "no"],
                         "Apply the tokenizer's chat template (auto: if the checkpoint has one).")
OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Write text, token ids and stats here.")
PROGRESS = flags.DEFINE_bool("progress", False, "Show a progress bar (runs the host loop).")


GENERATION_DEFAULTS = "d2cache_generation.json"


def model_defaults(checkpoint: str) -> dict:
    """Generation defaults a checkpoint ships in `d2cache_generation.json` (the tiny model does); a bad
    file is an InputError naming it. Every key must be a generation option (a misspelt one would
    otherwise be dropped unseen); values are checked with the flags'."""
    path = os.path.join(checkpoint, GENERATION_DEFAULTS)
    if not os.path.exists(path):
        return {}
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise InputError(f"{path}: must hold a JSON object of generation options, got a JSON {type(raw).__name__}")
    unknown = sorted(set(raw) - flags_common.FIELD_NAMES)
    if unknown:
        raise InputError(f"{path}: unknown generation option(s) {', '.join(unknown)}")
    flags_common.check_values(raw, path)
    return raw


def check_output_path(path: str | None, flag: str = "--output_json") -> None:
    """Refuse an output file that could not be written, before any work: a directory, or a place
    whose nearest existing folder is not a writable directory."""
    if not path:
        return
    if os.path.isdir(path):
        raise app.UsageError(f"{flag}={path} is a directory; give a file path")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise app.UsageError(f"{flag}={path}: cannot write there ({parent} is not a writable directory)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.enable_compilation_cache()
    if not PROMPT.value:
        raise app.UsageError("--prompt is empty")
    if not os.path.isdir(CHECKPOINT.value):
        raise app.UsageError(f"--checkpoint directory not found: {CHECKPOINT.value}")
    check_output_path(OUTPUT_JSON.value)
    # Every file and value is checked before the params are loaded and anything is generated.
    defaults, source = model_defaults(CHECKPOINT.value), os.path.join(CHECKPOINT.value, GENERATION_DEFAULTS)
    flags_common.check_values(flags_common.generation_options(defaults), source)

    import d2cache_jax
    from d2cache_jax import checkpoint, sharding
    from d2cache_jax import tokenizer as tok_lib

    cfg = checkpoint.read_config(CHECKPOINT.value)
    tok = tok_lib.load_tokenizer(CHECKPOINT.value)
    if CHAT.value == "yes" and not tok_lib.has_chat_template(tok):
        raise app.UsageError(f"--chat=yes but the tokenizer in {CHECKPOINT.value} has no chat template; "
                             "use --chat=no (or auto)")
    chat = CHAT.value == "yes" or (CHAT.value == "auto" and tok_lib.has_chat_template(tok))
    ids = tok_lib.encode_prompts(tok, [PROMPT.value], chat=chat)
    flags_common.check_context(cfg, flags_common.generation_options(defaults), max(len(i) for i in ids),
                               CHECKPOINT.value)
    options = flags_common.checked_options(defaults, source)
    if PROGRESS.value:
        options["loop"] = "host"

    rt = distributed.setup()
    cfg, params = sharding.load(CHECKPOINT.value, rt.mesh)
    params = distributed.apply_layout(params)
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
    if s["masks_before_eos"][0]:
        print(f"WARNING: generation stopped with {s['masks_before_eos'][0]} positions still masked before the "
              "first EOS; they were output as EOS, so the text is cut short", file=sys.stderr)
    if OUTPUT_JSON.value:
        files.write_json_atomic(OUTPUT_JSON.value, dict(prompt=PROMPT.value, text=text,
                                                  tokens=res.tokens[0].tolist(), options=options, stats=s))


if __name__ == "__main__":
    cli.run(main)
