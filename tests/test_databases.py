"""Stage 2, Datum databases: round trips, means, resume after SIGKILL, bad images, LevelDB and key-list views.

Images are generated here (Pillow writes JPEG and PNG files into tmp_path). Caffe-fidelity checks against a real
Caffe build (and OpenCV's resize) are in tests/test_caffe_db_compat.py.
"""
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convnet_transfer.data import databases, lists
from convnet_transfer.formats import protoio
from convnet_transfer.formats.caffe_pb2 import Datum
from convnet_transfer.data.images import ImageError, read_image, resize_linear

ROOT = Path(__file__).resolve().parent.parent
MAKE_DBS = [sys.executable, str(ROOT / "tools" / "make_dbs")]


def make_images(folder: Path, n: int, seed: int = 0, sizes=(24, 70), labels=3, gray_every=0):
    """n images (JPEG and PNG alternately, random sizes) in class folders; returns [(relpath, label, pixels RGB)]."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(*sizes, size=2))
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([xx * 255 // w, yy * 255 // h, rng.integers(0, 256, (h, w))], -1).astype(np.uint8)
        label = i % labels
        ext = "JPEG" if i % 2 else "png"
        relpath = f"n{label:02d}/img {i:03d}.{ext}"   # a space in the name, as Caffe's list format allows
        (folder / relpath).parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(rgb)
        if gray_every and i % gray_every == 0:
            image = image.convert("L")
        image.save(folder / relpath, quality=90)
        items.append((relpath, label, rgb))
    return items


def write_list(path: Path, items) -> Path:
    path.write_text("".join(f"{relpath} {label}\n" for relpath, label, *_ in items))
    return path


def records(db) -> list:
    return [(bytes(k), bytes(v)) for k, v in databases.open_reader(db)]


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    items = make_images(folder, 24, gray_every=5)
    return folder, items, write_list(folder.parent / "images_files.txt", items)


def test_round_trip_raw_and_resized(image_set, tmp_path):
    folder, items, files = image_set
    info = databases.convert_list(files, folder, tmp_path / "raw", resize=None, workers=0, progress=False)
    assert info.count == len(items) and databases.is_complete(tmp_path / "raw")
    got = records(tmp_path / "raw")
    assert [k for k, _ in got] == [b"%08d_%s" % (i, p.encode()) for i, (p, _, _) in enumerate(items)]
    for (key, value), (relpath, label, rgb) in zip(got, items):
        array, got_label = databases.decode_datum(value)
        assert got_label == label
        datum = Datum.FromString(value)
        assert (datum.channels, datum.height, datum.width) == (3,) + rgb.shape[:2] and datum.HasField("encoded")
        if relpath.endswith(".png"):   # lossless: the pixels written, in BGR, channels first
            expected = np.asarray(Image.open(folder / relpath).convert("RGB"))
            assert np.array_equal(array, expected[:, :, ::-1].transpose(2, 0, 1))
        assert np.array_equal(array, read_image(folder / relpath).transpose(2, 0, 1))

    databases.convert_list(files, folder, tmp_path / "small", resize=(20, 30), workers=2, progress=False)
    for (key, value), (relpath, label, _) in zip(records(tmp_path / "small"), items):
        array, _ = databases.decode_datum(value)
        assert array.shape == (3, 20, 30)
        assert np.array_equal(array, resize_linear(read_image(folder / relpath), 20, 30).transpose(2, 0, 1))


def test_encoded_and_gray(image_set, tmp_path):
    folder, items, files = image_set
    databases.convert_list(files, folder, tmp_path / "enc", resize=None, encoded=True, workers=0, progress=False)
    for (key, value), (relpath, label, _) in zip(records(tmp_path / "enc"), items):
        datum = Datum.FromString(value)
        assert datum.encoded and datum.data == (folder / relpath).read_bytes()   # the file itself, as Caffe
    databases.convert_list(files, folder, tmp_path / "gray", resize=(16, 16), gray=True, workers=0,
                           mean_path=tmp_path / "gray_mean.binaryproto", progress=False)
    arrays = [databases.decode_datum(v)[0] for _, v in records(tmp_path / "gray")]
    assert {a.shape for a in arrays} == {(1, 16, 16)}
    assert protoio.read_mean(tmp_path / "gray_mean.binaryproto").shape == (1, 16, 16)


def test_mean_equals_numpy(image_set, tmp_path):
    folder, items, files = image_set
    mean_path = tmp_path / "mean.binaryproto"
    databases.convert_list(files, folder, tmp_path / "db", resize=(32, 32), mean_path=mean_path, workers=2,
                           progress=False)
    arrays = np.stack([databases.decode_datum(v)[0] for _, v in records(tmp_path / "db")]).astype(np.float64)
    expected = arrays.mean(axis=0)
    mean = protoio.read_mean(mean_path)
    print("per-channel means (BGR):", mean.mean(axis=(1, 2)))
    assert mean.shape == (3, 32, 32) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, expected, rtol=0, atol=1e-4)
    assert np.array_equal(mean, (arrays.sum(0) / len(arrays)).astype(np.float32))
    assert np.array_equal(databases.compute_mean(tmp_path / "db"), mean)
    blob = protoio.read_binary(mean_path, protoio.pb.BlobProto)   # compute_image_mean's legacy 4-D header
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 32, 32)
    with pytest.raises(databases.DatabaseError, match="different sizes"):
        databases.convert_list(files, folder, tmp_path / "sizes", resize=None, mean_path=tmp_path / "m2",
                               workers=0, progress=False)


def test_finished_database_is_not_redone_and_other_options_refused(image_set, tmp_path):
    folder, items, files = image_set
    db = tmp_path / "db"
    first = databases.convert_list(files, folder, db, resize=(8, 8), workers=0, progress=False)
    stamp = (db / "data.mdb").stat().st_mtime_ns
    again = databases.convert_list(files, folder, db, resize=(8, 8), workers=0, progress=False)
    assert (again.count, again.keys_md5) == (first.count, first.keys_md5)
    assert (db / "data.mdb").stat().st_mtime_ns == stamp
    with pytest.raises(databases.DatabaseError, match=r"other inputs \(resize"):
        databases.convert_list(files, folder, db, resize=(9, 9), workers=0, progress=False)


def test_shuffle_is_seeded(image_set, tmp_path):
    folder, items, files = image_set
    a = databases.convert_list(files, folder, tmp_path / "a", resize=(8, 8), shuffle_seed=7, workers=0,
                               progress=False)
    b = databases.convert_list(files, folder, tmp_path / "b", resize=(8, 8), shuffle_seed=7, workers=2,
                               progress=False)
    assert records(tmp_path / "a") == records(tmp_path / "b") and a.keys_md5 == b.keys_md5
    paths = [k.split(b"_", 1)[1].decode() for k, _ in records(tmp_path / "a")]
    assert sorted(paths) == sorted(p for p, _, _ in items) and paths != [p for p, _, _ in items]


def _kill_and_resume(tmp_path, files, folder, extra):
    """Run the CLI slowly, SIGKILL it (and its workers) after some commits, run it again to the end."""
    db = tmp_path / "killed"
    args = MAKE_DBS + ["--list", str(files), "--root", str(folder), "--out", str(db), "--size", "24x24",
                       "--commit-every", "3", "--workers", "1", "--no-progress", "--mean",
                       str(tmp_path / "killed_mean.binaryproto")] + extra
    env = dict(os.environ, **{databases.SLOW_ENV: "0.3"})
    proc = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = db.with_name("killed.partial") / databases.PROGRESS
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if state.exists():
            with np.load(state) as data:
                if json.loads(str(data["meta"]))["count"] >= 6:
                    break
        time.sleep(0.05)
    assert proc.poll() is None, "the slowed-down conversion finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not db.exists() and not databases.is_complete(db.with_name("killed.partial"))
    return db, args


@pytest.mark.parametrize("lose_state", [False, True], ids=["resume", "resume-without-state"])
def test_resume_after_sigkill_gives_the_same_database(tmp_path, lose_state):
    folder = tmp_path / "images"
    items = make_images(folder, 30, seed=3)
    (folder / items[4][0]).write_bytes(b"not an image at all")       # skipped (and listed), never dropped
    files = write_list(tmp_path / "files.txt", items)
    db, args = _kill_and_resume(tmp_path, files, folder, ["--skip-bad", "--shuffle-seed", "1"])
    if lose_state:   # as if killed between a commit and the state file written after it
        (db.with_name("killed.partial") / databases.PROGRESS).unlink()
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    reference = databases.convert_list(files, folder, tmp_path / "straight", resize=(24, 24), shuffle_seed=1,
                                       skip_bad=True, workers=0, progress=False,
                                       mean_path=tmp_path / "straight_mean.binaryproto")
    assert databases.is_complete(db) and records(db) == records(tmp_path / "straight")
    assert json.loads((db / databases.MARKER).read_text())["keys_md5"] == reference.keys_md5
    assert (tmp_path / "killed_mean.binaryproto").read_bytes() == (tmp_path / "straight_mean.binaryproto").read_bytes()
    assert (tmp_path / "killed.skipped.txt").read_text().split("\t")[0] == items[4][0]
    assert reference.count == len(items) - 1


def test_bad_image_stops_naming_it_and_skip_bad_reports(tmp_path):
    folder = tmp_path / "images"
    items = make_images(folder, 8, seed=5)
    (folder / items[5][0]).write_bytes(b"\xff\xd8\xff garbage")
    files = write_list(tmp_path / "files.txt", items + [("n00/missing.JPEG", 0)])
    with pytest.raises(databases.BadImageError, match=items[5][0].replace(".", r"\.")):
        databases.convert_list(files, folder, tmp_path / "db", resize=(8, 8), workers=0, progress=False)
    assert not databases.is_complete(tmp_path / "db.partial") and not (tmp_path / "db").exists()
    cli = subprocess.run(MAKE_DBS + ["--list", str(files), "--root", str(folder), "--out", str(tmp_path / "db"),
                                     "--size", "8x8", "--workers", "0", "--no-progress"], capture_output=True, text=True)
    assert cli.returncode == 1 and items[5][0] in cli.stderr and "--skip-bad" in cli.stderr
    (folder / items[5][0]).write_bytes((folder / items[3][0]).read_bytes())   # fixed: the run resumes ...
    with pytest.raises(databases.BadImageError, match="missing.JPEG"):        # ... to the next bad one
        databases.convert_list(files, folder, tmp_path / "db", resize=(8, 8), workers=0, progress=False)
    (folder / items[5][0]).write_bytes(b"broken again")
    info = databases.convert_list(files, folder, tmp_path / "skip", resize=(8, 8), workers=0, skip_bad=True,
                                  progress=False)
    report = (tmp_path / "skip.skipped.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in report] == [items[5][0], "n00/missing.JPEG"]
    assert info.count == len(items) - 1 and len(info.skipped) == 2


def test_list_errors_name_file_and_line(tmp_path):
    files = tmp_path / "files.txt"
    files.write_text("a.jpg 1\nb.jpg two\n")
    with pytest.raises(databases.DatabaseError, match=r"files\.txt:2:"):
        lists.read_list(files)
    files.write_text("dir with space/a b.jpg 3\n\n")
    assert lists.read_list(files) == [("dir with space/a b.jpg", 3)]


def test_leveldb_reads_like_lmdb(image_set, tmp_path):
    folder, items, files = image_set
    databases.convert_list(files, folder, tmp_path / "l", resize=(12, 12), workers=0, progress=False)
    databases.convert_list(files, folder, tmp_path / "v", backend="leveldb", resize=(12, 12), workers=0,
                           mean_path=tmp_path / "v.binaryproto", progress=False)
    assert databases.open_reader(tmp_path / "v").kind == "leveldb" and databases.is_complete(tmp_path / "v")
    assert records(tmp_path / "v") == records(tmp_path / "l") and len(databases.open_reader(tmp_path / "v")) == 24
    assert np.array_equal(databases.compute_mean(tmp_path / "l"), protoio.read_mean(tmp_path / "v.binaryproto"))


def _data_root(tmp_path):
    """A tiny data root: whole_{train,valid} and two half splits with labels renumbered per split."""
    folder = tmp_path / "images"
    items = make_images(folder, 30, seed=9, labels=4)
    data = tmp_path / "data"
    for kind, part in (("train", items[:20]), ("valid", items[20:])):
        write_list((data / f"whole_{kind}").mkdir(parents=True) or data / f"whole_{kind}" / "files.txt", part)
        for half, classes in (("A", (0, 2)), ("B", (1, 3))):
            split = data / f"half0{half}_{kind}"
            split.mkdir()
            write_list(split / "files.txt", [(p, classes.index(lab)) for p, lab, _ in part if lab in classes])
    return folder, data


def test_shared_views_read_like_per_split_databases(tmp_path):
    folder, data = _data_root(tmp_path)
    shared = tmp_path / "shared"
    shutil.copytree(data, shared)   # the same lists, before any database is made
    options = dict(resize=(10, 10), workers=0, progress=False, shuffle_seed=3)
    databases.convert_data_root(data, folder, **options)
    infos = databases.convert_data_root(shared, folder, shared=True, **options)
    assert infos["half0A_train"].backend == "view" and (shared / "half0A_train" / "keys" / "view.json").exists()
    assert not (shared / "half0A_train" / "lmdb").exists() and (data / "half0A_train" / "lmdb").exists()
    for split in ("half0A_train", "half0B_train", "half0A_valid", "half0B_valid", "whole_train", "whole_valid"):
        assert databases.is_complete(shared / split) and databases.is_complete(data / split)
        assert records(shared / split) == records(data / split), split
        if split.endswith("_train"):
            assert (shared / split / "mean.binaryproto").read_bytes() == \
                (data / split / "mean.binaryproto").read_bytes()
    labels = {databases.decode_datum(v)[1] for _, v in records(shared / "half0B_valid")}
    assert labels == {0, 1}
    reader = databases.open_reader(shared / "half0A_valid")
    key, value = next(iter(reader))
    assert reader.get(key) == value and len(reader) == len(records(data / "half0A_valid"))


def test_write_arrays_and_fork_safe_reader(tmp_path):
    rng = np.random.default_rng(2)
    arrays = [rng.integers(0, 256, (1, 28, 28), dtype=np.uint8) for _ in range(12)]
    info = databases.write_arrays(tmp_path / "db", ((databases.make_key(i, f"x{i}"), a, i % 10)
                                                    for i, a in enumerate(arrays)),
                                  mean_path=tmp_path / "mean.binaryproto", progress=False)
    assert info.count == 12 and databases.is_complete(tmp_path / "db")
    reader = databases.open_reader(tmp_path / "db")
    got = [databases.decode_datum(v) for _, v in reader]
    assert all(np.array_equal(a, g) and lab == i % 10 for i, (a, (g, lab)) in enumerate(zip(arrays, got)))
    assert np.array_equal(protoio.read_mean(tmp_path / "mean.binaryproto"),
                          (np.sum(arrays, axis=0, dtype=np.int64) / 12).astype(np.float32))
    databases.write_arrays(tmp_path / "ldb", ((databases.make_key(i, f"x{i}"), a, 0) for i, a in enumerate(arrays)),
                           backend="leveldb", progress=False)
    leveldb_reader = databases.open_reader(tmp_path / "ldb")
    assert len(leveldb_reader) == 12
    with multiprocessing.get_context("fork").Pool(2) as pool:   # the parent's open readers, used in children
        lengths = pool.map(_count_records, [reader, reader, leveldb_reader])
    assert lengths == [12, 12, 12]
    with pytest.raises(databases.DatabaseError, match="keys must increase"):
        databases.write_arrays(tmp_path / "bad", [(b"b", arrays[0], 0), (b"a", arrays[1], 0)], progress=False)


def _count_records(reader):
    return sum(1 for _ in reader)


def test_not_a_database(tmp_path):
    with pytest.raises(databases.DatabaseError, match="not a Datum database"):
        databases.open_reader(tmp_path)
    assert not databases.is_complete(tmp_path)


def test_numpy_resize_equals_opencv_python(monkeypatch):
    """The two ways resize_linear runs (OpenCV's cv2.resize, and numpy redoing its fixed-point arithmetic)
    agree bit for bit: downscales, upscales, the exact 2x area shortcut, 1 and 3 channels."""
    from convnet_transfer.data import images
    cv2 = images.opencv()
    if cv2 is None:
        pytest.skip("opencv-python-headless is not installed: only the numpy resize is used")
    rng = np.random.default_rng(1)
    cases = [((375, 500), (256, 256)), ((512, 512), (256, 256)), ((20, 30), (227, 227)), ((31, 617), (13, 7))]
    cases += [(tuple(rng.integers(5, 400, 2)), tuple(rng.integers(5, 300, 2))) for _ in range(40)]
    for i, ((h, w), (oh, ow)) in enumerate(cases):
        image = rng.integers(0, 256, (h, w, 1 if i % 4 == 3 else 3), dtype=np.uint8)
        fast = resize_linear(image, int(oh), int(ow))
        assert np.array_equal(fast, images._resize_linear_numpy(image, int(oh), int(ow))), ((h, w), (oh, ow))
        assert fast.shape == (oh, ow, image.shape[2])
        if image.shape[2] == 3:        # read_image's BGR: a reversed view of an RGB array
            bgr_view = np.ascontiguousarray(image[:, :, ::-1])[:, :, ::-1]
            assert np.array_equal(resize_linear(bgr_view, int(oh), int(ow)), fast)


@pytest.mark.parametrize("decoder", ["opencv-python", "pillow"])
def test_truncated_jpeg_is_an_error_and_trailing_bytes_are_not(tmp_path, decoder, monkeypatch):
    """cv::imread keeps a truncated JPEG half-decoded; we stop on it (naming the file) with either decoder.
    Bytes after the end marker (some cameras write them) are read as the image."""
    from convnet_transfer.data import images
    if decoder == "pillow":
        monkeypatch.setattr(images, "opencv", lambda: None)
    elif images.opencv() is None:
        pytest.skip("opencv-python-headless is not installed")
    rng = np.random.default_rng(2)
    whole = tmp_path / "whole.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(whole, quality=90)
    data = whole.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")
    (tmp_path / "tail.jpg").write_bytes(data + b"\x00trailer")
    expected = read_image(whole)
    assert expected.shape == (64, 80, 3) and np.array_equal(read_image(tmp_path / "tail.jpg"), expected)
    assert np.array_equal(read_image(whole, gray=True), read_image(tmp_path / "tail.jpg", gray=True))


def test_resize_invariants():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    assert np.array_equal(resize_linear(image, 37, 53), image)
    flat = np.full((41, 29, 3), 77, np.uint8)
    assert np.array_equal(resize_linear(flat, 256, 256), np.full((256, 256, 3), 77, np.uint8))
    assert np.array_equal(resize_linear(flat, 13, 7), np.full((13, 7, 3), 77, np.uint8))
    with pytest.raises(ImageError, match="no such image"):
        read_image("/nonexistent/x.jpg")


def test_cli_data_root(tmp_path):
    from click.testing import CliRunner
    from convnet_transfer.cli.make_dbs import main as make_dbs_cli

    folder, data = _data_root(tmp_path)
    result = CliRunner().invoke(make_dbs_cli, ["--data", str(data), "--root", str(folder), "--size", "8x8",
                                               "--workers", "0", "--shared", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "half0A_train: " in result.output and (data / "half0A_train" / "keys" / "keys.tsv").exists()
    assert (data / "whole_train" / "lmdb").is_dir() and (data / "half0B_train" / "mean.binaryproto").exists()
    result = CliRunner().invoke(make_dbs_cli, ["--list", str(data / "whole_train" / "files.txt"), "--root",
                                               str(folder), "--out", str(tmp_path / "x"), "--size", "8x"])
    assert result.exit_code != 0 and "HEIGHTxWIDTH" in result.output


def test_valid_lists_read_their_images_from_val_root(tmp_path):
    """ILSVRC-2012 keeps train and val images in two folders: --val-root serves the *_valid lists."""
    folder, data = _data_root(tmp_path)
    options = dict(resize=(10, 10), workers=0, progress=False)
    reference = databases.convert_data_root(data, folder, splits=["whole_valid"], **options)["whole_valid"]
    val_folder = tmp_path / "val_images"
    for relpath, _ in lists.read_list(data / "whole_valid" / "files.txt"):
        (val_folder / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder / relpath), str(val_folder / relpath))
    moved = tmp_path / "moved"
    shutil.copytree(data, moved, ignore=shutil.ignore_patterns("lmdb*", "*.binaryproto"))
    with pytest.raises(databases.BadImageError, match="whole_valid"):
        databases.convert_data_root(moved, folder, splits=["whole_valid"], **options)
    infos = databases.convert_data_root(moved, folder, val_root=val_folder, **options)
    assert infos["whole_valid"].keys_md5 == reference.keys_md5
    assert records(moved / "whole_valid") == records(data / "whole_valid")
    assert databases.is_complete(moved / "half0A_train") and databases.is_complete(moved / "half0B_valid")
