"""Streaming converter from a published HF checkpoint (LLaDA or Dream) to our converted format.

Every shard header is read and checked first (keys, shapes, dtypes, file sizes) so that a bad
checkpoint fails before anything is written; then our params are built one leaf at a time (a
per-layer leaf from its L published tensors, read by header offsets into its [L, ...] stack, each
transformed into our layout) and handed to `d2cache_jax.checkpoint.write_converted`, which saves
each leaf with orbax as soon as it is complete.

Dependencies go one way: this package uses the library (`d2cache_jax.hf` reads the published layout,
`d2cache_jax.checkpoint` writes ours); the library never imports it.
"""

from __future__ import annotations

import glob
import os

from d2cache_jax import cli
from d2cache_jax import files as files_lib
from d2cache_jax.checkpoint import write_converted
from d2cache_jax.config import ModelConfig
from d2cache_jax.hf.reader import inspect_hf, iter_params
from d2cache_jax.hf.safetensors_io import CheckpointError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "vocab.txt", "tokenizer.model", "added_tokens.json", "chat_template.json",
                   "chat_template.jinja", "generation_config.json", "d2cache_generation.json")


def tokenizer_files(hf_dir: str) -> list[str]:
    """Tokenizer, chat template, generation config and generation defaults files present in `hf_dir`."""
    names = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(hf_dir, n))]
    names += [os.path.basename(p) for p in sorted(glob.glob(os.path.join(hf_dir, "*.jinja")))
              if os.path.basename(p) not in names]
    return [os.path.join(hf_dir, n) for n in names]


def convert(hf_dir: str, out: str, family: str | None = None, dtype: str | None = None,
            clean_partial: bool = False) -> ModelConfig:
    """Convert `hf_dir` into a new directory `out` (error if it exists; atomic rename at the end).

    Everything is checked before the first tensor is read: the output place, partial outputs of
    interrupted runs beside it (removed when provably stale or with `clean_partial`, else an error
    naming them), the config and every shard header."""
    if os.path.exists(out):
        raise FileExistsError(f"output directory already exists: {out}")
    parent = os.path.dirname(os.path.abspath(out))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise CheckpointError(f"--out={out}: {parent} is not a directory")
    files_lib.check_partials(parent, clean_partial)
    if not os.path.isdir(hf_dir):
        raise CheckpointError(f"--hf_dir={hf_dir} is not a directory")
    src = inspect_hf(hf_dir, family, dtype)
    source = {"hf_dir": os.path.abspath(hf_dir), "files": [os.path.basename(f) for f, _ in src.shards]}
    write_converted(src.cfg, iter_params(src), out, tokenizer_files(hf_dir), source, clean_partial)
    return src.cfg


# --- command line -----------------------------------------------------------------------------

def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("hf_dir", None, "Published checkpoint directory (config.json + safetensors).")
    flags.DEFINE_string("out", None, "Output directory; must not exist.")
    flags.DEFINE_enum("dtype", None, ["bfloat16", "float32"],
                      "Cast params to this dtype (default: keep bf16 checkpoints bf16).")
    flags.DEFINE_bool("clean_partial", False, "Remove partial outputs of interrupted conversions found beside "
                                              "--out (those whose writer provably died are always removed).")
    flags.mark_flags_as_required(["hf_dir", "out"])


def main(argv: list[str], family: str) -> None:
    """absl main body: convert --hf_dir into --out; bad input is one clear line on stderr, exit status 2."""
    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    if not f["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    cfg = convert(f.hf_dir, f.out, family, f.dtype, f.clean_partial)
    print(f"wrote {f.out}: {cfg.family} {cfg.n_layers} layers d_model={cfg.d_model} {cfg.param_dtype}")


def run(family: str) -> None:
    """Entry point of `python -m checkpoints_convert.<family>`."""
    _define_flags()
    cli.run(lambda argv: main(argv, family))


if __name__ == "__main__":
    cli.fail("checkpoints_convert.convert is the converters' library: run python -m checkpoints_convert.llada "
             "or python -m checkpoints_convert.dream")
