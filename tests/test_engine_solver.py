"""The engine's training side: data pipeline, SGD solver, snapshots, resume, determinism, divergence, signals.

A tiny LMDB (40 images 3x8x8, 4 classes) and a small net train in seconds on the CPU.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from convnet_transfer.formats import caffe_pb2 as pb
from convnet_transfer.formats import protoio
from convnet_transfer.training.engine import glog
from convnet_transfer.training.engine.data import DataError, DataLayerSource
from convnet_transfer.training.engine.solver import Diverged, SignalActions, SolverError, learning_rate

ROOT = Path(__file__).resolve().parent.parent

N, C, H, W, CLASSES = 40, 3, 8, 8, 4

NET = """name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mean_file: "mean.binaryproto" crop_size: 6 mirror: true scale: 0.01 }
  data_param { source: "train_lmdb" batch_size: 8 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { mean_file: "mean.binaryproto" crop_size: 6 scale: 0.01 }
  data_param { source: "train_lmdb" batch_size: 10 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: %(conv1_lr)s decay_mult: 1 } param { lr_mult: %(conv1_lr)s decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool1" top: "fc6"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc6" top: "fc8"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc8" bottom: "label" top: "accuracy" include { phase: TEST } }
"""

SOLVER = """net: "net.prototxt"
test_iter: 2
test_interval: 10
base_lr: %(base_lr)s
lr_policy: "step"
gamma: 0.5
stepsize: 10
momentum: 0.9
weight_decay: 0.0005
display: 5
max_iter: %(max_iter)d
snapshot: %(snapshot)d
snapshot_prefix: "snap"
solver_mode: CPU
random_seed: 3
"""


def write_lmdb(path: Path, data: np.ndarray, labels: np.ndarray) -> None:
    write_values(path, [pb.Datum(channels=image.shape[0], height=image.shape[1], width=image.shape[2],
                                  data=image.tobytes(), label=int(label)).SerializeToString()
                         for image, label in zip(data, labels)])


def write_values(path: Path, values: list[bytes]) -> None:
    """An LMDB of `values` under the keys 00000000, 00000001, ..."""
    import lmdb
    env = lmdb.open(str(path), map_size=32 << 20)
    with env.begin(write=True) as txn:
        for i, value in enumerate(values):
            txn.put(b"%08d" % i, value)
    env.close()


def make_case(directory: Path, *, base_lr=0.05, max_iter=20, snapshot=10, conv1_lr=1) -> Path:
    """A net directory: tiny LMDB, its mean, net.prototxt and solver.prototxt."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    labels = np.arange(N) % CLASSES
    data = rng.randint(0, 160, size=(N, C, H, W)).astype(np.uint8)
    data[np.arange(N), labels % C] += 90
    write_lmdb(directory / "train_lmdb", data, labels)
    protoio.write_mean(directory / "mean.binaryproto", data.mean(axis=0).astype(np.float32))
    (directory / "net.prototxt").write_text(NET % {"conv1_lr": conv1_lr})
    (directory / "solver.prototxt").write_text(SOLVER % {"base_lr": base_lr, "max_iter": max_iter,
                                                         "snapshot": snapshot})
    return directory


def weights_of(path: Path) -> dict[str, list[np.ndarray]]:
    net = protoio.read_binary(path, pb.NetParameter)
    return {layer.name: [protoio.blob_to_array(b) for b in layer.blobs] for layer in net.layer if layer.blobs}


def run_train(directory: Path, monkeypatch, **kwargs) -> str:
    from convnet_transfer.training.engine.train import train
    monkeypatch.chdir(directory)
    return train("solver.prototxt", **kwargs)


# ---------------------------------------------------------------- pieces without a net

def test_glog_line_format_and_numbers():
    text = glog.line("I", "solver.cpp:239", "Iteration 20 (1.5 iter/s, 13.3s/20 iters), loss = 6.9", now=0.25)
    assert text.startswith("I")
    head, message = text.split("] ", 1)
    assert message == "Iteration 20 (1.5 iter/s, 13.3s/20 iters), loss = 6.9"
    date, clock, pid, where = head[1:].split()
    assert len(date) == 4 and clock.endswith(".250000") and int(pid) == os.getpid() and where == "solver.cpp:239"
    assert [glog.fmt(x) for x in (0.01, 1e-5, 6.907756, 100000.0, 1234567.0, float("nan"), float("inf"))] == \
        ["0.01", "1e-05", "6.90776", "100000", "1.23457e+06", "nan", "inf"]


def test_learning_rate_policies_follow_caffe():
    def solver(**fields):
        return pb.SolverParameter(base_lr=0.01, max_iter=100, **fields)

    f32 = lambda x: float(np.float32(x))  # noqa: E731
    assert learning_rate(solver(lr_policy="fixed"), 57, 0)[0] == f32(0.01)
    assert learning_rate(solver(lr_policy="step", gamma=0.1, stepsize=20), 45, 0) == (f32(0.01 * 0.1 ** 2), 2)
    assert learning_rate(solver(lr_policy="exp", gamma=0.99), 10, 0)[0] == pytest.approx(0.01 * 0.99 ** 10, 1e-6)
    assert learning_rate(solver(lr_policy="inv", gamma=1e-4, power=0.75), 100, 0)[0] == \
        pytest.approx(0.01 * (1 + 1e-4 * 100) ** -0.75, 1e-6)
    assert learning_rate(solver(lr_policy="poly", power=2), 25, 0)[0] == pytest.approx(0.01 * 0.75 ** 2, 1e-6)
    assert learning_rate(solver(lr_policy="sigmoid", gamma=0.1, stepsize=50), 60, 0)[0] == \
        pytest.approx(0.01 / (1 + math.exp(-1)), 1e-6)
    multi = solver(lr_policy="multistep", gamma=0.5, stepvalue=[10, 20])
    step, rates = 0, []
    for it in range(25):
        rate, step = learning_rate(multi, it, step)
        rates.append(rate)
    assert rates[9] == f32(0.01) and rates[10] == f32(0.005) and rates[24] == f32(0.0025)
    with pytest.raises(SolverError, match="Unknown learning rate policy"):
        learning_rate(solver(lr_policy="cosine"), 0, 0)


def test_signal_effects_validated():
    with pytest.raises(SolverError, match="Invalid signal effect"):
        SignalActions("halt")
    actions = SignalActions("snapshot", "none")
    actions._handle(signal.SIGINT, None)
    assert actions.snapshot and not actions.stop
    actions._handle(signal.SIGHUP, None)
    assert not actions.stop
    actions._handle(signal.SIGTERM, None)
    assert actions.stop and actions.stopped_by == "SIGTERM"


def data_layer(text: str) -> pb.LayerParameter:
    return protoio.parse_text(text, pb.LayerParameter())


def test_data_layer_transform_crop_mirror_mean_scale_and_rewind(tmp_path, monkeypatch):
    make_case(tmp_path)
    monkeypatch.chdir(tmp_path)
    rng = np.random.RandomState(0)
    labels = np.arange(N) % CLASSES
    data = rng.randint(0, 160, size=(N, C, H, W)).astype(np.uint8)
    data[np.arange(N), labels % C] += 90
    mean = data.mean(axis=0).astype(np.float32)

    test_layer = data_layer('name: "d" type: "Data" top: "data" top: "label" transform_param { '
                             'mean_file: "mean.binaryproto" crop_size: 6 scale: 0.5 } '
                             'data_param { source: "train_lmdb" batch_size: 16 backend: LMDB }')
    source = DataLayerSource(test_layer, "TEST", seed=0)
    assert source.shapes == {"data": (16, C, 6, 6), "label": (16,)}
    seen = []
    for _ in range(3):  # 48 records from 40: the third batch wraps to the start, like Caffe
        batch = source.next_batch()
        seen.extend(batch["label"].tolist())
        first = len(seen) - 16
        for j in range(16):
            k = (first + j) % N
            expect = (data[k].astype(np.float32) - mean)[:, 1:7, 1:7] * 0.5   # centre crop in TEST
            np.testing.assert_allclose(batch["data"][j].numpy(), expect, rtol=1e-6, atol=1e-5)
    assert seen == [float(labels[k % N]) for k in range(48)]
    source.close()

    train_layer = data_layer('name: "d" type: "Data" top: "data" top: "label" transform_param { '
                              'mean_value: 100 crop_size: 5 mirror: true } '
                              'data_param { source: "train_lmdb" batch_size: 40 backend: LMDB }')
    source = DataLayerSource(train_layer, "TRAIN", seed=1)
    batch = source.next_batch()["data"].numpy()
    mirrored = 0
    for j in range(N):
        full = data[j].astype(np.float32) - 100
        candidates = [(full[:, y:y + 5, x:x + 5], False) for y in range(4) for x in range(4)]
        candidates += [(c[:, :, ::-1], True) for c, _ in candidates]
        matches = [m for c, m in candidates if np.array_equal(c, batch[j])]
        assert matches, f"image {j} is not a (mirrored) 5x5 crop of its record"
        mirrored += matches[0]
    assert 5 < mirrored < 35   # random mirror: about half
    source.close()

    bad = data_layer('name: "d" type: "Data" top: "data" data_param { source: "train_lmdb" batch_size: 4 }')
    with pytest.raises(DataError, match="LMDB database but data_param.backend is LEVELDB"):
        DataLayerSource(bad, "TRAIN")
    missing = data_layer('name: "d" type: "Data" top: "data" data_param { source: "nowhere" batch_size: 4 }')
    with pytest.raises(DataError, match="nowhere not found"):
        DataLayerSource(missing, "TRAIN")


@pytest.mark.parametrize("transform", [
    'mean_file: "mean.binaryproto" crop_size: 5 mirror: true scale: 0.25',
    'mean_value: 10 mean_value: 20 mean_value: 30 crop_size: 7 mirror: true',
    'mean_file: "mean.binaryproto" mirror: true',
    'mean_value: 3.5 scale: 0.00390625',
    'crop_size: 4',
], ids=["mean-file-crop-mirror-scale", "mean-values-crop-mirror", "mean-file-mirror", "mean-value-scale", "crop"])
@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_the_gpu_transform_equals_the_cpu_transform_bit_for_bit(tmp_path, monkeypatch, transform, phase):
    """Under CUDA the crop, mirror, mean and scale run as one gather on the GPU, on the CPU image by image in
    numpy in the reading thread: with the same draws both give the same float32 bits (run here on the CPU)."""
    make_case(tmp_path)
    monkeypatch.chdir(tmp_path)
    layer = data_layer('name: "d" type: "Data" top: "data" top: "label" transform_param { %s } '
                        'data_param { source: "train_lmdb" batch_size: 40 backend: LMDB }' % transform)
    source = DataLayerSource(layer, phase, seed=4)
    source._stop_thread()   # this test reads and draws itself
    raw, _, _ = source._read_batch()
    raw = raw.clone()
    draws = source._draw(raw.shape)
    if "mirror" in transform:
        assert 5 < draws[2].sum() < 35
    cpu = source._transform_numpy(raw.numpy(), draws)
    source.channels_last = False
    cpu_nchw = source._transform_numpy(raw.numpy(), draws)
    device = source._transform_on_device(raw, draws)
    source.close()
    assert cpu.shape == cpu_nchw.shape == tuple(device.shape) == source.shapes["data"]
    assert torch.from_numpy(cpu).is_contiguous(memory_format=torch.channels_last)   # the CPU net's layout
    assert cpu.tobytes() == cpu_nchw.tobytes() == device.numpy().tobytes()


def test_leveldb_source_gives_the_batches_of_the_same_records_in_lmdb(tmp_path, monkeypatch):
    """The 2014 nets read LevelDB (V0's default backend): the same records there and in an LMDB, the same batches,
    the rewind included."""
    pytest.importorskip("plyvel", reason="plyvel (the test extra) reads LevelDB")
    from convnet_transfer.data import databases
    monkeypatch.chdir(tmp_path)
    rng = np.random.RandomState(9)
    records = [(databases.make_key(i, f"im{i}.JPEG"), rng.randint(0, 256, (C, H, W)).astype(np.uint8), i % CLASSES)
               for i in range(13)]
    for backend in ("lmdb", "leveldb"):
        databases.write_arrays(tmp_path / backend, records, backend=backend, progress=False)
    text = ('name: "d" type: "Data" top: "data" top: "label" transform_param { crop_size: 6 mirror: true '
            'mean_value: 7 } data_param { source: "%s" batch_size: 5 backend: %s }')
    lmdb_source = DataLayerSource(data_layer(text % ("lmdb", "LMDB")), "TRAIN", seed=3)
    leveldb_source = DataLayerSource(data_layer(text % ("leveldb", "LEVELDB")), "TRAIN", seed=3)
    try:
        for _ in range(4):   # 20 records from 13: rewinds
            a, b = lmdb_source.next_batch(), leveldb_source.next_batch()
            assert torch.equal(a["data"], b["data"]) and torch.equal(a["label"], b["label"])
    finally:
        lmdb_source.close()
        leveldb_source.close()


@pytest.mark.parametrize("transform, message", [
    ('mean_file: "mean.binaryproto" mean_value: 3', "cannot specify mean_file and mean_value at the same time"),
    ("mean_value: 1 mean_value: 2", f"specify either 1 mean_value or as many as channels: {C}"),
    ('mean_file: "small_mean.binaryproto"', f"mean file small_mean.binaryproto has shape ({C}, 4, 4), the data "
                                            f"in train_lmdb ({C}, {H}, {W}); recompute the mean of this database"),
    (f"crop_size: {H + 1}", f"crop_size {H + 1} is larger than the images ({H}x{W}) in train_lmdb"),
])
def test_data_layer_refuses_a_transform_that_does_not_fit_the_data(tmp_path, monkeypatch, transform, message):
    make_case(tmp_path)
    monkeypatch.chdir(tmp_path)
    protoio.write_mean(tmp_path / "small_mean.binaryproto", np.zeros((C, 4, 4), np.float32))
    layer = data_layer('name: "d" type: "Data" top: "data" top: "label" transform_param { %s } '
                        'data_param { source: "train_lmdb" batch_size: 4 backend: LMDB }' % transform)
    with pytest.raises(DataError, match="^" + re.escape(f"layer 'd': {message}")):
        DataLayerSource(layer, "TRAIN")


def test_data_layer_state_resumes_exactly(tmp_path, monkeypatch):
    make_case(tmp_path)
    monkeypatch.chdir(tmp_path)
    layer = data_layer('name: "d" type: "Data" top: "data" top: "label" transform_param { crop_size: 5 '
                        'mirror: true } data_param { source: "train_lmdb" batch_size: 7 backend: LMDB }')
    a = DataLayerSource(layer, "TRAIN", seed=5)
    for _ in range(4):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))
    expected = [a.next_batch() for _ in range(8)]
    b = DataLayerSource(layer, "TRAIN", seed=99)
    b.load_state_dict(state)
    for want in expected:
        got = b.next_batch()
        assert torch.equal(got["data"], want["data"]) and torch.equal(got["label"], want["label"])
    a.close()
    b.close()


