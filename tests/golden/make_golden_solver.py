#!/usr/bin/env python3
"""Golden files for the engine's training fidelity: real Caffe trains a small net of the paper's shape for 20 SGD
iterations, and tests/test_engine_train_fidelity.py checks that our engine ends with the same weights.

The case: a tiny LMDB of 32 random 3x16x16 images (4 classes) with its mean file, a net with the paper's eight
roles in miniature (conv1 frozen by lr_mult 0, LRN, grouped conv2, max pooling, fc6/fc7 with dropout of ratio 0
so nothing is random, fc8, SoftmaxWithLoss), initial weights written here (both engines start from them with
-weights), and an SGD solver with momentum, weight decay, lr_mult/decay_mult and a step lr policy. Inputs are made
with numpy's RandomState (a stream numpy keeps stable), so tests rebuild them instead of storing them.

    python tests/golden/make_golden_solver.py          # needs real Caffe (tools/install_caffe); writes
        tests/golden/solver/caffe_iter_20.caffemodel   weights after 20 iterations
        tests/golden/solver/caffe_iter_20.solverstate  momentum history after 20 iterations
        tests/golden/solver/caffe_losses.json          the loss Caffe logged at each iteration
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from convnet_transfer.formats import caffe_pb2 as pb  # noqa: E402
from convnet_transfer.formats import protoio  # noqa: E402

GOLDEN_DIR = HERE / "solver"
ITERATIONS = 20
N_IMAGES, CHANNELS, SIZE, CLASSES, BATCH = 32, 3, 16, 4, 8

NET = """name: "golden_solver_net"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mean_file: "mean.binaryproto" scale: 0.0078125 }
  data_param { source: "train_lmdb" batch_size: %(batch)d backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 }
  convolution_param { num_output: 8 kernel_size: 3 stride: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool2" top: "fc6"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 16 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 16 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
  param { lr_mult: 10 decay_mult: 1 } param { lr_mult: 20 decay_mult: 0 }
  inner_product_param { num_output: %(classes)d } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }
