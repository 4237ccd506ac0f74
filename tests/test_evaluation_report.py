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


@pytest.mark.parametrize("lost, gained", [(0, 0), (4, 1), (1, 4), (3, 0), (12, 4), (35, 6), (10, 10)])
def test_exact_mcnemar_matches_scipy_binomial_test(lost, gained):
    from scipy.stats import binomtest

    from d2cache_jax.evaluation.paired import exact_mcnemar

    want = 1.0 if lost + gained == 0 else binomtest(min(lost, gained), lost + gained, 0.5).pvalue
    assert exact_mcnemar(lost, gained) == pytest.approx(want, rel=1e-12)


def test_runs_are_paired_with_the_no_cache_run_item_by_item(tmp_path):
    """Each cached run is compared with the no-cache run of its decoder on the items both answered."""
    make_run(tmp_path / "none", "none", 1.0, lambda i: i != 0)
    make_run(tmp_path / "dual", "dual", 0.5, lambda i: i != 2)
    make_run(tmp_path / "d2cache", "d2cache", 0.5, lambda i: i == 0)
    runs = report.merge_shards([report.load_run(p) for p in report.find_runs([str(tmp_path)])])
    rows = {r["method"]: r for r in report.paired_rows(runs)}
    assert set(rows) == {"dual", "d2cache"}  # the baseline is not compared with itself
    # none right on items 1, 2; dual right on 0, 1; d2cache right on 0 only.
    assert (rows["dual"]["lost"], rows["dual"]["gained"], rows["dual"]["n"]) == (1, 1, 3)
    assert (rows["d2cache"]["lost"], rows["d2cache"]["gained"]) == (2, 1)
    assert rows["d2cache"]["p"] == pytest.approx(1.0) and rows["dual"]["baseline"] == "none"
    done = subprocess.run([sys.executable, "-m", "experiments.report", f"--runs={tmp_path}", "--plot="],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| gsm8k | d2cache | none | 2 | 1 | 3 | 1 |" in done.stdout