def test_encoded_records_decoded_by_worker_processes_give_the_same_batches(tmp_path, monkeypatch):
    """PNG-encoded Datums: decoded by 2 worker processes or by the reading thread, the batches are the same and
    equal the raw pixels; raw Datums never start workers (their pixels are copied, not decoded)."""
    from convnet_transfer.data.images import encode_image
    make_case(tmp_path)
    monkeypatch.chdir(tmp_path)
    rng = np.random.RandomState(3)
    pixels = rng.randint(0, 256, size=(N, C, H, W)).astype(np.uint8)
    write_values(tmp_path / "png_lmdb", [pb.Datum(data=encode_image(image.transpose(1, 2, 0), "png"), label=i % 4,
                                                   encoded=True).SerializeToString() for i, image in enumerate(pixels)])
    text = ('name: "d" type: "Data" top: "data" top: "label" transform_param { crop_size: 5 mirror: true } '
            'data_param { source: "%s" batch_size: 16 backend: LMDB }')
    encoded = data_layer(text % "png_lmdb")
    a, b = DataLayerSource(encoded, "TRAIN", seed=2, workers=0), DataLayerSource(encoded, "TRAIN", seed=2, workers=2)
    raw = DataLayerSource(data_layer(text % "train_lmdb"), "TRAIN", seed=2, workers=2)
    try:
        assert (a.workers, b.workers, raw.workers) == (0, 2, 0) and b._pool is not None and raw._pool is None
        for _ in range(4):
            x, y = a.next_batch(), b.next_batch()
            assert torch.equal(x["data"], y["data"]) and torch.equal(x["label"], y["label"])
        a.load_state_dict({"position": 0, "next_key": None, "rng": a.rng.bit_generator.state})
        whole = data_layer(text.replace("crop_size: 5 mirror: true", "") % "png_lmdb")
        plain = DataLayerSource(whole, "TEST", seed=0, workers=2)
        batch = plain.next_batch()
        assert np.array_equal(batch["data"].numpy(), pixels[:16]) and batch["label"].tolist() == [i % 4 for i in range(16)]
        plain.close()
    finally:
        a.close()
        b.close()
        raw.close()


