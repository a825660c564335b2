#!/usr/bin/env python3
"""Golden files for shared parameters and BatchNorm under a solver: real Caffe trains a small net for 20 SGD
iterations, and tests/test_engine_net_semantics.py checks that our engine ends with the same weights, statistics,
momentum history and losses.

The case: the 32 images of make_golden_solver.py (batch 8), a net whose conv1 and conv2 share their weights and
biases by name (`param { name }`: one blob, updated once with the owner's multipliers, its history once), a
BatchNorm + Scale block (the statistics move in forward, never by the solver: lr_mult 0), two InnerProducts
sharing their weights with the multipliers given by the sharer, summed, SoftmaxWithLoss; initial weights written
here (conv2 has none: it reads the shared blobs; ip_b's weights, given, overwrite ip_a's in the shared blob as
Caffe's CopyTrainedLayersFrom does), SGD with momentum, weight decay and a step policy.

    python tests/golden/make_golden_sharing.py     # needs real Caffe (tools/install_caffe); writes
        tests/golden/sharing/caffe_iter_20.caffemodel, .solverstate, caffe_losses.json
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_golden_solver as sgd_golden  # noqa: E402  (puts the repository on sys.path)

from convnet_transfer.formats import caffe_pb2 as pb  # noqa: E402
from convnet_transfer.formats import protoio  # noqa: E402

GOLDEN_DIR = HERE / "sharing"
ITERATIONS = 20

NET = """name: "golden_sharing_net"
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { mean_file: "mean.binaryproto" scale: 0.0078125 }
  data_param { source: "train_lmdb" batch_size: 8 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { name: "cw" lr_mult: 1 decay_mult: 1 } param { name: "cb" lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  param { name: "cw" } param { name: "cb" }
  convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" batch_norm_param { moving_average_fraction: 0.9 } }
layer { name: "scale2" type: "Scale" bottom: "conv2" top: "conv2" scale_param { bias_term: true } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip_a" type: "InnerProduct" bottom: "pool2" top: "a"
  param { name: "iw" } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: %(classes)d } }
layer { name: "ip_b" type: "InnerProduct" bottom: "pool2" top: "b"
  param { name: "iw" lr_mult: 1.5 decay_mult: 2 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: %(classes)d } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "score" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
""" % {"classes": sgd_golden.CLASSES}

PARAM_SHAPES = [   # the owners' blobs (sharers read theirs from them), BatchNorm's statistics, Scale's
    ("conv1", [(3, 3, 3, 3), (3,)]),
    ("bn2", [(3,), (3,), (1,)]),
    ("scale2", [(3,), (3,)]),
    ("ip_a", [(sgd_golden.CLASSES, 3 * 8 * 8), (sgd_golden.CLASSES,)]),
    ("ip_b", [(sgd_golden.CLASSES, 3 * 8 * 8), (sgd_golden.CLASSES,)]),
]

SOLVER = """net: "net.prototxt"
type: "SGD"
base_lr: 0.02
momentum: 0.9
weight_decay: 0.01
lr_policy: "step"
gamma: 0.5
stepsize: 8
display: 1
max_iter: %d
snapshot: %d
snapshot_prefix: "snap"
solver_mode: CPU
random_seed: 1
""" % (ITERATIONS, ITERATIONS)


def initial_weights() -> pb.NetParameter:
    """Gaussian weights, small biases, BatchNorm statistics of a few batches (scale factor 2.5)."""
    rng = np.random.RandomState(7)
    net = pb.NetParameter(name="golden_sharing_net")
    for name, shapes in PARAM_SHAPES:
        layer = net.layer.add(name=name)
        for i, shape in enumerate(shapes):
            if name == "bn2":
                values = [rng.randn(*shape) * 0.2, rng.uniform(0.5, 2.0, shape), np.full(shape, 2.5)][i]
            elif i == 0:
                values = rng.randn(*shape) * (1.5 / np.sqrt(np.prod(shape[1:])) if len(shape) > 1 else 1.0)
            else:
                values = rng.randn(*shape) * 0.1
            layer.blobs.append(protoio.array_to_blob(np.asarray(values, dtype=np.float32)))
    return net


def write_case(directory: Path) -> Path:
    """net.prototxt, solver.prototxt, train_lmdb/, mean.binaryproto and init.caffemodel in `directory`."""
    return sgd_golden.write_case(directory, NET, SOLVER, initial_weights())


def main() -> int:
    from convnet_transfer.training.realcaffe import find_caffe
    caffe = find_caffe()
    if not (caffe and caffe.ok):
        sys.exit("real Caffe is needed: build it with tools/install_caffe")
    GOLDEN_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        case = write_case(Path(tmp))
        losses = sgd_golden.logged_losses(sgd_golden.run_caffe(caffe, case))
        if len(losses) != ITERATIONS:
            print(f"expected {ITERATIONS} losses in Caffe's log, found {len(losses)}", file=sys.stderr)
            return 1
        for suffix in ("caffemodel", "solverstate"):
            shutil.copyfile(case / f"snap_iter_{ITERATIONS}.{suffix}", GOLDEN_DIR / f"caffe_iter_{ITERATIONS}.{suffix}")
    caffe_id = f"{caffe.version}, commit {caffe.info.get('commit', '?')[:7]}"
    (GOLDEN_DIR / "caffe_losses.json").write_text(json.dumps({"caffe": caffe_id, "losses": losses}, indent=1) + "\n")
    print(f"wrote {GOLDEN_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
