"""Caffe image lists: `<relative/path> <class index>` per line, as `convert_imageset` reads them. One reader and
one set of rules for every stage that reads a list (make_splits, make_dbs, run_experiment's `--dataset list`),
and the exact bytes a list is written as.

    read_list(path, n_classes=None) -> [(relpath, label), ...]     ListError names file:line
    check_items(pairs, n_classes, what) -> [(relpath, label), ...]  the same rules for a list held in memory
    list_bytes(items) -> bytes                                        `<path> <label>\\n` per line
    file_md5(path) -> str
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Iterable

from .errors import ListError

__all__ = ["read_list", "check_items", "list_bytes", "file_md5", "progress_bar", "MAX_LABEL", "LARGE_INPUT"]

MAX_LABEL = 2**31 - 1  # a Datum's label is an int32
LARGE_INPUT = 100_000  # lines: show progress bars from this size on


def read_list(path: str | os.PathLike, n_classes: int | None = None, progress: bool = True) -> list[tuple[str, int]]:
    """Read a Caffe image list: `<relative/path> <class index>` per line (the label is the last space-separated
    field, as in Caffe's convert_imageset). Blank lines are skipped.

    Raises ListError naming file:line for a line without a label, a label that is not a non-negative integer
    (or not below `n_classes` when given, or too large for a Datum's int32 label), an image listed twice, a file
    that cannot be read as text, or a list with no image.
    """
    path = Path(path)
    items: list[tuple[str, int]] = []
    seen: set[str] = set()
    try:
        size = path.stat().st_size
        with open(path, "rb") as f, progress_bar(progress and size > 40 * LARGE_INPUT, total=size, unit="B",
                                                 unit_scale=True, desc=f"reading {path.name}") as bar:
            for number, raw in enumerate(f, 1):
                if number % 65536 == 0:
                    bar.update(f.tell() - bar.n)
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise ListError(f"{path}:{number}: not UTF-8 text; is {path} an image list "
                                    f"('<relative/path> <class index>' per line)?") from None
                if not line:
                    continue
                relpath, label = _parse_line(line, f"{path}:{number}", n_classes)
                if relpath in seen:
                    raise ListError(f"{path}:{number}: image {relpath!r} is listed twice (first at line "
                                    f"{_first_line(path, relpath)}); remove the duplicate line")
                seen.add(relpath)
                items.append((relpath, label))
    except OSError as err:
        raise ListError(f"cannot read image list {path}: {err.strerror or err}; check the path and its "
                        f"permissions") from None
    if not items:
        raise ListError(f"{path}: no images listed; expected '<relative/path> <class index>' per line")
    return items


def check_items(pairs: Iterable[tuple[str, int]], n_classes: int | None, what: str) -> list[tuple[str, int]]:
    """(relpath, label) pairs held in memory, checked by read_list's rules; errors name "the `what` list" and
    the entry (numbered from 1)."""
    items, seen = [], {}
    for number, (relpath, label) in enumerate(pairs, 1):
        where = f"{what} list, entry {number}"
        relpath, label = _parse_line(f"{relpath} {label}", where, n_classes)
        if relpath in seen:
            raise ListError(f"{where}: image {relpath!r} is listed twice (first at entry {seen[relpath]})")
        seen[relpath] = number
        items.append((relpath, label))
    if not items:
        raise ListError(f"the {what} list is empty")
    return items


def _first_line(path: Path, relpath: str) -> int:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            parts = raw.decode("utf-8").strip().rsplit(maxsplit=1)
            if parts and parts[0] == relpath:
                return number
    return 0


def _parse_line(line: str, where: str, n_classes: int | None) -> tuple[str, int]:
    parts = line.rsplit(maxsplit=1)
    if len(parts) < 2:
        raise ListError(f"{where}: {line!r} has no label; expected '<relative/path> <class index>'")
    relpath, label_text = parts
    if not (label_text.isascii() and label_text.isdigit()):
        raise ListError(f"{where}: label {label_text!r} is not a class index (a non-negative integer); "
                        f"expected '<relative/path> <class index>'")
    label = int(label_text)
    if label > MAX_LABEL:
        raise ListError(f"{where}: label {label} is too large: a Caffe Datum stores its label as an int32 (at "
                        f"most {MAX_LABEL}); number the classes 0..K-1")
    if n_classes is not None and label >= n_classes:
        raise ListError(f"{where}: label {label} is out of range: there are {n_classes} classes (0..{n_classes - 1})"
                        f"; check the class list or --n-classes")
    return relpath, label


def list_bytes(items: Iterable[tuple[str, int]]) -> bytes:
    """The exact bytes of a files.txt: `<path> <label>\\n` per line (what the published md5s were taken of)."""
    return "".join(f"{relpath} {label}\n" for relpath, label in items).encode("utf-8")


def file_md5(path: str | os.PathLike) -> str:
    """The md5 of a file (hex), read in 1 MiB blocks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def progress_bar(enabled: bool, **kwargs):
    """A tqdm bar on stderr, gone when done (`disable`d unless `enabled`)."""
    from tqdm import tqdm
    return tqdm(disable=not enabled, file=sys.stderr, leave=False, **kwargs)