def test_decoding_workers_name_bad_records_stop_cleanly_and_report_a_dead_worker(tmp_path, monkeypatch):
    from convnet_transfer.data.images import encode_image
    monkeypatch.chdir(tmp_path)
    rng = np.random.RandomState(5)

    def png(h, w):
        return pb.Datum(data=encode_image(rng.randint(0, 256, (h, w, 3)).astype(np.uint8), "png"), label=1,
                        encoded=True).SerializeToString()

    text = ('name: "d" type: "Data" top: "data" top: "label" '
            'data_param { source: "%s" batch_size: 8 backend: LMDB }')
    write_values(tmp_path / "broken", [png(6, 6)] * 5 + [png(6, 6)[:-20]] + [png(6, 6)] * 4)
    write_values(tmp_path / "sizes", [png(6, 6)] * 6 + [png(7, 6)] + [png(6, 6)] * 3)
    write_values(tmp_path / "good", [png(6, 6)] * 10)
    for workers in (2, 0):    # decoded by worker processes, or by the reading thread: the same errors
        for db, message in (("broken", r"record 00000005 in broken is not a readable Datum"),
                            ("sizes", r"record 00000006 in sizes has shape \(3, 7, 6\) among records of shape")):
            source = DataLayerSource(data_layer(text % db), "TRAIN", workers=workers)
            with pytest.raises(DataError, match=message):
                source.next_batch()
            source.close()

    source = DataLayerSource(data_layer(text % "good"), "TRAIN", workers=2, prefetch=1)
    pids = list(source._pool.pids)
    assert len(pids) == 2 and source.next_batch()["data"].shape == (8, 3, 6, 6)
    start = time.monotonic()
    source.close()                                          # SIGKILL and reap: nothing left, no wait
    assert time.monotonic() - start < 10
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)

    source = DataLayerSource(data_layer(text % "good"), "TRAIN", workers=2, prefetch=1)
    os.kill(source._pool.pids[0], signal.SIGKILL)            # the OOM killer, say
    with pytest.raises(DataError, match="a data worker process died"):
        for _ in range(4):
            source.next_batch()
    source.close()


