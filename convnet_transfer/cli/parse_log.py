"""tools/parse_log: Caffe logs -> train/test CSV tables and a results summary."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import click

from convnet_transfer.results import logs


def _fmt(value, digits=4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _print_summary(rows: list[logs.NetSummary]) -> None:
    click.echo(f"{'net':24s} {'kind':9s} {'split':12s} {'n':>4s} {'status':10s} {'iters':>7s} {'final acc':>9s} "
               f"{'best acc':>9s} {'hours':>7s} {'logs':>4s} notes")
    for r in rows:
        notes = ", ".join(f"{v} {k}" for k, v in (("gaps", r.gaps), ("restarts from older snapshots", r.overlaps),
                                                    ("warnings", r.warnings)) if v)
        n = r.n if r.n is not None else ""
        click.echo(f"{r.net:24s} {r.kind or '?':9s} {r.split or '?':12s} {n!s:>4s} {r.status:10s} "
                   f"{_fmt(r.final_iter):>7s} {_fmt(r.final_accuracy):>9s} {_fmt(r.best_accuracy):>9s} "
                   f"{_fmt(r.train_hours, 1):>7s} {r.n_logs:>4d} {notes}")


def _write_tables(stem: Path, train: logs.Table, tests: dict[int, logs.Table], delimiter: str) -> list[Path]:
    written = []
    if len(train):
        train.write_csv(stem.with_name(stem.name + ".train"), delimiter)
        written.append(stem.with_name(stem.name + ".train"))
    for k, table in tests.items():
        path = stem.with_name(stem.name + (".test" if k == 0 else f".test{k}"))
        table.write_csv(path, delimiter)
        written.append(path)
    return written


@click.command(help="""Read Caffe training logs of any era (2014 `Test score #0` lines, current `Test net output`
lines, tools/caffe_torch logs; plain or .gz) into tables.

PATH is a log file, a net directory (its log files *.log, *.log.gz, *.o<job>[.gz] stitched in time order:
restarts from snapshots, the newest value kept where iterations repeat, gaps reported), or a results tree
(a directory of net directories, e.g. the 2014 release's results/ or a tree made by tools/gen_nets).

Writes, with --out DIR: for each log file / net, `<name>.train` and `<name>.test` CSV tables with the columns
of Caffe's tools/extra/parse_log.py (NumIters,Seconds,LearningRate,<outputs>; `<name>.test1`... for further
test nets); for a tree also summary.csv and summary.json (per net: kind, split, n, status, final and best
top-1 test accuracy, iterations reached, hours). Prints the summary. Unreadable lines, truncated or empty logs
are warned about on stderr with file and line.""")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the CSV tables (and summary.csv/json); none: print the summary only.")
@click.option("--summary-only", is_flag=True, help="With --out: write summary.csv/json but no per-net tables.")
@click.option("-j", "--jobs", type=int, default=None, help="Processes parsing files at once (default: the CPUs).")
@click.option("--delimiter", default=",", show_default=True, help="Column delimiter of the tables.")
def main(paths, out, summary_only, jobs, delimiter):
    def show(message, category, filename, lineno, file=None, line=None):
        click.echo(f"warning: {message}", err=True)

    warnings.showwarning = show
    if out:
        out.mkdir(parents=True, exist_ok=True)
    rows: list[logs.NetSummary] = []
    for path in paths:
        if path.is_file():
            log = logs.parse_log(path)
            _, acc = log.test.last(logs.accuracy_column(log.test) or "accuracy")
            if log.start is None:   # empty, binary, or another program's text: the warning above says which
                raise click.ClickException(f"{path}: not a Caffe log (no glog line to read); pass a log that caffe "
                                           f"or tools/caffe_torch wrote, or the net directory")
            if log.first_iter is None:
                click.echo(f"{path}: no iterations")
                continue
            diverged = "" if log.diverged is None else f"; the loss diverged at iteration {log.diverged}"
            click.echo(f"{path}: iterations {log.first_iter}..{log.last_iter}, {len(log.train)} train rows, "
                       f"{sum(map(len, log.tests.values()))} test rows, last test accuracy {_fmt(acc)}{diverged}")
            if out:
                for written in _write_tables(out / path.name, log.train, log.tests, delimiter):
                    click.echo(f"wrote {written}")
            continue
        tree_rows, nets = logs.summarize_tree(path, jobs=jobs, progress=True, keep_tables=True)
        if not tree_rows:
            raise click.ClickException(f"{path}: {logs.NO_NETS}; pass a log file, a net directory or a results "
                                       f"tree (a directory of net directories).")
        rows += tree_rows
        if out and not summary_only:
            for name, net in nets.items():
                _write_tables(out / name, net.train, net.tests, delimiter)
            click.echo(f"wrote the tables of {len(nets)} nets to {out}/")
    if rows:
        _print_summary(rows)
        if out:
            csv_path, json_path = logs.write_summary(rows, out)
            click.echo(f"wrote {csv_path} and {json_path}")
