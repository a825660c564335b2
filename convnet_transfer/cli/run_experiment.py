"""tools/run_experiment: the whole transfer experiment, one command (convnet_transfer.experiment)."""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import click

from convnet_transfer import experiment
from convnet_transfer.training.local_runner import gpu_slots
from convnet_transfer.data.datasets import DATASETS, DatasetError
from . import interruptible

ROOT = Path(__file__).resolve().parents[2]

HELP = """Run the whole transfer experiment of Yosinski et al. (2014) on one machine and draw Figure 2
(with --natman or --random-filters, Figure 3 too).

\b
Stages (each skips what is already complete; run it again after Ctrl-C or a kill to finish):
  1 split lists  dataset -> random A/B halves (seeds 0, 1) and the dissimilar halves -> OUT/data/md5sums.txt
  2 databases    one raw Datum LMDB + mean.binaryproto per list          -> OUT/data/<split>/
  3 nets         scaled CaffeNet (caffenet_small: 5 conv, 3 fc, n = 1..7) -> OUT/nets/<net>/, nets.json
  4 training     base nets, then selffer BnB(+) and transfer AnB(+) nets, --jobs at a time (make -j)
  5 results      logs -> OUT/results/summary.csv, fig2_transfer.png, fig2_transfer.txt/.csv, findings.txt
                 (--natman, --random-filters: fig3_natman_random.png/.txt/.csv; --reduced: reduced.png/.txt/.csv)

\b
Reads:  --dataset fashion-mnist: /usr/share/datasets/fashion-mnist/*.gz (Debian's dataset-fashion-mnist;
          another folder with --dataset-root);
        --dataset folder: --dataset-root ROOT/<class>/<image> (or ROOT/train/<class>/, ROOT/val/<class>/);
        --dataset list: --train-list and --val-list (Caffe lists, "<path> <label>") under --dataset-root.
Writes: everything under --out (default generated/fashion-mnist, generated/fashion-mnist-quick with --quick).

\b
Default: 60 nets x 200 iterations of batch 64 on the CPU, 6-7 minutes on 2 cores (measured).
  tools/run_experiment                       # the default experiment on Fashion-MNIST
  tools/run_experiment --quick               # a 30-second smoke run (150 images per class, 16 nets)
  tools/run_experiment --natman --random-filters   # and Figure 3: dissimilar halves, random filters (84 nets)
  tools/run_experiment --gpu 0               # 4 splits, every pair, dissimilar halves, 5000 iterations (GPU)
  tools/run_experiment --dataset folder --dataset-root ~/my_images --out generated/mine
"""


@click.command(help=HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: generated/fashion-mnist, or generated/<dataset>-quick with --quick].")
@click.option("--dataset", type=click.Choice(sorted(DATASETS)), default="fashion-mnist", show_default=True,
              help="Where the images come from (a dataset adapter of convnet_transfer.data.datasets).")
@click.option("--dataset-root", type=click.Path(path_type=Path), default=None,
              help="fashion-mnist: the IDX files' folder; folder: the image folder; list: the images' root.")
@click.option("--train-list", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="--dataset list: the train list.")
@click.option("--val-list", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="--dataset list: the validation list.")
@click.option("--quick", is_flag=True, help="A smoke run: 150 images per class, 16 nets, 30 iterations each.")
@click.option("--gpu", "gpu", default=None, metavar="IDS",
              help="Train on these GPUs (e.g. 0 or 0,1: one net per GPU at a time; 0,0: two on GPU 0) with the "
                   "larger GPU settings; stops at once when PyTorch here does not see them.")
@click.option("--engine", type=click.Choice(["torch", "caffe", "auto"]), default="torch", show_default=True,
              help="torch: our engine (tools/caffe_torch); caffe: real Caffe (tools/install_caffe); auto: "
                   "real Caffe when one is found.")
@click.option("--jobs", type=click.IntRange(1), default=None,
              help="Nets trained at once [default: the number of CPU cores, or of GPUs with --gpu].")
@click.option("--iterations", type=click.IntRange(1), default=None,
              help="Iterations per net (max_iter; the lr step and test/snapshot intervals follow).")
@click.option("--seeds", default=None, metavar="S,S,...", help="Random split seeds [default: 0,1].")
@click.option("--natman/--no-natman", default=None,
              help="Also train on the dissimilar halves (upper-body garments vs the rest) [default: off; on with "
                   "--gpu].")
@click.option("--random-filters/--no-random-filters", default=None,
              help="Also train the whole-set net and, for n = 1..7, the whole-set net with its first n layers random "
                   "and frozen (the paper's random-filter nets, Figure 3) [default: off; on with --gpu].")
@click.option("--reduced", default=None, metavar="N,N,...",
              help="Also train the whole-set net on the first N train images of each class, for each N (the "
                   "paper's reduced-data curve), e.g. 1,10,100,1000.")
@click.option("--per-class", type=click.IntRange(1), default=None,
              help="Use only the first N train images of each class (and N/5 val images).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars.")
