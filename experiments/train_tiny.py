"""Train a tiny LLaDA-architecture model on a synthetic task (masked-diffusion SFT).

    python -m experiments.train_tiny --workdir=/tmp/tiny_arith --export_dir=d2cache_jax/assets/tiny_arith
    python -m experiments.train_tiny --task=trace --workdir=/tmp/tiny_trace ...   # see docs/tiny_model.md

`--task` names a module of `d2cache_jax.evaluation.tasks` with the training interface (`synthetic`:
binary addition, 32-token answers; `trace`: long multi-block answers).

Objective (LLaDA SFT): per sequence t ~ U(eps, 1); each answer token (EOS padding included) is
replaced by the mask token with probability t; loss = sum over masked positions of CE / t, divided by
the answer length, averaged over the batch. Prompt tokens are never masked. With `--block_mask=p`, a
share p of the sequences is noised as semi-autoregressive decoding sees them instead: one answer block
of `block_length` is masked with probability t, every later answer position is masked, and the loss
is that block's masked CE / t over the block's length (the state a 32-token block decoder is in,
which uniform masking almost never draws for a long answer). With `--stale_kv=p`, the first share p
of every batch is block-noised and decoded as Fast-dLLM's dual cache runs a block: a full pass over
the canvas with that block all masked gives every layer's keys and values, and the block's rows are
then recomputed over those frozen states (no gradient through them), so the model learns not to
need the masked suffix or the prefix refreshed within a block. `--stale_first=q` gives a share q of
those sequences d2Cache's staleness: their prompt and masked suffix come from a pass with the whole
answer masked (d2Cache's first step, after which it recomputes only the rows it selects). Data and
noise are functions of (seed, step), so a run killed mid-way resumes from its last orbax checkpoint
and ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags, logging
from tqdm import tqdm

from d2cache_jax import cli, files
from d2cache_jax.config import ModelConfig, tiny_llada
from d2cache_jax.evaluation.tasks import synthetic, trace
from d2cache_jax.model import forward_rows, gather_rows, head, positions_from_mask, unstack_layers
from d2cache_jax.params import init_params, num_params

TASKS = {"synthetic": synthetic, "trace": trace}

FLAGS = flags.FLAGS
flags.DEFINE_enum("task", "synthetic", sorted(TASKS), "Training task (a module of d2cache_jax.evaluation.tasks).")
flags.DEFINE_string("workdir", "/tmp/tiny_arith", "Run directory (orbax checkpoints, metrics).")
flags.DEFINE_string("export_dir", "", "If set, write the final model here in the LLaDA HF layout.")
flags.DEFINE_enum("export_dtype", "bfloat16", ["bfloat16", "float32", "float16"], "dtype of the exported safetensors.")
flags.DEFINE_integer("seed", 0, "Seed of init, data stream and masking noise.", lower_bound=0, upper_bound=2**31 - 2)
flags.DEFINE_integer("steps", 500, "Optimizer steps.", lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Sequences per step.", lower_bound=1)
flags.DEFINE_float("lr", 3e-3, "Peak learning rate.")
flags.DEFINE_integer("warmup", 50, "Linear warmup steps.", lower_bound=0)
flags.DEFINE_float("weight_decay", 0.05, "AdamW weight decay (matrices only).", lower_bound=0.0)
flags.DEFINE_float("eps", 1e-3, "Lower bound of the mask ratio t.")
flags.DEFINE_float("block_mask", 0.0, "Share of sequences noised block-wise (one block partly masked, the "
                   "rest of the answer masked), as semi-AR decoding sees them.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("stale_kv", 0.0, "Share of each batch block-noised and decoded over states frozen at the "
                   "block's start, as the dual cache decodes.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("stale_first", 0.0, "Share of the --stale_kv sequences whose prompt and masked suffix are "
                   "frozen since the whole answer was masked, as d2Cache keeps them.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("max_trunc", 4, "Drop up to this many trailing EOS slots per sequence (gen_length robustness).",
                     lower_bound=0)
flags.DEFINE_integer("d_model", 128, "Model width.", lower_bound=1)
flags.DEFINE_integer("n_layers", 4, "Layers.", lower_bound=1)
flags.DEFINE_integer("n_heads", 4, "Attention heads.", lower_bound=1)
flags.DEFINE_integer("mlp_hidden", 512, "SwiGLU hidden size.", lower_bound=1)
flags.DEFINE_integer("ckpt_every", 100, "Save an orbax checkpoint every this many steps.", lower_bound=1)
flags.DEFINE_integer("eval_every", 200, "Greedy-decode eval every this many steps (0: never during training).",
                     lower_bound=0)
flags.DEFINE_integer("eval_n", 64, "Held-out items per eval.", lower_bound=1)
flags.register_validator("lr", lambda v: v > 0, "--lr must be > 0")
flags.register_validator("eps", lambda v: 0 < v < 1, "--eps must be in (0, 1)")


def task_module(task):
    """The task module for a name in `TASKS` (a module passes through)."""
    if not isinstance(task, str):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown training task {task!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[task]


def total_len(task) -> int:
    """Training sequence length: the longest prompt (with BOS) plus the generation canvas."""
    task = task_module(task)
    return task.MAX_PROMPT_LEN + task.GEN_LENGTH


def model_config(d_model: int = 128, n_layers: int = 4, n_heads: int = 4, mlp_hidden: int = 512,
                 task="synthetic") -> ModelConfig:
    """The tiny LLaDA config for the task's vocabulary and length (fp32 for training)."""
    task = task_module(task)
    max_seq_len = max(128, 1 << (total_len(task) - 1).bit_length())
    return tiny_llada(vocab_size=task.VOCAB_SIZE, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                      n_kv_heads=n_heads, head_dim=d_model // n_heads, mlp_hidden=mlp_hidden,
                      max_seq_len=max_seq_len, mask_token_id=task.MASK_ID, eos_token_id=task.EOS_ID,
                      pad_token_id=task.PAD_ID, bos_token_id=task.BOS_ID, param_dtype="float32")