@pytest.mark.parametrize("datum", [
    pb.Datum(channels=3, height=2, width=4, data=bytes(range(24)), label=7),
    pb.Datum(channels=1, height=1, width=1, data=b"\x05", label=-3),                 # int32 sign-extended
    pb.Datum(channels=2, height=3, width=1, data=bytes(6), label=2**31 - 1),
    pb.Datum(channels=1, height=2, width=2, data=bytes(4)),                           # label absent: 0
], ids=["colour", "negative-label", "max-label", "no-label"])
def test_raw_datum_layout_reads_the_wire_format_as_protobuf_does(datum):
    from convnet_transfer.training.engine.data import decode_record, raw_datum_layout
    value = datum.SerializeToString()
    offset, shape, label = raw_datum_layout(value)
    array, expected_label = decode_record(value)
    assert shape == array.shape and label == expected_label == datum.label
    assert value[offset:offset + array.size] == array.tobytes()
    # fields in another order (protobuf allows any), label given twice (the last one wins)
    reordered = pb.Datum(label=99).SerializeToString() + pb.Datum(data=datum.data).SerializeToString() + \
        pb.Datum(channels=datum.channels, height=datum.height, width=datum.width, label=datum.label).SerializeToString()
    offset, shape, label = raw_datum_layout(reordered)
    assert (shape, label) == (array.shape, datum.label) and reordered[offset:offset + array.size] == array.tobytes()
    assert raw_datum_layout(memoryview(value)) == raw_datum_layout(value)


