#!/usr/bin/env python
"""The float64 golden of a deep net: real Caffe's (pycaffe, CPU, fp32) parameter gradients of a deep net of our
own, for tests/test_engine_float64.py, which measures how far they and the engine's fp32 gradients are from the
engine's float64 computation of the same net.

    .venv/bin/python tests/golden/make_golden_deep.py [--out tests/golden]

The net (`deep_net`): 28 computing layers of the paper nets' kinds (7 Convolution, two of them grouped, 3
InnerProduct, 2 LRN (across and within channels), MAX and AVE Pooling, in-place ReLUs, an Eltwise sum whose
bottom `conv5` is also read by `conv6`, a `sum` read by two branches) with two SoftmaxWithLoss (loss_weight 1 and
0.3). Its inputs and weights are drawn by numpy from a seed per draw (`draw`), so both sides start from the same
numbers without storing them. Writes deep_float64.npz: meta/prototxt; <draw>/loss; <draw>/grad/<layer>/<i>.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DRAWS = (1, 2, 3)
BATCH, SIZE, CLASSES = 16, 64, 10


def _conv(name, bottom, n, k=3, pad=1, group=1):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" convolution_param {{ '
            f'num_output: {n} kernel_size: {k} pad: {pad} group: {group} }} }}\n'
            f'layer {{ name: "relu_{name}" type: "ReLU" bottom: "{name}" top: "{name}" }}\n')


def _pool(name, bottom, kind, k, s):
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" '
            f'pooling_param {{ pool: {kind} kernel_size: {k} stride: {s} }} }}\n')


def _ip(name, bottom, n):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" '
            f'inner_product_param {{ num_output: {n} }} }}\n')


def _loss(name, bottom, weight):
    return (f'layer {{ name: "{name}" type: "SoftmaxWithLoss" bottom: "{bottom}" bottom: "label" top: "{name}" '
            f'loss_weight: {weight} }}\n')


def deep_net() -> str:
    """The net's prototxt (TRAIN, Input tops data and label)."""
    return (f'name: "deep_float64"\n'
            f'layer {{ name: "input" type: "Input" top: "data" top: "label" input_param {{ '
            f'shape {{ dim: {BATCH} dim: 3 dim: {SIZE} dim: {SIZE} }} shape {{ dim: {BATCH} }} }} }}\n'
            + _conv("conv1", "data", 16)
            + 'layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" '
              'lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }\n'
            + _conv("conv2", "norm1", 16, group=2) + _pool("pool1", "conv2", "MAX", 3, 2)
            + _pool("pool1b", "pool1", "MAX", 2, 2)
            + _conv("conv3", "pool1b", 24) + _conv("conv4", "conv3", 24, group=4)
            + 'layer { name: "norm2" type: "LRN" bottom: "conv4" top: "norm2" '
              'lrn_param { local_size: 3 alpha: 0.001 beta: 0.75 norm_region: WITHIN_CHANNEL } }\n'
            + _pool("pool2", "norm2", "AVE", 2, 2)
            + _conv("conv5", "pool2", 24) + _conv("conv6", "conv5", 24, k=1, pad=0)
            + 'layer { name: "sum" type: "Eltwise" bottom: "conv5" bottom: "conv6" top: "sum" }\n'
            + _pool("pool3", "sum", "MAX", 4, 4) + _ip("fc7", "pool3", 32)
            + 'layer { name: "relu_fc7" type: "ReLU" bottom: "fc7" top: "fc7" }\n'
            + _ip("fc8", "fc7", CLASSES) + _loss("loss", "fc8", 1)
            + _conv("conv7", "sum", 16) + _pool("pool4", "conv7", "AVE", 8, 8) + _ip("fc_aux", "pool4", CLASSES)
            + _loss("loss_aux", "fc_aux", 0.3))


def _rng(draw: int, what: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"deep_float64/{draw}/{what}".encode()))


def draw_inputs(draw: int) -> dict[str, np.ndarray]:
    """The inputs of draw `draw`: images N(0, 1), labels 0..CLASSES-1 (float32, as Caffe's blobs)."""
    rng = _rng(draw, "inputs")
    return {"data": rng.standard_normal((BATCH, 3, SIZE, SIZE)).astype(np.float32),
            "label": rng.integers(0, CLASSES, BATCH).astype(np.float32)}


def draw_weight(draw: int, layer: str, index: int, shape) -> np.ndarray:
    """Parameter blob `index` of `layer` in draw `draw`: weights N(0, 2 / fan_in) (He), biases N(0, 0.1^2)."""
    shape = tuple(int(d) for d in shape)
    std = 0.1 if index == 1 else (2.0 / np.prod(shape[1:])) ** 0.5
    return (_rng(draw, f"{layer}/{index}").standard_normal(shape) * std).astype(np.float32)


def run_caffe(caffe, proto: Path, draw: int) -> dict[str, np.ndarray]:
    """Caffe's loss and parameter diffs of draw `draw` (keys without the draw prefix)."""
    net = caffe.Net(str(proto), caffe.TRAIN)
    for name, value in draw_inputs(draw).items():
        net.blobs[name].data[...] = value
    for layer, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            blob.data[...] = draw_weight(draw, layer, i, blob.data.shape)
    net.clear_param_diffs()
    golden = {"loss": np.float32(net._forward(0, len(net.layers) - 1))}
    net._backward(len(net.layers) - 1, 0)
    for layer, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            golden[f"grad/{layer}/{i}"] = blob.diff.copy()
    return golden


def golden_arrays(caffe, folder: Path) -> dict[str, np.ndarray]:
    """The golden arrays of every draw, the prototxt written into `folder` for Caffe to read."""
    proto = folder / "deep_float64.prototxt"
    proto.write_text(deep_net())
    arrays = {"meta/prototxt": np.array(deep_net())}
    for draw in DRAWS:
        arrays.update({f"{draw}/{k}": v for k, v in run_caffe(caffe, proto, draw).items()})
    return arrays


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE), help="folder for deep_float64.npz")
    path = Path(parser.parse_args(argv).out) / "deep_float64.npz"
    sys.path.insert(0, str(HERE))
    from make_golden import load_caffe
    with tempfile.TemporaryDirectory() as tmp:
        np.savez_compressed(path, **golden_arrays(load_caffe(), Path(tmp)))
    print(f"{path}  {len(DRAWS)} draws  {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GLOG_minloglevel", "2")
    sys.exit(main())
