"""The data layers' tops against real Caffe (pycaffe, CPU) on small files written here: DummyData, HDF5Data,
HDF5Output, MemoryData, ImageData, WindowData; the Python layer's refusal; `caffe_torch train` and `time` on them.

Exact equality wherever Caffe's output does not depend on its random generator (Boost's, which the engine does not
replay): constant fillers, files and lists read in order, centre crops, a window file with one window of each
kind. Random fillers are compared by distribution; shuffled orders, WindowData's draws and mirrors by their
invariants (each batch item is one of the window cut-outs the engine computes, labels in Caffe's order)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from google.protobuf import text_format
from PIL import Image

from convnet_transfer.formats.protoio import pb
from convnet_transfer.training.engine.errors import EngineError
from convnet_transfer.training.engine.imagedata import window_crop
from convnet_transfer.training.engine.net import Net
from convnet_transfer.training.engine.solver import NetWithData
from convnet_transfer.training.engine.train import time_net

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "datalayers.npz"


@pytest.fixture(scope="module")
def caffe(real_caffe):
    module = real_caffe.import_pycaffe()
    module.set_mode_cpu()
    return module


def parse(text: str) -> pb.NetParameter:
    return text_format.Parse(text, pb.NetParameter())


def both(caffe, tmp_path: Path, text: str, forwards: int = 3, phase: str = "TEST", memory=None):
    """The tops of `forwards` forward passes of the net `text`: (ours, Caffe's), each a list of {blob: array}."""
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    theirs_net = caffe.Net(str(path), caffe.TRAIN if phase == "TRAIN" else caffe.TEST)
    fed = NetWithData(parse(text), phase, "cpu", seed=1, log=False)
    if memory is not None:
        theirs_net.set_input_arrays(*memory)
        fed.net.layer(fed.net.layer_params[0].name).set_input_arrays(*memory)
    ours, theirs = [], []
    try:
        for _ in range(forwards):
            blobs = fed.net.forward(fed.next_batch())
            theirs_net.forward()
            names = [n for n in theirs_net.blobs if not n.endswith("_split")]
            ours.append({n: blobs[n].detach().numpy().copy() for n in names})
            theirs.append({n: theirs_net.blobs[n].data.copy() for n in names})
    finally:
        fed.close()
    return ours, theirs


def assert_equal_tops(ours, theirs):
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.keys() == b.keys()
        for name in a:
            assert a[name].shape == b[name].shape, (i, name)
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"forward {i}, top {name}")


# ---------------------------------------------------------------- DummyData

def test_dummydata_constant_fillers_equal_caffe(caffe, tmp_path):
    text = '''
    layer { name: "a" type: "DummyData" top: "zeros" top: "threes"
      dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 4 }
                         data_filler { type: "constant" } data_filler { type: "constant" value: 3 } } }
    layer { name: "b" type: "DummyData" top: "x" top: "y"
      dummy_data_param { num: 2 channels: 3 channels: 1 height: 4 width: 5 } }
    layer { name: "c" type: "DummyData" top: "p" top: "q"
      dummy_data_param { shape { dim: 3 dim: 2 } data_filler { type: "constant" value: -1.5 } } }
    '''
    ours, theirs = both(caffe, tmp_path, text, forwards=2)
    assert_equal_tops(ours, theirs)
    assert ours[0]["x"].shape == (2, 3, 4, 5) and ours[0]["y"].shape == (2, 1, 4, 5)


@pytest.mark.parametrize("filler, mean, std, bound", [
    ('type: "gaussian" mean: 1 std: 2', 1.0, 2.0, None),
    ('type: "uniform" min: -1 max: 3', 1.0, 4 / 12 ** 0.5, (-1, 3)),
    ('type: "xavier"', 0.0, (3 / 40) ** 0.5 / 3 ** 0.5, (-(3 / 40) ** 0.5, (3 / 40) ** 0.5)),
])
def test_dummydata_random_fillers_match_caffe_in_distribution(caffe, tmp_path, filler, mean, std, bound):
    """Random fillers: Caffe's distribution (not its numbers), refilled at every forward; a constant top is not."""
    text = f'''layer {{ name: "d" type: "DummyData" top: "r" top: "k"
      dummy_data_param {{ shape {{ dim: 250 dim: 40 }} shape {{ dim: 2 }}
                          data_filler {{ {filler} }} data_filler {{ type: "constant" value: 7 }} }} }}'''
    ours, theirs = both(caffe, tmp_path, text, forwards=2)
    for run in (ours, theirs):
        for tops in run:
            values = tops["r"]
            assert abs(values.mean() - mean) < 4 * std / 100 and abs(values.std() - std) < 0.03 * std
            if bound:
                assert bound[0] <= values.min() and values.max() <= bound[1]
            np.testing.assert_array_equal(tops["k"], [7, 7])
        assert not np.array_equal(run[0]["r"], run[1]["r"])