@pytest.mark.parametrize("value", [
    pb.Datum(channels=1, height=1, width=3, data=b"abc", encoded=True).SerializeToString(),
    pb.Datum(channels=1, height=1, width=2, float_data=[1.5, 2.5]).SerializeToString(),   # packed floats
    pb.Datum(channels=1, height=1, width=2, data=b"abc").SerializeToString(),             # 3 bytes for 1x1x2
    pb.Datum(channels=1, height=2, width=2, data=bytes(4)).SerializeToString()[:-2],      # truncated
    b"\xff\xff\xff", b"",
], ids=["encoded", "float", "size-mismatch", "truncated", "garbage", "empty"])
def test_raw_datum_layout_leaves_everything_else_to_the_protobuf_decoder(value):
    from convnet_transfer.training.engine.data import raw_datum_layout
    assert raw_datum_layout(value) is None


def test_a_damaged_record_is_an_error_naming_the_record_and_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = pb.Datum(channels=1, height=2, width=2, data=bytes(4), label=1).SerializeToString()
    write_values(tmp_path / "db", [good, good, good[:-3] + b"\xff\xff\xff", good])
    source = DataLayerSource(data_layer('name: "d" type: "Data" top: "data" top: "label" '
                                         'data_param { source: "db" batch_size: 4 backend: LMDB }'), "TRAIN")
    with pytest.raises(DataError, match=r"record 00000002 in db is not a readable Datum .*re-create it"):
        source.next_batch()
    source.close()


def test_float_datums_and_batches_not_aliasing_the_reused_buffers(tmp_path, monkeypatch):
    """float_data Datums go through protobuf; a batch stays valid after the source reuses its memory."""
    monkeypatch.chdir(tmp_path)
    values = [pb.Datum(channels=1, height=1, width=2, float_data=[i, -i], label=i).SerializeToString() for i in range(5)]
    write_values(tmp_path / "db", values)
    source = DataLayerSource(data_layer('name: "d" type: "Data" top: "data" top: "label" '
                                         'data_param { source: "db" batch_size: 2 backend: LMDB }'), "TEST")
    batches = [source.next_batch() for _ in range(12)]   # the raw buffer is reused 12 times
    source.close()
    for k, batch in enumerate(batches):
        records = [(2 * k + j) % 5 for j in range(2)]
        assert batch["data"].flatten().tolist() == [v for r in records for v in (r, -r)]
        assert batch["label"].tolist() == records


# ---------------------------------------------------------------- training

