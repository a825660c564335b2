#!/usr/bin/env python3
"""Golden files for the engine's solver types other than SGD: real Caffe trains a small net for 20 iterations with
each of Nesterov, AdaGrad, RMSProp, AdaDelta and Adam, and tests/test_engine_solvers.py checks that our engine ends
with the same weights and history (and resumes Caffe's state at iteration 10 to the same end).

The case: the 32 images of make_golden_solver.py (3x16x16, 4 classes; batch 16, so iteration 10 ends an epoch
and a resume starts the data where the uninterrupted run is), a net with conv1 frozen (lr_mult 0) but decayed
(decay_mult 1: its history moves in the adaptive solvers, its weights do not), conv2, max pooling, two
InnerProducts with lr_mult/decay_mult variants, SoftmaxWithLoss; initial weights written here; a step lr policy and
weight decay for every type, plus per type its constants and one of Caffe's shared steps (L1 regularization,
gradient clipping, iter_size, the legacy `solver_type` enum).

    python tests/golden/make_golden_solvers.py         # needs real Caffe (tools/install_caffe); writes, per type,
        tests/golden/solvers/<type>_iter_{10,20}.caffemodel, .solverstate   Caffe's snapshots
        tests/golden/solvers/losses.json                                   the loss Caffe logged at each iteration
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("make_golden_solver", HERE / "make_golden_solver.py")
sgd_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sgd_golden)   # puts the repository on sys.path

from convnet_transfer.formats import caffe_pb2 as pb  # noqa: E402
from convnet_transfer.formats import protoio  # noqa: E402

GOLDEN_DIR = HERE / "solvers"
ITERATIONS, HALF = 20, 10
CLASSES = sgd_golden.CLASSES

NET = """name: "golden_solvers_net"
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { mean_file: "mean.binaryproto" scale: 0.0078125 }
  data_param { source: "train_lmdb" batch_size: 16 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 0 decay_mult: 1 } param { lr_mult: 0 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 6 kernel_size: 3 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  param { lr_mult: 1.5 decay_mult: 2 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 8 } }
layer { name: "relu3" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param { lr_mult: 3 decay_mult: 1 } param { lr_mult: 0.5 decay_mult: 0 }
  inner_product_param { num_output: %(classes)d } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
""" % {"classes": CLASSES}

PARAM_SHAPES = [   # (layer, blob shapes) of the learnable parameters, in Caffe's order
    ("conv1", [(4, 3, 3, 3), (4,)]),
    ("conv2", [(6, 4, 3, 3), (6,)]),
    ("ip1", [(8, 6 * 3 * 3), (8,)]),
    ("ip2", [(CLASSES, 8), (CLASSES,)]),
]

SOLVER = """net: "net.prototxt"
lr_policy: "step"
gamma: 0.5
stepsize: 8
weight_decay: 0.01
display: 1
max_iter: %(iters)d
snapshot: %(half)d
snapshot_prefix: "snap"
solver_mode: CPU
random_seed: 1
"""

# each type's own lines: its constants, and one of the steps all types share
TYPES = {
    "Nesterov": 'solver_type: NESTEROV\nbase_lr: 0.02\nmomentum: 0.9\n',               # the legacy enum
    "AdaGrad": 'type: "AdaGrad"\nbase_lr: 0.05\ndelta: 1e-6\nregularization_type: "L1"\n',
    "RMSProp": 'type: "RMSProp"\nbase_lr: 0.005\nrms_decay: 0.95\ndelta: 1e-6\nclip_gradients: 2\n',
    "AdaDelta": 'type: "AdaDelta"\nbase_lr: 1.0\nmomentum: 0.95\ndelta: 1e-6\n',
    "Adam": 'type: "Adam"\nbase_lr: 0.01\nmomentum: 0.9\nmomentum2: 0.999\ndelta: 1e-6\niter_size: 2\n',
}


def solver_text(solver_type: str) -> str:
    return SOLVER % {"iters": ITERATIONS, "half": HALF} + TYPES[solver_type]


def initial_weights() -> pb.NetParameter:
    """Gaussian weights (std 1.5 / sqrt(fan_in)) and small biases, as a current-format caffemodel."""
    rng = np.random.RandomState(11)
    net = pb.NetParameter(name="golden_solvers_net")
    for name, (weight_shape, bias_shape) in PARAM_SHAPES:
        layer = net.layer.add(name=name)
        fan_in = int(np.prod(weight_shape[1:]))
        layer.blobs.append(protoio.array_to_blob((rng.randn(*weight_shape) * (1.5 / np.sqrt(fan_in)))
                                                 .astype(np.float32)))
        layer.blobs.append(protoio.array_to_blob((rng.randn(*bias_shape) * 0.1).astype(np.float32)))
    return net


def write_case(directory: Path, solver_type: str) -> Path:
    """Write net.prototxt, solver.prototxt, train_lmdb/, mean.binaryproto and init.caffemodel into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "net.prototxt").write_text(NET)
    (directory / "solver.prototxt").write_text(solver_text(solver_type))
    sgd_golden.write_data(directory)
    protoio.write_binary(directory / "init.caffemodel", initial_weights())
    return directory


def golden_file(solver_type: str, iteration: int, suffix: str) -> Path:
    return GOLDEN_DIR / f"{solver_type}_iter_{iteration}.{suffix}"


def main() -> int:
    from convnet_transfer.training.realcaffe import find_caffe
    caffe = find_caffe()
    if caffe is None or not caffe.ok:
        print("real Caffe is needed: build it with tools/install_caffe", file=sys.stderr)
        return 1
    GOLDEN_DIR.mkdir(exist_ok=True)
    losses = {"caffe": f"{caffe.version}, commit {caffe.info.get('commit', '?')[:7]}"}
    for solver_type in TYPES:
        with tempfile.TemporaryDirectory() as tmp:
            case = write_case(Path(tmp), solver_type)
            log = sgd_golden.run_caffe(caffe, case)
            losses[solver_type] = sgd_golden.logged_losses(log)
            if len(losses[solver_type]) != ITERATIONS:
                print(f"{solver_type}: expected {ITERATIONS} loss lines in Caffe's log:\n{log[-3000:]}",
                      file=sys.stderr)
                return 1
            for iteration in (HALF, ITERATIONS):
                for suffix in ("caffemodel", "solverstate"):
                    shutil.copyfile(case / f"snap_iter_{iteration}.{suffix}", golden_file(solver_type, iteration,
                                                                                         suffix))
    (GOLDEN_DIR / "losses.json").write_text(json.dumps(losses, indent=1) + "\n")
    print(f"wrote {GOLDEN_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
