"""Dataset adapters on real files: Debian's Fashion-MNIST IDX files, a tiny image folder and Caffe lists written
with Pillow in tmp_path."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convnet_transfer.data import datasets
from convnet_transfer.data.datasets import DatasetError, open_dataset

FASHION = datasets.FASHION_MNIST_ROOT
needs_fashion = pytest.mark.skipif(not (FASHION / "t10k-labels-idx1-ubyte.gz").exists(),
                                   reason="Debian's dataset-fashion-mnist is not installed "
                                          "(apt-get install dataset-fashion-mnist)")


@needs_fashion
def test_fashion_mnist_is_the_real_dataset():
    data = open_dataset("fashion-mnist")
    assert len(data.classes) == 10 and data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    val = data.items("val")
    assert len(val) == 10_000
    assert np.bincount([label for _, label in val]).tolist() == [1000] * 10
    assert val[0] == ("val/00000.png", 9)             # the first test image is an ankle boot
    image = data.image(val[0][0])
    assert image.dtype == np.uint8 and image.shape == (28, 28)
    assert 0 < image.mean() < 255 and image.max() == 255
    # the dissimilar groups partition the classes: upper-body garments vs trousers, footwear, bags
    (a, b), = data.dissimilar_groups.values()
    assert sorted(a + b) == list(range(10)) and not set(a) & set(b)
    assert {data.classes[i] for i in a} == {"T-shirt/top", "Pullover", "Dress", "Coat", "Shirt"}


@needs_fashion
def test_fashion_mnist_missing_files_and_bad_subset(tmp_path):
    with pytest.raises(DatasetError, match="dataset-fashion-mnist"):
        datasets.FashionMNIST(root=tmp_path).items("train")
    with pytest.raises(DatasetError, match="unknown subset"):
        open_dataset("fashion-mnist").items("test")


def _write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def test_read_idx_round_trip_and_errors(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(datasets.read_idx(_write_idx(tmp_path / "a.gz", array)), array)
    assert np.array_equal(datasets.read_idx(_write_idx(tmp_path / "a.idx", array, compress=False)), array)
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)      # float IDX: not ours
    with pytest.raises(DatasetError, match="not an unsigned-byte IDX"):
        datasets.read_idx(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(_write_idx(tmp_path / "x.idx", array, compress=False).read_bytes()[:-5])
    with pytest.raises(DatasetError, match="truncated"):
        datasets.read_idx(short)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="broken.gz"):
        datasets.read_idx(broken)


def test_fashion_mnist_adapter_on_own_idx_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    data = open_dataset("fashion-mnist", root=tmp_path)
    assert data.items("train") == [(f"train/{i:05d}.png", int(lab)) for i, lab in enumerate(labels)]
    assert np.array_equal(data.image("train/00004.png"), images[4])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:5])
    with pytest.raises(DatasetError, match="6 images but 5 labels"):
        datasets.FashionMNIST(root=tmp_path).items("val")


def _image_folder(root: Path, classes=("cat", "dog", "emu"), per_class=5) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            if c == 0:   # greyscale PNGs
                Image.fromarray(np.full((8, 6), 10 * i, np.uint8), "L").save(root / name / f"{i}.png")
            else:        # colour PNGs (lossless: exact values), R=200 G=20c B=i
                Image.fromarray(np.tile(np.array([200, 20 * c, i], np.uint8), (8, 6, 1)), "RGB").save(
                    root / name / f"{i}.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return root


def test_image_folder_holds_out_a_fraction_of_each_class(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    data = open_dataset("folder", root=root)
    assert data.classes == ("cat", "dog", "emu")
    train, val = data.items("train"), data.items("val")
    assert len(train) == 12 and len(val) == 3                      # 20% of 5 = 1 per class held out
    assert sorted(label for _, label in val) == [0, 1, 2]
    assert not {n for n, _ in train} & {n for n, _ in val}
    assert all(not n.endswith(".txt") for n, _ in train + val)
    assert data.items("val") == val                                 # deterministic for a seed
    assert len(datasets.ImageFolder(root, seed=1).items("val")) == 3
    grey = data.image("cat/3.png")                                 # IMREAD_COLOR: grey in 3 channels
    assert grey.shape == (8, 6, 3) and grey.dtype == np.uint8 and (grey == 30).all()
    colour = data.image("emu/2.png")                                # BGR, as cv::imread gives Caffe
    assert colour.shape == (8, 6, 3) and colour[0, 0].tolist() == [2, 40, 200]


def test_image_folder_with_train_and_val_folders(tmp_path):
    root = tmp_path / "imgs"
    _image_folder(root / "train")
    _image_folder(root / "val", per_class=2)
    data = open_dataset("folder", root=root)
    assert data.classes == ("cat", "dog", "emu")
    assert len(data.items("train")) == 15 and len(data.items("val")) == 6
    assert data.items("val")[0] == ("val/cat/0.png", 0)
    assert data.image("val/cat/1.png").shape == (8, 6, 3)


def test_image_folder_with_only_a_train_folder(tmp_path):
    root = tmp_path / "imgs"
    _image_folder(root / "train")
    data = open_dataset("folder", root=root)
    train, val = data.items("train"), data.items("val")
    assert len(train) == 12 and len(val) == 3 and all(n.startswith("train/") for n, _ in train + val)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such image folder"):
        open_dataset("folder", root=tmp_path / "nowhere")
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(DatasetError, match="one sub-folder per class"):
        open_dataset("folder", root=tmp_path / "one")
    root = _image_folder(tmp_path / "imgs")
    (root / "dog" / "0.png").write_bytes(b"garbage")
    data = open_dataset("folder", root=root)
    with pytest.raises(DatasetError, match=r"dog/0.png: cannot decode"):
        data.image("dog/0.png")
    with pytest.raises(DatasetError, match=r"nope.png: no such image file"):
        data.image("dog/nope.png")
    with pytest.raises(DatasetError, match="unknown dataset"):
        open_dataset("cifar")


def test_caffe_list(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    (tmp_path / "train.txt").write_text("cat/0.png 0\ndog/1.png 1\nemu/2.png 2\n")
    (tmp_path / "val.txt").write_text("cat/4.png 0\nemu/4.png 3\n")
    data = open_dataset("list", train_list=tmp_path / "train.txt", val_list=tmp_path / "val.txt", root=root)
    assert data.classes == ("0", "1", "2", "3")                    # labels of both lists count
    assert data.items("train")[1] == ("dog/1.png", 1)
    assert data.image("emu/2.png").shape == (8, 6, 3)
    no_val = open_dataset("list", train_list=tmp_path / "train.txt", root=root, val_list=None)
    with pytest.raises(DatasetError, match="--val-list"):
        no_val.items("val")
    (tmp_path / "bad.txt").write_text("cat/0.png zero\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        open_dataset("list", train_list=tmp_path / "bad.txt", root=root)


def test_folder_images_become_the_records_convert_imageset_writes(tmp_path):
    """A folder's images (colour and grey PNG, a JPEG with an EXIF rotation), resized for the experiment's
    databases, equal the records of our convert_imageset (databases.convert_list, checked against Caffe's own in
    test_caffe_db_compat.py): cv::imread's decoding and cv::resize's interpolation, not Pillow's."""
    from PIL import Image

    from convnet_transfer.data import databases
    from convnet_transfer import experiment
    root = tmp_path / "imgs"
    rng = np.random.default_rng(2)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(root / cls / "colour.png")
        Image.fromarray(rng.integers(0, 256, (45, 20), dtype=np.uint8)).save(root / cls / "grey.png")
        exif = Image.Exif()
        exif[0x0112] = 6                                            # rotate 90 degrees on display
        Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)).save(root / cls / "rotated.jpg",
                                                                              quality=90, exif=exif)
    data = open_dataset("folder", root=root, val_fraction=0)
    items = data.items("train")
    assert len(items) == 6
    files = tmp_path / "files.txt"
    files.write_text("".join(f"{name} {label}\n" for name, label in items))
    databases.convert_list(files, root, tmp_path / "db", resize=(32, 32), workers=0, progress=False)
    stored = [databases.decode_datum(value)[0] for _, value in databases.open_reader(tmp_path / "db")]
    for (name, _), record in zip(items, stored):
        assert np.array_equal(experiment.as_chw(data.image(name), 3, 32), record), name
    assert data.image("a/rotated.jpg").shape == (64, 40, 3)         # EXIF applied, as OpenCV's imread does
