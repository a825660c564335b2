"""Stage 1: split lists. A whole dataset's image lists -> the lists of every split of the experiment.

Input: Caffe image lists (`<relative/path> <class index>` per line, as `convert_imageset` reads them) for the
train and/or the validation set. Output, under `out_dir`, one folder per split and phase, as in the 2014 release:

    <split>_train/files.txt, idxmap.txt      <split>_valid/files.txt, idxmap.txt      md5sums.txt

- `whole`: every line, labels unchanged.
- `half{s}A`, `half{s}B` for each seed s: A = sorted(RandomState([s]).choice(arange(n), n // 2, replace=False))
  (numpy's legacy generator), B = the other classes.
- `half{name}A`, `half{name}B` for each user grouping `groups={name: (classes_A, classes_B)}`
  (ILSVRC-2012: `imagenet_groups()` gives {"natman": (natural, man-made)}).
- `reduced{N:04d}` (train only): all classes, the first N lines of each class in input order.

A half keeps the input lines whose class is in it, in input order, with the classes renumbered 0..K-1 in ascending
order of their original index; `idxmap.txt` lists "<orig> <new>" per class. Lines are written exactly as
`<path> <label>\\n` (one space, Unix newline, a newline after the last line): with that format the lists of
the 2014 release hash to their published md5s.

Every list's md5 is checked against `published_md5` (e.g. `published_md5_2014()`) before anything is written; a
mismatch raises Md5MismatchError unless `accept_new`. Files are written to a staging folder and renamed into place,
so no half-written list ever carries its final name, and a list whose bytes are already there is left untouched:
re-running with the same inputs writes nothing. `md5sums.txt` lists "<md5>  <split>/files.txt" for every list made.

    from convnet_transfer.data import splits
    report = splits.make_splits("train.txt", "val.txt", "data", n_classes=1000,
                                groups=splits.imagenet_groups(), published_md5=splits.published_md5_2014())
    print(report.summary())
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from convnet_transfer.formats import protoio
from convnet_transfer.resources import ilsvrc12_dir
from .errors import Md5MismatchError, SplitError
from .layout import IDXMAP, LIST, MANIFEST, PHASES, list_folder
from .lists import LARGE_INPUT, MAX_LABEL, check_items, file_md5, list_bytes, progress_bar, read_list

__all__ = [
    "make_splits", "imagenet_groups", "random_halves", "read_manifest", "published_md5_2014",
    "ilsvrc12_classes", "ilsvrc12_class_names", "SplitReport", "SplitError", "Md5MismatchError",
    "REDUCED_2014", "SEEDS_2014",
]

SEEDS_2014 = (0, 1, 2, 3)
REDUCED_2014 = (1, 2, 5, 10, 25, 50, 100, 250, 500, 750, 1000)

ImageList = Sequence[tuple[str, int]]  # [(relpath, label), ...]


# ---------------------------------------------------------------------------------------------------------------
# Reading

def _as_list(source, n_classes: int, progress: bool, what: str) -> tuple[list[tuple[str, int]], str]:
    """A list given as a path or as (relpath, label) pairs, checked by the list rules; returns it and its name."""
    if isinstance(source, (str, os.PathLike)):
        return read_list(source, n_classes, progress), str(source)
    return check_items(source, n_classes, what), f"the {what} list"


def read_manifest(path: str | os.PathLike) -> dict[str, str]:
    """An md5 manifest ("<md5>  <name>" per line, md5sum's format) -> {name: md5}."""
    path = Path(path)
    manifest = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise SplitError(f"cannot read md5 manifest {path}: {err}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 32:
            raise SplitError(f"{path}:{number}: expected '<md5>  <split>/files.txt' (md5sum's format), got "
                             f"{line!r}; mend that line")
        manifest[parts[1].lstrip("*").strip()] = parts[0].lower()
    return manifest


# ---------------------------------------------------------------------------------------------------------------
# The shipped ILSVRC-2012 facts (ilsvrc12/README.md says where they come from)

def ilsvrc12_classes() -> list[str]:
    """The 1000 ILSVRC-2012 wnids in Caffe's class order (label i = line i of ilsvrc12/synsets.txt)."""
    return (ilsvrc12_dir() / "synsets.txt").read_text().split()


def ilsvrc12_class_names() -> list[str]:
    """Class names in label order, from ilsvrc12/synset_words.txt ("tench, Tinca tinca", ...)."""
    lines = (ilsvrc12_dir() / "synset_words.txt").read_text().splitlines()
    return [line.split(" ", 1)[1].strip() for line in lines if line.strip()]


def imagenet_groups() -> dict[str, tuple[list[int], list[int]]]:
    """{"natman": (natural, man-made)}: the 2014 grouping (449 / 551 class indices), from the shipped class lists."""
    index = {wnid: i for i, wnid in enumerate(ilsvrc12_classes())}
    natural = sorted(index[w] for w in (ilsvrc12_dir() / "natural_synsets.txt").read_text().split())
    manmade = sorted(index[w] for w in (ilsvrc12_dir() / "manmade_synsets.txt").read_text().split())
    return {"natman": (natural, manmade)}


def published_md5_2014() -> dict[str, str]:
    """The md5 of every list of the 2014 release ({"half0A_train/files.txt": md5, ...}), from ilsvrc12/."""
    return read_manifest(ilsvrc12_dir() / "md5sums_2014.txt")


# ---------------------------------------------------------------------------------------------------------------
# Splitting

def random_halves(n_classes: int, seed: int) -> tuple[list[int], list[int]]:
    """The 2014 rule: A = sorted(RandomState([seed]).choice(arange(n), n // 2, replace=False)), B = the rest."""
    rng = np.random.RandomState([seed])
    half_a = sorted(int(c) for c in rng.choice(np.arange(n_classes), n_classes // 2, replace=False))
    chosen = set(half_a)
    return half_a, [c for c in range(n_classes) if c not in chosen]


@dataclass
class _Split:
    name: str                   # "half0A", "whole", "reduced0010"
    classes: list[int] | None   # the classes kept, renumbered in this order; None = all, labels unchanged
    per_class: int | None = None  # reduced: first N lines of each class
    train_only: bool = False


def _plan(n_classes: int, seeds: Sequence[int], groups: Mapping[str, tuple[Sequence[int], Sequence[int]]] | None,
          reduced: Sequence[int]) -> list[_Split]:
    """Every split in the 2014 manifest's order: halves by seed, groupings, reduced, whole."""
    plan = []
    for seed in seeds:
        half_a, half_b = random_halves(n_classes, seed)
        plan += [_Split(f"half{seed}A", half_a), _Split(f"half{seed}B", half_b)]
    for name, (group_a, group_b) in (groups or {}).items():
        half_a, half_b = _check_group(name, group_a, group_b, n_classes)
        plan += [_Split(f"half{name}A", half_a), _Split(f"half{name}B", half_b)]
    for n in reduced:
        if int(n) < 1:
            raise SplitError(f"reduced size {n}: the number of images per class must be at least 1")
        plan.append(_Split(f"reduced{int(n):04d}", None, per_class=int(n), train_only=True))
    plan.append(_Split("whole", None))
    names = [s.name for s in plan]
    if len(set(names)) != len(names):
        raise SplitError(f"two splits would have the same name: {sorted(n for n in names if names.count(n) > 1)}")
    return plan


def _check_group(name: str, group_a, group_b, n_classes: int) -> tuple[list[int], list[int]]:
    if not name or not all(ch.isalnum() or ch in "-_" for ch in name):
        raise SplitError(f"grouping name {name!r}: use letters, digits, '-' or '_' (it becomes half{name}A/B)")
    halves = []
    for letter, group in (("A", group_a), ("B", group_b)):
        classes = sorted(int(c) for c in group)
        if not classes:
            raise SplitError(f"grouping {name!r}: group {letter} is empty")
        bad = [c for c in classes if not 0 <= c < n_classes]
        if bad:
            raise SplitError(f"grouping {name!r}: group {letter} has classes out of range 0..{n_classes - 1}: {bad}")
        if len(set(classes)) != len(classes):
            raise SplitError(f"grouping {name!r}: group {letter} lists a class twice")
        halves.append(classes)
    both = sorted(set(halves[0]) & set(halves[1]))
    if both:
        raise SplitError(f"grouping {name!r}: classes {both} are in both groups")
    return halves[0], halves[1]


def _select(items: list[tuple[str, int]], split: _Split) -> tuple[list[tuple[str, int]], list[tuple[int, int]]]:
    """The lines of `split` (renumbered) and its idxmap pairs."""
    if split.classes is None:  # whole or reduced: all classes, labels unchanged (the caller writes the identity)
        if split.per_class is None:
            return items, None
        seen: Counter = Counter()
        kept = []
        for relpath, label in items:
            if seen[label] < split.per_class:
                seen[label] += 1
                kept.append((relpath, label))
        return kept, None
    new = {orig: i for i, orig in enumerate(split.classes)}
    return [(relpath, new[label]) for relpath, label in items if label in new], list(new.items())


@dataclass
class SplitReport:
    """What make_splits did. `md5`: {"<split>/files.txt": md5} of every list made, in manifest order."""
    out_dir: Path
    md5: dict[str, str] = field(default_factory=dict)
    checked: list[str] = field(default_factory=list)      # lists whose md5 equals the published one
    new: list[tuple[str, str, str]] = field(default_factory=list)  # (list, expected, actual) accepted as new
    unpublished: list[str] = field(default_factory=list)  # lists with no published md5
    written: list[str] = field(default_factory=list)      # files created or replaced
    unchanged: list[str] = field(default_factory=list)    # files already there with the same bytes
    notes: list[str] = field(default_factory=list)

    @property
    def no_op(self) -> bool:
        return not self.written

    def summary(self) -> str:
        lines = [f"{len(self.md5)} lists in {self.out_dir}: {len(self.checked)} match their published md5, "
                 f"{len(self.new)} differ (accepted as new), {len(self.unpublished)} have no published md5"]
        if self.no_op:
            lines.append(f"nothing to do: all {len(self.unchanged)} files were already there with the same bytes")
        else:
            lines.append(f"wrote {len(self.written)} files, {len(self.unchanged)} already up to date; "
                         f"manifest {self.out_dir / MANIFEST}")
        return "\n".join(lines)


def make_splits(train_list: str | os.PathLike | ImageList | None = None,
                val_list: str | os.PathLike | ImageList | None = None,
                out_dir: str | os.PathLike = ".", *, n_classes: int,
                seeds: Sequence[int] = SEEDS_2014,
                groups: Mapping[str, tuple[Sequence[int], Sequence[int]]] | None = None,
                reduced: Sequence[int] = REDUCED_2014, published_md5: Mapping[str, str] | None = None,
                accept_new: bool = False, short_classes: str = "error", progress: bool = True,
                log: Callable[[str], None] | None = None) -> SplitReport:
    """Write every split list of a dataset with `n_classes` classes under `out_dir` (layout: module docstring).

    train_list, val_list: a Caffe list file or a sequence of (relpath, label); either may be None (not both).
    seeds: random halves half{s}A/B.  groups: {name: (classes_A, classes_B)} -> half{name}A/B.
    reduced: N images per class -> reduced{N:04d}_train (no valid list: the reduced nets test on whole_valid).
    published_md5: {"<split>/files.txt": md5}; a list whose md5 differs raises Md5MismatchError naming the list
        and both md5s, unless accept_new. An input whose whole list differs is reported first.
    short_classes: a class with fewer train images than a reduced N: "error" (SplitError naming the class and its
        count) or "keep" (keep all its images; the 2014 ILSVRC lists did this: some classes have only 732).
    log: where messages go (default: stderr).  Returns a SplitReport; raises SplitError on bad input, having
    written nothing.
    """
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    _check_arguments(n_classes, short_classes, train_list, val_list)
    out_dir = Path(out_dir)
    plan = _plan(n_classes, seeds, groups, reduced)
    published = dict(published_md5 or {})
    report = SplitReport(out_dir)
    inputs = {phase: _as_list(source, n_classes, progress, phase)
              for phase, source in (("train", train_list), ("valid", val_list)) if source is not None}
    _check_inputs_published(inputs, published, accept_new, say)
    if "train" in inputs:
        _check_short_classes(inputs["train"], n_classes, plan, short_classes, report, say)
    jobs = [(split, phase) for phase in PHASES if phase in inputs for split in plan
            if not (split.train_only and phase == "valid")]
    large = progress and max(len(items) for items, _ in inputs.values()) >= LARGE_INPUT
    _write_lists(out_dir, jobs, inputs, n_classes, large, report,
                 check=lambda: _check_published(report, published, accept_new, say))
    say(report.summary())
    return report


def _check_arguments(n_classes: int, short_classes: str, train_list, val_list) -> None:
    if short_classes not in ("error", "keep"):
        raise ValueError(f"short_classes must be 'error' or 'keep', not {short_classes!r}")
    if n_classes < 2:
        raise SplitError(f"n_classes = {n_classes}: a dataset to split needs at least 2 classes")
    if n_classes > MAX_LABEL + 1:
        raise SplitError(f"n_classes = {n_classes}: a Caffe Datum's label is an int32, so at most {MAX_LABEL + 1} "
                         f"classes")
    if train_list is None and val_list is None:
        raise SplitError("give a train list, a validation list, or both")


def _check_inputs_published(inputs: dict, published: Mapping[str, str], accept_new: bool, say) -> None:
    """Say first when an input is not the published one: every derived md5 then differs too."""
    for phase, (items, name) in inputs.items():
        key = f"{list_folder('whole', phase)}/{LIST}"
        if key in published:
            actual = hashlib.md5(list_bytes(items)).hexdigest()
            if actual != published[key]:
                message = (f"{name} is not the {phase} list the published md5s were made from: {key} has md5 "
                           f"{actual}, published {published[key]} ({len(items)} lines). Every list derived from "
                           f"it will differ from its published md5 too.")
                if not accept_new:
                    raise Md5MismatchError(message + " Check the list (same lines, same order as Caffe's "
                                           "train.txt/val.txt), or accept new lists with --accept-new "
                                           "(accept_new=True).", key, published[key], actual)
                say("note: " + message + " Accepting new lists (--accept-new).")


def _write_lists(out_dir: Path, jobs, inputs: dict, n_classes: int, large: bool, report: SplitReport,
                 check: Callable[[], None]) -> None:
    """Stage every list and the manifest, `check` their md5s, then rename them into place and verify them."""
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out_dir)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".make_splits-{os.getpid()}-", dir=out_dir))
    except OSError as err:   # name the output folder, not the staging folder that could not be made in it
        raise protoio.os_error_naming(err, out_dir) from None
    try:
        staged = _stage_lists(staging, jobs, inputs, n_classes, large, report)
        check()
        manifest = "".join(f"{md5}  {name}\n" for name, md5 in report.md5.items()).encode()
        _stage(staging, MANIFEST, manifest)
        staged.append((MANIFEST, None))
        _install(staging, out_dir, [name for name, _ in staged], report)
        for name, md5 in staged:  # checked after writing: the files under their final names
            if md5 is not None and file_md5(out_dir / name) != md5:
                raise SplitError(f"{out_dir / name}: md5 after writing is {file_md5(out_dir / name)}, expected "
                                 f"{md5}; the disk or another process changed it, run again")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()   # failed before writing anything: leave no empty folder behind


def _stage_lists(staging: Path, jobs, inputs: dict, n_classes: int, large: bool,
                 report: SplitReport) -> list[tuple[str, str | None]]:
    """Each (split, phase)'s files.txt and idxmap.txt in `staging`; returns (relative name, md5 to check after
    writing) for each, and notes the lists' md5s in `report`."""
    staged: list[tuple[str, str | None]] = []
    with progress_bar(large, total=len(jobs), desc="making lists", unit="list") as bar:
        for split, phase in jobs:
            items, _ = inputs[phase]
            lines, idxmap = _select(items, split)
            if not lines:   # read_list refuses an empty list: never write one
                raise SplitError(f"{split.name}_{phase}/files.txt would list no image: {inputs[phase][1]} has no "
                                 f"image of its classes {_some(split.classes)}; add "
                                 f"{'validation' if phase == 'valid' else 'train'} images of them")
            if idxmap is None:
                idxmap = [(c, c) for c in range(n_classes)]
            folder = list_folder(split.name, phase)
            files_md5 = _stage(staging, f"{folder}/{LIST}", list_bytes(lines))
            _stage(staging, f"{folder}/{IDXMAP}", "".join(f"{o} {n}\n" for o, n in idxmap).encode())
            report.md5[f"{folder}/{LIST}"] = files_md5
            staged += [(f"{folder}/{LIST}", files_md5), (f"{folder}/{IDXMAP}", None)]
            bar.update()
    return staged


def _some(classes: list[int], shown: int = 10) -> str:
    return ", ".join(map(str, classes[:shown])) + (f", ... ({len(classes)} classes)" if len(classes) > shown else "")


def _check_short_classes(train, n_classes, plan, short_classes, report, say):
    items, name = train
    counts = Counter(label for _, label in items)
    for split in plan:
        if split.per_class is None:
            continue
        short = sorted((counts.get(c, 0), c) for c in range(n_classes) if counts.get(c, 0) < split.per_class)
        if not short:
            continue
        fewest, cls = short[0]
        what = (f"{split.name}_train: {len(short)} classes have fewer than {split.per_class} train images in {name}"
                f" (class {cls} has {fewest})")
        if short_classes == "error":
            raise SplitError(f"{what}; ask for fewer images per class (--reduced), or keep all images of such "
                             f"classes with --short-classes keep (short_classes='keep', as the 2014 lists did)")
        note = f"{what}: keeping all their images"
        report.notes.append(note)
        say("note: " + note)


def _check_published(report: SplitReport, published: Mapping[str, str], accept_new: bool, say) -> None:
    for name, actual in report.md5.items():
        expected = published.get(name)
        if expected is None:
            report.unpublished.append(name)
        elif expected == actual:
            report.checked.append(name)
        elif not accept_new:
            raise Md5MismatchError(f"{name}: md5 {actual} differs from the published {expected}; nothing was "
                                   f"written. Check the inputs (class list, seeds, groupings), or accept new lists "
                                   f"with --accept-new (accept_new=True)", name, expected, actual)
        else:
            report.new.append((name, expected, actual))
    if report.new:
        say(f"note: {len(report.new)} lists differ from their published md5 (accepted as new): "
            + ", ".join(name for name, _, _ in report.new[:5]) + (" ..." if len(report.new) > 5 else ""))


def _remove_stale_staging(out_dir: Path) -> None:
    """Staging folders of runs that were killed (their process is gone): only complete copies, safe to drop."""
    for folder in out_dir.glob(".make_splits-*-*"):
        pid = folder.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stage(staging: Path, name: str, data: bytes) -> str:
    path = staging / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as err:   # a full disk: name the output folder, not the staging copy (removed again)
        raise protoio.os_error_naming(err, staging.parent) from None
    return hashlib.md5(data).hexdigest()


def _install(staging: Path, out_dir: Path, names: list[str], report: SplitReport) -> None:
    """Rename each staged file into place unless the same bytes are already there (so mtimes stay)."""
    for name in names:
        source, target = staging / name, out_dir / name
        if target.is_file() and target.stat().st_size == source.stat().st_size \
                and file_md5(target) == file_md5(source):
            report.unchanged.append(name)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as f:
            os.fsync(f.fileno())
        os.replace(source, target)
        report.written.append(name)
