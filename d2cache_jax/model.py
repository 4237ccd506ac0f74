"""The bidirectional Transformer shared by LLaDA and Dream, as Flax NNX modules with scanned layers.

`Transformer(cfg, rngs=...)` holds an embedding, one `Block` whose parameters are stacked on a leading
layer axis (built with `nnx.vmap`), a final RMSNorm and the output head. Calls run the stack with
`jax.lax.scan`, so a traced program holds one layer whatever the depth.

The params pytree everything else passes around (jitted steps, caches, checkpoints, shardings) is the
model's `nnx.State` as a pure dict, JAX `[in, out]` order with heads on their own axis:

    embed.embedding [V, d]; final_norm.scale [d]; lm_head [d, V]
    layers.attn_norm.scale [L, d]; layers.attn.{wq [L,d,H,hd]; wk, wv [L,d,Hkv,hd]; wo [L,H,hd,d];
    (bq [L,H,hd]; bk, bv [L,Hkv,hd])}; layers.mlp_norm.scale [L, d];
    layers.mlp.{w_gate, w_up [L,d,F]; w_down [L,F,d]}

`bind(cfg, params)` merges such a dict into modules (inside jit it costs nothing at run time). Each
parameter carries its logical axes (`sharding_names`) for `d2cache_jax.sharding`; the layer axis is
never sharded.

Every layer can run on a *subset of rows*: `q_idx [B, Q]` names the sequence positions whose queries,
keys and values are recomputed; their fresh K/V are written into the full-length cache and attention
runs over that cache. An index equal to T marks an unused slot: its gather is clamped and its scatter
dropped, so static-shape selections never write into real rows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from d2cache_jax.config import ModelConfig

Params = dict
F32 = jnp.float32


class LayerKV(NamedTuple):
    """Post-RoPE keys and values: [L, B, T, Hkv, hd] for a stack, [B, T, Hkv, hd] for one layer."""

    k: jax.Array
    v: jax.Array


def dtype_of(cfg: ModelConfig):
    return jnp.dtype(cfg.param_dtype)


# --- plain functions (shared by the modules and the caches) ----------------------------------------

def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32, cast back before the weight as the PyTorch references do."""
    xf = x.astype(F32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return w * y.astype(x.dtype)


def rope(x: jax.Array, pos: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding (rotate-half convention) in float32. x [B, S, N, hd], pos [B, S]."""
    hd = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=F32) / hd))
    ang = pos.astype(F32)[..., None] * inv_freq  # [B, S, hd/2]
    cos = jnp.concatenate([jnp.cos(ang)] * 2, -1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(ang)] * 2, -1)[:, :, None, :]
    xf = x.astype(F32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    rot = jnp.concatenate([-x2, x1], axis=-1)
    return (xf * cos + rot * sin).astype(x.dtype)


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """RoPE positions that ignore left padding: cumsum(mask) - 1, padded slots at 0."""
    m = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=1) - 1, 0) * m


def attention(cfg: ModelConfig, q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array,
              need_weights: bool = False):
    """Bidirectional attention of q [B,Q,H,hd] over k, v [B,T,Hkv,hd]; key_mask [B,T] bool.

    Scores and softmax in float32. Returns o [B,Q,H,hd] and, if asked, the head-mean attention
    probabilities [B,Q,T] (float32) that d2Cache's rollout needs.
    """
    b, nq, nh, hd = q.shape
    g = nh // cfg.n_kv_heads
    qg = q.reshape(b, nq, cfg.n_kv_heads, g, hd)
    s = jnp.einsum("bqkgh,btkh->bkgqt", qg, k, preferred_element_type=F32) / jnp.sqrt(F32(hd))
    s = jnp.where(key_mask[:, None, None, None, :], s, jnp.finfo(F32).min)
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("bkgqt,btkh->bqkgh", p.astype(v.dtype), v).reshape(b, nq, nh, hd)
    w = p.mean(axis=(1, 2)) if need_weights else None
    return o, w


def dense(x: jax.Array, w: jax.Array, n_in: int = 1, out_dtype=None) -> jax.Array:
    """x [..., *w.shape[:n_in]] times w -> [..., *w.shape[n_in:]], as one 2-D matmul over the flattened
    rows and features. XLA's CPU backend runs einsums with batch axes ("bsd,df->bsf") through
    transposed layouts: a tiny model's training step took 1.8x as long in its MLP that way."""
    k = math.prod(w.shape[:n_in])
    lead, out = x.shape[:x.ndim - n_in], w.shape[n_in:]
    y = jnp.dot(x.reshape(-1, k), w.reshape(k, -1), preferred_element_type=out_dtype)
    return y.reshape(lead + out)


def gather_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x [B,T,...] at idx [B,Q]; out-of-range indices read the last row (their results are unused)."""
    idx = jnp.minimum(idx, x.shape[1] - 1)
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


# --- modules ---------------------------------------------------------------------------------------

def _param(rngs: nnx.Rngs, shape: tuple[int, ...], dtype, axes: tuple[str | None, ...],
           fan_in: int | None = None, fill: float | None = None) -> nnx.Param:
    """A parameter with its logical axes: normal(0, 1/fan_in) for weights, a constant for norms/biases."""
    if fill is not None:
        value = jnp.full(shape, fill, dtype)
    else:
        value = (jax.random.normal(rngs.params(), shape, F32) / jnp.sqrt(F32(fan_in))).astype(dtype)
    return nnx.Param(value, eager_sharding=False, sharding_names=axes)


class Embed(nnx.Module):
    """Token embedding table [V, d]."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.embedding = _param(rngs, (cfg.vocab_size, cfg.d_model), dtype_of(cfg), ("vocab", "embed"), fan_in=1)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], tokens, axis=0)


class RMSNorm(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.scale = _param(rngs, (cfg.d_model,), dtype_of(cfg), ("embed",), fill=1.0)
        self.eps = cfg.rms_norm_eps

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.scale[...], self.eps)


class Attention(nnx.Module):
    """Q/K/V projections (with Dream's biases), RoPE, and the output projection."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, h, kv, hd, dt = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, dtype_of(cfg)
        self.cfg = cfg
        self.wq = _param(rngs, (d, h, hd), dt, ("embed", "heads", "head_dim"), fan_in=d)
        self.wk = _param(rngs, (d, kv, hd), dt, ("embed", "kv_heads", "head_dim"), fan_in=d)
        self.wv = _param(rngs, (d, kv, hd), dt, ("embed", "kv_heads", "head_dim"), fan_in=d)
        if cfg.qkv_bias:
            self.bq = _param(rngs, (h, hd), dt, ("heads", "head_dim"), fill=0.0)
            self.bk = _param(rngs, (kv, hd), dt, ("kv_heads", "head_dim"), fill=0.0)
            self.bv = _param(rngs, (kv, hd), dt, ("kv_heads", "head_dim"), fill=0.0)
        self.wo = _param(rngs, (h, hd, d), dt, ("heads", "head_dim", "embed"), fan_in=h * hd)

    def values(self, h: jax.Array) -> jax.Array:
        """V [B,S,Hkv,hd] of normed rows h [B,S,d] (V carries no RoPE)."""
        v = dense(h, self.wv[...])
        return v + self.bv[...] if self.cfg.qkv_bias else v

    def qkv(self, h: jax.Array, pos: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Normed rows h [B,S,d] at positions pos [B,S] -> post-RoPE q [B,S,H,hd], k and v [B,S,Hkv,hd]."""
        q = dense(h, self.wq[...])
        k = dense(h, self.wk[...])
        if self.cfg.qkv_bias:
            q, k = q + self.bq[...], k + self.bk[...]
        theta = self.cfg.rope_theta
        return rope(q, pos, theta), rope(k, pos, theta), self.values(h)

    def out(self, o: jax.Array) -> jax.Array:
        """o [B,Q,H,hd] -> [B,Q,d]. One 2-D matmul: as an einsum over (H, hd), XLA's CPU layout pass
        copied the [H, hd, d] weight transposed at every call."""
        return dense(o, self.wo[...], n_in=2)


class MLP(nnx.Module):
    """SwiGLU feed-forward."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f, dt = cfg.d_model, cfg.mlp_hidden, dtype_of(cfg)
        self.w_gate = _param(rngs, (d, f), dt, ("embed", "mlp"), fan_in=d)
        self.w_up = _param(rngs, (d, f), dt, ("embed", "mlp"), fan_in=d)
        self.w_down = _param(rngs, (f, d), dt, ("mlp", "embed"), fan_in=f)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = dense(x, self.w_gate[...])
        up = dense(x, self.w_up[...])
        return dense(jax.nn.silu(gate) * up, self.w_down[...])


class Block(nnx.Module):
    """One pre-norm layer: attention and MLP with residuals."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.attn_norm = RMSNorm(cfg, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, pos: jax.Array, key_mask: jax.Array, need_weights: bool = False):
        """The whole sequence x [B,T,d] at positions pos [B,T], every row attending to every row.
        Returns (x, the layer's LayerKV, head-mean weights or None). (Row subsets over a cache are
        `Transformer.rows`, which writes into the stacked cache in place.)"""
        q, k, v = self.attn.qkv(self.attn_norm(x), pos)
        o, w = attention(self.cfg, q, k, v, key_mask, need_weights)
        x = x + self.attn.out(o)
        return x + self.mlp(self.mlp_norm(x)), LayerKV(k, v), w


class RowsOut(NamedTuple):
    hidden: jax.Array  # [B, Q, d] last-layer hidden states of the selected rows (before final norm)
    kv: LayerKV  # [L, B, T, Hkv, hd] after this pass
    attn: jax.Array | None  # [L, B, Q, T] head-mean attention per layer, if asked


class Transformer(nnx.Module):
    """LLaDA or Dream: embedding, `n_layers` blocks, final norm, output head.

    `scan_layers=True` (the default) stacks the blocks on a leading layer axis and runs them with
    `jax.lax.scan`: one traced layer, compile time flat in depth. `scan_layers=False` keeps one
    block per layer (`nnx.List`) run by a Python loop: every layer is traced, but each layer's
    weights are their own buffers, which the matmuls read in place (XLA copies a scanned layer's
    weights out of the stack at every iteration, a cost a weight-bound batch-1 step feels)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, scan_layers: bool = True):
        self.cfg = cfg
        self.scanned = scan_layers
        self.embed = Embed(cfg, rngs=rngs)

        @nnx.split_rngs(splits=cfg.n_layers)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
        def stack(r: nnx.Rngs) -> Block:
            return Block(cfg, rngs=r)

        self.layers = stack(rngs) if scan_layers else nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg, rngs=rngs)
        self.lm_head = _param(rngs, (cfg.d_model, cfg.vocab_size), dtype_of(cfg), ("embed", "vocab"),
                              fan_in=cfg.d_model)

    def scan_layers(self, body: Callable, carry: Any, xs: Any = None) -> tuple[Any, Any]:
        """body(block, carry, x) -> (carry, y) over the layers, as `jax.lax.scan` (ys stacked)."""
        if not self.scanned:
            ys = []
            for i, blk in enumerate(self.layers):
                carry, y = body(blk, carry, jax.tree.map(lambda a, i=i: a[i], xs))
                ys.append(y)
            return carry, jax.tree.map(lambda *a: jnp.stack(a), *ys)
        graphdef, stacked = nnx.split(self.layers)

        def step(c, inputs):
            layer_state, x = inputs
            return body(nnx.merge(graphdef, layer_state), c, x)

        return jax.lax.scan(step, carry, (stacked, xs))

    def loop_layers(self, body: Callable, carry: Any, start: int = 0) -> Any:
        """body(block, carry, i) -> carry for layers start..L-1 (i: the layer index)."""
        if not self.scanned:
            for i in range(start, self.cfg.n_layers):
                carry = body(self.layers[i], carry, i)
            return carry
        step = lambda c, i: (body(self.layer(i), c, i), None)  # noqa: E731
        return jax.lax.scan(step, carry, jnp.arange(start, self.cfg.n_layers))[0]

    def layer(self, i: int | jax.Array) -> Block:
        """Block i (a dynamic index is fine inside jit when the layers are scanned)."""
        if not self.scanned:
            return self.layers[i]
        graphdef, stacked = nnx.split(self.layers)
        return nnx.merge(graphdef, jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, 0, False), stacked))

    def rows(self, tokens: jax.Array, positions: jax.Array, key_mask: jax.Array, q_idx: jax.Array | None = None,
             kv: LayerKV | None = None, need_weights: bool = False) -> RowsOut:
        """Run every layer on the rows `q_idx` of the canvas `tokens [B,T]`.

        `kv=None` is the full pass (all T rows, q_idx ignored); otherwise the rows read and update the
        stacked caches `kv`, carried through the scan and written in place. One selection is shared by
        every layer (prefix/dual cache, d2Cache).
        """
        if kv is None:
            def full(blk, x, _):
                x, layer_kv, w = blk(x, positions, key_mask, need_weights=need_weights)
                return x, (layer_kv, w)

            x, (new_kv, w) = self.scan_layers(full, self.embed(tokens))
            return RowsOut(x, new_kv, w)

        pos = gather_rows(positions, q_idx)
        bidx = jnp.arange(tokens.shape[0])[:, None]

        def part(blk, carry, i):
            x, cache = carry
            h = blk.attn_norm(x)
            q, k, v = blk.attn.qkv(h, pos)
            cache = LayerKV(cache.k.at[i, bidx, q_idx].set(k.astype(cache.k.dtype), mode="drop"),
                            cache.v.at[i, bidx, q_idx].set(v.astype(cache.v.dtype), mode="drop"))
            o, w = attention(self.cfg, q, cache.k[i], cache.v[i], key_mask, need_weights)
            x = x + blk.attn.out(o)
            return (x + blk.mlp(blk.mlp_norm(x)), cache), w

        (x, new_kv), w = self.scan_layers(part, (self.embed(gather_rows(tokens, q_idx)), kv),
                                          jnp.arange(self.cfg.n_layers))
        return RowsOut(x, new_kv, w)

    def head(self, x: jax.Array) -> jax.Array:
        """Final norm and output head in float32: x [B,S,d] -> logits [B,S,V]."""
        return dense(self.final_norm(x), self.lm_head[...], out_dtype=F32)

    def __call__(self, tokens: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """One full no-cache pass: fp32 logits [B, T, V] (Dream's are returned unshifted)."""
        if attention_mask is None:
            attention_mask = jnp.ones(tokens.shape, bool)
        attention_mask = attention_mask.astype(bool)
        return self.head(self.rows(tokens, positions_from_mask(attention_mask), attention_mask).hidden)


# --- params as a pure dict ---------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _split_abstract(cfg: ModelConfig, scan_layers: bool = True) -> tuple[Any, Any]:
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), scan_layers=scan_layers)))