@pytest.mark.parametrize("param, message", [
    ('shape { dim: 2 } data_filler { type: "constant" } data_filler { type: "constant" } '
     'data_filler { type: "constant" }', "Number of data fillers must be 0, 1 or equal to the number of tops: 2"),
    ('shape { dim: 2 } num: 2 channels: 1 height: 1 width: 1', "Both shape and legacy fields were specified"),
    ('num: 2 num: 2 num: 2 channels: 1 height: 1 width: 1', "Must specify 'num' once, or once per top blob (2)"),
    ('shape { dim: 2 } data_filler { type: "bogus" }', "filler type 'bogus' is not supported"),
])
def test_dummydata_errors_name_the_layer_and_field(param, message):
    text = f'layer {{ name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param {{ {param} }} }}'
    with pytest.raises(EngineError, match="layer 'd'") as err:
        Net(parse(text), "TEST")
    assert message in str(err.value)


# ---------------------------------------------------------------- HDF5Data, HDF5Output

def write_h5(path: Path, rows: int, start: int, dtype=np.float64) -> None:
    rng = np.random.default_rng(start)
    with h5py.File(path, "w") as f:
        f["data"] = rng.normal(size=(rows, 2, 3)).astype(dtype)
        f["label"] = np.arange(start, start + rows, dtype=np.int32)
        f["extra"] = rng.normal(size=(rows,)).astype(np.float32)


def test_hdf5data_reads_caffes_rows_across_files_and_wraps(caffe, tmp_path):
    for i, rows in enumerate((5, 3, 2)):
        write_h5(tmp_path / f"part{i}.h5", rows, 100 * i, np.float32 if i == 1 else np.float64)
    (tmp_path / "list.txt").write_text(" ".join(str(tmp_path / f"part{i}.h5") for i in range(3)) + "\n")
    write_h5(tmp_path / "one.h5", 3, 7)
    with h5py.File(tmp_path / "one.h5", "a") as f:
        f["extra2"] = np.arange(6, dtype=np.float64).reshape(3, 2)
    (tmp_path / "one.txt").write_text(f"{tmp_path / 'one.h5'}\n")
    text = f'''
    layer {{ name: "h" type: "HDF5Data" top: "data" top: "label" top: "extra"
      hdf5_data_param {{ source: "{tmp_path / 'list.txt'}" batch_size: 4 }} }}
    layer {{ name: "g" type: "HDF5Data" top: "extra2"
      hdf5_data_param {{ source: "{tmp_path / 'one.txt'}" batch_size: 2 }} }}'''
    ours, theirs = both(caffe, tmp_path, text, forwards=6)
    assert_equal_tops(ours, theirs)
    labels = np.concatenate([tops["label"] for tops in ours])
    np.testing.assert_array_equal(labels[:12], [0, 1, 2, 3, 4, 100, 101, 102, 200, 201, 0, 1])


def test_hdf5data_shuffle_draws_a_permutation_per_pass(caffe, tmp_path):
    write_h5(tmp_path / "a.h5", 6, 0)
    (tmp_path / "list.txt").write_text(str(tmp_path / "a.h5"))
    text = f'''layer {{ name: "h" type: "HDF5Data" top: "data" top: "label"
      hdf5_data_param {{ source: "{tmp_path / 'list.txt'}" batch_size: 6 shuffle: true }} }}'''
    ours, theirs = both(caffe, tmp_path, text, forwards=4)
    with h5py.File(tmp_path / "a.h5") as f:
        data = f["data"][()].astype(np.float32)
    for run in (ours, theirs):
        for tops in run:
            rows = tops["label"].astype(int)
            assert sorted(rows) == list(range(6))
            np.testing.assert_array_equal(tops["data"], data[rows])
    assert len({tuple(tops["label"]) for tops in ours}) > 1


