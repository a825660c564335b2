"""Any BVLC Caffe net runs in the engine: every net prototxt of Caffe's own source tree (models/, examples/, kept
by tools/install_caffe), built by real Caffe (pycaffe) and by our engine from the same weights and inputs, in the
TRAIN and TEST phases: every blob after forward within 1e-4 relative, every parameter gradient within 1e-2.

Why 1e-2 for gradients of these deep nets: a MAX pooling window whose two largest inputs are within fp32 rounding
routes the gradient to one or the other, and which one depends on the last bit of the forward. Measured on CaffeNet
(train_val, batch 2, Caffe's fillers: conv biases 1 make pool inputs 1 +- 0.02, crowded): one window of pool5's
18,432 picks another input in our fp32 forward than in float64 (Caffe's picks none on this draw), and that one
gradient, carried down, is 9e-5 of conv5's weight gradient and 3e-3 of conv1's; other draws give the same to
Caffe. Forward errors are alike (conv5 from float64: ours 5.5e-7, Caffe's 8.9e-7). Layer by layer the gradients
are held to 1e-4 (tests/test_engine_layer_goldens.py), and a deep net's to float64 as closely as Caffe's are
(tests/test_engine_float64.py).

The data layers read databases and files these examples do not ship, so each is replaced by an Input layer of
the shape it would produce (batch 2; the tops its type makes; labels 0); the engine's data layers are tested in
tests/test_engine_datalayers.py. TRAIN-phase Dropout gets ratio 0 (Caffe's random mask cannot be replayed). A net
with a Python layer must be refused with one clear line naming the layer.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from convnet_transfer.formats.protoio import parse_text, pb
from convnet_transfer.training.engine import EngineError, Net
from convnet_transfer.training.engine.upgrade import net_needs_upgrade, upgrade_net
from convnet_transfer.training.engine.layers import CAFFE_DATA_LAYER_TYPES

GOLDEN = Path(__file__).resolve().parent / "golden"
BATCH = 2
# the image shape of a data layer without a crop_size, by the example's folder
IMAGE_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "siamese": (2, 28, 28), "hdf5_classification": (4,)}
FORWARD_RTOL, GRAD_RTOL = 1e-4, 1e-2


def _relative(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    diff = np.abs(ours.reshape(theirs.shape) - theirs).max() if theirs.size else 0.0
    return 0.0 if diff == 0 else float(diff / max(np.abs(theirs).max(), 1e-30))


def _data_shape(lp: pb.LayerParameter, folder: str) -> tuple[int, ...]:
    if lp.type == "MemoryData":
        p = lp.memory_data_param
        return (BATCH, p.channels, p.height, p.width)
    if lp.type == "DummyData":
        return tuple(int(d) for d in lp.dummy_data_param.shape[0].dim)
    crop = lp.transform_param.crop_size or lp.window_data_param.crop_size
    return (BATCH, 3, crop, crop) if crop else (BATCH,) + IMAGE_SHAPES[folder]


def comparable(path) -> pb.NetParameter:
    """The net of `path` (upgraded to the current format) with data layers as Input layers and TRAIN dropout 0."""
    net = parse_text(path.read_text(), pb.NetParameter())
    if net_needs_upgrade(net):
        net = upgrade_net(net)
    folder = path.parent.name
    for lp in net.layer:
        if lp.type in CAFFE_DATA_LAYER_TYPES:
            shapes = [_data_shape(lp, folder)]
            if lp.type == "DummyData":
                shapes = [tuple(int(d) for d in s.dim) for s in lp.dummy_data_param.shape]
            shapes += [(shapes[0][0],)] * (len(lp.top) - len(shapes))
            rules = [(r.SerializeToString(), "include") for r in lp.include]
            name, tops = lp.name, list(lp.top)
            lp.Clear()
            lp.name, lp.type = name, "Input"
            lp.top.extend(tops)
            for s in shapes:
                lp.input_param.shape.add().dim.extend(s)
            for data, _ in rules:
                lp.include.add().ParseFromString(data)
        if lp.type == "Dropout":
            lp.dropout_param.dropout_ratio = 0.0
    return net


def _nets(paths):
    return [p for p in paths if "solver" not in p.name]


def _inputs(net: pb.NetParameter, phase: str) -> dict:
    """Normal data, zero labels, for every Input top of the phase (one-dimensional tops are labels)."""
    rng = np.random.default_rng(0)
    values = {}
    for lp in net.layer:
        if lp.type != "Input" or any(r.HasField("phase") and pb.Phase.Name(r.phase) != phase for r in lp.include):
            continue
        shapes = list(lp.input_param.shape) * (len(lp.top) if len(lp.input_param.shape) == 1 else 1)
        for top, shape in zip(lp.top, shapes):
            dims = tuple(int(d) for d in shape.dim)
            values[top] = (np.zeros(dims) if len(dims) == 1 else rng.standard_normal(dims)).astype(np.float32)
    return values


def _run_caffe(real_caffe, text_path, phase, inputs, prefix):
    """Caffe's blobs and gradients (tests/golden/make_golden.py --run-net, in a subprocess: a net Caffe refuses
    aborts the process). None when Caffe refuses the net."""
    np.savez(f"{prefix}_inputs.npz", **inputs)
    env = real_caffe.env()
    env["GLOG_minloglevel"] = "2"
    result = subprocess.run([sys.executable, str(GOLDEN / "make_golden.py"), "--run-net", str(text_path), phase,
                             f"{prefix}_inputs.npz", str(prefix)], env=env, capture_output=True, text=True,
                            timeout=600)
    if result.returncode != 0:
        return None
    return dict(np.load(f"{prefix}.npz"))


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_every_net_of_caffes_source_tree_matches_caffe(real_caffe, caffe_source_prototxts, tmp_path, phase):
    report, failures = [], []
    for path in _nets(caffe_source_prototxts):
        rel = f"{path.parent.name}/{path.name}"
        net = comparable(path)
        if phase == "TRAIN" and not any(lp.type.endswith("Loss") or len(lp.loss_weight) for lp in net.layer):
            continue              # a deploy net: nothing to learn from, its TEST run covers it
        if any(lp.type == "Python" for lp in net.layer):
            with pytest.raises(EngineError, match="Python"):
                Net(net, phase)
            report.append(f"{rel}: Python layer refused")
            continue
        text = tmp_path / "net.prototxt"
        text.write_text(str(net))
        inputs = _inputs(net, phase)
        golden = _run_caffe(real_caffe, text, phase, inputs, tmp_path / "caffe")
        if golden is None:        # Caffe refuses this net in this phase (e.g. a TEST net that needs a stage)
            with pytest.raises(EngineError):
                Net(net, phase)
            report.append(f"{rel}: refused by Caffe and by the engine")
            continue
        try:
            ours = Net(net, phase, seed=0)
        except EngineError as err:
            failures.append(f"{rel}: {err}")
            continue
        ours.load_caffemodel(tmp_path / "caffe.caffemodel")
        values = ours({k: torch.from_numpy(v) for k, v in inputs.items()})
        forward = max([_relative(values[k[5:]].detach().numpy(), v) for k, v in golden.items()
                       if k.startswith("blob/")], default=0.0)
        grad = 0.0
        if phase == "TRAIN":
            loss = ours.loss(values)
            if loss.requires_grad:
                loss.backward()
            for p in ours.params:
                g = p.tensor.grad
                theirs = golden[f"grad/{p.layer_name}/{p.index}"]
                grad = max(grad, _relative(np.zeros_like(theirs) if g is None else g.numpy(), theirs))
        report.append(f"{rel}: forward {forward:.1e}, gradients {grad:.1e}")
        if not (forward <= FORWARD_RTOL and grad <= GRAD_RTOL):
            failures.append(report[-1])
    print("\n".join(report))
    assert not failures, "\n".join(failures)