@interruptible("run the same command again to resume")
def main(out, dataset, dataset_root, train_list, val_list, quick, gpu, engine, jobs, iterations, seeds, natman,
         random_filters, reduced, per_class, progress):
    options = _dataset_options(dataset, dataset_root, train_list, val_list)
    settings = _settings(quick, gpu, iterations, seeds=seeds, reduced=reduced, natman=natman,
                         random_filters=random_filters, per_class=per_class)
    if jobs is None:
        jobs = len(gpu_slots(gpu)) or (os.cpu_count() or 1)
    if out is None:
        out = ROOT / "generated" / (dataset + ("-quick" if quick else ""))
    publish_to, publish_fig3 = _readme_figure(dataset, dataset_root, engine, settings)
    started = time.monotonic()
    try:
        report = experiment.run_experiment(out, dataset=dataset, dataset_options=options, settings=settings,
                                           engine=engine, jobs=jobs, gpus=gpu, progress=progress)
    except (experiment.ExperimentError, DatasetError) as err:
        raise click.ClickException(str(err))
    if report.interrupted:
        click.echo(f"Interrupted by {report.interrupted.name} after {time.monotonic() - started:.0f} s; run the "
                   f"same command again to resume.", err=True)
        sys.exit(128 + report.interrupted)
    _print_report(report, publish_to, publish_fig3, started)


def _dataset_options(dataset: str, root: Path | None, train_list: Path | None, val_list: Path | None) -> dict:
    """The dataset adapter's options from the flags; a usage error when the dataset needs flags not given."""
    options = {"fashion-mnist": {"root": root}, "folder": {"root": root},
               "list": {"train_list": train_list, "val_list": val_list, "root": root}}[dataset]
    if dataset != "fashion-mnist" and root is None:
        raise click.UsageError(f"--dataset {dataset} needs --dataset-root")
    if dataset == "list" and (train_list is None or val_list is None):
        raise click.UsageError("--dataset list needs --train-list and --val-list")
    return options


def _settings(quick: bool, gpu: str | None, iterations: int | None, *, seeds: str | None, reduced: str | None,
              **changes) -> experiment.Settings:
    """The preset (--quick, --gpu or the default) with the flags' changes (None: the preset's) and --iterations."""
    for name, value, least in (("seeds", seeds, 0), ("reduced", reduced, 1)):
        if value is not None:
            try:
                numbers = tuple(int(s) for s in value.split(",") if s.strip())
                valid = all(n >= least for n in numbers) and (bool(numbers) or name != "seeds")
            except ValueError:
                valid = False
            if not valid:
                raise click.BadParameter(f"{value!r}: expected comma-separated integers of at least {least}",
                                         param_hint=f"--{name}")
            changes[name] = numbers
    settings = experiment.settings_for(quick=quick, gpu=gpu is not None, **changes)
    return settings if iterations is None else experiment.scaled(settings, iterations)


def _readme_figure(dataset: str, dataset_root: Path | None, engine: str,
                   settings: experiment.Settings) -> tuple[Path | None, bool]:
    """(where to publish the run's figure, whether it is Figure 3): the default run on the packaged data redraws
    the README's Figure 2 (plots/fashion_mnist_fig2.png), the default run with --natman --random-filters its
    Figure 3 (plots/fashion_mnist_fig3.png); (None, False) for any other run."""
    packaged = dataset == "fashion-mnist" and dataset_root is None and engine == "torch" and (ROOT / "plots").is_dir()
    default = experiment.PRESETS["default"]
    if not (packaged and settings in (default, dataclasses.replace(default, natman=True, random_filters=True))):
        return None, False
    return ROOT / "plots" / ("fashion_mnist_fig3" if settings.natman else "fashion_mnist_fig2"), settings.natman


def _print_report(report: experiment.ExperimentReport, publish_to: Path | None, publish_fig3: bool,
                  started: float) -> None:
    """The tables, where the figures and tables are (and the README's copies), the findings and the times."""
    click.echo(report.tables)
    click.echo(f"Figure: {report.figure}\nTables: {report.results_dir}/fig2_transfer.txt, fig2_paired.txt (and "
               f".csv); every net: {report.results_dir / 'summary.csv'}")
    if report.fig3_figure is not None:
        click.echo(f"Figure 3: {report.fig3_figure}, {report.results_dir}/fig3_natman_random.txt")
    if report.reduced_figure is not None:
        click.echo(f"Reduced data: {report.reduced_figure}, {report.results_dir}/reduced.txt")
    if publish_to is not None:
        written = experiment.publish(report, publish_to, fig3=publish_fig3)
        click.echo(f"The README's figure and table: {', '.join(str(p) for p in written)}")
    click.echo("\n" + report.findings)
    click.echo(f"\n{len(report.nets)} nets ({len(report.trained)} trained in this run) in "
               f"{time.monotonic() - started:.0f} s: "
               + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in report.seconds.items()))
