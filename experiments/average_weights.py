"""Average the weights of checkpoints of one model, e.g. two points of one training run.

    python -m experiments.average_weights --out=DIR CKPT_A CKPT_B [CKPT_C ...]

The output is the element-wise mean, taken in float32 and stored in --dtype, in the published layout
(safetensors + config.json) of the inputs' family. The inputs' other files (tokenizer,
`d2cache_generation.json`, ...) must be byte-identical and are copied. The inputs must share one
model config. Each input is loaded whole in float32, so this is for models that fit in host memory
twice over (the tiny trained ones: `docs/tiny_model.md`).
"""

from __future__ import annotations

import filecmp
import os
import shutil

import jax
import numpy as np
from absl import app, flags

from d2cache_jax import checkpoint, cli, files
from d2cache_jax.cli import InputError

OUT = flags.DEFINE_string("out", None, "Output directory (must not exist; written atomically).")
DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32", "float16"], "dtype of the output weights.")

# Written by `export_hf`; everything else in an input directory is carried over as is.
WEIGHT_FILES = ("config.json", "model.safetensors.index.json")


def _extra_files(path: str) -> list[str]:
    return sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n))
                  and n not in WEIGHT_FILES and not n.endswith(".safetensors"))


def average(inputs: list[str], out_dir: str, dtype: str = "bfloat16") -> str:
    """Write the mean of the checkpoints `inputs` (HF-layout or converted directories) to `out_dir`."""
    if len(inputs) < 2:
        raise InputError(f"give at least two checkpoints to average, got {len(inputs)}")
    cfg = checkpoint.read_config(inputs[0])
    extras = _extra_files(inputs[0]) if os.path.isfile(os.path.join(inputs[0], "config.json")) else []
    for path in inputs[1:]:
        other = checkpoint.read_config(path)
        if other != cfg:
            raise InputError(f"{path}: model config differs from {inputs[0]}'s: {other} != {cfg}")
        for name in extras:
            if not filecmp.cmp(os.path.join(inputs[0], name), os.path.join(path, name), shallow=False):
                raise InputError(f"{os.path.join(path, name)} differs from {os.path.join(inputs[0], name)}")
    if os.path.exists(out_dir):
        raise FileExistsError(f"output directory already exists: {out_dir}")

    total = None
    for path in inputs:
        params = jax.tree.map(lambda v: np.asarray(v, np.float32), checkpoint.load(path, dtype="float32")[1])
        total = params if total is None else jax.tree.map(np.add, total, params)
    mean = jax.tree.map(lambda v: v / len(inputs), total)

    from d2cache_jax.hf.layout import export_hf

    with files.atomic_dir(out_dir) as tmp:
        weights = os.path.join(tmp, "weights")
        export_hf(cfg, mean, weights, dtype=dtype)
        for name in os.listdir(weights):
            os.rename(os.path.join(weights, name), os.path.join(tmp, name))
        os.rmdir(weights)
        for name in extras:
            shutil.copyfile(os.path.join(inputs[0], name), os.path.join(tmp, name))
    return out_dir


def main(argv: list[str]) -> None:
    if not OUT.value:
        raise app.UsageError("--out is required")
    out = average(list(argv[1:]), OUT.value, DTYPE.value)
    print(f"wrote the mean of {len(argv) - 1} checkpoints to {out}")


if __name__ == "__main__":
    cli.run(main)
