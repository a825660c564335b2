"""The Net's semantics that are not one layer's, against real Caffe (net.cpp, insert_splits.cpp, layer.hpp):
parameters shared by name under a solver (one blob, updated once with the owner's multipliers, one history) with a
BatchNorm + Scale block whose statistics only forward moves; caffemodels of nets with shared parameters and
BatchNorm written and read as Caffe does; and the nets Caffe refuses, refused with Caffe's reason.

Forward/backward of sharing, loss_weight and propagate_down: the golden cases of tests/golden/layers/cases_net.py.
Golden files: tests/golden/sharing/ (tests/golden/make_golden_sharing.py); live where Caffe is built.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from convnet_transfer.formats import caffe_pb2 as pb
from convnet_transfer.formats import protoio
from convnet_transfer.formats.protoio import parse_text
from convnet_transfer.training.engine import EngineError, Net

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
import make_golden_sharing as golden  # noqa: E402
from layer_goldens import RTOL, relative_error  # noqa: E402

ITERS = golden.ITERATIONS


def assert_close(ours: np.ndarray, caffe: np.ndarray, what: str) -> None:
    """Equal shapes, and within 1e-4 of the blob's scale (layer_goldens.relative_error)."""
    assert ours.shape == caffe.shape and relative_error(ours, caffe) <= RTOL, (what, relative_error(ours, caffe))


def train_ours(tmp_path: Path, monkeypatch, capfd) -> tuple[Path, list[float]]:
    from convnet_transfer.training.engine.train import train
    case = golden.write_case(tmp_path / "ours")
    monkeypatch.chdir(case)
    capfd.readouterr()
    assert train("solver.prototxt", weights="init.caffemodel") == "done"
    return case, golden.sgd_golden.logged_losses(capfd.readouterr().err)


def compare_with(ours: Path, losses: list[float], caffe_prefix: Path, caffe_losses: list[float]) -> None:
    """Weights of every layer (sharers too), BatchNorm's statistics, the history (one per owner), losses."""
    a = golden.sgd_golden.caffemodel_params(ours / f"snap_iter_{ITERS}.caffemodel")
    b = golden.sgd_golden.caffemodel_params(Path(f"{caffe_prefix}.caffemodel"))
    assert sorted(a) == sorted(b)
    for name in b:
        for i, (x, y) in enumerate(zip(a[name], b[name])):
            assert_close(x, y, f"{name}[{i}] after {ITERS} iterations")
    assert np.array_equal(a["conv1"][0], a["conv2"][0]) and np.array_equal(a["ip_a"][0], a["ip_b"][0])
    init = golden.sgd_golden.caffemodel_params(ours / "init.caffemodel")
    assert not np.allclose(a["bn2"][2], init["bn2"][2])          # the statistics moved (forward)
    states = [protoio.read_binary(p, pb.SolverState) for p in (ours / f"snap_iter_{ITERS}.solverstate",
                                                                Path(f"{caffe_prefix}.solverstate"))]
    assert len(states[0].history) == len(states[1].history) == 10   # conv1 2, bn2 3, scale2 2, ip_a 2, ip_b its bias
    for k, (x, y) in enumerate(zip(*(s.history for s in states))):
        assert_close(protoio.blob_to_array(x), protoio.blob_to_array(y), f"history blob {k}")
    np.testing.assert_allclose(losses, caffe_losses, rtol=RTOL, atol=1e-6)


def test_shared_parameters_and_batch_norm_train_as_caffe_golden(tmp_path, monkeypatch, capfd):
    ours, losses = train_ours(tmp_path, monkeypatch, capfd)
    recorded = json.loads((golden.GOLDEN_DIR / "caffe_losses.json").read_text())["losses"]
    compare_with(ours, losses, golden.GOLDEN_DIR / f"caffe_iter_{ITERS}", recorded)


def test_shared_parameters_and_batch_norm_train_as_caffe_live(tmp_path, monkeypatch, capfd, real_caffe):
    theirs = golden.write_case(tmp_path / "caffe")
    caffe_losses = golden.sgd_golden.logged_losses(golden.sgd_golden.run_caffe(real_caffe, theirs))
    ours, losses = train_ours(tmp_path, monkeypatch, capfd)
    compare_with(ours, losses, theirs / f"snap_iter_{ITERS}", caffe_losses)


def test_learnable_params_hold_the_owner_with_the_multipliers_caffe_gives():
    net = Net(parse_text(golden.NET, pb.NetParameter()), "TRAIN", {"data": (8, 3, 16, 16), "label": (8,)}, seed=0)
    got = [(p.layer_name, p.index, p.lr_mult, p.decay_mult, p.tensor.requires_grad) for p in net.params]
    assert got == [("conv1", 0, 1, 1, True), ("conv1", 1, 2, 0, True), ("bn2", 0, 0, 1, False),
                   ("bn2", 1, 0, 1, False), ("bn2", 2, 0, 1, False), ("scale2", 0, 1, 1, True),
                   ("scale2", 1, 1, 1, True), ("ip_a", 0, 1.5, 2, True), ("ip_a", 1, 2, 0, True),
                   ("ip_b", 1, 2, 0, True)]
    assert net.layer("conv2").blobs[0] is net.layer("conv1").blobs[0]
    assert net.layer("ip_b").blobs[0] is net.layer("ip_a").blobs[0]


