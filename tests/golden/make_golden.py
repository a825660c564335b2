#!/usr/bin/env python
"""Golden files from REAL Caffe (pycaffe), for tests/test_engine_fidelity.py.

    .venv/bin/python tests/golden/make_golden.py [--out tests/golden]

Needs a real Caffe build (tools/install_caffe; found by convnet_transfer.training.realcaffe.find_caffe()). For each net
below, Caffe itself fills the weights (caffe.set_random_seed), and runs forward and backward on fixed inputs;
the script writes, beside this file:

    <name>.prototxt     the net, exactly as Caffe read it
    <name>.caffemodel   the weights as Caffe wrote them (net.save), small
    <name>.npz          input/<blob>: the inputs; blob/<blob>: every blob after forward (in-place blobs hold the
                        last value, as in Caffe); loss: the net's loss (what Net::ForwardFromTo returns);
                        grad/<layer>/<i>: parameter diffs after one backward (frozen layers: zeros);
                        meta/phase: "TRAIN" or "TEST"

The nets have the paper's shape at a small size: CaffeNet's eight layers (groups, LRN, overlapping max pooling
with Caffe's ceil rounding, dropout, padding) in the 2014 V0 format as the release's nets are written (`padding`
layers, `blobs_lr`, `input:` fields), with reduced widths and a 71x71 input; its val twin (Softmax + Accuracy,
TEST phase, weights loaded from the train net's caffemodel); and a net of the other layers and fields the
engine implements (AVE/MAX pooling with padding, LRN within channel, fillers, Concat, Eltwise, Split, losses
with ignore_label and normalisation modes, Accuracy top_k).

Dropout in the TRAIN golden has ratio 0 (Caffe's random mask cannot be replayed); TEST-phase dropout is the
identity and is covered by the val net.

The SGD golden files (weights after 20 iterations) are written by tests/golden/make_golden_solver.py.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 1701

# ---------------------------------------------------------------- nets (as data)


def _v0_layer(name, type_, bottom, top, body=""):
    bottoms = "".join(f'  bottom: "{b}"\n' for b in ([bottom] if isinstance(bottom, str) else bottom))
    tops = "".join(f'  top: "{t}"\n' for t in ([top] if isinstance(top, str) else top))
    return f'layers {{\n  layer {{\n    name: "{name}"\n    type: "{type_}"\n{body}  }}\n{bottoms}{tops}}}\n'


def _v0_learned(num_output, std, bias, lr=(1, 2), decay=(1, 0), extra=""):
    return (f"    num_output: {num_output}\n{extra}"
            f'    weight_filler {{ type: "gaussian" std: {std} }}\n'
            f'    bias_filler {{ type: "constant" value: {bias} }}\n'
            f"    blobs_lr: {lr[0]}\n    blobs_lr: {lr[1]}\n    weight_decay: {decay[0]}\n    weight_decay: {decay[1]}\n")


def caffenet_v0(batch: int = 3, size: int = 71, classes: int = 10, val: bool = False, dropout: float = 0.0,
                frozen: int = 1, widths=(16, 32, 48, 48, 32, 64, 64)) -> str:
    """The 2014 release's CaffeNet (V0 format, `padding` layers as in results/netbase), narrower and smaller.
    The first `frozen` learned layers have blobs_lr 0, as the transfer nets' copied layers."""
    c1, c2, c3, c4, c5, f6, f7 = widths
    lr = lambda i: (0, 0) if i < frozen else (1, 2)          # noqa: E731
    decay = lambda i: (0, 0) if i < frozen else (1, 0)       # noqa: E731
    text = ('name: "CaffeNetSmall"\n'
            f'input: "data"\ninput_dim: {batch}\ninput_dim: 3\ninput_dim: {size}\ninput_dim: {size}\n'
            f'input: "label"\ninput_dim: {batch}\ninput_dim: 1\ninput_dim: 1\ninput_dim: 1\n')
    L = _v0_layer
    text += L("conv1", "conv", "data", "conv1", _v0_learned(c1, 0.1, 0, lr(0), decay(0),
                                                              "    kernelsize: 11\n    stride: 4\n"))
    text += L("relu1", "relu", "conv1", "conv1")
    text += L("pool1", "pool", "conv1", "pool1", "    pool: MAX\n    kernelsize: 3\n    stride: 2\n")
    text += L("norm1", "lrn", "pool1", "norm1", "    local_size: 5\n    alpha: 0.0001\n    beta: 0.75\n")
    text += L("pad2", "padding", "norm1", "pad2", "    pad: 2\n")
    text += L("conv2", "conv", "pad2", "conv2", _v0_learned(c2, 0.05, 1, lr(1), decay(1),
                                                             "    group: 2\n    kernelsize: 5\n"))
    text += L("relu2", "relu", "conv2", "conv2")
    text += L("pool2", "pool", "conv2", "pool2", "    pool: MAX\n    kernelsize: 3\n    stride: 2\n")
    text += L("norm2", "lrn", "pool2", "norm2", "    local_size: 5\n    alpha: 0.0001\n    beta: 0.75\n")
    text += L("pad3", "padding", "norm2", "pad3", "    pad: 1\n")
    text += L("conv3", "conv", "pad3", "conv3", _v0_learned(c3, 0.05, 0, lr(2), decay(2), "    kernelsize: 3\n"))
    text += L("relu3", "relu", "conv3", "conv3")
    text += L("conv4", "conv", "conv3", "conv4", _v0_learned(c4, 0.05, 1, lr(3), decay(3),
                                                              "    group: 2\n    kernelsize: 3\n    pad: 1\n"))
    text += L("relu4", "relu", "conv4", "conv4")
    text += L("pad5", "padding", "conv4", "pad5", "    pad: 1\n")
    text += L("conv5", "conv", "pad5", "conv5", _v0_learned(c5, 0.05, 1, lr(4), decay(4),
                                                             "    group: 2\n    kernelsize: 3\n"))
    text += L("relu5", "relu", "conv5", "conv5")
    text += L("pool5", "pool", "conv5", "pool5", "    pool: MAX\n    kernelsize: 3\n    stride: 2\n")
    text += L("fc6", "innerproduct", "pool5", "fc6", _v0_learned(f6, 0.05, 1, lr(5), decay(5)))
    text += L("relu6", "relu", "fc6", "fc6")
    text += L("drop6", "dropout", "fc6", "fc6", f"    dropout_ratio: {dropout}\n")
    text += L("fc7", "innerproduct", "fc6", "fc7", _v0_learned(f7, 0.05, 1, lr(6), decay(6)))
    text += L("relu7", "relu", "fc7", "fc7")
    text += L("drop7", "dropout", "fc7", "fc7", f"    dropout_ratio: {dropout}\n")
    text += L("fc8", "innerproduct", "fc7", "fc8", _v0_learned(classes, 0.1, 0, lr(7), decay(7)))
    if val:
        text += L("prob", "softmax", "fc8", "prob")
        text += L("accuracy", "accuracy", ["prob", "label"], "accuracy")
    else:
        text += L("loss", "softmax_loss", ["fc8", "label"], [])
    return text


