"""Generation defaults per task, model and cache, as upstream's gen_args sets them (ALGORITHMS.md §4.3).

Only what depends on the task, the model or the cache is set here; everything else keeps the
generation library's own defaults, and any option the user gives wins.
"""

from __future__ import annotations

import os
from typing import Any

from d2cache_jax.generation.options import family_defaults

# dLLM-Cache (kp, kr) per task and model; anything not listed uses (50, 4).
DLLM_KP_KR = {
    "gsm8k": {"llada-base": (25, 5), "llada-inst": (50, 7), "dream-base": (100, 8), "dream-inst": (25, 2)},
    "humaneval": {"llada-base": (50, 5), "llada-inst": (25, 5), "dream-base": (5, 1), "dream-inst": (50, 1)},
    "math500": {"llada-base": (50, 8), "llada-inst": (50, 1), "dream-base": (100, 4), "dream-inst": (50, 1)},
    "mbpp": {"llada-base": (25, 4), "llada-inst": (100, 5), "dream-base": (25, 8), "dream-inst": (10, 8)},
}
DLLM_DEFAULT_KP_KR = (50, 4)
INSTRUCT_BLOCK_LENGTH = 32
PREFIX_BLOCK_LENGTH = 32


def model_key(family: str, instruct: bool) -> str:
    """Upstream's model name: llada-base, llada-inst, dream-base or dream-inst."""
    return f"{family}-{'inst' if instruct else 'base'}"


def generation_defaults(task: str, task_gen_length: int, family: str, instruct: bool, cache: str,
                        gen_length: int | None = None, task_block_length: int | None = None) -> dict[str, Any]:
    """Default generation options for one evaluation; `gen_length` is the user's value if given, and a
    task's own block length (the synthetic long-answer task's) holds for every cache."""
    gen = gen_length or task_gen_length
    block = INSTRUCT_BLOCK_LENGTH if instruct else gen
    if task_block_length:
        block = task_block_length
    elif cache == "d2cache":
        block = gen
    elif cache in ("prefix", "dual"):
        block = PREFIX_BLOCK_LENGTH
    if gen % block:
        block = gen
    out: dict[str, Any] = {"gen_length": gen, "block_length": block, "temperature": 0.0}
    out.update(family_defaults(family))
    if cache == "dllm":
        per_task = DLLM_KP_KR.get(task.removesuffix("_instruct"), {})  # humaneval_instruct: humaneval's
        out["kp"], out["kr"] = per_task.get(model_key(family, instruct), DLLM_DEFAULT_KP_KR)
        out["rou"] = 0.25
    return out


def is_instruct_checkpoint(path: str) -> bool:
    """Upstream treats a model as instruct when its name says so (LLaDA-1.5 counts as base)."""
    name = os.path.basename(os.path.normpath(path)).lower()
    return "instruct" in name or name.endswith(("inst", "-it", "_it", "chat"))
