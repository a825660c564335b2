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
import signal
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .nets import architectures, catalog, netgen
from .data import databases, datasets, images, splits
from .results import logs, plots

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

# The paper's Figure 2 (2014 logs, plots/reference_fig2_transfer.txt): mean top-1 accuracy by series and n.
PAPER_FIG2 = {
    "baseB": {0: 0.6245},
    "BnB": {1: 0.6262, 2: 0.6228, 3: 0.6203, 4: 0.6041, 5: 0.5933, 6: 0.6185, 7: 0.6229},
    "BnB+": {1: 0.6166, 2: 0.6214, 3: 0.6303, 4: 0.6284, 5: 0.6292, 6: 0.6274, 7: 0.6263},
    "AnB": {1: 0.6275, 2: 0.6233, 3: 0.6183, 4: 0.5994, 5: 0.5777, 6: 0.5804, 7: 0.5419},
    "AnB+": {1: 0.6364, 2: 0.6347, 3: 0.6421, 4: 0.6394, 5: 0.6443, 6: 0.6455, 7: 0.6457},
}
# The paper's Figure 3, lower panel (2014 logs, plots/reference_fig3_natman_random.txt): mean top-1 accuracy of the
# frozen transfer nets minus the base net of their target half, between the natural and man-made halves and
# between random halves; the whole-set net with its first n layers random and frozen, minus the whole-set net.
PAPER_FIG3 = {
    "relative natman": {1: 0.0029, 2: -0.0090, 3: -0.0321, 4: -0.0731, 5: -0.1302, 6: -0.1663, 7: -0.2510},
    "relative AnB": {1: 0.0030, 2: -0.0012, 3: -0.0063, 4: -0.0252, 5: -0.0468, 6: -0.0442, 7: -0.0826},
    "relative random": {1: -0.0844, 2: -0.1734, 3: -0.5743, 4: -0.5562, 5: -0.5254, 6: -0.5609, 7: -0.5607},
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
    manifest = data_dir / splits.MANIFEST
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

def _as_chw(image: np.ndarray, channels: int, size: int | None) -> np.ndarray:
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


def _image_size(dataset, settings: Settings) -> int | None:
    if settings.image_size is not None:
        return settings.image_size
    return None if isinstance(dataset, datasets.FashionMNIST) else 32


def database_splits(nets: catalog.Catalog) -> list[str]:
    """The lists the nets train and test on (`<split>_train`, `<split>_valid`): the databases stage 2 writes."""
    return sorted({f"{n.split}_train" for n in nets} | {f"{n.val_split}_valid" for n in nets})


def make_databases(dataset, data_dir: Path, split_names: list[str], settings: Settings,
                   progress: bool = True) -> dict[str, databases.DbInfo]:
    """Stage 2: one raw-Datum LMDB per list (`<split>/lmdb`, records shuffled with seed 0 as convert_imageset
    --shuffle) and the mean of every train database (`<split>/mean.binaryproto`). Finished databases are kept;
    a half-written one (no completion marker) is written again. Returns the databases written now."""
    channels = 1 if isinstance(dataset, datasets.FashionMNIST) else 3
    size = _image_size(dataset, settings)
    cache: dict[str, np.ndarray] = {}

    def image(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = _as_chw(dataset.image(name), channels, size)
        return cache[name]

    infos = {}
    for split in split_names:
        folder = data_dir / split
        db, mean = folder / "lmdb", (folder / "mean.binaryproto" if split.endswith("_train") else None)
        if databases.is_complete(db) and (mean is None or mean.is_file()):
            continue
        try:
            items = databases.ordered(databases.read_list(folder / "files.txt", progress=False), 0)
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
    return {split: _count_classes(data_dir / f"{split}_train" / "idxmap.txt") for split in {n.split for n in nets}}


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
    from .nets import tree
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
    from .nets.tree import TreeError
    from .training import local_runner, runners
    try:
        env = runners.trainer_env(engine, base=os.environ)
        local_runner.check_gpus(gpus, env["CAFFE"])
    except TreeError as err:
        raise ExperimentError(str(err)) from None
    return env


def _check_not_training(nets_dir: Path) -> None:
    """Raise ExperimentError when an earlier run's trainers are still at work in `nets_dir` (stopping after a
    kill, or a run still going): this run would race them."""
    from .nets.tree import TreeError
    from .training import local_runner
    try:
        local_runner.check_not_training(nets_dir)
    except TreeError as err:
        raise ExperimentError(str(err)) from None


def train_nets(nets_dir: Path, engine: str = "torch", jobs: int = 2, gpus: str | None = None,
               progress: bool = True, quiet: bool = False):
    """Stage 4: train every net with `jobs` workers in dependency order (base nets first) through the local
    runner; finished nets are skipped, interrupted ones resume from their newest .solverstate."""
    from .nets.tree import TreeError
    from .training import local_runner
    env = trainer_env(engine, gpus)
    if gpus is None:       # share the cores: one BLAS/OpenMP thread pool per trainer, no more threads than cores
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.setdefault(var, threads)
    try:
        return local_runner.run_local(nets_dir, jobs=jobs, env=env, gpus=gpus, progress=progress, quiet=quiet)
    except TreeError as err:
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


def _means(table: list[dict]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for entry in table:
        if not math.isnan(entry["mean"]):
            out.setdefault(entry["series"], {})[int(entry["x"])] = entry["mean"]
    return out


def split_spread(paired: list[dict]) -> float | None:
    """How much a paired difference (net minus its base net) varies from split to split: the median, over
    series and n, of the std across splits. None with one split (nothing to judge a difference by)."""
    stds = [e["std"] for e in paired if e["count"] >= 2 and not math.isnan(e["std"])]
    return float(np.median(stds)) if stds else None


def findings(table: list[dict], paired: list[dict] | None = None, fig3: list[dict] | None = None) -> str:
    """The paper's three findings checked on the numbers of `table` (fig2_transfer) and `paired` (fig2_paired),
    and from `fig3` (fig3_natman_random) a fourth when the dissimilar halves were trained and a fifth when the
    random-filter nets were, in plain words, beside the paper's. A difference counts only when it is larger than
    the split-to-split spread of the paired differences (split_spread); smaller ones are called within it."""
    ours, paper = _means(table), PAPER_FIG2
    spread = split_spread(paired or [])

    def pct(v):
        return f"{100 * v:.1f}%"

    def pts(v):
        return f"{100 * v:+.1f} points"

    def verdict(effect: float) -> tuple[str, str]:
        """(the answer: Yes, No or Barely; the answer in words, with what qualifies it)"""
        if effect <= 0:
            return "No", "No"
        if spread is None:
            return "Yes", "Yes, on one split (no spread to judge it by)"
        if effect > spread:
            return "Yes", "Yes"
        return "Barely", f"Barely: within the split-to-split spread ({100 * spread:.1f} points)"

    lines = []
    base = ours.get("baseB", {}).get(0)
    p_base = paper["baseB"][0]
    if base is not None:
        lines.append(f"Base nets B (trained on the target halves): mean top-1 {pct(base)} (paper, ImageNet halves: "
                     f"{pct(p_base)}).")
    if spread is not None:
        lines.append(f"A paired difference (a net minus the base net of its half) varies by {100 * spread:.1f} "
                     f"points from split to split (median std); smaller differences are not findings.")
    anb, p_anb = ours.get("AnB", {}), paper["AnB"]
    if anb and 1 in anb and 7 in anb:
        lines.append(
            f"1. Does transfer AnB fall with n? {verdict(anb[1] - anb[7])[1]}: AnB is {pct(anb[1])} at n=1 and "
            f"{pct(anb[7])} at n=7 ({pts(anb[7] - anb[1])}). Paper: {pct(p_anb[1])} -> {pct(p_anb[7])} "
            f"({pts(p_anb[7] - p_anb[1])}), as the upper layers' features become specific to the base task.")
    bnb, p_bnb = ours.get("BnB", {}), paper["BnB"]
    if bnb and 1 in bnb and 7 in bnb:
        middle = {n: v for n, v in bnb.items() if 3 <= n <= 6}
        if middle:
            n_min = min(middle, key=middle.get)
            lines.append(
                f"2. Does selffer BnB dip in the middle? {verdict(min(bnb[1], bnb[7]) - middle[n_min])[1]}: its "
                f"lowest middle value is {pct(middle[n_min])} at n={n_min}, against {pct(bnb[1])} at n=1 and "
                f"{pct(bnb[7])} at n=7. Paper: down to {pct(p_bnb[5])} at n=5 from {pct(p_bnb[1])} at n=1 and "
                f"{pct(p_bnb[7])} at n=7 (co-adapted middle layers that the upper layers cannot relearn alone).")
    anbp, bnbp = ours.get("AnB+", {}), ours.get("BnB+", {})
    if anbp and base is not None:
        mean_plus = float(np.mean(list(anbp.values())))
        p_plus, p_ctrl = (float(np.mean(list(paper[s].values()))) for s in ("AnB+", "BnB+"))
        line = (f"3. Does fine-tuned transfer AnB+ beat the base nets? {verdict(mean_plus - base)[1]}: AnB+ averages "
                f"{pct(mean_plus)} over n=1..7 against {pct(base)} ({pts(mean_plus - base)}). Paper: "
                f"{pct(p_plus)} against {pct(p_base)} ({pts(p_plus - p_base)}).")
        if bnbp:
            control = float(np.mean(list(bnbp.values())))
            line += (f" The control is selffer BnB+, trained as long on its own half: {pct(control)}, so transfer "
                     f"itself adds {pts(mean_plus - control)} ({verdict(mean_plus - control)[0]}). Paper: "
                     f"BnB+ {pct(p_ctrl)}, transfer adds {pts(p_plus - p_ctrl)}: features from another task "
                     f"generalize better even after fine-tuning.")
            if verdict(control - base)[0] == "Yes":
                line += (f" Here BnB+ itself beats its base nets by {pts(control - base)}: the base nets are not "
                         f"trained to convergence as the paper's were, so fine-tuning goes on training them; "
                         f"compare AnB+ with BnB+, not with the base nets.")
        lines.append(line)
    relative = _means(fig3 or [])
    far, near = relative.get("relative natman", {}), relative.get("relative AnB", {})
    if 7 in far and 7 in near:
        p_far, p_near = PAPER_FIG3["relative natman"][7], PAPER_FIG3["relative AnB"][7]
        lines.append(
            f"4. Does transfer between dissimilar halves lose more than between random halves? "
            f"{verdict(near[7] - far[7])[1]}: at n=7 the frozen transfer nets between the dissimilar halves are "
            f"{pts(far[7])} from the base nets of their target halves, those between random halves {pts(near[7])}. "
            f"Paper (natural/man-made): {pts(p_far)} against {pts(p_near)}: the less alike the tasks, the less "
            f"the upper layers' features transfer.")
    random_filters, p_random, p_transfer = (relative.get("relative random", {}), PAPER_FIG3["relative random"],
                                            PAPER_FIG3["relative AnB"])
    both = sorted(set(random_filters) & set(near))
    if both:
        gap = float(np.mean([near[n] - random_filters[n] for n in both]))
        shown = [n for n in (1, 2, 3) if n in random_filters and n in near]
        lines.append(
            f"5. Do transferred features beat random ones? {verdict(gap)[1]}: with its first n layers random and "
            f"frozen, the whole-set net is "
            + ", ".join(f"{pts(random_filters[n])} at n={n}" for n in shown)
            + f" from the whole-set net; frozen transferred layers (AnB) "
            + ", ".join(pts(near[n]) for n in shown)
            + f" from their base nets ({pts(gap)} on average over n={both[0]}..{both[-1]}). Paper: "
            + ", ".join(pts(p_random[n]) for n in shown) + " against " + ", ".join(pts(p_transfer[n]) for n in shown)
            + ": random filters lose much more, near chance from n=3.")
    if not any(line[:2] in ("1.", "2.", "3.") for line in lines):
        return "No results to compare yet (no transfer or selffer net has a test accuracy in its logs)."
    return "\n".join(lines)


# ---------------------------------------------------------------- the whole experiment

def run_experiment(out_dir: str | os.PathLike, *, dataset: str = "fashion-mnist", dataset_options: dict | None = None,
                   settings: Settings | None = None, quick: bool = False, engine: str = "torch", jobs: int = 2,
                   gpus: str | None = None, progress: bool = True) -> ExperimentReport:
    """Run every stage (each skips what is complete) and return the report; raises ExperimentError on a stage
    that cannot go on. An interrupted training (Ctrl-C, SIGTERM) returns with report.interrupted set."""
    out_dir = Path(out_dir)
    try:
        netgen.one_line(out_dir.resolve())      # the scripts that train the nets name it: checked before anything
    except netgen.NetgenError as err:
        raise ExperimentError(f"--out: {err}") from None
    settings = settings or settings_for(quick=quick)
    report = ExperimentReport(out_dir, settings)
    clock = time.monotonic()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.monotonic()
        report.seconds[stage] = round(now - clock, 2)
        clock = now

    try:
        data = datasets.open_dataset(dataset, **(dataset_options or {}))
    except (TypeError, ValueError) as err:
        raise ExperimentError(f"dataset {dataset!r}: {err}") from None
    _check_halves(data)         # as make_lists does, before saying anything
    trainer_env(engine, gpus)   # a run that cannot train here stops before it makes anything
    _check_not_training(report.nets_dir)
    _say(f"[1/5] split lists of {data.name} ({len(data.classes)} classes) -> {report.data_dir}")
    make_lists(data, report.data_dir, settings, progress)
    lap("lists")

    nets = net_catalog(settings)
    report.nets = nets.names
    needed = database_splits(nets)
    _say(f"[2/5] {len(needed)} databases -> {report.data_dir}/<split>/lmdb")
    make_databases(data, report.data_dir, needed, settings, progress)
    lap("databases")

    classes = classes_per_split(report.data_dir, nets)
    _say(f"[3/5] {len(nets)} nets -> {report.nets_dir}")
    rendered = make_nets(report.nets_dir, report.data_dir, settings, classes)
    _say(rendered.summary())
    check_trained_settings(report.nets_dir, report.data_dir)
    lap("nets")

    untrained = [n for n in nets.names if not _finished(report.nets_dir / n, settings.max_iter)]
    _say(f"[4/5] training {len(untrained)} of {len(nets)} nets ({len(nets) - len(untrained)} already trained) "
         f"with engine {engine}, {_at_once(jobs, gpus)}")
    if untrained:
        result = train_nets(report.nets_dir, engine=engine, jobs=jobs, gpus=gpus, progress=progress)
        report.trained = untrained
        lap("training")
        if result.interrupted:
            report.interrupted = result.interrupted
            _say("interrupted: the nets stopped at a snapshot; run the same command again to finish")
            return report
        if not result.ok:
            failed = [s for s in result.nets.values() if s.state != "finished"]
            raise ExperimentError(f"{len(failed)} nets did not finish:\n{result.describe()}\nSee their logs; "
                                  f"running again resumes them")
    else:
        lap("training")

    _say(f"[5/5] logs -> {report.results_dir}")
    title = getattr(data, "title", data.name)
    report.rows, report.table, report.paired, report.figure, report.tables = summarize(
        report.nets_dir, report.results_dir, title)
    if settings.natman or settings.random_filters:
        report.fig3, report.fig3_figure, text = summarize_fig3(report.rows, report.results_dir,
                                                               _fig3_title(data, settings, title))
        report.tables += "\n" + text if text else ""
    if settings.reduced:
        report.reduced_figure, text = summarize_reduced(report.rows, report.results_dir,
                                                        f"The whole-set net on less data: {title}")
        report.tables += "\n" + text if text else ""
    report.findings = findings(report.table, report.paired, report.fig3)
    (report.results_dir / "findings.txt").write_text(report.findings + "\n")
    lap("results")
    return report


def publish(report: ExperimentReport, stem: str | os.PathLike, fig3: bool = False) -> list[Path]:
    """Copy the run's Figure 2 (or, `fig3`, its Figure 3 analogue) to <stem>.png and the tables behind it and
    the findings to <stem>.txt (the README's figures)."""
    import shutil
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


def _count_classes(idxmap: Path) -> int:
    return sum(1 for line in idxmap.read_text().splitlines() if line.strip())


def _fig3_title(data, settings: Settings, title: str) -> str:
    """Figure 3's title: what was trained, on which dataset, and the classes of the dissimilar halves."""
    natman = settings.natman and "natman" in data.dissimilar_groups
    shown = ["transfer between dissimilar halves"] * natman + ["random frozen filters"] * settings.random_filters
    heading = f"{' and '.join(shown).capitalize()} on {title} (Figure 3)"
    if natman:
        a, b = (", ".join(data.classes[i] for i in group) for group in data.dissimilar_groups["natman"])
        heading += f"\nhalf A: {a}; half B: {b}"
    return heading


def _at_once(jobs: int, gpus: str | None) -> str:
    """How many nets train at once: `jobs`, or one per GPU slot (a GPU id listed twice is two slots)."""
    from .training.local_runner import gpu_slots
    slots = gpu_slots(gpus)
    if not slots:
        return f"{jobs} at a time"
    return f"{min(jobs, len(slots))} at a time (one per GPU slot: {','.join(slots)})"


def _finished(net_dir: Path, max_iter: int) -> bool:
    from .formats.snapshots import snapshot_name
    return (net_dir / snapshot_name("snapshot", max_iter)).exists()