def test_hdf5data_refuses_what_caffe_refuses(tmp_path):
    write_h5(tmp_path / "a.h5", 2, 0)
    (tmp_path / "list.txt").write_text(str(tmp_path / "a.h5"))
    layer = (f'name: "h" type: "HDF5Data" top: "data" '
             f'hdf5_data_param {{ source: "{tmp_path / "list.txt"}" batch_size: 1 }}')
    cases = [(layer.replace('top: "data"', 'top: "nothing"'), "Failed to find HDF5 dataset nothing"),
             (layer + " transform_param { scale: 2 }", "HDF5Data does not transform data"),
             (layer.replace("list.txt", "missing.txt"), "Failed to open source file"),
             (layer.replace("batch_size: 1", ""), "batch_size must be set and positive")]
    for text, message in cases:
        with pytest.raises(EngineError, match=message):
            Net(parse(f"layer {{ {text} }}"), "TEST")


def test_hdf5output_writes_the_file_caffe_writes(caffe, tmp_path):
    mine, theirs = tmp_path / "ours.h5", tmp_path / "theirs.h5"
    text = '''
    layer { name: "d" type: "DummyData" top: "data" top: "label"
      dummy_data_param { shape { dim: 3 dim: 2 dim: 2 } shape { dim: 3 }
                         data_filler { type: "constant" value: 0.25 } data_filler { type: "constant" value: 4 } } }
    layer { name: "out" type: "HDF5Output" bottom: "data" bottom: "label" hdf5_output_param { file_name: "F" } }'''
    path = tmp_path / "net.prototxt"
    path.write_text(text.replace('"F"', f'"{theirs}"'))
    caffe_net = caffe.Net(str(path), caffe.TEST)
    caffe_net.forward()
    del caffe_net                                   # Caffe closes the file in the layer's destructor
    net = Net(parse(text.replace('"F"', f'"{mine}"')), "TEST")
    net.forward({})
    with h5py.File(mine) as a, h5py.File(theirs) as b:
        assert sorted(a) == sorted(b) == ["data", "label"]
        for name in a:
            assert a[name].shape == b[name].shape and a[name].dtype == b[name].dtype
            np.testing.assert_array_equal(a[name][()], b[name][()])
    with pytest.raises(EngineError, match="layer 'out'.*Failed to make float dataset data"):
        net.forward({})                             # as Caffe's, which aborts (CHECK) on its second forward


# ---------------------------------------------------------------- MemoryData

MEMORY = '''layer { name: "m" type: "MemoryData" top: "data" top: "label"
  memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }'''


def test_memorydata_serves_the_callers_arrays_as_caffe(caffe, tmp_path):
    data = np.arange(36, dtype=np.float32).reshape(6, 1, 2, 3)
    labels = np.arange(6, dtype=np.float32) + 10
    ours, theirs = both(caffe, tmp_path, MEMORY, forwards=4, memory=(data, labels))
    assert_equal_tops(ours, theirs)
    np.testing.assert_array_equal(ours[3]["data"], data[0:2])      # cycles through the 6 rows


def test_memorydata_refuses_bad_arrays_and_a_missing_reset():
    net = Net(parse(MEMORY), "TRAIN")
    layer = net.layer("m")
    with pytest.raises(EngineError, match="MemoryDataLayer needs to be initialized by calling Reset"):
        net.forward({})
    with pytest.raises(EngineError, match="multiple of batch size"):
        layer.set_input_arrays(np.zeros((3, 1, 2, 3), np.float32), np.zeros(3, np.float32))
    with pytest.raises(EngineError, match="C-contiguous float32"):
        layer.set_input_arrays(np.zeros((2, 1, 2, 3)), np.zeros(2, np.float32))
    with pytest.raises(EngineError, match=r"needs \(N, 1, 2, 3\)"):
        layer.set_input_arrays(np.zeros((2, 1, 3, 2), np.float32), np.zeros(2, np.float32))


# ---------------------------------------------------------------- ImageData

