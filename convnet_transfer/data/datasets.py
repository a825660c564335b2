"""Dataset adapters: where the images of an experiment come from.

Every adapter gives the same three things, so the rest of the pipeline never special-cases a dataset:
  - `classes`: class names, in label order;
  - `items(subset)`: the list of (relative name, label) for subset "train" or "val", as Caffe's list files hold;
  - `image(name)`: the image as a uint8 array (H, W) greyscale or (H, W, 3) BGR, as Caffe's cv::imread gives.

Registered adapters (see DATASETS):
  fashion-mnist   Fashion-MNIST as Debian's dataset-fashion-mnist ships it (IDX files, 60k train + 10k test)
  folder          an image folder per class: ROOT/<class>/<image>, optional ROOT/train and ROOT/val
  list            a Caffe list file (`path label` per line) plus an image root, and optionally a val list
"""
from __future__ import annotations

import gzip
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import images

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


class DatasetError(ValueError):
    """A dataset that cannot be read: the message names the file and what to do."""


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip or plain, into an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"{path}: cannot read IDX file ({err}); reinstall the package that ships it") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: truncated IDX file ({body.size} of {int(np.prod(shape))} bytes)")
    return body.reshape(shape)


@dataclass
class FashionMNIST:
    """Fashion-MNIST: 70,000 real 28x28 greyscale product photos in 10 classes (Zalando, MIT licence)."""

    root: Path = FASHION_MNIST_ROOT
    name: str = "fashion-mnist"
    title: str = "Fashion-MNIST"     # for figure titles
    classes: tuple = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    # The analogue of the paper's natural / man-made split: garments worn on the upper body (A)
    # against trousers, footwear and bags (B), two dissimilar halves of the classes.
    dissimilar_groups: dict = field(default_factory=lambda: {"natman": ((0, 2, 3, 4, 6), (1, 5, 7, 8, 9))})
    _arrays: dict = field(default_factory=dict, repr=False)

    _FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
              "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}

    def _load(self, subset: str):
        if subset not in self._FILES:
            raise DatasetError(f"unknown subset {subset!r}: train or val")
        if subset not in self._arrays:
            images_file, labels_file = (Path(self.root) / f for f in self._FILES[subset])
            for f in (images_file, labels_file):
                if not f.exists():
                    raise DatasetError(f"{f} not found: install Debian's dataset-fashion-mnist "
                                       f"(apt-get install dataset-fashion-mnist) or pass --dataset-root")
            images, labels = read_idx(images_file), read_idx(labels_file)
            if len(images) != len(labels):
                raise DatasetError(f"{images_file}: {len(images)} images but {len(labels)} labels")
            self._arrays[subset] = (images, labels)
        return self._arrays[subset]

    def items(self, subset: str) -> list[tuple[str, int]]:
        _, labels = self._load(subset)
        return [(f"{subset}/{i:05d}.png", int(label)) for i, label in enumerate(labels)]

    def image(self, name: str) -> np.ndarray:
        subset, stem = name.split("/", 1)
        images, _ = self._load(subset)
        return images[int(stem.split(".")[0])]


@dataclass
class ImageFolder:
    """An image folder per class: ROOT/<class>/*.jpg. With ROOT/train/<class>/ and ROOT/val/<class>/, those are
    the subsets; otherwise (ROOT/<class>/ or only ROOT/train/<class>/) a random `val_fraction` of each class
    (shuffled with `seed`, at least one image per class when the class has two) is held out for validation.
    Classes are the sub-folder names in sorted order (hidden folders skipped); labels are their positions."""

    root: Path
    val_fraction: float = 0.2
    seed: int = 0
    name: str = "folder"
    dissimilar_groups: dict = field(default_factory=dict)

    def __post_init__(self):
        self.root = Path(self.root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: no such image folder (expected ROOT/<class>/<image>)")
        base = self._base()
        self.classes = tuple(sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")))
        if len(self.classes) < 2:
            raise DatasetError(f"{base}: expected one sub-folder per class, found {len(self.classes)}")

    def _base(self) -> Path:
        return self.root / "train" if (self.root / "train").is_dir() else self.root

    def _files(self, base: Path) -> list[tuple[str, int]]:
        out = []
        for label, cls in enumerate(self.classes):
            folder = base / cls
            if not folder.is_dir():
                raise DatasetError(f"{folder}: class folder missing (classes come from {self.root})")
            for p in sorted(folder.iterdir()):
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    out.append((str(p.relative_to(self.root)), label))
        return out

    def items(self, subset: str) -> list[tuple[str, int]]:
        if (self.root / "train").is_dir() and (self.root / "val").is_dir():
            return self._files(self.root / subset)
        if subset not in ("train", "val"):
            raise DatasetError(f"unknown subset {subset!r}: train or val")
        everything = self._files(self._base())
        rng = random.Random(self.seed)
        held = set()
        for label in range(len(self.classes)):
            names = [n for n, lab in everything if lab == label]
            rng.shuffle(names)
            count = int(round(len(names) * self.val_fraction))
            if self.val_fraction > 0 and len(names) >= 2:
                count = min(max(count, 1), len(names) - 1)
            held.update(names[:count])
        return [(n, lab) for n, lab in everything if (n in held) == (subset == "val")]

    def image(self, name: str) -> np.ndarray:
        return load_image(self.root / name)


@dataclass
class CaffeList:
    """A Caffe list file (`relative/path label` per line) plus the image root, and a val list (ILSVRC-2012 too)."""

    train_list: Path
    root: Path
    val_list: Path | None = None
    classes: tuple = ()
    name: str = "list"
    dissimilar_groups: dict = field(default_factory=dict)

    def __post_init__(self):
        from .lists import read_list

        self._lists = {"train": read_list(self.train_list)}
        if self.val_list:
            self._lists["val"] = read_list(self.val_list)
        if not self.classes:
            n = 1 + max(label for items in self._lists.values() for _, label in items)
            self.classes = tuple(str(i) for i in range(n))

    def items(self, subset: str) -> list[tuple[str, int]]:
        if subset not in self._lists:
            raise DatasetError(f"no {subset} list given (pass --val-list)")
        return self._lists[subset]

    def image(self, name: str) -> np.ndarray:
        return load_image(Path(self.root) / name)


def load_image(path: Path) -> np.ndarray:
    """An image file -> uint8 (H, W, 3) BGR, as convert_imageset reads it (cv::imread, IMREAD_COLOR: grey
    expanded, EXIF orientation applied, 16-bit keeping the high byte); `images.read_image`."""
    try:
        return images.read_image(path)
    except images.ImageError as err:
        raise DatasetError(str(err)) from None


DATASETS = {"fashion-mnist": FashionMNIST, "folder": ImageFolder, "list": CaffeList}


def open_dataset(kind: str, **options):
    """Open a registered dataset adapter by name with its options (e.g. root=...)."""
    if kind not in DATASETS:
        raise DatasetError(f"unknown dataset {kind!r}; known: {', '.join(DATASETS)}")
    options = {k: v for k, v in options.items() if v is not None}
    return DATASETS[kind](**options)
