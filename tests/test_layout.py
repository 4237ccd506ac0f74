"""The repository's layout: imports go one way, `experiments/` holds entry points only, one home per task."""

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules(package: str) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(os.path.join(ROOT, package)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                out[os.path.relpath(path, ROOT)] = open(path, encoding="utf-8").read()
    return out


def _imported(source: str) -> set[str]:
    """Top-level names of every module imported anywhere in `source` (also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_library_never_imports_converter_scripts_or_tools():
    """`checkpoints_convert` depends on `d2cache_jax`, never the reverse (nor on the scripts)."""
    bad = {path: sorted(_imported(src) & {"checkpoints_convert", "experiments", "tools"})
           for path, src in _modules("d2cache_jax").items()}
    assert not {k: v for k, v in bad.items() if v}
    uses = [path for path, src in _modules("checkpoints_convert").items() if "d2cache_jax" in _imported(src)]
    assert uses  # the converter does use the library (so the test above states the direction)


def test_experiments_holds_entry_points_only():
    """Every module of `experiments/` is a script (`app.run(main)` or `cli.run(main)` under `__main__`), or one
    of the two shared flag modules; the helper scripts live in `tools/`."""
    shared = {"__init__.py", "flags_common.py", "distributed.py"}
    scripts = {os.path.basename(p) for p, src in _modules("experiments").items()
               if "if __name__ == \"__main__\":" in src and re.search(r"\b(app|cli)\.run\(main\)", src)}
    names = {os.path.basename(p) for p in _modules("experiments")}
    assert names - shared == scripts
    assert {"generate.py", "evaluate.py", "report.py", "benchmark.py", "train_tiny.py"} <= scripts
    assert not {"d2cache_speed.py", "memory_estimate.py", "convert_memory_check.py"} & names
    assert {"d2cache_speed.py", "memory_estimate.py", "convert_memory_check.py"} <= set(os.listdir(
        os.path.join(ROOT, "tools")))


def test_synthetic_task_has_one_home():
    """The generator, the checker and the evaluation task live in one module; nothing else defines them."""
    from d2cache_jax.evaluation.tasks import get_task, synthetic

    assert get_task("synthetic") is synthetic.TASK
    definers = [path for pkg in ("d2cache_jax", "experiments", "checkpoints_convert", "tools")
                for path, src in _modules(pkg).items() if "def carry_row(" in src or "class Synthetic(" in src]
    assert definers == [os.path.join("d2cache_jax", "evaluation", "tasks", "synthetic.py")]
    doc = synthetic.TASK.make_docs(3, 0)[0]
    assert synthetic.TASK.score(doc, doc["answer"], None).correct
