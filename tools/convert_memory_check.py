"""Peak resident memory of the streaming converter on a synthetic multi-shard bf16 checkpoint.

Writes a medium LLaDA-layout checkpoint (default ~2.2 GiB in 4 shards) one tensor at a time, runs
`python -m checkpoints_convert.llada` on it in a child process and reads that child's max RSS with
`getrusage(RUSAGE_CHILDREN)` in a small wrapper process; a second child that only imports the same
modules gives the baseline. The converter builds each stacked [L, ...] leaf from its L published
tensors, so its peak should be about the baseline plus the largest stacked leaf (plus one tensor and
orbax's buffers), never the whole model. Prints the peak against the largest stacked leaf and the
largest shard, and deletes every synthetic file afterwards.

    python -m tools.convert_memory_check [--n_layers=20 --num_shards=4 --workdir=/tmp]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from absl import flags

from d2cache_jax import cli
from d2cache_jax.config import ModelConfig
from d2cache_jax.hf.layout import hf_config, key_map, shard_names, split_shards
from d2cache_jax.hf.safetensors_io import DTYPES, write_safetensors
from d2cache_jax.params import param_shapes

flags.DEFINE_integer("d_model", 2048, "Width.")
flags.DEFINE_integer("n_layers", 20, "Layers.")
flags.DEFINE_integer("n_heads", 16, "Heads.")
flags.DEFINE_integer("mlp_hidden", 5632, "MLP hidden size.")
flags.DEFINE_integer("vocab", 32000, "Vocabulary.")
flags.DEFINE_integer("num_shards", 4, "Shards.")
flags.DEFINE_string("workdir", None, "Where to put the synthetic files (default: system temp).")
flags.DEFINE_enum("order", "model", ["model", "by_type"],
                  "Key order in the shards: model order (embed, layer 0, ...; like save_pretrained), or "
                  "by_type (every layer's q_proj, then every k_proj, ...), the worst case for streaming.")
flags.DEFINE_bool("keep", False, "Keep the synthetic checkpoint and the converted output.")
FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def medium_config() -> ModelConfig:
    v = FLAGS.vocab
    return ModelConfig(family="llada", vocab_size=v, d_model=FLAGS.d_model, n_layers=FLAGS.n_layers,
                       n_heads=FLAGS.n_heads, n_kv_heads=FLAGS.n_heads, head_dim=FLAGS.d_model // FLAGS.n_heads,
                       mlp_hidden=FLAGS.mlp_hidden, rms_norm_eps=1e-5, rope_theta=500000.0, qkv_bias=False,
                       max_seq_len=4096, mask_token_id=v - 1, eos_token_id=v - 2, pad_token_id=v - 2)


def write_synthetic(cfg: ModelConfig, out: str, num_shards: int, order: str) -> list[int]:
    """A bf16 checkpoint in the published LLaDA layout, generated tensor by tensor; shard sizes."""
    os.makedirs(out)
    entries = key_map(cfg, "llada")
    keys, bf16 = list(entries), DTYPES["BF16"]
    if order == "by_type":
        kind = lambda k: k.split(".", 4)[-1] if ".blocks." in k else k
        keys.sort(key=lambda k: (".blocks." in k, kind(k)))
    shard_of = split_shards([int(np.prod(entries[k].hf_shape)) * 2 for k in keys], num_shards)
    files = shard_names(num_shards)
    rng = np.random.default_rng(0)
    get = lambda k: (0.02 * rng.standard_normal(entries[k].hf_shape, dtype=np.float32)).astype(bf16)
    for s, name in enumerate(files):
        specs = {k: (bf16, entries[k].hf_shape) for k, sh in zip(keys, shard_of) if sh == s}
        write_safetensors(os.path.join(out, name), specs, get)
    index = {"metadata": {}, "weight_map": {k: files[sh] for k, sh in zip(keys, shard_of)}}
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config(cfg, "llada"), f)
    return [os.path.getsize(os.path.join(out, n)) for n in files]


def largest_leaf_bytes(cfg: ModelConfig) -> int:
    """Bytes (bf16) of the largest params leaf, per-layer leaves counted with all L layers."""
    leaves = jax.tree.leaves(param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))
    return max(int(np.prod(s)) for s in leaves) * 2


def largest_tensor_bytes(cfg: ModelConfig) -> int:
    """Bytes (bf16) of the largest published tensor."""
    return max(int(np.prod(e.hf_shape)) for e in key_map(cfg, "llada").values()) * 2


# Runs argv[2:] and writes its max RSS (KiB) to argv[1]. A fresh small process does the fork, so the
# measured child does not inherit this (large) process's resident pages in its accounting.
_WRAPPER = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
            "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
            "sys.exit(rc)")


def child_max_rss(cmd: list[str], work: str) -> tuple[int, float]:
    """Run `cmd` in a clean child, return (its max RSS in bytes, wall seconds); raise if it fails."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    report = os.path.join(work, "maxrss.txt")
    t0 = time.time()
    subprocess.run([sys.executable, "-S", "-c", _WRAPPER, report, *cmd], cwd=ROOT, env=env, check=True)
    with open(report) as f:
        kib = int(f.read())  # ru_maxrss is in KiB on Linux
    return kib * 1024, time.time() - t0


def main(argv):
    del argv
    cfg = medium_config()
    work = tempfile.mkdtemp(dir=FLAGS.workdir, prefix="convert_mem_")
    try:
        src, out = os.path.join(work, "hf"), os.path.join(work, "converted")
        t0 = time.time()
        sizes = write_synthetic(cfg, src, FLAGS.num_shards, FLAGS.order)
        gib = 1 << 30
        print(f"synthetic checkpoint ({FLAGS.order} order): {sum(sizes) / gib:.2f} GiB in {len(sizes)} shards, largest "
              f"{max(sizes) / gib:.3f} GiB ({time.time() - t0:.0f}s to write)")
        base, _ = child_max_rss([sys.executable, "-c", "import checkpoints_convert.convert, orbax.checkpoint"],
                                work)
        peak, wall = child_max_rss([sys.executable, "-m", "checkpoints_convert.llada", f"--hf_dir={src}",
                                    f"--out={out}"], work)
        largest, leaf, tensor = max(sizes), largest_leaf_bytes(cfg), largest_tensor_bytes(cfg)
        print(f"largest stacked leaf {leaf / gib:.3f} GiB, largest published tensor {tensor / gib:.3f} GiB")
        print(f"converter: {wall:.0f}s, peak RSS {peak / gib:.3f} GiB = {peak / largest:.2f}x the largest shard")
        print(f"import-only baseline RSS {base / gib:.3f} GiB; peak minus baseline = {(peak - base) / gib:.3f} GiB "
              f"= {(peak - base) / leaf:.2f}x the largest stacked leaf = {(peak - base) / largest:.2f}x the largest "
              f"shard")
    finally:
        if FLAGS.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    cli.run(main)
