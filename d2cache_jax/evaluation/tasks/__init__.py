"""Task registry: the `--task` name maps to a module of this package that defines `TASK`.

Adding a task needs no edit elsewhere: put a module `<name>.py` here whose `TASK` is a
`base.Task` (e.g. `synthetic.py`, which also holds the tiny model's training task), or call `register_task`.
"""

from __future__ import annotations

import importlib
import pkgutil

from d2cache_jax.evaluation.tasks.base import Task

_REGISTRY: dict[str, Task] = {}
_ALIASES = {"math-500": "math500", "math_500": "math500", "openai_humaneval": "humaneval"}
_NOT_TASKS = {"base", "chartok", "seeded"}


def register_task(task: Task) -> Task:
    """Make a task available under `task.name`."""
    if not task.name:
        raise ValueError("a task needs a name")
    _REGISTRY[task.name] = task
    return task


def task_names() -> list[str]:
    """Registered names plus the task modules of this package."""
    modules = {m.name for m in pkgutil.iter_modules(__path__) if not m.ispkg and m.name not in _NOT_TASKS}
    return sorted(set(_REGISTRY) | modules)


def get_task(name: str) -> Task:
    """The task registered as `name`, importing `tasks/<name>.py` on first use."""
    name = _ALIASES.get(name, name)
    if name not in _REGISTRY and name not in _NOT_TASKS and name.isidentifier():
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
        else:
            _REGISTRY[name] = module.TASK
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(task_names())}")
    return _REGISTRY[name]
