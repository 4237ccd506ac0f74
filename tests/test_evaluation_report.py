"""experiments.report: the table (speedup vs the no-cache run), merged shards and the PNG plot."""

import os
import subprocess
import sys

import pytest

from d2cache_jax.evaluation import report, runner
from d2cache_jax.evaluation.data import load_records
from d2cache_jax.evaluation.tasks import get_task
from tests.evaluation_helpers import FakeGenerator, fixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_run(folder, cache, wall_s, right, shard=(0, 1)):
    """A mbpp-free gsm8k run with a fake generator: `right` decides which answers are correct."""
    task = get_task("gsm8k")
    docs = load_records(fixture("gsm8k_test.jsonl"))
    items = runner.prepare_items(task, docs, 0, shard=shard)
    answers = {item.prompt: ("#### " + docs[item.index]["answer"].split("#### ")[-1]
                             if right(item.index) else "#### 0") for item in items}
    config = {"checkpoint": "/ckpt/llada", "generation": {"cache": cache, "decoder": "vanilla"}, "method": cache,
              "shard": list(shard)}
    runner.run_evaluation(task, items, FakeGenerator(answers.__getitem__, num_tokens=10, wall_s=wall_s),
                          str(folder), run_config=config, progress=False)
    return str(folder)


def test_table_speedup_and_plot(tmp_path):
    base = make_run(tmp_path / "none", "none", 1.0, lambda i: True)
    fast = make_run(tmp_path / "d2cache", "d2cache", 0.25, lambda i: i != 2)
    rows = report.table_rows(report.merge_shards([report.load_run(p) for p in report.find_runs([str(tmp_path)])]))
    by_method = {r["method"]: r for r in rows}
    assert by_method["none"]["speedup"] == pytest.approx(1.0)
    assert by_method["d2cache"]["speedup"] == pytest.approx(4.0)
    assert by_method["d2cache"]["accuracy"] == pytest.approx(2 / 3)
    assert by_method["d2cache"]["throughput_tok_s"] == pytest.approx(40.0)
    table = report.markdown_table(rows)
    assert "| gsm8k | d2cache | 66.7 | 40.0 | 4.00x |" in table
    png = tmp_path / "plot.png"
    done = subprocess.run([sys.executable, "-m", "experiments.report", f"--runs={base},{fast}", f"--plot={png}",
                           f"--table={tmp_path / 't.md'}"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "4.00x" in (tmp_path / "t.md").read_text()


def test_shards_of_one_run_are_merged(tmp_path):
    make_run(tmp_path / "s0", "none", 1.0, lambda i: True, shard=(0, 2))
    make_run(tmp_path / "s1", "none", 1.0, lambda i: False, shard=(1, 2))
    runs = report.merge_shards([report.load_run(p) for p in report.find_runs([str(tmp_path / "s*")])])
    assert len(runs) == 1 and runs[0]["num_samples"] == 3 and runs[0]["accuracy"] == pytest.approx(1 / 3)


def test_missing_run_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        report.find_runs([str(tmp_path)])