def test_training_snapshots_caffe_files_and_the_update_rule(tmp_path, monkeypatch, capfd):
    case = make_case(tmp_path / "run", max_iter=3, snapshot=1)
    assert run_train(case, monkeypatch) == "done"
    log = capfd.readouterr().err
    for i in (1, 2, 3):
        assert (case / f"snap_iter_{i}.caffemodel").is_file() and (case / f"snap_iter_{i}.solverstate").is_file()
    state = protoio.read_binary(case / "snap_iter_3.solverstate", pb.SolverState)
    assert state.iter == 3 and state.learned_net == "snap_iter_3.caffemodel" and state.current_step == 0
    w2, w3 = weights_of(case / "snap_iter_2.caffemodel"), weights_of(case / "snap_iter_3.caffemodel")
    order = [(name, i) for name in ("conv1", "fc6", "fc8") for i in range(2)]
    assert len(state.history) == len(order)
    for (name, i), blob in zip(order, state.history):
        history = protoio.blob_to_array(blob)
        assert history.shape == w3[name][i].shape
        # w_3 = w_2 - v_3: the history saved is the last update
        np.testing.assert_allclose(w2[name][i] - w3[name][i], history, rtol=1e-4, atol=1e-7)
    # Caffe's log lines, in Caffe's order
    assert "Iteration 0, Testing net (#0)" in log and "Test net output #0: accuracy = " in log
    assert "Test net output #1: loss = " in log and "(* 1 = " in log
    assert "Iteration 0 (" in log and "Train net output #0: loss = " in log
    assert "Iteration 0, lr = 0.05" in log
    assert "Snapshotting to binary proto file snap_iter_3.caffemodel" in log
    assert "Snapshotting solver state to binary proto file snap_iter_3.solverstate" in log
    assert log.rstrip().endswith("Optimization Done.")


def test_frozen_layers_stay_bit_identical_from_a_caffemodel(tmp_path, monkeypatch):
    base = make_case(tmp_path / "base", max_iter=2, snapshot=0)
    assert run_train(base, monkeypatch) == "done"
    transfer = make_case(tmp_path / "transfer", max_iter=12, snapshot=0, conv1_lr=0)
    assert run_train(transfer, monkeypatch, weights=str(base / "snap_iter_2.caffemodel")) == "done"
    before, after = weights_of(base / "snap_iter_2.caffemodel"), weights_of(transfer / "snap_iter_12.caffemodel")
    for b0, b1 in zip(before["conv1"], after["conv1"]):
        assert b0.tobytes() == b1.tobytes()          # frozen: bit-identical
    assert not np.array_equal(before["fc6"][0], after["fc6"][0])   # fine-tuned: moved


def test_same_seed_same_weights(tmp_path, monkeypatch):
    a, b = make_case(tmp_path / "a"), make_case(tmp_path / "b")
    run_train(a, monkeypatch)
    run_train(b, monkeypatch)
    assert (a / "snap_iter_20.caffemodel").read_bytes() == (b / "snap_iter_20.caffemodel").read_bytes()
    assert (a / "snap_iter_20.solverstate").read_bytes() == (b / "snap_iter_20.solverstate").read_bytes()


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    whole = make_case(tmp_path / "whole", max_iter=20, snapshot=10)
    run_train(whole, monkeypatch)
    resumed = make_case(tmp_path / "resumed", max_iter=20, snapshot=10)
    for suffix in ("caffemodel", "solverstate", "solverstate.rng"):
        (resumed / f"snap_iter_10.{suffix}").write_bytes((whole / f"snap_iter_10.{suffix}").read_bytes())
    assert run_train(resumed, monkeypatch, snapshot="snap_iter_10.solverstate") == "done"
    assert (resumed / "snap_iter_20.caffemodel").read_bytes() == (whole / "snap_iter_20.caffemodel").read_bytes()
    # without our .rng side file the resume still runs (like Caffe: data from the start, fresh random state)
    again = make_case(tmp_path / "again", max_iter=20, snapshot=10)
    for suffix in ("caffemodel", "solverstate"):
        (again / f"snap_iter_10.{suffix}").write_bytes((whole / f"snap_iter_10.{suffix}").read_bytes())
    assert run_train(again, monkeypatch, snapshot="snap_iter_10.solverstate") == "done"
    assert (again / "snap_iter_20.caffemodel").is_file()


