"""Tabulate evaluation runs and plot accuracy against throughput.

    python -m experiments.report --runs=runs/gsm8k_none --runs=runs/gsm8k_d2cache --plot=report.png
    python -m experiments.report --runs='runs/*' --table=report.md
"""

from __future__ import annotations

from absl import app, flags

from d2cache_jax.evaluation import report

RUNS = flags.DEFINE_multi_string("runs", None, "Run folders, parents of run folders, or glob patterns "
                                               "(repeat the flag or separate with commas).")
PLOT = flags.DEFINE_string("plot", "accuracy_vs_throughput.png", "PNG path of the plot ('' = no plot).")
TABLE = flags.DEFINE_string("table", None, "Also write the Markdown table to this file.")


def main(argv):
    paths = [p for value in (RUNS.value or []) for p in value.split(",") if p] + list(argv[1:])
    if not paths:
        raise app.UsageError("give at least one run folder with --runs")
    try:
        runs = report.merge_shards([report.load_run(p) for p in report.find_runs(paths)])
    except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(str(e)) from e
    rows = report.table_rows(runs)
    table = report.markdown_table(rows)
    print(table, end="")
    if TABLE.value:
        with open(TABLE.value, "w", encoding="utf-8") as f:
            f.write(table)
    if PLOT.value:
        report.plot_accuracy_vs_throughput(rows, PLOT.value)
        print(f"plot: {PLOT.value}")


if __name__ == "__main__":
    app.run(main)