""" % {"batch": BATCH, "classes": CLASSES}

SOLVER = """net: "net.prototxt"
base_lr: 0.05
lr_policy: "step"
gamma: 0.5
stepsize: 8
momentum: 0.9
weight_decay: 0.01
display: 1
max_iter: %(iters)d
snapshot: %(iters)d
snapshot_prefix: "snap"
solver_mode: CPU
random_seed: 1
""" % {"iters": ITERATIONS}

# (layer, blob shapes) of the learnable parameters, in Caffe's order
PARAM_SHAPES = [
    ("conv1", [(8, 3, 3, 3), (8,)]),
    ("conv2", [(8, 4, 3, 3), (8,)]),
    ("fc6", [(16, 8 * 3 * 3), (16,)]),
    ("fc7", [(16, 16), (16,)]),
    ("fc8", [(CLASSES, 16), (CLASSES,)]),
]


def images() -> tuple[np.ndarray, np.ndarray]:
    """The 32 training images (uint8, N x C x H x W) and their labels; a class shifts the mean of one channel."""
    rng = np.random.RandomState(20141208)
    labels = np.arange(N_IMAGES) % CLASSES
    rng.shuffle(labels)
    data = rng.randint(0, 200, size=(N_IMAGES, CHANNELS, SIZE, SIZE))
    for i, label in enumerate(labels):
        data[i, label % CHANNELS] += 40 * (1 + label // CHANNELS)
    return np.clip(data, 0, 255).astype(np.uint8), labels.astype(np.int64)


def initial_weights() -> pb.NetParameter:
    """Gaussian weights (std 0.2 / sqrt(fan_in)) and small biases, as a current-format caffemodel."""
    rng = np.random.RandomState(7)
    net = pb.NetParameter()
    net.name = "golden_solver_net"
    for name, shapes in PARAM_SHAPES:
        layer = net.layer.add()
        layer.name = name
        weight_shape, bias_shape = shapes
        fan_in = int(np.prod(weight_shape[1:]))
        layer.blobs.append(protoio.array_to_blob((rng.randn(*weight_shape) * (1.5 / np.sqrt(fan_in)))
                                                 .astype(np.float32)))
        layer.blobs.append(protoio.array_to_blob((rng.randn(*bias_shape) * 0.1).astype(np.float32)))
    return net


def write_case(directory: Path, net: str = NET, solver: str = SOLVER, weights: pb.NetParameter | None = None) -> Path:
    """Write net.prototxt, solver.prototxt, train_lmdb/, mean.binaryproto and init.caffemodel into `directory`
    (this case's, or the net, solver and initial weights given: another case on the same images)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "net.prototxt").write_text(net)
    (directory / "solver.prototxt").write_text(solver)
    write_data(directory)
    protoio.write_binary(directory / "init.caffemodel", weights if weights is not None else initial_weights())
    return directory


def write_data(directory: Path) -> None:
    """Write the images as train_lmdb/ and their mean.binaryproto into `directory`."""
    import lmdb
    data, labels = images()
    env = lmdb.open(str(directory / "train_lmdb"), map_size=64 << 20)
    with env.begin(write=True) as txn:
        for i, (image, label) in enumerate(zip(data, labels)):
            datum = pb.Datum(channels=CHANNELS, height=SIZE, width=SIZE, data=image.tobytes(), label=int(label))
            txn.put(b"%08d" % i, datum.SerializeToString())
    env.close()
    protoio.write_mean(directory / "mean.binaryproto", data.astype(np.float64).mean(axis=0).astype(np.float32))


def caffemodel_params(path: Path) -> dict[str, list[np.ndarray]]:
    """{layer name: [blob arrays]} of the layers with blobs in a caffemodel."""
    net = protoio.read_binary(path, pb.NetParameter)
    return {layer.name: [protoio.blob_to_array(b) for b in layer.blobs] for layer in net.layer if layer.blobs}


def logged_losses(log_text: str) -> list[float]:
    """The per-iteration loss of the `Iteration N (...), loss = x` lines (display: 1, average_loss: 1)."""
    found = re.findall(r"Iteration (\d+) \(.*?\), loss = (\S+)", log_text)
    return [float(loss) for _, loss in found]


def run_caffe(caffe, directory: Path, *extra: str) -> str:
    """Train the case with real Caffe (a realcaffe.CaffeInstall) in `directory`, `extra` arguments added to
    `caffe train` (e.g. -gpu 0); returns its log."""
    proc = caffe.run("caffe", "train", "-solver", "solver.prototxt", "-weights", "init.caffemodel", *extra,
                     cwd=str(directory))
    return proc.stderr + proc.stdout


def main() -> int:
    import shutil
    import tempfile

    from convnet_transfer.training.realcaffe import find_caffe
    caffe = find_caffe()
    if caffe is None or not caffe.ok:
        print("real Caffe is needed: build it with tools/install_caffe", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        case = write_case(Path(tmp))
        log = run_caffe(caffe, case)
        GOLDEN_DIR.mkdir(exist_ok=True)
        for suffix in ("caffemodel", "solverstate"):
            shutil.copyfile(case / f"snap_iter_{ITERATIONS}.{suffix}", GOLDEN_DIR / f"caffe_iter_{ITERATIONS}.{suffix}")
        losses = logged_losses(log)
        if len(losses) != ITERATIONS:
            print(f"expected {ITERATIONS} loss lines in Caffe's log, found {len(losses)}:\n{log[-3000:]}",
                  file=sys.stderr)
            return 1
        (GOLDEN_DIR / "caffe_losses.json").write_text(json.dumps({"caffe": f"{caffe.version}, commit {caffe.info.get('commit', '?')[:7]}",
                                                                  "losses": losses},
                                                                 indent=1) + "\n")
    print(f"wrote {GOLDEN_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