# --- data -------------------------------------------------------------------------------------

def train_batch(seed: int, step: int, batch_size: int, max_trunc: int = 0,
                task="synthetic") -> dict[str, np.ndarray]:
    """Batch `step` of stream `seed`: tokens [B,T], prompt_len [B], valid_len [B] (a pure function)."""
    task = task_module(task)
    length = total_len(task)
    start = task.item_seeds("train", 1, seed)[0] + step * batch_size
    rows, plens = zip(*(task.training_sequence(task.item_from_seed(start + j, "train"), length)
                        for j in range(batch_size)))
    rng = np.random.default_rng([seed, step, 7])
    trunc = rng.integers(0, max_trunc + 1, size=batch_size) if max_trunc else np.zeros(batch_size, int)
    return dict(tokens=np.stack(rows), prompt_len=np.array(plens, np.int32),
                valid_len=(length - trunc).astype(np.int32))


# --- objective and step ----------------------------------------------------------------------

class Noised(NamedTuple):
    """A noised batch: model input, which positions were masked, the answer region, keys, ratio t."""

    noisy: jax.Array  # [B, T] tokens with masked answer positions replaced by the mask id
    masked: jax.Array  # [B, T] bool
    answer: jax.Array  # [B, T] bool: answer + EOS padding inside the valid length
    key_mask: jax.Array  # [B, T] bool: valid (attended) positions
    t: jax.Array  # [B] mask ratio
    weight: jax.Array  # [B, T] float: loss weight of each position's CE (0 where not scored)
    current: jax.Array  # [B, T] bool: the block being decoded (all False for uniform noise)
    block_start: jax.Array  # [B] int: first position of that block (the prompt length for uniform noise)