def test_diverging_run_stops_naming_the_iteration_and_keeps_the_last_good_snapshot(tmp_path, monkeypatch):
    case = make_case(tmp_path, base_lr=1e5, max_iter=50, snapshot=1)
    with pytest.raises(Diverged, match=r"Iteration (\d+): .*(nan|inf)") as err:
        run_train(case, monkeypatch)
    stopped_at = int(err.value.args[0].split(":")[0].split()[-1])
    snapshots = sorted(case.glob("snap_iter_*.caffemodel"), key=lambda p: int(p.stem.split("_")[-1]))
    assert snapshots, "a good snapshot should exist before the divergence"
    last = snapshots[-1]
    assert int(last.stem.split("_")[-1]) <= stopped_at
    assert f"The last good snapshot is {last.name}" in str(err.value)
    for blobs in weights_of(last).values():
        assert all(np.isfinite(b).all() for b in blobs)


def test_losses_read_back_in_groups_log_train_and_diverge_as_read_one_by_one(tmp_path, monkeypatch, capfd):
    """The solver reads the losses back from the device in groups (a GPU runs ahead meanwhile): the smoothed
    losses it logs, the weights it snapshots and the iteration a divergence names are those of reading each
    iteration's loss at once."""
    from convnet_transfer.training.engine.solver import SGDSolver
    results = {}
    for every in (1, 20):
        monkeypatch.setattr(SGDSolver, "READ_LOSSES_EVERY", every)
        case = make_case(tmp_path / f"every{every}", max_iter=20, snapshot=10)
        (case / "solver.prototxt").write_text((case / "solver.prototxt").read_text() + "average_loss: 3\n")
        capfd.readouterr()
        assert run_train(case, monkeypatch) == "done"
        losses = re.findall(r"Iteration (\d+)(?: \(.*\))?, loss = (\S+)", capfd.readouterr().err)
        assert [int(i) for i, _ in losses] == [0, 5, 10, 15, 20]
        (case / "solver.prototxt").write_text(SOLVER.replace("snapshot: %(snapshot)d", "snapshot: 0")
                                              % {"base_lr": 1e5, "max_iter": 50})
        with pytest.raises(Diverged, match=r"Iteration (\d+): .*(nan|inf)") as err:
            run_train(case, monkeypatch)
        results[every] = (losses, (case / "snap_iter_20.caffemodel").read_bytes(), str(err.value).split(":")[0])
    assert results[1] == results[20]
    assert int(results[20][2].split()[-1]) > 0


def test_errors_name_what_is_wrong(tmp_path, monkeypatch):
    from convnet_transfer.training.engine.train import train
    case = make_case(tmp_path)
    monkeypatch.chdir(case)
    with pytest.raises(SolverError, match="not both"):
        train("solver.prototxt", weights="a.caffemodel", snapshot="b.solverstate")
    (case / "bad_solver.prototxt").write_text(SOLVER.replace('"step"', '"wobble"')
                                              % {"base_lr": 0.1, "max_iter": 1, "snapshot": 0})
    with pytest.raises(SolverError, match="wobble"):
        train("bad_solver.prototxt")
    (case / "nosnap.prototxt").write_text((SOLVER % {"base_lr": 0.1, "max_iter": 1, "snapshot": 1})
                                          .replace('snapshot_prefix: "snap"', 'snapshot_prefix: "no/such/dir/s"'))
    with pytest.raises(SolverError, match="Cannot write to snapshot prefix"):
        train("nosnap.prototxt")


@pytest.mark.parametrize("old, new, message", [
    ('random_seed: 3', 'type: "Lion"', "Unknown solver type: Lion (known types: AdaDelta, AdaGrad, Adam"),
    ('random_seed: 3', 'regularization_type: "L3"', "Unknown regularization type: L3"),
    ('random_seed: 3', 'iter_size: 0', "iter_size must be at least 1"),
    ('random_seed: 3', 'snapshot_format: HDF5', "snapshot_format HDF5 is not supported by the engine"),
    ('stepsize: 10', 'stepsize: 0', 'lr_policy "step" needs stepsize > 0'),
    ('net: "net.prototxt"', '', "must specify exactly one train net using one of these fields"),
    ('net: "net.prototxt"', 'train_net: "net.prototxt" net: "net.prototxt"', "(found: net, train_net)"),
    ('net: "net.prototxt"', 'train_net: "net.prototxt"', "test_iter must be specified for each test network"),
    ('test_interval: 10', 'test_interval: 0', "test nets are given (test_iter) but test_interval is not > 0"),
    ('random_seed: 3', 'average_loss: 0', "average_loss should be non-negative"),   # Caffe's words for >= 1
])
def test_a_solver_that_cannot_run_is_refused_before_training(tmp_path, monkeypatch, old, new, message):
    from convnet_transfer.training.engine.train import train
    case = make_case(tmp_path, snapshot=5)
    text = (case / "solver.prototxt").read_text()
    assert old in text
    (case / "solver.prototxt").write_text(text.replace(old, new))
    with pytest.raises(SolverError, match=re.escape(message)):
        run_train(case, monkeypatch)
    assert not list(case.glob("snap_iter_*")), "nothing trained, nothing written"


