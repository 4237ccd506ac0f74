"""Tabulate evaluation runs and plot accuracy against throughput.

    python -m experiments.report --runs=runs/gsm8k_none --runs=runs/gsm8k_d2cache --plot=report.png
    python -m experiments.report --runs='runs/*' --table=report.md
"""

from __future__ import annotations

from absl import app, flags

from d2cache_jax import cli, files
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
    pairs = report.paired_table(report.paired_rows(runs))
    if pairs:
        table += "\nEach cached run against the no-cache run with the same decoder, item by item:\n\n" + pairs
    print(table, end="")
    for flag, write in ((TABLE, lambda path: files.write_atomic(path, table)),
                        (PLOT, lambda path: report.plot_accuracy_vs_throughput(rows, path))):
        if flag.value:
            try:
                write(flag.value)
            except OSError as e:
                raise app.UsageError(f"--{flag.name}={flag.value}: cannot write there ({e.strerror})") from e
    if PLOT.value:
        print(f"plot: {PLOT.value}")


if __name__ == "__main__":
    cli.run(main)
