"""The whole experiment on one machine, one command: dataset -> split lists -> databases -> nets -> training ->
logs -> Figure 2 (and, with the dissimilar halves or random filters, Figure 3; with reduced data, its curve) and
their tables -> the findings in plain words.

    from convnet_transfer import experiment
    report = experiment.run_experiment("generated/fashion-mnist")              # the default: Fashion-MNIST
    report = experiment.run_experiment("out", dataset="folder", dataset_options={"root": "my_images"})
    print(report.findings)

Layout under `out_dir`:

    data/      md5sums.txt, <split>_train|_valid/{files.txt, idxmap.txt, lmdb/, mean.binaryproto}   stages 1-2
    nets/      nets.json, <net>/{solver.prototxt, train.prototxt, val.prototxt, train.sh, logs, snapshots}  3-4
    results/   summary.csv/.json, fig2_transfer.png, fig2_{transfer,paired}.txt/.csv, findings.txt   stage 5
               (--natman, --random-filters: fig3_natman_random.png/.txt/.csv; --reduced: reduced.png/.txt/.csv)

Every stage skips work whose outputs are complete, so running again after Ctrl-C or a kill finishes the job:
the split lists are checked against data/md5sums.txt (written on the first run, then the published md5s), a
database is finished only with its completion marker (a half-written one is redone), train.sh skips trained
nets and resumes the others from their newest .solverstate, and the results are recomputed from the logs.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .nets import architectures, catalog, netgen, tree
from .data import databases, datasets, images, layout, splits
from .results import logs, plots
from .results.findings import PAPER_FIG2, PAPER_FIG3, findings, split_spread   # stage 5's last step, re-exported

__all__ = ["Settings", "PRESETS", "ExperimentReport", "ExperimentError", "run_experiment", "settings_for", "scaled",
           "make_lists", "database_splits", "make_databases", "classes_per_split", "make_nets",
           "check_trained_settings", "train_nets",
           "summarize", "summarize_fig3", "summarize_reduced", "findings", "split_spread", "publish", "PAPER_FIG2",
           "PAPER_FIG3"]

ARCH = "caffenet_small"
MIN_HALF = 2                 # classes in the smaller random half: fewer cannot measure accuracy
CROP = 28                    # caffenet_small's input: 28x28 (the whole Fashion-MNIST image; a random crop of 32x32)


@dataclass(frozen=True)
class Settings:
    """What to run and how long: the nets (split seeds, pairs, fine-tuned, dissimilar halves) and the solver."""
    seeds: tuple[int, ...] = (0, 1)          # random A/B halves half{s}A / half{s}B
    pairs: tuple[str, ...] = ("AB", "BB")    # base half + target half: AB = transfer AnB, BB = selffer BnB
    fine_tuned: bool = True                  # AnB+ / BnB+ nets too
    natman: bool = False                     # also train on the dissimilar halves (their lists are always made)
    random_filters: bool = False             # also the whole-set net and nolearn_1_n (n random frozen layers)
    reduced: tuple[int, ...] = ()            # also the whole-set net on N train images per class (reduced-NNNN)
    per_class: int | None = None             # keep only this many train images per class (val: a fifth)
    image_size: int | None = None            # resize to this square size (None: 28 for Fashion-MNIST, else 32)
    max_iter: int = 200                      # every net: base, selffer and transfer, as in the paper
    stepsize: int = 150                      # lr x gamma (0.1) every stepsize iterations
    base_lr: float = 0.01
    batch_size: int = 64
    val_batch_size: int = 100
    test_iter: int = 50                      # x val_batch_size images tested every test_interval iterations
    test_interval: int = 100
    snapshot: int = 100                      # an interrupted net resumes from here at worst
    display: int = 20
    mode: str = "cpu"

    def solver(self) -> dict:
        return dict(max_iter=self.max_iter, stepsize=self.stepsize, base_lr=self.base_lr, test_iter=self.test_iter,
                    test_interval=self.test_interval, snapshot=self.snapshot, display=self.display,
                    test_initialization=False)


PRESETS = {
    # 6-7 min on 2 CPU cores (measured): 2 random splits, AnB, BnB, AnB+, BnB+ at n = 1..7 and the base nets: 60 nets
    "default": Settings(),
    # ~30 s: a smoke run on 150 images per class, 16 nets (AnB and BnB of one split)
    "quick": Settings(seeds=(0,), fine_tuned=False, per_class=150, max_iter=30, stepsize=20, test_iter=3,
                      test_interval=15, snapshot=15, display=5, val_batch_size=50),
    # a GPU: the paper's 4 splits, every pair, the dissimilar halves, random filters, 25x longer (~21 epochs of a half)
    "gpu": Settings(seeds=(0, 1, 2, 3), pairs=("AB", "BA", "BB", "AA"), natman=True, random_filters=True,
                    max_iter=5000, stepsize=2000,
                    test_iter=50, test_interval=500, snapshot=500, display=100, batch_size=128, mode="gpu"),
}

class ExperimentError(RuntimeError):
    """A stage that cannot go on: the message says which and what to do."""


def settings_for(quick: bool = False, gpu: bool = False, **changes) -> Settings:
    """A preset (default, quick or gpu) with `changes` (Settings fields; None leaves a field as it is)."""
    base = PRESETS["quick" if quick else "gpu" if gpu else "default"]
    return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})


def scaled(settings: Settings, iterations: int) -> Settings:
    """The settings with max_iter = iterations and the lr step, test, snapshot and display intervals in the
    same proportions."""
    ratio = iterations / settings.max_iter
    return dataclasses.replace(settings, max_iter=iterations,
                               **{k: max(1, round(getattr(settings, k) * ratio))
                                  for k in ("stepsize", "test_interval", "snapshot", "display")})


@dataclass
class ExperimentReport:
    out_dir: Path
    settings: Settings
    nets: list[str] = field(default_factory=list)
    rows: list = field(default_factory=list)           # logs.NetSummary per net
    table: list[dict] = field(default_factory=list)    # plots.figure_table(rows, "fig2_transfer")
    paired: list[dict] = field(default_factory=list)   # plots.figure_table(rows, "fig2_paired")
    figure: Path | None = None
    fig3: list[dict] = field(default_factory=list)     # figure_table(rows, "fig3_natman_random"): natman, random
    fig3_figure: Path | None = None
    reduced_figure: Path | None = None
    tables: str = ""                                   # the tables as text (results/fig2_*.txt, fig3_*.txt)
    findings: str = ""
    seconds: dict[str, float] = field(default_factory=dict)   # wall time of each stage
    trained: list[str] = field(default_factory=list)          # nets trained (or resumed) in this run
    interrupted: signal.Signals | None = None                 # the signal that stopped the training

    @property
    def data_dir(self) -> Path:
        return self.out_dir / "data"

    @property
    def nets_dir(self) -> Path:
        return self.out_dir / "nets"

    @property
    def results_dir(self) -> Path:
        return self.out_dir / "results"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- stage 1: the split lists

def _subset(items: list[tuple[str, int]], per_class: int | None) -> list[tuple[str, int]]:
    """The first `per_class` items of each class, in input order (all when None)."""
    if per_class is None:
        return items
    seen: dict[int, int] = {}
    out = []
    for name, label in items:
        if seen.get(label, 0) < per_class:
            seen[label] = seen.get(label, 0) + 1
            out.append((name, label))
    return out


def _check_halves(dataset) -> None:
    """Random halves need at least MIN_HALF classes each: a 1-class half scores 100% whatever a net learned."""
    n = len(dataset.classes)
    if n // 2 < MIN_HALF:
        where = f" in {dataset.root}" if getattr(dataset, "root", None) else ""
        raise ExperimentError(f"dataset {dataset.name}{where} has {n} classes ({', '.join(map(str, dataset.classes))})"
                              f": its random halves would have {n // 2} and {n - n // 2}, and a half needs at least "
                              f"{MIN_HALF} (a net on 1 class scores 100%); give at least {2 * MIN_HALF} classes")


def make_lists(dataset, data_dir: Path, settings: Settings, progress: bool = True) -> splits.SplitReport:
    """Stage 1: the dataset's train and val lists -> every split's files.txt + idxmap.txt and md5sums.txt.
    An existing md5sums.txt is the published manifest: a list that differs from it stops the run."""
    _check_halves(dataset)
    train = _subset(dataset.items("train"), settings.per_class)
    val = _subset(dataset.items("val"), None if settings.per_class is None else max(1, settings.per_class // 5))
    groups = dict(dataset.dissimilar_groups) or None
    if settings.natman and not groups:
        raise ExperimentError(f"dataset {dataset.name} has no dissimilar class groups (natural/man-made "
                              f"analogue); train without the dissimilar halves")
    smallest = min(np.bincount([label for _, label in train], minlength=len(dataset.classes)))
    too_many = [n for n in settings.reduced if n > smallest]
    if too_many:
        raise ExperimentError(f"--reduced {','.join(map(str, too_many))}: the smallest class of {dataset.name} has "
                              f"{smallest} train images{' with --per-class' if settings.per_class else ''}; ask "
                              f"for at most {smallest} per class")
    manifest = data_dir / layout.MANIFEST
    try:
        published = splits.read_manifest(manifest) if manifest.is_file() else None
        return splits.make_splits(train, val, data_dir, n_classes=len(dataset.classes), seeds=settings.seeds,
                                  groups=groups, reduced=settings.reduced, published_md5=published, progress=progress,
                                  log=_say)
    except splits.Md5MismatchError as err:
        raise ExperimentError(f"{err}\nThe lists in {data_dir} were made from other images or settings; use "
                              f"another --out, or delete {data_dir} to start over") from None
    except splits.SplitError as err:
        raise ExperimentError(str(err)) from None


# ---------------------------------------------------------------- stage 2: the databases

def as_chw(image: np.ndarray, channels: int, size: int | None) -> np.ndarray:
    """An adapter's image (H,W grey or H,W,3 BGR) -> uint8 C x size x size, as convert_imageset stores it."""
    if image.ndim == 2:
        image = image[:, :, None]
    if size is not None and image.shape[:2] != (size, size):
        image = images.resize_linear(image, size, size)   # cv::resize(INTER_LINEAR), as convert_imageset
    if channels == 3 and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif channels == 1 and image.shape[2] == 3:
        image = np.round(image @ np.array([0.114, 0.587, 0.299])).astype(np.uint8)[:, :, None]   # BGR weights
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.uint8)