def abstract_state(cfg: ModelConfig) -> nnx.State:
    """The model's state with ShapeDtypeStruct values and their logical-axes metadata (no allocation)."""
    return _split_abstract(cfg)[1]


def is_scanned(params: Params) -> bool:
    """True for the stacked layout (`layers` leaves [L, ...]), False for a list of per-layer dicts."""
    return not isinstance(params["layers"], list | tuple)


def unstack_layers(params: Params) -> Params:
    """The per-layer layout (`layers` = a list of L dicts, each leaf its own buffer) of stacked params,
    for `scan_layers=False` runs; each stacked leaf is dropped from the new tree once split."""
    if not is_scanned(params):
        return params
    flat, treedef = jax.tree.flatten(params["layers"])
    n = flat[0].shape[0]
    per_leaf = [[a[i] for i in range(n)] for a in flat]
    layers = [jax.tree.unflatten(treedef, [leaf[i] for leaf in per_leaf]) for i in range(n)]
    return {**params, "layers": layers}


def stack_layers(params: Params) -> Params:
    """The stacked layout of per-layer params (the inverse of `unstack_layers`)."""
    if is_scanned(params):
        return params
    return {**params, "layers": jax.tree.map(lambda *a: jnp.stack(a), *params["layers"])}


def bind(cfg: ModelConfig, params: Params) -> Transformer:
    """The modules of `cfg` holding `params` (a pure dict of arrays or tracers, either layout)."""
    if is_scanned(params):
        return nnx.merge(_split_abstract(cfg)[0], params)
    return nnx.merge(_split_abstract(cfg, False)[0], {**params, "layers": dict(enumerate(params["layers"]))})