NET_HEAD = 'name: "t"\nlayer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }\n'


def ip(name, params, bottom="x", top=None, n=2):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top or name}" {params} '
            f'inner_product_param {{ num_output: {n} }} }}\n')


# nets Caffe refuses (Net::Init / LayerSetUp), our message, Caffe's
REFUSED = {
    "bn_learned_statistics": ('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" param { lr_mult: 1 } }',
                              "Cannot configure batch normalization statistics",
                              "Cannot configure batch normalization statistics"),
    "share_shape_mismatch": (ip("a", 'param { name: "w" }') + ip("b", 'param { name: "w" }', n=3),
                             "shape mismatch", "shape mismatch"),
    "share_count_mismatch": (ip("a", 'param { name: "w" }') + ip("b", 'param { name: "w" share_mode: PERMISSIVE }',
                                                                 n=3), "count mismatch", "count mismatch"),
    "share_lr_mismatch": (ip("a", 'param { name: "w" lr_mult: 1 }') + ip("b", 'param { name: "w" lr_mult: 2 }'),
                          "mismatched lr_mult", "mismatched lr_mult"),
    "share_decay_mismatch": (ip("a", 'param { name: "w" decay_mult: 1 }')
                             + ip("b", 'param { name: "w" decay_mult: 0 }'),
                             "mismatched decay_mult", "mismatched decay_mult"),
    "in_place_after_a_reader": (ip("a", "") + 'layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }',
                                "produced by multiple sources", "produced by multiple sources"),
    "in_place_after_a_loss": ('layer { name: "relu" type: "ReLU" bottom: "x" top: "y" loss_weight: 1 }\n'
                              'layer { name: "relu2" type: "ReLU" bottom: "y" top: "y" }',
                              "produced by multiple sources", "produced by multiple sources"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_nets_caffe_refuses_are_refused_with_its_reason(case):
    text, ours, _ = REFUSED[case]
    with pytest.raises(EngineError, match=ours):
        Net(parse_text(NET_HEAD + text, pb.NetParameter()), "TRAIN", seed=0)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_caffe_refuses_them_too(case, real_caffe, tmp_path):
    text, _, theirs = REFUSED[case]
    (tmp_path / "net.prototxt").write_text(NET_HEAD + text)
    script = "import caffe, sys; caffe.Net(sys.argv[1], caffe.TRAIN)"
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "net.prototxt")], env=real_caffe.env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and theirs in proc.stderr, proc.stderr[-2000:]


SAVED = NET_HEAD + """layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }
layer { name: "scale" type: "Scale" bottom: "x" top: "x" scale_param { bias_term: true } }
""" + ip("a", 'param { name: "w" } param { name: "b" lr_mult: 2 }') + ip("b", 'param { name: "w" } param { name: "b" }')


def test_caffemodels_with_sharing_and_batch_norm_as_caffe_writes_and_reads_them(real_caffe, tmp_path):
    """Caffe's Net::ToProto of a net with shared parameters and BatchNorm (the sharers' blobs written, BatchNorm's
    param { lr_mult: 0 } blocks) equals ours, layer for layer; we read Caffe's and forward to its outputs."""
    caffe = real_caffe.import_pycaffe()
    caffe.set_mode_cpu()
    (tmp_path / "net.prototxt").write_text(SAVED)
    theirs = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TRAIN)
    rng = np.random.default_rng(3)
    for blobs in theirs.params.values():
        for blob in blobs:
            blob.data[...] = rng.uniform(0.5, 2.0, blob.data.shape)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    theirs.blobs["x"].data[...] = x
    outputs = {k: v.copy() for k, v in theirs.forward().items()}
    theirs.save(str(tmp_path / "caffe.caffemodel"))   # after forward: BatchNorm's statistics moved
    caffe_model = protoio.read_binary(tmp_path / "caffe.caffemodel", pb.NetParameter)

    net = Net(parse_text(SAVED, pb.NetParameter()), "TRAIN", seed=0)
    net.load_caffemodel(tmp_path / "caffe.caffemodel")
    ours = net.to_caffemodel()
    assert [layer.name for layer in ours.layer] == [layer.name for layer in caffe_model.layer]
    for mine, their in zip(ours.layer, caffe_model.layer):
        blobs = [(protoio.blob_to_array(a), protoio.blob_to_array(b)) for a, b in zip(mine.blobs, their.blobs)]
        assert all(np.array_equal(a, b) for a, b in blobs) and len(mine.blobs) == len(their.blobs), mine.name
        del mine.blobs[:], their.blobs[:]
        assert mine == their
    # TRAIN: both normalise by the batch's statistics; the weights are those read from Caffe's file
    blobs = net({"x": torch.from_numpy(x)})
    for name, value in outputs.items():
        assert_close(blobs[name].detach().numpy(), value, name)