def _stored_as(dataset, settings: Settings) -> tuple[int, int | None]:
    """(channels, size) of the database records: Fashion-MNIST greyscale at its own 28x28, any other dataset
    in colour (BGR) at 32x32, as convert_imageset stores it; settings.image_size overrides the size."""
    channels, size = (1, None) if isinstance(dataset, datasets.FashionMNIST) else (3, 32)
    return channels, size if settings.image_size is None else settings.image_size


def database_splits(nets: catalog.Catalog) -> list[str]:
    """The lists the nets train and test on (`<split>_train`, `<split>_valid`): the databases stage 2 writes."""
    return sorted({layout.list_folder(n.split, "train") for n in nets}
                  | {layout.list_folder(n.val_split, "valid") for n in nets})


def make_databases(dataset, data_dir: Path, split_names: list[str], settings: Settings,
                   progress: bool = True) -> dict[str, databases.DbInfo]:
    """Stage 2: one raw-Datum LMDB per list (`<split>/lmdb`, records shuffled with seed 0 as convert_imageset
    --shuffle) and the mean of every train database (`<split>/mean.binaryproto`). Finished databases are kept;
    a half-written one (no completion marker) is written again. Returns the databases written now."""
    channels, size = _stored_as(dataset, settings)
    cache: dict[str, np.ndarray] = {}

    def image(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = as_chw(dataset.image(name), channels, size)
        return cache[name]

    infos = {}
    for split in split_names:
        folder = data_dir / split
        db, mean = folder / "lmdb", (folder / layout.MEAN if layout.is_train(folder) else None)
        if databases.is_complete(db) and (mean is None or mean.is_file()):
            continue
        try:
            items = databases.ordered(databases.read_list(folder / layout.LIST, progress=False), 0)
            records = ((databases.make_key(i, name), image(name), label) for i, (name, label) in enumerate(items))
            infos[split] = databases.write_arrays(db, records, mean_path=mean, total=len(items), progress=progress,
                                                  overwrite=db.exists())
        except databases.DatabaseError as err:      # an unreadable image or list: its message names the file
            raise ExperimentError(str(err)) from None
    return infos


# ---------------------------------------------------------------- stage 3: the nets

def net_catalog(settings: Settings) -> catalog.Catalog:
    """The base, selffer and transfer nets of the settings (frozen and fine-tuned), n = 1..7, and the whole-set
    nets asked for (random filters, reduced data), each with its own fixed solver random_seed (from its name) so
    that a run is reproducible and a resumed run ends the same. Every net trains with the settings' solver."""
    nets = catalog.transfer_catalog([str(s) for s in settings.seeds], 7, pairs=settings.pairs,
                                    fine_tuned=settings.fine_tuned, natman=settings.natman,
                                    natman_pairs=("AB", "BA"), nolearn=settings.random_filters,
                                    reduced=settings.reduced, reduced_solver={}, whole_per_class=math.inf,
                                    whole=settings.random_filters or bool(settings.reduced))
    return catalog.Catalog(dataclasses.replace(net, solver={**net.solver, "random_seed": zlib.crc32(net.name.encode())
                                                            % 2**31}) for net in nets)


def classes_per_split(data_dir: Path, nets: catalog.Catalog) -> dict[str, int]:
    """The number of classes each net's training split holds (its idxmap.txt, stage 1): fc8's num_output."""
    return {split: _count_classes(data_dir / layout.list_folder(split, "train") / layout.IDXMAP)
            for split in {n.split for n in nets}}


def _count_classes(idxmap: Path) -> int:
    """The classes of a split: the "<orig> <new>" lines of its idxmap.txt."""
    return sum(1 for line in idxmap.read_text().splitlines() if line.strip())


def make_nets(nets_dir: Path, data_dir: Path, settings: Settings, n_classes: dict[str, int],
              crop: int = CROP) -> netgen.RenderReport:
    """Stage 3: every net directory (solver, train/val prototxts, train.sh, links to the data) and nets.json,
    rendered from the templates with the scaled CaffeNet; files whose content is unchanged are not touched."""
    arch = architectures.get(ARCH, crop_size=crop)
    return netgen.render_experiment(net_catalog(settings), nets_dir, data_dir, arch=arch, mode=settings.mode,
                                    batch_size=settings.batch_size, val_batch_size=settings.val_batch_size,
                                    n_classes=n_classes, solver=settings.solver())


def check_trained_settings(nets_dir: Path, data_dir: Path) -> None:
    """Stop before training anything when nets in `nets_dir` were trained with other settings than this run
    rendered (tree.changed_nets: another --iterations, solver or batch size, or a base net retrained since):
    resuming them would mix the two. The message names the setting and how to start fresh."""
    try:
        changed = tree.changed_nets(tree.read_tree(nets_dir))
    except tree.TreeError as err:
        raise ExperimentError(str(err)) from None
    if changed:
        raise ExperimentError(f"{nets_dir}: {len(changed)} nets were trained with other settings (or base net weights) "
                              f"than this run's: "
                              f"{tree.format_changes(changed)}; nothing was trained and nothing deleted. Run again "
                              f"with the settings they were trained with, or start fresh: another --out, or delete "
                              f"{nets_dir} (the lists and databases in {data_dir} are kept)")


# ---------------------------------------------------------------- stage 4: training

def trainer_env(engine: str = "torch", gpus: str | None = None) -> dict[str, str]:
    """This process's environment with CAFFE, the trainer train.sh runs (engine torch, caffe or auto), and the
    variables real Caffe needs (runners.trainer_env); raises ExperimentError when that engine cannot train here
    (real Caffe asked for and not found; GPUs asked for that PyTorch here does not see)."""
    from .training import local_runner, runners
    try:
        env = runners.trainer_env(engine, base=os.environ, gpu=bool(local_runner.gpu_slots(gpus)) or None)
        local_runner.check_gpus(gpus, env["CAFFE"], env)
    except tree.TreeError as err:
        raise ExperimentError(str(err)) from None
    return env


def _check_not_training(nets_dir: Path) -> None:
    """Raise ExperimentError when an earlier run's trainers are still at work in `nets_dir` (stopping after a
    kill, or a run still going): this run would race them."""
    from .training import local_runner
    try:
        local_runner.check_not_training(nets_dir)
    except tree.TreeError as err:
        raise ExperimentError(str(err)) from None


def train_nets(nets_dir: Path, engine: str = "torch", jobs: int = 2, gpus: str | None = None,
               progress: bool = True, quiet: bool = False):
    """Stage 4: train every net with `jobs` workers in dependency order (base nets first) through the local
    runner; finished nets are skipped, interrupted ones resume from their newest .solverstate."""
    from .training import local_runner
    env = trainer_env(engine, gpus)
    if gpus is None:       # share the cores: one BLAS/OpenMP thread pool per trainer, no more threads than cores
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.setdefault(var, threads)
    try:
        return local_runner.run_local(nets_dir, jobs=jobs, env=env, gpus=gpus, progress=progress, quiet=quiet)
    except tree.TreeError as err:
        raise ExperimentError(str(err)) from None


# ---------------------------------------------------------------- stage 5: results

def summarize(nets_dir: Path, results_dir: Path, dataset: str = "") -> tuple[list, list[dict], list[dict], Path, str]:
    """Stage 5: every net's logs -> summary.csv/.json, Figure 2 (PNG) and the tables behind it: fig2_transfer
    (accuracy by series and n) and fig2_paired (each net minus the base net of its target half), .txt and .csv.
    Returns (rows, table, paired table, figure, the two tables as text)."""
    rows = logs.summarize_tree(nets_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    logs.write_summary(rows, results_dir)
    # baseB = the base nets of the halves the selffer and transfer nets are trained on (the paper's B)
    targets = {r.split for r in rows if r.kind in ("selffer", "transfer")}
    shown = [r for r in rows if r.kind != "base" or r.split in targets or not targets]
    table = plots.figure_table(shown, "fig2_transfer")
    paired = plots.figure_table(shown, "fig2_paired")
    title = "Transfer and selffer nets on random A/B splits" + (f" of {dataset}" if dataset else "") + " (Figure 2)"
    figure = plots.plot_transfer(shown, results_dir / "fig2_transfer", formats=("png",), title=title)[0]
    text = plots.write_table(table, "Figure 2 analogue: top-1 accuracy by series and n (n = 0: the base nets) "
                                    "[final accuracy]", results_dir / "fig2_transfer")
    text += "\n" + plots.write_table(paired, "Paired: each net minus the base net of its target half (the lower "
                                             "panel)", results_dir / "fig2_paired")
    return rows, table, paired, figure, text


def summarize_fig3(rows: list, results_dir: Path, title: str = "") -> tuple[list[dict], Path | None, str]:
    """Stage 5 with the dissimilar halves (--natman) or random filters (--random-filters) trained: the Figure 3
    analogue (fig3_natman_random.png: each dissimilar half's transfer curve, the random-filter nets, and every
    frozen net minus its base net: dissimilar halves, random halves, random filters) and its table (.txt,
    .csv). Returns (table, figure, the table as text); ([], None, "") without such nets."""
    table = plots.figure_table(rows, "fig3_natman_random")
    if not any(e["series"] in ("relative natman", "relative random") and e["count"] for e in table):
        return [], None, ""
    figure = plots.plot_natman_random(rows, results_dir / "fig3_natman_random", formats=("png",),
                                      halves=("half A", "half B"), title=title)[0]
    text = plots.write_table([e for e in table if e["count"]], "Figure 3 analogue: transfer between the "
                             "dissimilar halves (natman natural: target half A, natman man-made: half B); random "
                             "frozen filters (random; n = 0: the whole-set net); each frozen net minus its base net "
                             "(relative natman, relative AnB: random halves, relative random) [final accuracy]",
                             results_dir / "fig3_natman_random")
    return table, figure, text


def summarize_reduced(rows: list, results_dir: Path, title: str = "") -> tuple[Path | None, str]:
    """Stage 5 with reduced-data nets trained (--reduced): the whole-set net's accuracy against the train images
    per class (reduced.png) and its table (.txt, .csv). Returns (figure, the table as text); (None, "") without
    such nets."""
    table = [e for e in plots.figure_table(rows, "reduced") if e["count"]]
    if not table:
        return None, ""
    figure = plots.plot_reduced(rows, results_dir / "reduced", formats=("png",), title=title)[0]
    text = plots.write_table(table, "Reduced data: top-1 accuracy of the whole-set net (x = train images per "
                             "class) [final accuracy]", results_dir / "reduced")
    return figure, text


# ---------------------------------------------------------------- the whole experiment

def run_experiment(out_dir: str | os.PathLike, *, dataset: str = "fashion-mnist", dataset_options: dict | None = None,
                   settings: Settings | None = None, quick: bool = False, engine: str = "torch", jobs: int = 2,
                   gpus: str | None = None, progress: bool = True) -> ExperimentReport:
    """Run every stage (each skips what is complete) and return the report; raises ExperimentError on a stage
    that cannot go on. An interrupted training (Ctrl-C, SIGTERM) returns with report.interrupted set."""
    report = ExperimentReport(_checked_out_dir(out_dir), settings or settings_for(quick=quick))
    lap = _stopwatch(report.seconds)
    data = _open_checked(dataset, dataset_options, report.nets_dir, engine, gpus)   # before anything is made
    _lists_stage(report, data, progress)              # 1: lists checked against md5sums.txt, unchanged ones kept
    lap("lists")
    nets = net_catalog(report.settings)               # what stages 2-4 make: the nets and the databases they read
    report.nets = nets.names
    _databases_stage(report, data, nets, progress)    # 2: complete databases kept, half-written ones redone
    lap("databases")
    _nets_stage(report, nets)                         # 3: unchanged files kept; nets trained otherwise stop the run
    lap("nets")
    training = _training_stage(report, nets, engine, jobs, gpus, progress)   # 4: trained nets skipped, others resumed
    lap("training")
    if _interrupted(report, training):
        return report
    _results_stage(report, data)                      # 5: recomputed from the logs every time
    lap("results")
    return report


def _checked_out_dir(out_dir: str | os.PathLike) -> Path:
    """`out_dir` as a Path, checked first: the scripts that train the nets name it on one line."""
    out_dir = Path(out_dir)
    try:
        netgen.one_line(out_dir.resolve())
    except netgen.NetgenError as err:
        raise ExperimentError(f"--out: {err}") from None
    return out_dir


def _stopwatch(seconds: dict[str, float]):
    """lap(stage): record in `seconds` the wall time since the previous lap (the first: since this call)."""
    clock = time.monotonic()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.monotonic()
        seconds[stage] = round(now - clock, 2)
        clock = now
    return lap


def _open_checked(dataset: str, options: dict | None, nets_dir: Path, engine: str, gpus: str | None):
    """The dataset adapter, once every check that needs nothing written has passed: its classes make random
    halves, the engine can train here, and no earlier run's trainers are still at work in `nets_dir`."""
    try:
        data = datasets.open_dataset(dataset, **(options or {}))
    except (TypeError, ValueError) as err:
        raise ExperimentError(f"dataset {dataset!r}: {err}") from None
    _check_halves(data)         # as make_lists does, before saying anything
    trainer_env(engine, gpus)   # a run that cannot train here stops before it makes anything
    _check_not_training(nets_dir)
    return data


def _lists_stage(report: ExperimentReport, data, progress: bool) -> None:
    """Stage 1 (make_lists): data/<split>_{train,valid}/files.txt, idxmap.txt and data/md5sums.txt."""
    _say(f"[1/5] split lists of {data.name} ({len(data.classes)} classes) -> {report.data_dir}")
    make_lists(data, report.data_dir, report.settings, progress)


def _databases_stage(report: ExperimentReport, data, nets: catalog.Catalog, progress: bool) -> None:
    """Stage 2 (make_databases): the LMDB (and mean) of every list the nets read."""
    needed = database_splits(nets)
    _say(f"[2/5] {len(needed)} databases -> {report.data_dir}/<split>/lmdb")
    make_databases(data, report.data_dir, needed, report.settings, progress)


def _nets_stage(report: ExperimentReport, nets: catalog.Catalog) -> None:
    """Stage 3 (make_nets): every net's files and nets.json; stops when nets here were trained otherwise."""
    classes = classes_per_split(report.data_dir, nets)
    _say(f"[3/5] {len(nets)} nets -> {report.nets_dir}")
    rendered = make_nets(report.nets_dir, report.data_dir, report.settings, classes)
    _say(rendered.summary())
    check_trained_settings(report.nets_dir, report.data_dir)


def _training_stage(report: ExperimentReport, nets: catalog.Catalog, engine: str, jobs: int, gpus: str | None,
                    progress: bool):
    """Stage 4 on the nets without their final snapshot (report.trained); returns the local runner's result,
    None when every net was trained before."""
    trained = {n.name for n in tree.read_tree(report.nets_dir) if n.finished}
    untrained = [n for n in nets.names if n not in trained]
    _say(f"[4/5] training {len(untrained)} of {len(nets)} nets ({len(nets) - len(untrained)} already trained) "
         f"with engine {engine}, {_at_once(jobs, gpus)}")
    if not untrained:
        return None
    result = train_nets(report.nets_dir, engine=engine, jobs=jobs, gpus=gpus, progress=progress)
    report.trained = untrained
    return result


def _interrupted(report: ExperimentReport, training) -> bool:
    """Whether stage 4's `training` was interrupted (report.interrupted set: running again resumes it); raises
    ExperimentError when nets failed."""
    if training is None:
        return False
    if training.interrupted:
        report.interrupted = training.interrupted
        _say("interrupted: the nets stopped at a snapshot; run the same command again to finish")
        return True
    if not training.ok:
        failed = [s for s in training.nets.values() if s.state != "finished"]
        raise ExperimentError(f"{len(failed)} nets did not finish:\n{training.describe()}\nSee their logs; "
                              f"running again resumes them")
    return False


def _results_stage(report: ExperimentReport, data) -> None:
    """Stage 5: Figure 2 and its tables; Figure 3 and the reduced-data curve when their nets were asked for; the
    findings (results/findings.txt)."""
    _say(f"[5/5] logs -> {report.results_dir}")
    settings, results = report.settings, report.results_dir
    title = getattr(data, "title", data.name)
    report.rows, report.table, report.paired, report.figure, report.tables = summarize(report.nets_dir, results, title)
    if settings.natman or settings.random_filters:
        report.fig3, report.fig3_figure, text = summarize_fig3(report.rows, results,
                                                               _fig3_title(data, settings, title))
        report.tables += "\n" + text if text else ""
    if settings.reduced:
        report.reduced_figure, text = summarize_reduced(report.rows, results,
                                                        f"The whole-set net on less data: {title}")
        report.tables += "\n" + text if text else ""
    report.findings = findings(report.table, report.paired, report.fig3)
    (results / "findings.txt").write_text(report.findings + "\n")


def _fig3_title(data, settings: Settings, title: str) -> str:
    """Figure 3's title: what was trained, on which dataset, and the classes of the dissimilar halves."""
    natman = settings.natman and "natman" in data.dissimilar_groups
    shown = ["transfer between dissimilar halves"] * natman + ["random frozen filters"] * settings.random_filters
    heading = f"{' and '.join(shown).capitalize()} on {title} (Figure 3)"
    if natman:
        a, b = (", ".join(data.classes[i] for i in group) for group in data.dissimilar_groups["natman"])
        heading += f"\nhalf A: {a}; half B: {b}"
    return heading


def publish(report: ExperimentReport, stem: str | os.PathLike, fig3: bool = False) -> list[Path]:
    """Copy the run's Figure 2 (or, `fig3`, its Figure 3 analogue) to <stem>.png and the tables behind it and
    the findings to <stem>.txt (the README's figures)."""
    stem = Path(stem)
    figure = report.fig3_figure if fig3 else report.figure
    if figure is None:
        raise ExperimentError("no Figure 3 analogue to publish: train the dissimilar halves (--natman) or the "
                              "random-filter nets (--random-filters)")
    shutil.copyfile(figure, stem.with_suffix(".png"))
    tables = (report.results_dir / "fig3_natman_random.txt").read_text() if fig3 else report.tables
    s = report.settings
    extra = (["the dissimilar halves"] * s.natman + ["random filters"] * s.random_filters
             + ["reduced data"] * bool(s.reduced))
    header = (f"Made by tools/run_experiment ({len(report.nets)} nets, splits {','.join(map(str, s.seeds))}, "
              f"{''.join(e + ', ' for e in extra)}{s.max_iter} iterations of batch {s.batch_size} each); every "
              f"number from the nets' logs.\n\n")
    stem.with_suffix(".txt").write_text(header + tables + "\n" + report.findings + "\n")
    return [stem.with_suffix(".png"), stem.with_suffix(".txt")]


def _at_once(jobs: int, gpus: str | None) -> str:
    """How many nets train at once: `jobs`, or one per GPU slot (a GPU id listed twice is two slots)."""
    from .training.local_runner import gpu_slots
    slots = gpu_slots(gpus)
    if not slots:
        return f"{jobs} at a time"
    return f"{min(jobs, len(slots))} at a time (one per GPU slot: {','.join(slots)})"