@pytest.fixture
def images(tmp_path):
    """Three PNG and three JPEG images of different sizes in tmp_path/img, listed in tmp_path/images.txt."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "img"
    folder.mkdir()
    lines = []
    for i, (h, w) in enumerate([(7, 9), (8, 6), (10, 10)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"j{i}.jpg", quality=90)
        lines += [f"p{i}.png {i + 3}", f"j{i}.jpg {i + 7}"]
    (tmp_path / "images.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.mark.parametrize("params, transform", [
    ("new_height: 6 new_width: 5", "crop_size: 4 mean_value: 10 mean_value: 20 mean_value: 30 scale: 0.5"),
    ("new_height: 9 new_width: 9 is_color: false", "mean_value: 100"),
    ("new_height: 5 new_width: 5 rand_skip: 1", "scale: 0.00390625"),
])
def test_imagedata_equals_caffe(caffe, images, params, transform):
    text = f'''layer {{ name: "i" type: "ImageData" top: "data" top: "label"
      image_data_param {{ source: "{images / 'images.txt'}" root_folder: "{images / 'img'}/" batch_size: 4 {params} }}
      transform_param {{ {transform} }} }}'''
    ours, theirs = both(caffe, images, text, forwards=3 if "rand_skip" not in params else 1)
    assert_equal_tops(ours, theirs)


def test_imagedata_with_a_mean_file_and_centre_crop_equals_caffe(caffe, images):
    mean = np.random.default_rng(1).uniform(0, 255, (1, 3, 6, 5)).astype(np.float32)
    blob = pb.BlobProto(num=1, channels=3, height=6, width=5)
    blob.data.extend(mean.ravel().tolist())
    (images / "mean.binaryproto").write_bytes(blob.SerializeToString())
    text = f'''layer {{ name: "i" type: "ImageData" top: "data" top: "label"
      image_data_param {{ source: "{images / 'images.txt'}" root_folder: "{images / 'img'}/" batch_size: 3
                          new_height: 6 new_width: 5 }}
      transform_param {{ crop_size: 3 mean_file: "{images / 'mean.binaryproto'}" }} }}'''
    ours, theirs = both(caffe, images, text, forwards=3)
    assert_equal_tops(ours, theirs)


def test_imagedata_shuffle_and_random_crops_keep_caffes_invariants(images):
    text = f'''layer {{ name: "i" type: "ImageData" top: "data" top: "label"
      image_data_param {{ source: "{images / 'images.txt'}" root_folder: "{images / 'img'}/" batch_size: 6
                          new_height: 6 new_width: 6 shuffle: true }}
      transform_param {{ crop_size: 4 mirror: true }} }}'''
    fed = NetWithData(parse(text), "TRAIN", "cpu", log=False)
    try:
        passes = [tuple(fed.next_batch()["label"].int().tolist()) for _ in range(4)]
    finally:
        fed.close()
    assert all(sorted(p) == [3, 4, 5, 7, 8, 9] for p in passes) and len(set(passes)) > 1


def test_imagedata_names_a_missing_image_and_one_of_another_size(images):
    (images / "list.txt").write_text("nowhere.png 1\n")
    text = f'''layer {{ name: "i" type: "ImageData" top: "data" top: "label"
      image_data_param {{ source: "{images / 'list.txt'}" batch_size: 2 }} }}'''
    with pytest.raises(EngineError, match="layer 'i': Could not load nowhere.png"):
        NetWithData(parse(text), "TEST", "cpu", log=False)
    listed = text.replace("list.txt", "images.txt").replace("batch_size", f'root_folder: "{images}/img/" batch_size')
    fed = NetWithData(parse(listed), "TEST", "cpu", log=False)
    try:
        with pytest.raises(EngineError, match="layer 'i': image .*p1.png is 8x6, the first 7x9; .* new_height"):
            fed.next_batch()
            fed.next_batch()
    finally:
        fed.close()


# ---------------------------------------------------------------- WindowData

def window_file(tmp_path: Path, windows: list[str]) -> Path:
    image = np.random.default_rng(3).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "w.png")
    path = tmp_path / "windows.txt"
    path.write_text(f"# 0\n{tmp_path / 'w.png'}\n3\n12\n10\n{len(windows)}\n" + "\n".join(windows) + "\n")
    return path


@pytest.mark.parametrize("params, transform", [
    ('context_pad: 2 crop_mode: "square" scale: 0.25', "crop_size: 7 mean_value: 100"),
    ('context_pad: 3', "crop_size: 8 mean_value: 1 mean_value: 2 mean_value: 3"),
    ('crop_mode: "warp" fg_fraction: 0.75', "crop_size: 5"),
    ('crop_mode: "square"', "crop_size: 6"),
    ('context_pad: 2 scale: 0.5', "crop_size: 6 mean_file: MEAN"),
])
def test_windowdata_with_one_window_of_each_kind_equals_caffe(caffe, tmp_path, params, transform):
    """One foreground and one background window, no mirror: Caffe's batches do not depend on its draws."""
    mean = np.random.default_rng(2).uniform(0, 255, (3, 9, 9)).astype(np.float32)
    blob = pb.BlobProto(num=1, channels=3, height=9, width=9)
    blob.data.extend(mean.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    transform = transform.replace("MEAN", f'"{tmp_path / "mean.binaryproto"}"')
    source = window_file(tmp_path, ["1 0.8 1 2 6 8", "0 0.1 0 0 9 11", "2 0.5 0 0 3 3"])  # the last: neither
    text = f'''layer {{ name: "w" type: "WindowData" top: "data" top: "label"
      window_data_param {{ source: "{source}" batch_size: 4 fg_threshold: 0.7 bg_threshold: 0.2 {params} }}
      transform_param {{ {transform} }} }}'''
    ours, theirs = both(caffe, tmp_path, text, forwards=2, phase="TRAIN")
    assert_equal_tops(ours, theirs)


@pytest.mark.parametrize("window, transform, message", [
    ("crop_size: 5", "", "window_data_param.crop_size is ignored by Caffe's WindowData, which reads transform_param"),
    ("", "scale: 2", "transform_param.scale is ignored by Caffe's WindowData"),
    ("", "force_gray: true", "transform_param.force_gray is not supported"),
])
def test_windowdata_refuses_the_fields_caffe_ignores(tmp_path, window, transform, message):
    source = window_file(tmp_path, ["1 0.8 1 2 6 8", "0 0.1 0 0 9 11"])
    text = f'''layer {{ name: "w" type: "WindowData" top: "data" top: "label"
      window_data_param {{ source: "{source}" batch_size: 2 {window} }}
      transform_param {{ crop_size: 5 {transform} }} }}'''
    with pytest.raises(EngineError, match=message):
        NetWithData(parse(text), "TRAIN", "cpu", log=False)


def test_windowdata_draws_and_mirrors_as_caffe(caffe, tmp_path):
    """Many windows, mirror: every item of Caffe's batches is one of the cut-outs `window_crop` makes (a window,
    mirrored or not), background items (label 0) first; the engine's batches keep the same invariants."""
    windows = ["1 0.9 0 0 4 4", "2 0.7 3 2 9 11", "3 0.6 5 5 9 9", "0 0.2 1 1 8 3", "0 0.0 2 6 6 11"]
    source = window_file(tmp_path, windows)
    text = f'''layer {{ name: "w" type: "WindowData" top: "data" top: "label"
      window_data_param {{ source: "{source}" batch_size: 8 fg_fraction: 0.5 context_pad: 1 }}
      transform_param {{ crop_size: 6 mirror: true }} }}'''
    ours, theirs = both(caffe, tmp_path, text, forwards=4, phase="TRAIN")
    image = np.asarray(Image.open(tmp_path / "w.png"))[:, :, ::-1]
    labels = [int(w.split()[0]) if float(w.split()[1]) >= 0.5 else 0 for w in windows]
    candidates = {}
    for w, label in zip(windows, labels):
        for mirror in (False, True):
            pixels, pad_h, pad_w = window_crop(image, tuple(int(v) for v in w.split()[2:]), 6, 1, False, mirror)
            canvas = np.zeros((3, 6, 6), np.float32)
            canvas[:, pad_h:pad_h + pixels.shape[0], pad_w:pad_w + pixels.shape[1]] = pixels.transpose(2, 0, 1)
            candidates.setdefault(label, []).append(canvas)
    for run in (ours, theirs):
        mirrored = set()
        for tops in run:
            assert list(tops["label"][:4]) == [0] * 4 and all(tops["label"][4:] > 0)
            for item, label in zip(tops["data"], tops["label"]):
                matches = [i for i, c in enumerate(candidates[int(label)]) if np.array_equal(item, c)]
                assert matches, f"an item of label {label} is no cut-out of a window of that label"
                mirrored.add(matches[0] % 2)
        assert mirrored == {0, 1}


def test_imagedata_and_windowdata_resume_exactly(images):
    """A snapshot's source state (JSON, as the solverstate keeps it) gives the same next batches: shuffled order,
    random crops and mirrors, random windows."""
    source = window_file(images, ["1 0.9 0 0 4 4", "2 0.7 3 2 9 11", "0 0.2 1 1 8 3", "0 0.0 2 6 6 11"])
    text = f'''layer {{ name: "i" type: "ImageData" top: "data" top: "label"
      image_data_param {{ source: "{images / 'images.txt'}" root_folder: "{images / 'img'}/" batch_size: 4
                          new_height: 6 new_width: 6 shuffle: true }} transform_param {{ crop_size: 4 mirror: true }} }}
    layer {{ name: "w" type: "WindowData" top: "wdata" top: "wlabel"
      window_data_param {{ source: "{source}" batch_size: 4 context_pad: 1 }}
      transform_param {{ crop_size: 5 mirror: true }} }}'''
    first, second = (NetWithData(parse(text), "TRAIN", "cpu", log=False) for _ in range(2))
    try:
        for _ in range(2):
            first.next_batch()
        state = json.loads(json.dumps([s.state_dict() for s in first.sources]))
        expected = [first.next_batch() for _ in range(3)]
        for source, saved in zip(second.sources, state):
            source.load_state_dict(saved)
        for batch, wanted in zip((second.next_batch() for _ in range(3)), expected):
            for name, value in wanted.items():
                assert torch.equal(batch[name], value), name
    finally:
        first.close()
        second.close()


# ---------------------------------------------------------------- Python layer; the caffe commands

def test_python_layer_is_refused_by_name():
    text = '''input: "x" input_shape { dim: 1 }
    layer { name: "py" type: "Python" bottom: "x" top: "y" python_param { module: "my_layers" layer: "Mine" } }'''
    with pytest.raises(EngineError, match="layer 'py' \\(type Python\\): python_param module 'my_layers' layer "
                                          "'Mine' is Python code written for pycaffe"):
        Net(parse(text), "TEST")


def caffe_torch(*args, cwd):
    return subprocess.run([str(ROOT / "tools" / "caffe_torch"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=240, env=dict(os.environ))


def test_caffe_torch_trains_on_hdf5data_and_refuses_memorydata_in_one_line(tmp_path):
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "train.h5", "w") as f:
        f["data"] = rng.normal(size=(10, 4)).astype(np.float32)
        f["label"] = rng.integers(0, 3, 10).astype(np.float32)
    (tmp_path / "train.txt").write_text("train.h5\n")
    head = {"hdf5": 'layer { name: "h" type: "HDF5Data" top: "data" top: "label" '
                    'hdf5_data_param { source: "train.txt" batch_size: 4 } }',
            "memory": 'layer { name: "m" type: "MemoryData" top: "data" top: "label" '
                      'memory_data_param { batch_size: 4 channels: 4 height: 1 width: 1 } }'}
    body = ('layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 '
            'weight_filler { type: "gaussian" std: 0.1 } } }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }\n')
    for kind, layer in head.items():
        (tmp_path / f"{kind}.prototxt").write_text(layer + "\n" + body)
        (tmp_path / f"{kind}_solver.prototxt").write_text(
            f'net: "{kind}.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 5 display: 1 random_seed: 1 '
            f'snapshot_after_train: false solver_mode: CPU')
    done = caffe_torch("train", "-solver", "hdf5_solver.prototxt", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Iteration 5, loss = " in done.stderr and "Optimization Done." in done.stderr
    refused = caffe_torch("train", "-solver", "memory_solver.prototxt", cwd=tmp_path)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("E")]
    assert refused.returncode != 0 and len(errors) == 1 and "Traceback" not in refused.stderr
    assert "layer 'm' (type MemoryData): MemoryDataLayer needs to be initialized by calling Reset" in errors[0]


def test_caffe_time_runs_a_dummydata_net(tmp_path):
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "d" type: "DummyData" top: "data" top: "label" dummy_data_param { shape { dim: 4 dim: 5 } '
        'shape { dim: 4 } data_filler { type: "gaussian" } data_filler { type: "constant" value: 1 } } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 '
        'weight_filler { type: "xavier" } } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }\n')
    result = time_net(str(tmp_path / "net.prototxt"), iterations=2)
    assert [name for name, _, _ in result["layers_ms"]] == ["d", "fc", "loss"] and result["forward_ms"] > 0
    assert torch.isfinite(torch.tensor(result["forward_backward_ms"]))


# ---------------------------------------------------------------- without Caffe: a committed golden; CUDA

def golden_net(tmp_path: Path) -> str:
    """PNG images (lossless: the same pixels wherever they are written), an image list and a window file in
    tmp_path, and a net of an ImageData and a WindowData layer over them, whose tops do not depend on Caffe's
    random generator."""
    rng = np.random.default_rng(5)
    lines = []
    for i, (h, w) in enumerate([(7, 9), (8, 6), (10, 10)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"g{i}.png")
        lines.append(f"g{i}.png {i}")
    (tmp_path / "golden.txt").write_text("\n".join(lines) + "\n")
    source = window_file(tmp_path, ["1 0.8 1 2 6 8", "0 0.1 0 0 9 11"])
    return f'''
    layer {{ name: "i" type: "ImageData" top: "data" top: "label"
      image_data_param {{ source: "{tmp_path / 'golden.txt'}" root_folder: "{tmp_path}/" batch_size: 2
                          new_height: 6 new_width: 5 }}
      transform_param {{ crop_size: 4 mean_value: 10 mean_value: 20 mean_value: 30 scale: 0.5 }} }}
    layer {{ name: "w" type: "WindowData" top: "wdata" top: "wlabel"
      window_data_param {{ source: "{source}" batch_size: 3 context_pad: 2 crop_mode: "square" scale: 0.25 }}
      transform_param {{ crop_size: 7 mean_value: 100 }} }}'''


def test_image_and_window_data_equal_the_committed_caffe_golden(tmp_path):
    """Caffe's tops for golden_net (tests/golden/datalayers.npz, written by pycaffe: python
    tests/test_engine_datalayers.py), checked where Caffe is not built."""
    fed = NetWithData(parse(golden_net(tmp_path)), "TEST", "cpu", log=False)
    try:
        with np.load(GOLDEN) as golden:
            for i in range(2):
                blobs = fed.net.forward(fed.next_batch())
                for name in ("data", "label", "wdata", "wlabel"):
                    np.testing.assert_array_equal(blobs[name].numpy(), golden[f"{i}/{name}"], err_msg=name)
    finally:
        fed.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the data layers' CUDA run is skipped here")
def test_data_layers_on_cuda_equal_the_cpu(tmp_path):
    """Every data layer's tops made for a net on the GPU equal those made on the CPU (the same seeds)."""
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["data2"], f["label2"] = np.random.default_rng(0).normal(size=(5, 2, 3)), np.arange(5.0)
    (tmp_path / "list.txt").write_text(str(tmp_path / "b.h5"))
    text = golden_net(tmp_path) + f'''
    layer {{ name: "h" type: "HDF5Data" top: "data2" top: "label2"
      hdf5_data_param {{ source: "{tmp_path / 'list.txt'}" batch_size: 3 shuffle: true }} }}
    layer {{ name: "d" type: "DummyData" top: "dummy" dummy_data_param {{ shape {{ dim: 3 dim: 4 }}
      data_filler {{ type: "gaussian" }} }} }}
    layer {{ name: "m" type: "MemoryData" top: "mdata" top: "mlabel"
      memory_data_param {{ batch_size: 2 channels: 1 height: 2 width: 3 }} }}'''
    memory = (np.arange(24, dtype=np.float32).reshape(4, 1, 2, 3), np.arange(4, dtype=np.float32))
    tops = []
    for device in ("cpu", "cuda"):
        fed = NetWithData(parse(text), "TRAIN", torch.device(device), seed=3, log=False)
        fed.net.layer("m").set_input_arrays(*memory)
        try:
            blobs = [fed.net.forward(fed.next_batch()) for _ in range(3)]
            tops.append([{k: v.detach().cpu().numpy() for k, v in b.items()} for b in blobs])
            assert all(v.device.type == device for v in blobs[0].values())
        finally:
            fed.close()
    for cpu, cuda in zip(*tops):
        for name in cpu:
            np.testing.assert_array_equal(cpu[name], cuda[name], err_msg=name)


def write_golden() -> None:
    """tests/golden/datalayers.npz from pycaffe (run where real Caffe is built)."""
    import tempfile
    sys.path.insert(0, str(ROOT / "tests" / "golden"))
    from make_golden import load_caffe
    caffe_module = load_caffe()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.prototxt"
        path.write_text(golden_net(Path(tmp)))
        net = caffe_module.Net(str(path), caffe_module.TEST)
        golden = {}
        for i in range(2):
            net.forward()
            golden.update({f"{i}/{name}": net.blobs[name].data.copy() for name in ("data", "label", "wdata", "wlabel")})
    np.savez_compressed(GOLDEN, **golden)
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    write_golden()