def add_noise(cfg: ModelConfig, batch: dict, key: jax.Array, eps: float = 1e-3, block_mask: float = 0.0,
              block_length: int = 32, n_block: int = 0) -> Noised:
    """Forward process: t ~ U(eps, 1) per sequence, each answer token masked with probability t.

    A share `block_mask` of the sequences, and the first `n_block` of them always, are noised
    block-wise instead (see the module docstring).
    """
    tokens = batch["tokens"]
    b, t_len = tokens.shape
    pos = jnp.arange(t_len)[None, :]
    key_mask = pos < batch["valid_len"][:, None]
    answer = (pos >= batch["prompt_len"][:, None]) & key_mask
    k_t, k_m = jax.random.split(key)
    t = jax.random.uniform(k_t, (b,), minval=eps, maxval=1.0)
    coin = jax.random.uniform(k_m, (b, t_len)) < t[:, None]
    masked = coin & answer
    weight = jnp.where(masked, 1.0 / t[:, None], 0.0) / jnp.maximum(jnp.sum(answer, 1, keepdims=True), 1)
    current = jnp.zeros_like(answer)
    block_start = batch["prompt_len"]
    if block_mask > 0 or n_block > 0:
        k_b, k_u = jax.random.split(jax.random.fold_in(key, 1))  # the uniform draws stay as they were
        rel = pos - batch["prompt_len"][:, None]
        n_blocks = -(-(batch["valid_len"] - batch["prompt_len"]) // block_length)
        blk = jnp.floor(jax.random.uniform(k_b, (b,)) * n_blocks).astype(jnp.int32)[:, None]
        in_block = answer & (rel // block_length == blk)
        block_masked = (in_block & coin) | (answer & (rel // block_length > blk))
        block_weight = jnp.where(in_block & coin, 1.0 / t[:, None], 0.0) / jnp.maximum(
            jnp.sum(in_block, 1, keepdims=True), 1)
        use = ((jax.random.uniform(k_u, (b,)) < block_mask) | (jnp.arange(b) < n_block))[:, None]
        masked = jnp.where(use, block_masked, masked)
        weight = jnp.where(use, block_weight, weight)
        current = use & in_block
        block_start = jnp.where(use[:, 0], batch["prompt_len"] + blk[:, 0] * block_length, block_start)
    return Noised(jnp.where(masked, cfg.mask_token_id, tokens), masked, answer, key_mask, t, weight, current,
                  block_start)


def stale_block_logits(cfg: ModelConfig, params, n: Noised, block_length: int,
                       n_first: int = 0) -> tuple[jax.Array, jax.Array]:
    """Logits of each sequence's current block decoded as under the dual cache: the block's rows are
    recomputed over every other row's keys and values from a pass with the block all masked.

    The first `n_first` sequences take their prompt and later-answer rows from a pass with the whole
    answer masked instead, as d2Cache keeps them from its first step (only the rows it selects are
    recomputed: the block's masked rows and the rows decoded since).
    Returns (logits [B, block_length, V], the block's positions [B, block_length]; T where past the end).
    """
    t_len = n.noisy.shape[1]
    positions = positions_from_mask(n.key_mask)
    at_start = jnp.where(n.current, cfg.mask_token_id, n.noisy)
    kv = forward_rows(cfg, params, at_start, positions, n.key_mask).kv
    if n_first:
        f = slice(0, n_first)
        at_first = jnp.where(n.answer[f], cfg.mask_token_id, n.noisy[f])
        kv0 = forward_rows(cfg, params, at_first, positions[f], n.key_mask[f]).kv
        pos = jnp.arange(t_len)[None, :]
        frozen = ((pos < n.block_start[f, None]) & ~n.answer[f]) | (pos >= n.block_start[f, None] + block_length)
        kv = jax.tree.map(lambda a0, a: a.at[:, f].set(jnp.where(frozen[None, :, :, None, None], a0, a[:, f])),
                          kv0, kv)
    kv = jax.lax.stop_gradient(kv)
    idx = n.block_start[:, None] + jnp.arange(block_length, dtype=jnp.int32)
    idx = jnp.where(idx < t_len, idx, t_len)
    hidden = forward_rows(cfg, params, n.noisy, positions, n.key_mask, q_idx=idx, kv=kv).hidden
    return head(params, cfg, hidden), idx


def diffusion_loss(cfg: ModelConfig, params, batch: dict, key: jax.Array, eps: float = 1e-3,
                   block_mask: float = 0.0, block_length: int = 32, n_stale: int = 0, n_first: int = 0):
    """LLaDA SFT loss of one batch (sum of masked CE / t / answer length, batch mean) and masked accuracy.

    The first `n_stale` sequences are block-noised and scored on `stale_block_logits` (the first
    `n_first` of them with d2Cache's staleness).
    """
    tokens = batch["tokens"]
    # Per-layer weights inside the loss: a scanned forward zero-fills stacked [L, ...] buffers for the
    # backward's residuals at every step (about 70 ms of a 1.1 s step at tiny_trace's shape).
    params = unstack_layers(params)
    n = add_noise(cfg, batch, key, eps, block_mask, block_length, n_block=n_stale)
    fresh = jax.tree.map(lambda a: a[n_stale:], n)
    hidden = forward_rows(cfg, params, fresh.noisy, positions_from_mask(fresh.key_mask), fresh.key_mask).hidden
    per_seq, hits, scored = _score(head(params, cfg, hidden), tokens[n_stale:], fresh.weight, fresh.masked)
    if n_stale:
        stale = jax.tree.map(lambda a: a[:n_stale], n)
        s_logits, idx = stale_block_logits(cfg, params, stale, block_length, n_first)
        inside = idx < tokens.shape[1]
        s_per_seq, s_hits, s_scored = _score(s_logits, gather_rows(tokens[:n_stale], idx),
                                             jnp.where(inside, gather_rows(stale.weight, idx), 0.0),
                                             inside & gather_rows(stale.masked, idx))
        per_seq, hits, scored = jnp.concatenate([s_per_seq, per_seq]), hits + s_hits, scored + s_scored
    return jnp.mean(per_seq), hits / jnp.maximum(scored, 1)


def _score(logits: jax.Array, targets: jax.Array, weight: jax.Array, masked: jax.Array):
    """Per-sequence weighted CE, argmax hits on masked positions, and how many were masked."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return (jnp.sum(weight * ce, axis=1), jnp.sum((logits.argmax(-1) == targets) & masked), jnp.sum(masked))


def make_optimizer(lr: float, warmup: int, steps: int, weight_decay: float) -> optax.GradientTransformation:
    """AdamW with linear warmup and cosine decay to 10% of the peak; no decay on vectors."""
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), lr * 0.1)
    decay_mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(sched, b1=0.9, b2=0.98, weight_decay=weight_decay, mask=decay_mask))


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(3,),
                   static_argnames=("block_mask", "block_length", "n_stale", "n_first"))
def train_step(cfg: ModelConfig, opt: optax.GradientTransformation, eps: float, state: dict, batch: dict,
               key: jax.Array, block_mask: float = 0.0, block_length: int = 32, n_stale: int = 0,
               n_first: int = 0):
    """One optimizer step: state {params, opt_state} -> (new state, metrics)."""
    (loss, acc), grads = jax.value_and_grad(
        lambda p: diffusion_loss(cfg, p, batch, key, eps, block_mask, block_length, n_stale, n_first),
        has_aux=True)(state["params"])
    updates, opt_state = opt.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return dict(params=params, opt_state=opt_state), dict(loss=loss, acc=acc, gnorm=optax.global_norm(grads))


# --- greedy decoding for evaluation -----------------------------------------------------------

@functools.partial(jax.jit, static_argnums=(0, 3, 5, 6))
def _greedy_jit(cfg: ModelConfig, params, canvas: jax.Array, n_steps: int, key_mask: jax.Array,
                gen_start: int, block_length: int):
    pos = positions_from_mask(key_mask)
    block = jnp.maximum(jnp.arange(canvas.shape[1]) - gen_start, -1) // block_length  # prompt: -1

    def body(_, canvas):
        logits = head(params, cfg, forward_rows(cfg, params, canvas, pos, key_mask).hidden)
        probs = jax.nn.softmax(logits, axis=-1)
        is_mask = canvas == cfg.mask_token_id
        current = jnp.min(jnp.where(is_mask, block[None], canvas.shape[1]), axis=1, keepdims=True)
        conf = jnp.where(is_mask & (block[None] == current), probs.max(-1), -1.0)
        i = conf.argmax(-1)  # [B] the most confident masked position
        rows = jnp.arange(canvas.shape[0])
        still = conf[rows, i] >= 0
        return canvas.at[rows, i].set(jnp.where(still, logits[rows, i].argmax(-1), canvas[rows, i]))

    return jax.lax.fori_loop(0, n_steps, body, canvas)


def greedy_generate(cfg: ModelConfig, params, prompts: list[list[int]], gen_length: int = synthetic.GEN_LENGTH,
                    batch_size: int = 64, block_length: int | None = None) -> np.ndarray:
    """Low-confidence remasking, one token per step (gen_length forward passes), no cache; with
    `block_length`, semi-autoregressive: only the first block that still holds masks is decoded.

    Prompts are left-padded (masked out of attention, positions start at each prompt's BOS).
    Returns the generated ids [N, gen_length].
    """
    p_len = max(len(p) for p in prompts)
    out = []
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s:s + batch_size]
        n = len(chunk)
        chunk = chunk + [chunk[-1]] * (batch_size - n) if len(prompts) > batch_size else chunk
        canvas = np.full((len(chunk), p_len + gen_length), cfg.mask_token_id, np.int32)
        key_mask = np.ones(canvas.shape, bool)
        for r, p in enumerate(chunk):
            canvas[r, p_len - len(p):p_len] = p
            canvas[r, :p_len - len(p)] = cfg.pad_token_id
            key_mask[r, :p_len - len(p)] = False
        res = _greedy_jit(cfg, params, jnp.asarray(canvas), gen_length, jnp.asarray(key_mask), p_len,
                          block_length or gen_length)
        out.append(np.asarray(res)[:n, p_len:])
    return np.concatenate(out)


def evaluate(cfg: ModelConfig, params, n: int, seed: int = 0, task="synthetic") -> dict[str, float]:
    """Greedy accuracy on n held-out items (final answer correct, and whole worked answer exact), decoded
    in the task's blocks as the evaluation harness decodes them."""
    task = task_module(task)
    items = task.make_items("eval", n, seed)
    gen = greedy_generate(cfg, params, [task.encode_prompt(it) for it in items], task.GEN_LENGTH,
                          block_length=task.GENERATION_DEFAULTS["block_length"])
    texts = [task.decode(g) for g in gen]
    return dict(acc=float(np.mean([task.check(it, t) for it, t in zip(items, texts)])),
                exact=float(np.mean([task.check_exact(it, t) for it, t in zip(items, texts)])))


# --- checkpoint export ------------------------------------------------------------------------

def export(cfg: ModelConfig, params, out_dir: str, dtype: str, task="synthetic") -> None:
    """Write params in the published LLaDA layout (+ config.json) and the tokenizer files."""
    from d2cache_jax.hf.layout import export_hf

    task = task_module(task)
    export_hf(cfg, params, out_dir, "llada", num_shards=1, dtype=dtype)
    task.save_tokenizer(out_dir)
    files.write_json_atomic(os.path.join(out_dir, "d2cache_generation.json"), task.GENERATION_DEFAULTS)


# --- training loop ---------------------------------------------------------------------------

def train(workdir: str, steps: int, *, seed: int = 0, batch_size: int = 32, lr: float = 3e-3,
          warmup: int = 50, weight_decay: float = 0.05, eps: float = 1e-3, block_mask: float = 0.0,
          stale_kv: float = 0.0, stale_first: float = 0.0, max_trunc: int = 4,
          model: dict | None = None, ckpt_every: int = 100, eval_every: int = 0, eval_n: int = 64,
          stop_after: int | None = None, progress: bool = True, task="synthetic") -> tuple[ModelConfig, dict]:
    """Train (or resume from `workdir`'s last checkpoint) up to `steps`; returns (config, params).

    `stop_after` ends the loop early at that step, as an interruption would (for tests).
    """
    cfg = model_config(**(model or {}), task=task)
    logging.info("model: %s, %.2fM params", cfg, num_params(cfg) / 1e6)
    opt = make_optimizer(lr, warmup, steps, weight_decay)
    params = init_params(cfg, jax.random.key(seed), randomize_norms=False)
    state = dict(params=params, opt_state=opt.init(params))

    os.makedirs(workdir, exist_ok=True)
    mgr = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "ckpt")),
                                options=ocp.CheckpointManagerOptions(max_to_keep=2))
    start = mgr.latest_step() or 0
    if start > steps:
        mgr.close()
        raise cli.InputError(f"{workdir} holds a checkpoint at step {start}, past --steps={steps}: give "
                             f"--steps >= {start}, or another --workdir")
    if start:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        state = mgr.restore(start, args=ocp.args.StandardRestore(abstract))
        logging.info("resumed from step %d", start)

    end = min(steps, stop_after or steps)
    noise_key = jax.random.key(seed + 1)
    log_path = os.path.join(workdir, "metrics.jsonl")
    t0 = time.time()
    block_length = task_module(task).GENERATION_DEFAULTS["block_length"]
    n_stale = round(stale_kv * batch_size)
    n_first = round(stale_first * n_stale)
    bar = tqdm(range(start, end), initial=start, total=steps, desc="train", disable=not progress)
    for step in bar:
        batch = jax.tree.map(jnp.asarray, train_batch(seed, step, batch_size, max_trunc, task))
        state, m = train_step(cfg, opt, eps, state, batch, jax.random.fold_in(noise_key, step),
                              block_mask=block_mask, block_length=block_length, n_stale=n_stale,
                              n_first=n_first)
        done = step + 1
        if done % 10 == 0 or done == end:
            m = {k: float(v) for k, v in m.items()}
            bar.set_postfix(loss=f"{m['loss']:.4f}", acc=f"{m['acc']:.3f}")
            rec = dict(step=done, elapsed_s=round(time.time() - t0, 1), **m)
            if eval_every and done % eval_every == 0:
                rec.update({f"eval_{k}": v for k, v in evaluate(cfg, state["params"], eval_n, task=task).items()})
                bar.write(json.dumps(rec))
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if done % ckpt_every == 0 or done == end:
            mgr.save(done, args=ocp.args.StandardSave(state))
    mgr.wait_until_finished()
    mgr.close()
    bar.close()
    return cfg, state["params"]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    model = dict(d_model=FLAGS.d_model, n_layers=FLAGS.n_layers, n_heads=FLAGS.n_heads,
                 mlp_hidden=FLAGS.mlp_hidden)
    try:
        model_config(**model, task=FLAGS.task)
    except ValueError as e:
        raise app.UsageError(f"--d_model/--n_heads: {e}") from e
    if FLAGS.export_dir and os.path.exists(FLAGS.export_dir):
        raise app.UsageError(f"--export_dir={FLAGS.export_dir} already exists (checked before training, "
                             "so no run is lost to it)")
    if os.path.isfile(FLAGS.workdir):
        raise app.UsageError(f"--workdir={FLAGS.workdir} is a file, not a folder")
    t0 = time.time()
    cfg, params = train(FLAGS.workdir, FLAGS.steps, seed=FLAGS.seed, batch_size=FLAGS.batch_size, lr=FLAGS.lr,
                        warmup=FLAGS.warmup, weight_decay=FLAGS.weight_decay, eps=FLAGS.eps,
                        block_mask=FLAGS.block_mask, stale_kv=FLAGS.stale_kv,
                        stale_first=FLAGS.stale_first, max_trunc=FLAGS.max_trunc, model=model,
                        ckpt_every=FLAGS.ckpt_every, eval_every=FLAGS.eval_every, eval_n=FLAGS.eval_n, task=FLAGS.task)
    res = evaluate(cfg, params, FLAGS.eval_n, task=FLAGS.task)
    print(json.dumps(dict(step=FLAGS.steps, final_eval=res, eval_n=FLAGS.eval_n,
                          wall_s_this_invocation=round(time.time() - t0, 1))))
    if FLAGS.export_dir:
        export(cfg, params, FLAGS.export_dir, FLAGS.export_dtype, FLAGS.task)
        logging.info("exported to %s", FLAGS.export_dir)


if __name__ == "__main__":
    cli.run(main)
