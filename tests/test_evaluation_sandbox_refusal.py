"""Without OS isolation, code tasks refuse to run unless `--unsafe_code_exec` asks for unprotected runs."""

import pytest
from absl import flags
from absl.testing import flagsaver

from d2cache_jax.evaluation import sandbox
from d2cache_jax.evaluation.tasks import humaneval
from d2cache_jax.evaluation.tasks.base import ScoreOptions
from experiments import evaluate


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


def test_evaluate_cli_refuses_code_tasks_without_isolation(no_isolation, tmp_path):
    argv = ["evaluate", "--task=humaneval", f"--output_dir={tmp_path}", f"--checkpoint={tmp_path}",
            f"--data={tmp_path}"]
    with flagsaver.flagsaver():
        flags.FLAGS(argv)
        with pytest.raises(evaluate.app.UsageError, match="sandbox unavailable: no namespaces here"):
            evaluate.validate_flags()
        flags.FLAGS(argv + ["--unsafe_code_exec"])
        assert evaluate.validate_flags()[0].name == "humaneval"