VARIANTS = """name: "Variants"
layer { name: "input" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 4 dim: 11 dim: 11 } shape { dim: 2 } } }
layer { name: "conv_a" type: "Convolution" bottom: "data" top: "conv_a"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 stride: 2 group: 2
                            weight_filler { type: "xavier" } bias_filler { type: "uniform" min: -0.5 max: 0.5 } } }
layer { name: "relu_a" type: "ReLU" bottom: "conv_a" top: "conv_a" relu_param { negative_slope: 0.1 } }
layer { name: "conv_b" type: "Convolution" bottom: "data" top: "conv_b"
        convolution_param { num_output: 4 kernel_h: 3 kernel_w: 5 pad_h: 1 pad_w: 2 stride_h: 2 stride_w: 2
                            bias_term: false weight_filler { type: "msra" variance_norm: AVERAGE } } }
layer { name: "tanh_b" type: "TanH" bottom: "conv_b" top: "conv_b" }
layer { name: "cat" type: "Concat" bottom: "conv_a" bottom: "conv_b" top: "cat" }
layer { name: "pool_ave" type: "Pooling" bottom: "cat" top: "pool_ave"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "pool_max" type: "Pooling" bottom: "cat" top: "pool_max"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "lrn_within" type: "LRN" bottom: "cat" top: "lrn_within"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "lrn_across" type: "LRN" bottom: "lrn_within" top: "lrn_across"
        lrn_param { local_size: 3 alpha: 0.2 beta: 0.6 k: 2 } }
layer { name: "pool_lrn" type: "Pooling" bottom: "lrn_across" top: "pool_lrn"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "pool_ave" bottom: "pool_max" bottom: "pool_lrn" top: "sum"
        eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 } }
layer { name: "prod" type: "Eltwise" bottom: "pool_ave" bottom: "sum" top: "prod" eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "prod" bottom: "pool_max" top: "max" eltwise_param { operation: MAX } }
layer { name: "sig" type: "Sigmoid" bottom: "max" top: "sig" }
layer { name: "flat" type: "Flatten" bottom: "sig" top: "flat" }
layer { name: "fc" type: "InnerProduct" bottom: "flat" top: "fc"
        param { lr_mult: 1 } param { lr_mult: 0 }
        inner_product_param { num_output: 7 weight_filler { type: "gaussian" std: 0.3 sparse: 3 }
                              bias_filler { type: "constant" value: 0.2 } } }
layer { name: "fc_nobias" type: "InnerProduct" bottom: "max" top: "fc_nobias"
        inner_product_param { num_output: 7 bias_term: false weight_filler { type: "uniform" min: -0.3 max: 0.3 } } }
layer { name: "logits" type: "Eltwise" bottom: "fc" bottom: "fc_nobias" top: "logits" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "logits" bottom: "label" top: "loss"
        loss_param { ignore_label: 3 } }
layer { name: "loss_batch" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss_batch" loss_weight: 0.5
        loss_param { normalization: BATCH_SIZE } }
layer { name: "prob" type: "Softmax" bottom: "logits" top: "prob" }
layer { name: "acc" type: "Accuracy" bottom: "prob" bottom: "label" top: "acc" accuracy_param { top_k: 3 } }
"""


