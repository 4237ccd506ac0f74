"""Without OS isolation, code tasks refuse to run unless `--unsafe_code_exec` asks for unprotected runs."""

import os
import subprocess
import sys
import textwrap

import pytest

from d2cache_jax.evaluation import sandbox
from d2cache_jax.evaluation.tasks import humaneval
from d2cache_jax.evaluation.tasks.base import ScoreOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def no_isolation(monkeypatch):
    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "no namespaces here")


def test_without_isolation_code_tasks_refuse(no_isolation):
    doc = {"prompt": "def f():\n", "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}
    with pytest.raises(sandbox.IsolationUnavailable, match="--unsafe_code_exec"):
        humaneval.TASK.score(doc, "    return 1\n", ScoreOptions(timeout_s=5.0))
    with pytest.raises(sandbox.IsolationUnavailable, match="no namespaces here"):
        sandbox.run_program("print(1)\n")


def test_unsafe_mode_still_judges_from_outside(no_isolation):
    doc = {"prompt": "def f():\n", "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}
    options = ScoreOptions(timeout_s=5.0, unsafe=True)
    assert humaneval.TASK.score(doc, "    return 1\n", options).correct
    assert not humaneval.TASK.score(doc, "    import os\n    os._exit(0)\n", options).correct


def test_probe_reports_missing_tools(monkeypatch):
    sandbox.isolation_problem.cache_clear()
    monkeypatch.setattr(sandbox, "_missing_tools", lambda: ["pivot_root"])
    try:
        assert "pivot_root" in sandbox.isolation_problem()
    finally:
        sandbox.isolation_problem.cache_clear()


def test_evaluate_cli_refuses_code_tasks_without_isolation(tmp_path):
    """The script's flag check, in its own process (its flags must not meet other scripts' flags)."""
    script = textwrap.dedent(f"""
        from absl import app, flags
        from d2cache_jax.evaluation import sandbox
        sandbox.isolation_problem = lambda: "no namespaces here"
        from experiments import evaluate
        argv = ["evaluate", "--task=humaneval", "--output_dir={tmp_path}", "--checkpoint={tmp_path}",
                "--data={tmp_path}"]
        flags.FLAGS(argv)
        try:
            evaluate.validate_flags()
            print("accepted")
        except app.UsageError as e:
            print("refused:", e)
        flags.FLAGS.unparse_flags()
        flags.FLAGS(argv + ["--unsafe_code_exec"])
        print("unsafe:", evaluate.validate_flags()[0].name)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused: code execution sandbox unavailable: no namespaces here" in out.stdout
    assert "unsafe: humaneval" in out.stdout