def test_device_and_precision_choices(capfd):
    from convnet_transfer.training.engine.train import select_device, set_precision
    gpu_solver = pb.SolverParameter(solver_mode=pb.SolverParameter.GPU, device_id=0)
    if not torch.cuda.is_available():
        assert select_device("", gpu_solver).type == "cpu"
        assert "CUDA is not available" in capfd.readouterr().err
    assert select_device("", pb.SolverParameter()).type == "cpu"   # solver_mode not set: CPU, as Caffe
    assert set_precision(None, torch.device("cpu")) == "fp32"
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    with pytest.raises(SolverError, match="fp64"):
        set_precision("fp64", torch.device("cpu"))


V1_NET = """name: "tiny_v1"
layers { name: "data" type: DATA top: "data" top: "label"
  data_param { source: "train_lmdb" backend: LMDB batch_size: 8 mean_file: "mean.binaryproto" crop_size: 6
               mirror: true scale: 0.01 } }
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 0 blobs_lr: 0
  weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "fc8" type: INNER_PRODUCT bottom: "conv1" top: "fc8" blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "fc8" bottom: "label" top: "loss" }
"""

V1_SOLVER = """train_net: "train_v1.prototxt"
test_net: "test_v1.prototxt"
test_iter: 1
test_interval: 2
base_lr: 0.01
lr_policy: "fixed"
momentum: 0.9
weight_decay: 0.0005
display: 1
max_iter: 4
snapshot: 2
snapshot_prefix: "v1"
solver_mode: 1
solver_type: SGD
random_seed: 1
"""


def test_2014_format_solver_and_nets_train(tmp_path, monkeypatch, capfd):
    """The 2014 release's spellings: V1 `layers` with blobs_lr/weight_decay, data fields in data_param,
    train_net/test_net, solver_mode: 1 (GPU: the CPU here, with a warning) and solver_type."""
    case = make_case(tmp_path)
    (case / "train_v1.prototxt").write_text(V1_NET)
    (case / "test_v1.prototxt").write_text(V1_NET.replace("mirror: true", "mirror: false"))
    (case / "solver_v1.prototxt").write_text(V1_SOLVER)
    from convnet_transfer.training.engine.train import train
    monkeypatch.chdir(case)
    assert train("solver_v1.prototxt") == "done"
    log = capfd.readouterr().err
    assert "Iteration 2, Testing net (#0)" in log and "Test net output #0: loss = " in log
    first, last = weights_of(case / "v1_iter_2.caffemodel"), weights_of(case / "v1_iter_4.caffemodel")
    for a, b in zip(first["conv1"], last["conv1"]):   # blobs_lr 0: frozen
        assert a.tobytes() == b.tobytes()
    assert not np.array_equal(first["fc8"][0], last["fc8"][0])
    if not torch.cuda.is_available():
        assert "using the CPU" in log


def test_a_split_view_and_its_shared_database_train_in_one_process(tmp_path, monkeypatch):
    """Train from a key-list view (databases --shared) and test on the shared database itself, in one process:
    both readers share one LMDB handle (py-lmdb refuses to open an environment twice)."""
    from convnet_transfer.data import databases

    case = make_case(tmp_path / "net", max_iter=4, snapshot=0)
    rng = np.random.RandomState(1)
    whole = [(f"img{i:02d}.png", i % CLASSES) for i in range(N)]
    images = rng.randint(0, 255, size=(N, C, H, W)).astype(np.uint8)
    (case / "whole.txt").write_text("".join(f"{p} {label}\n" for p, label in whole))
    half = [(p, label) for p, label in whole if label in (1, 3)]
    (case / "half.txt").write_text("".join(f"{p} {label // 2}\n" for p, label in half))   # classes 1, 3 -> 0, 1
    databases.write_arrays(case / "whole_lmdb", ((databases.make_key(i, p), images[i], label)
                                                 for i, (p, label) in enumerate(whole)), progress=False)
    databases.make_view(case / "half_view", case / "whole_lmdb", case / "half.txt", case / "whole.txt")
    net = (case / "net.prototxt").read_text()
    net = net.replace('source: "train_lmdb" batch_size: 8 backend: LMDB', 'source: "half_view" batch_size: 8')
    net = net.replace('source: "train_lmdb" batch_size: 10', 'source: "whole_lmdb" batch_size: 10')
    (case / "net.prototxt").write_text(net)
    log = run_train(case, monkeypatch)
    assert log == "done" and (case / "snap_iter_4.caffemodel").is_file()
    reader = databases.open_reader(case / "half_view")
    assert len(reader) == len(half) and {databases.decode_datum(v)[1] for _, v in reader} == {0, 1}