def net_specs():
    """(name, prototxt text, phase, input shapes, weights from (another golden's caffemodel) or None)."""
    return [
        ("caffenet_v0_train", caffenet_v0(), "TRAIN", {"data": (3, 3, 71, 71), "label": (3, 1, 1, 1)}, None),
        ("caffenet_v0_val", caffenet_v0(val=True, dropout=0.5), "TEST",
         {"data": (3, 3, 71, 71), "label": (3, 1, 1, 1)}, "caffenet_v0_train"),
        ("variants", VARIANTS, "TRAIN", {"data": (2, 4, 11, 11), "label": (2,)}, None),
    ]


def make_inputs(shapes: dict, classes: int, seed: int, scale: float) -> dict:
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, shape in shapes.items():
        if name == "label":
            inputs[name] = rng.integers(0, classes, shape).astype(np.float32)
        else:
            inputs[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    return inputs


# ---------------------------------------------------------------- running Caffe

def load_caffe():
    sys.path.insert(0, str(HERE.parents[1]))
    from convnet_transfer.training.realcaffe import find_caffe
    found = find_caffe()
    if found is None or not found.ok:
        raise SystemExit(f"make_golden: real Caffe is needed ({'not found' if found is None else found.problem}); "
                         f"build it with tools/install_caffe")
    caffe = found.import_pycaffe()
    caffe.set_mode_cpu()
    return caffe


def run_caffe_net(caffe, proto_path: Path, phase: str, inputs: dict, weights: Path | None, seed: int = SEED):
    """Build the net in Caffe (fillers seeded), optionally load weights, forward + backward; return the net and a
    dict of golden arrays."""
    caffe.set_random_seed(seed)
    caffe_phase = caffe.TRAIN if phase == "TRAIN" else caffe.TEST
    net = caffe.Net(str(proto_path), caffe_phase) if weights is None else \
        caffe.Net(str(proto_path), str(weights), caffe_phase)
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
    loss = net._forward(0, len(net.layers) - 1)
    golden = {f"input/{k}": v for k, v in inputs.items()}
    golden["loss"] = np.float32(loss)
    golden["meta/phase"] = np.array(phase)
    for name, blob in net.blobs.items():
        if name in inputs or name.endswith("_split") or "_split_" in name or name.startswith("("):
            continue
        golden[f"blob/{name}"] = blob.data.copy()
    if phase == "TRAIN":
        net._backward(len(net.layers) - 1, 0)
        for layer_name, blobs in net.params.items():
            for i, blob in enumerate(blobs):
                golden[f"grad/{layer_name}/{i}"] = blob.diff.copy()
    return net, golden


def make_net_goldens(caffe, out: Path) -> list[Path]:
    written = []
    for name, text, phase, shapes, weights_from in net_specs():
        proto = out / f"{name}.prototxt"
        proto.write_text(text)
        caffenet = name.startswith("caffenet")   # CaffeNet: pixel-like scale (mean removed)
        inputs = make_inputs(shapes, classes=10 if caffenet else 7, seed=len(name), scale=50.0 if caffenet else 1.0)
        weights = out / f"{weights_from}.caffemodel" if weights_from else None
        net, golden = run_caffe_net(caffe, proto, phase, inputs, weights)
        if weights is None:
            net.save(str(out / f"{name}.caffemodel"))
            written.append(out / f"{name}.caffemodel")
        np.savez_compressed(out / f"{name}.npz", **golden)
        written += [proto, out / f"{name}.npz"]
    return written


def make_solver_goldens(caffe, out: Path) -> list[Path]:
    """Weights after 20 SGD iterations (momentum, decay, multipliers, frozen layers, step lr policy) are made by
    tests/golden/make_golden_solver.py (into tests/golden/solver/); run that script too. Nothing written here."""
    return []


def caffe_load_and_dump(proto: str, weights: str, out_npz: str) -> None:
    """Load `weights` into the net `proto` with Caffe (TEST phase) and save every parameter blob to `out_npz`
    as param/<layer>/<i> (used by the test that Caffe reads the caffemodels our engine writes)."""
    caffe = load_caffe()
    net = caffe.Net(proto, weights, caffe.TEST)
    np.savez(out_npz, **{f"param/{layer}/{i}": b.data.copy() for layer, blobs in net.params.items()
                         for i, b in enumerate(blobs)})


def caffe_run_and_dump(proto: str, phase: str, inputs_npz: str, out_prefix: str) -> None:
    """Run any net with Caffe on the inputs in `inputs_npz` (fillers seeded with SEED); write
    <out_prefix>.caffemodel (Caffe's weights) and <out_prefix>.npz (golden arrays as above)."""
    caffe = load_caffe()
    inputs = dict(np.load(inputs_npz))
    net, golden = run_caffe_net(caffe, Path(proto), phase, inputs, None)
    net.save(f"{out_prefix}.caffemodel")
    np.savez(f"{out_prefix}.npz", **golden)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE), help="folder for the golden files (default: beside this file)")
    parser.add_argument("--only-nets", action="store_true", help="skip the solver goldens")
    parser.add_argument("--load-and-dump", nargs=3, metavar=("PROTO", "WEIGHTS", "OUT_NPZ"),
                        help="only load WEIGHTS into PROTO with Caffe and dump the parameters")
    parser.add_argument("--run-net", nargs=4, metavar=("PROTO", "PHASE", "INPUTS_NPZ", "OUT_PREFIX"),
                        help="only run PROTO with Caffe on the inputs and write OUT_PREFIX.caffemodel/.npz")
    args = parser.parse_args(argv)
    if args.run_net:
        caffe_run_and_dump(*args.run_net)
        return 0
    if args.load_and_dump:
        caffe_load_and_dump(*args.load_and_dump)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    caffe = load_caffe()
    written = make_net_goldens(caffe, out)
    if not args.only_nets:
        written += make_solver_goldens(caffe, out)
    total = sum(p.stat().st_size for p in written)
    for p in written:
        print(f"{p}  {p.stat().st_size / 1024:.0f} KiB")
    print(f"total {total / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GLOG_minloglevel", "2")
    sys.exit(main())
