"""tools/plot_results: results tree -> the paper's figures and the tables behind them."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import click

from convnet_transfer.results import logs, plots


@click.command(help="""Draw the paper's figures from the logs of a results tree: Figure 2 (top-1 accuracy against
the layer n for baseB, selffer BnB, BnB+, transfer AnB, AnB+; every net a point, the means as lines), Figure 3
(natural/man-made transfer, random frozen filters, accuracies relative to the base nets with the random-split
curve), the reduced-data curve, and training curves (loss and test accuracy against iterations).

Reads --results: a results tree (the 2014 release's results/, or a tree tools/gen_nets made and our engine or
Caffe trained) or the summary.json that tools/parse_log wrote; --reference, the same for a tree to compare with
(drawn in grey; the tables get its means and the differences).

Writes to --out: <prefix>fig2_transfer, <prefix>fig3_natman_random, <prefix>reduced and
<prefix>training_curves as PNG and/or PDF, and for each figure <name>.txt and <name>.csv: per series and n the
mean, std, min, max and number of nets (also printed). Figures a tree has no nets for are skipped.

The committed plots/reference_*.png are made by:
tools/plot_results --results $CONVNET_TRANSFER_REFERENCE/results --out plots/ --prefix reference_ --format png""")
@click.option("--results", required=True, type=click.Path(exists=True, path_type=Path),
              help="Results tree (directory of net directories) or summary.json/.csv.")
@click.option("--reference", type=click.Path(exists=True, path_type=Path),
              help="A second results tree or summary to compare with (e.g. the 2014 release's results/).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--format", "formats", default="png,pdf", show_default=True,
              help="Comma-separated image formats (png, pdf, svg).")
@click.option("--prefix", default="", help="Prefix of the output file names (e.g. reference_).")
@click.option("--metric", type=click.Choice(["final", "best"]), default="final", show_default=True,
              help="Plot each net's test accuracy at its last test, or its best one.")
@click.option("--curves", default=None,
              help="Comma-separated nets for the training curves (default: a base net and transfer nets on it; "
                   "'none' for no curves). Needs a results tree, not a summary file.")
@click.option("-j", "--jobs", type=int, default=None, help="Processes parsing logs at once (default: the CPUs).")
def main(results, reference, out, formats, prefix, metric, curves, jobs):
    def show(message, category, filename, lineno, file=None, line=None):
        if category is not logs.LogWarning or "empty log" not in str(message):
            click.echo(f"warning: {message}", err=True)

    warnings.showwarning = show
    formats = tuple(f.strip().lower() for f in formats.split(",") if f.strip())
    rows = _load(results, jobs)
    ref_rows = _load(reference, jobs) if reference else None
    curve_nets = None
    names = []
    if curves != "none" and results.is_dir():
        names = [c.strip() for c in curves.split(",")] if curves else plots.choose_curve_nets(rows)
        known = {r.net for r in rows}
        missing = [n for n in names if n not in known]
        if missing:
            raise click.BadParameter(f"no net directory {', '.join(missing)} in {results}", param_hint="--curves")
    if names:
        root = results if (results / names[0]).is_dir() else results.parent
        curve_nets = {name: logs.parse_net_dir(root / name, jobs=jobs) for name in names}
    written = plots.plot_all(rows, out, reference=ref_rows, metric=metric, formats=formats, prefix=prefix,
                             curves=curve_nets, echo=click.echo)
    for path in written:
        click.echo(f"wrote {path}")


def _load(path: Path, jobs: int | None) -> list:
    """The nets of a results tree or summary file; an error naming it when it has none with a test accuracy."""
    try:
        rows = plots.load_results(path, jobs=jobs)
    except logs.SummaryError as err:
        raise click.ClickException(str(err)) from None
    if not rows:
        raise click.ClickException(f"{path}: {logs.NO_NETS}; pass a results tree (e.g. generated/ or the 2014 "
                                   f"release's results/) or a summary.json from tools/parse_log.")
    if all(math.isnan(row.final_accuracy) for row in rows):   # logs.NetSummary: NaN where there is none
        raise click.ClickException(f"{path}: none of its {len(rows)} nets has a test accuracy in its logs yet "
                                   f"(tools/parse_log {path} shows what each log holds); nothing to plot.")
    return rows
