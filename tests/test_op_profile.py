"""`d2cache_jax.op_profile`: the HLO instruction table parsed from hand-written HLO text, and a profiled
call whose time is known to sit in one matmul (a 768^3 product against an add of 64 numbers)."""

import jax
import jax.numpy as jnp

from d2cache_jax import op_profile

HLO = """
ENTRY %main.5 (Arg_0.1: f32[4,8], Arg_1.2: f32[8,2]) -> f32[4,2] {
  %Arg_0.1 = f32[4,8]{1,0} parameter(0), metadata={op_name="x"}
  %dot.3 = f32[4,2]{1,0} dot(%Arg_0.1, %Arg_1.2), metadata={op_name="jit(f)/dot_general" stack_frame_id=1}
  %while.7 = (s32[], f32[4,2]{1,0}) while(%tuple.6), condition=%cond, body=%body
  ROOT %add_fusion = f32[4,2]{1,0} fusion(%dot.3), kind=kLoop, calls=%fused, metadata={op_name="jit(f)/add"}
}
"""


def test_instructions_parse_names_shapes_and_jax_ops():
    got = op_profile.instructions(HLO)
    assert got["dot.3"] == ("f32[4,2]{1,0}", "jit(f)/dot_general", "dot")
    assert got["add_fusion"] == ("f32[4,2]{1,0}", "jit(f)/add", "fusion")
    assert got["Arg_0.1"] == ("f32[4,8]{1,0}", "x", "parameter")
    assert got["while.7"] == ("(s32[], f32[4,2]{1,0})", "", "while")
    assert "main.5" not in got  # a computation header, not an instruction


def test_profile_finds_the_matmul():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    a, b = jax.random.normal(k1, (768, 768)), jax.random.normal(k2, (768, 768))
    c = jax.random.normal(k3, (64,))
    fn = jax.jit(lambda a, b, c: (jnp.dot(a, b), c + 1.0))
    prof = op_profile.profile(fn, a, b, c, calls=3)
    ops = prof["by_jax_op"]
    assert max(ops, key=ops.get) == "dot_general", ops
    assert prof["top_ops"][0]["jax_op"] == "dot_general"
    assert prof["top_ops"][0]["count"] == 1
    # A 2 * 768^3 = 0.9 GFLOP product takes some time, and the trace saw it within the wall time
    # of its calls (a single op is never concurrent with itself).
    assert 0 < prof["top_ops"][0]["ms"] <= prof["wall_ms"] * 1.5