def init(cfg: ModelConfig, seed: int = 0, scan_layers: bool = True) -> Transformer:
    """A randomly initialised model (the NNX way; `params.init_params` draws the same layout with NumPy)."""
    return Transformer(cfg, rngs=nnx.Rngs(seed), scan_layers=scan_layers)


def params_of(m: nnx.Module) -> Params:
    """The pure-dict params of a model (per-layer models give `layers` as a list)."""
    p = nnx.to_pure_dict(nnx.state(m, nnx.Param))
    if isinstance(p["layers"], dict) and all(isinstance(k, int) for k in p["layers"]):
        p["layers"] = [p["layers"][i] for i in range(len(p["layers"]))]
    return p


def layer_params(params: Params, i: int) -> Params:
    """Layer i's params (no layer axis)."""
    if not is_scanned(params):
        return params["layers"][i]
    return jax.tree.map(lambda a: a[i], params["layers"])


def embed(params: Params, tokens: jax.Array) -> jax.Array:
    return jnp.take(params["embed"]["embedding"], tokens, axis=0)


def head(params: Params, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """Final norm and output head in float32: x [B,S,d] -> logits [B,S,V]."""
    h = rms_norm(x, params["final_norm"]["scale"], cfg.rms_norm_eps)
    return dense(h, params["lm_head"], out_dtype=F32)


def forward_rows(cfg: ModelConfig, params: Params, tokens: jax.Array, positions: jax.Array,
                 key_mask: jax.Array, q_idx: jax.Array | None = None, kv: LayerKV | None = None,
                 need_weights: bool = False) -> RowsOut:
    """`Transformer.rows` for a params dict."""
    return bind(cfg, params).rows(tokens, positions, key_mask, q_idx, kv, need_weights)


def forward(cfg: ModelConfig, params: Params, tokens: jax.Array,
            attention_mask: jax.Array | None = None) -> jax.Array:
    """One full no-cache pass: fp32 logits [B, T, V] (Dream's are returned unshifted)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones(tokens.shape, bool)
    return _forward_jit(cfg, params, tokens, jnp.asarray(attention_mask).astype(bool))


@functools.partial(jax.jit, static_argnums=0)
def _forward_jit(cfg, params, tokens, attention_mask):
    return bind(cfg, params)(tokens, attention_mask)
