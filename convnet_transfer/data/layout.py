"""The data root's layout: the folder names stages 1-2 write and the nets of stage 3 link to, defined once.

    <root>/md5sums.txt                                   MANIFEST   (stage 1)
    <root>/<split>_<phase>/files.txt, idxmap.txt         LIST, IDXMAP (stage 1; phase train or valid)
    <root>/<split>_<phase>/lmdb/ | leveldb/ | keys/      the database of the list (stage 2; keys/: a key-list view)
    <root>/<split>_train/mean.binaryproto                MEAN (stage 2; train lists only)
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["PHASES", "MANIFEST", "LIST", "IDXMAP", "MEAN", "VIEW_DIR", "list_folder", "list_dirs", "is_train"]

PHASES = ("train", "valid")
MANIFEST = "md5sums.txt"
LIST = "files.txt"
IDXMAP = "idxmap.txt"
MEAN = "mean.binaryproto"
VIEW_DIR = "keys"


def list_folder(split: str, phase: str) -> str:
    """The folder of a split's list for a phase: `<split>_<phase>` (e.g. half0A_train, whole_valid)."""
    return f"{split}_{phase}"


def list_dirs(data_root: str | Path) -> list[Path]:
    """The list folders of a data root (each with its files.txt), sorted."""
    return sorted(p.parent for p in Path(data_root).glob(f"*/{LIST}"))


def is_train(folder: str | Path) -> bool:
    """Whether a list folder holds a train list (and so gets a mean)."""
    return Path(folder).name.endswith("_" + PHASES[0])
