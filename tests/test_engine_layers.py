"""Layers, fillers and Net semantics against straightforward numpy ports of Caffe's C++ loops (pooling_layer.cpp,
lrn_layer.cpp, softmax_loss_layer.cpp, accuracy_layer.cpp, conv/inner product), and Caffe's Net rules."""
import math

import numpy as np
import pytest
import torch

from convnet_transfer.training.engine import EngineError, Net, read_caffemodel, upgrade_net, write_caffemodel
from convnet_transfer.training.engine.fillers import fill
from convnet_transfer.training.engine.layers import caffe_pool_output_size
from convnet_transfer.formats.protoio import parse_text, pb

RNG = np.random.default_rng(0)


def make_net(body: str, shapes: dict, phase="TEST", **kwargs) -> Net:
    text = "".join(f'layer {{ name: "in_{n}" type: "Input" top: "{n}" input_param {{ shape {{ '
                   + " ".join(f"dim: {d}" for d in s) + " } } }\n" for n, s in shapes.items())
    return Net(parse_text(text + body, pb.NetParameter()), phase, **kwargs)


def run(net: Net, inputs: dict, grad_of: str | None = None, top_grad=None):
    """Forward; with grad_of, backpropagate top_grad (default ones) from that blob; return (blobs, input grads)."""
    tensors = {k: torch.tensor(v, dtype=torch.float32, requires_grad=grad_of is not None and k != "label")
               for k, v in inputs.items()}
    blobs = net(tensors)
    grads = {}
    if grad_of is not None:
        out = blobs[grad_of]
        g = torch.ones_like(out) if top_grad is None else torch.tensor(top_grad, dtype=torch.float32)
        out.backward(g)
        grads = {k: t.grad.numpy() for k, t in tensors.items() if t.grad is not None}
    return blobs, grads


# ---------------------------------------------------------------- pooling

def caffe_pool_forward(x, kernel, stride, pad, method, ceil=True):
    """pooling_layer.cpp Forward_cpu + Backward_cpu for top diff = g, ported loop for loop."""
    n, c, h, w = x.shape
    kh, kw = kernel
    sh, sw = stride
    ph, pw = pad
    oh = caffe_pool_output_size(h, kh, ph, sh, ceil)
    ow = caffe_pool_output_size(w, kw, pw, sw, ceil)
    top = np.zeros((n, c, oh, ow))
    argmax = np.full((n, c, oh, ow), -1, dtype=int)
    sizes = np.zeros((oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            if method == "MAX":
                he, we = min(hs + kh, h), min(ws + kw, w)
                hs, ws = max(hs, 0), max(ws, 0)
                for a in range(n):
                    for b in range(c):
                        best, idx = -np.finfo(np.float32).max, -1
                        for y in range(hs, he):
                            for z in range(ws, we):
                                if x[a, b, y, z] > best:
                                    best, idx = x[a, b, y, z], y * w + z
                        top[a, b, i, j], argmax[a, b, i, j] = best, idx
            else:
                he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
                size = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                top[:, :, i, j] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / size
                sizes[i, j] = size
    return top, argmax, sizes


def caffe_pool_backward(x, g, kernel, stride, pad, method, argmax, sizes):
    n, c, h, w = x.shape
    kh, kw = kernel
    sh, sw = stride
    ph, pw = pad
    dx = np.zeros_like(x, dtype=float)
    for i in range(g.shape[2]):
        for j in range(g.shape[3]):
            if method == "MAX":
                for a in range(n):
                    for b in range(c):
                        idx = argmax[a, b, i, j]
                        dx[a, b, idx // w, idx % w] += g[a, b, i, j]
            else:
                hs, ws = i * sh - ph, j * sw - pw
                he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                dx[:, :, hs:he, ws:we] += (g[:, :, i, j] / sizes[i, j])[:, :, None, None]
    return dx


POOL_CASES = [  # (H, W, kernel, stride, pad)
    (13, 13, 3, 2, 0),     # CaffeNet pool5: 13 -> 6
    (55, 55, 3, 2, 0),     # pool1: 55 -> 27
    (6, 6, 3, 2, 0),       # ceil: (6-3)/2 = 1.5 -> 3 windows, the last one clipped
    (7, 5, 3, 2, 1),       # padding, clip of the last window
    (8, 8, 2, 2, 1),       # padding: the last window would start in the padding -> one fewer
    (5, 7, 3, 1, 1),
    (9, 9, 4, 3, 2),
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("h,w,k,s,p", POOL_CASES)
def test_pooling_matches_caffe_loops(method, h, w, k, s, p):
    x = RNG.standard_normal((2, 3, h, w)).astype(np.float32)
    if method == "MAX":   # ties: Caffe keeps the first maximum
        x[0, 0, :2, :2] = 5.0
    net = make_net(f'layer {{ name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param {{ pool: {method} '
                   f'kernel_size: {k} stride: {s} pad: {p} }} }}', {"x": x.shape})
    top, argmax, sizes = caffe_pool_forward(x.astype(np.float64), (k, k), (s, s), (p, p), method)
    assert net.blob_shapes["y"] == top.shape
    g = RNG.standard_normal(top.shape).astype(np.float32)
    blobs, grads = run(net, {"x": x}, "y", g)
    np.testing.assert_allclose(blobs["y"].detach().numpy(), top, rtol=1e-5, atol=1e-6)
    dx = caffe_pool_backward(x, g.astype(np.float64), (k, k), (s, s), (p, p), method, argmax, sizes)
    np.testing.assert_allclose(grads["x"], dx, rtol=1e-5, atol=1e-6)


def test_pool_output_size_rule():
    assert caffe_pool_output_size(55, 3, 0, 2) == 27
    assert caffe_pool_output_size(13, 3, 0, 2) == 6
    assert caffe_pool_output_size(6, 3, 0, 2) == 3          # ceil, not floor (floor gives 2)
    assert caffe_pool_output_size(6, 3, 0, 2, ceil=False) == 2
    assert caffe_pool_output_size(8, 2, 1, 2) == 5          # ceil gives 6, the 6th would start in the padding


def test_global_pooling():
    x = RNG.standard_normal((2, 3, 5, 4)).astype(np.float32)
    net = make_net('layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE '
                   'global_pooling: true } }', {"x": x.shape})
    blobs, _ = run(net, {"x": x})
    np.testing.assert_allclose(blobs["y"].detach().numpy()[..., 0, 0], x.mean(axis=(2, 3)), rtol=1e-5)


# ---------------------------------------------------------------- LRN

def caffe_lrn_across(x, size, alpha, beta, k):
    n, c, h, w = x.shape
    pre = (size - 1) // 2
    padded = np.zeros((n, c + size - 1, h, w))
    padded[:, pre:pre + c] = x * x
    scale = k + alpha / size * np.stack([padded[:, i:i + size].sum(axis=1) for i in range(c)], axis=1)
    return x * scale ** -beta, scale


def caffe_lrn_across_backward(x, top, scale, g, size, alpha, beta):
    """CrossChannelBackward_cpu: dx = g * scale^-beta - 2 alpha beta / size * x * sum_window(g * top / scale)."""
    n, c, h, w = x.shape
    pre = size - (size + 1) // 2
    ratio = np.zeros((n, c + size - 1, h, w))
    ratio[:, pre:pre + c] = g * top / scale
    accum = np.stack([ratio[:, i:i + size].sum(axis=1) for i in range(c)], axis=1)
    return g * scale ** -beta - 2.0 * alpha * beta / size * x * accum


def test_lrn_across_channels_matches_caffe():
    x = (RNG.standard_normal((2, 7, 4, 3)) * 10).astype(np.float32)
    size, alpha, beta, k = 5, 0.01, 0.75, 2.0
    net = make_net(f'layer {{ name: "n" type: "LRN" bottom: "x" top: "y" lrn_param {{ local_size: {size} '
                   f'alpha: {alpha} beta: {beta} k: {k} }} }}', {"x": x.shape})
    top, scale = caffe_lrn_across(x.astype(np.float64), size, alpha, beta, k)
    g = RNG.standard_normal(x.shape).astype(np.float32)
    blobs, grads = run(net, {"x": x}, "y", g)
    np.testing.assert_allclose(blobs["y"].detach().numpy(), top, rtol=1e-5, atol=1e-6)
    dx = caffe_lrn_across_backward(x.astype(np.float64), top, scale, g, size, alpha, beta)
    np.testing.assert_allclose(grads["x"], dx, rtol=1e-4, atol=1e-6)


def test_lrn_within_channel_matches_caffe():
    x = (RNG.standard_normal((1, 2, 6, 5)) * 3).astype(np.float32)
    size, alpha, beta = 3, 0.5, 0.75
    net = make_net(f'layer {{ name: "n" type: "LRN" bottom: "x" top: "y" lrn_param {{ local_size: {size} '
                   f'alpha: {alpha} beta: {beta} norm_region: WITHIN_CHANNEL k: 7 }} }}', {"x": x.shape})
    # Caffe: square -> AVE pool (pad (size-1)/2, window clipped to the padded input: always size^2) ->
    # power(shift 1, scale alpha, power -beta) -> product; k is not used
    pooled, _, _ = caffe_pool_forward((x.astype(np.float64)) ** 2, (size, size), (1, 1), (1, 1), "AVE")
    expected = x * (1.0 + alpha * pooled) ** -beta
    blobs, _ = run(net, {"x": x})
    np.testing.assert_allclose(blobs["y"].detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_lrn_even_size_is_an_error():
    with pytest.raises(EngineError, match="odd"):
        make_net('layer { name: "n" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 4 } }',
                 {"x": (1, 4, 2, 2)})


@pytest.mark.parametrize("layer, message", [
    ('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { kernel_size: 3 }',
     "layer 'c' (type Convolution): convolution_param.num_output must be set"),
    ('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 4 kernel_size: 3 group: 3 }',
     "layer 'c' (type Convolution): 4 input channels and num_output 4 must both be multiples of group 3"),
    ('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 4 kernel_size: 7 }',
     "layer 'c' (type Convolution): input 5x5 is too small for kernel 7x7"),
    ('name: "c" type: "Convolution" bottom: "x" top: "y" '
     'convolution_param { num_output: 4 kernel_size: 1 kernel_size: 1 kernel_size: 1 }',
     "layer 'c' (type Convolution): kernel_size must be specified once, or once per spatial dimension "
     "(kernel_size specified 3 times; 2 spatial dims)."),
    ('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 4 kernel_size: 3 axis: 4 }',
     "layer 'c' (type Convolution): axis 4 out of range for a 4-axis blob"),
    ('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 2 pad: 2 }',
     "layer 'p' (type Pooling): pad must be smaller than the kernel"),
    ('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: STOCHASTIC kernel_size: 2 pad: 1 }',
     "layer 'p' (type Pooling): Padding implemented only for average and max pooling."),
    ('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { global_pooling: true kernel_size: 2 }',
     "layer 'p' (type Pooling): with global_pooling, the kernel size cannot be given"),
    ('name: "d" type: "Dropout" bottom: "x" top: "x" dropout_param { dropout_ratio: 1 }',
     "layer 'd' (type Dropout): dropout_ratio must be in [0, 1), got 1.0"),
    ('name: "f" type: "InnerProduct" bottom: "x" top: "y"',
     "layer 'f' (type InnerProduct): inner_product_param.num_output must be set"),
    ('name: "f" type: "InnerProduct" bottom: "nothing" top: "y" inner_product_param { num_output: 2 }',
     "Unknown bottom blob 'nothing' (layer 'f' (type InnerProduct), bottom index 0)"),
    ('name: "u" type: "NoSuchLayer" bottom: "x" top: "y"',
     "layer 'u' (type NoSuchLayer): layer type 'NoSuchLayer' is not supported by this engine"),
])
def test_a_layer_that_cannot_be_built_is_an_error_naming_it(layer, message):
    with pytest.raises(EngineError) as error:
        make_net("layer { %s }" % layer, {"x": (2, 4, 5, 5)})
    assert message in str(error.value)


def test_convolution_accepts_caffes_default_axis_spelled_out():
    net = make_net('layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
                   'convolution_param { num_output: 3 kernel_size: 3 axis: 1 } }', {"x": (2, 4, 5, 5)})
    assert net.blob_shapes["y"] == (2, 3, 3, 3)


# ---------------------------------------------------------------- softmax loss and accuracy

def caffe_softmax_loss(x, label, ignore=None, mode="VALID"):
    """softmax_loss_layer.cpp for axis 1 of (N, C, H, W) or (N, C)."""
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    prob = e / e.sum(axis=1, keepdims=True)
    n = x.shape[0]
    inner = int(np.prod(x.shape[2:]))
    p = prob.reshape(n, x.shape[1], inner)
    lab = label.reshape(n, inner).astype(int)
    loss, count = 0.0, 0
    grad = p.copy()
    for i in range(n):
        for j in range(inner):
            if ignore is not None and lab[i, j] == ignore:
                grad[i, :, j] = 0
                continue
            loss -= math.log(max(p[i, lab[i, j], j], np.finfo(np.float32).tiny))
            grad[i, lab[i, j], j] -= 1
            count += 1
    normalizer = {"VALID": count if ignore is not None else n * inner, "FULL": n * inner, "BATCH_SIZE": n,
                  "NONE": 1}[mode]
    normalizer = max(1.0, normalizer)
    return loss / normalizer, (grad / normalizer).reshape(x.shape), prob


@pytest.mark.parametrize("mode,ignore", [("VALID", None), ("VALID", 2), ("FULL", 2), ("BATCH_SIZE", None),
                                         ("NONE", 1), ("legacy_false", None), ("legacy_true", 0)])
def test_softmax_with_loss_normalisation(mode, ignore):
    x = (RNG.standard_normal((3, 4, 2, 2)) * 3).astype(np.float32)
    label = RNG.integers(0, 4, (3, 1, 2, 2)).astype(np.float32)
    param = []
    if ignore is not None:
        param.append(f"ignore_label: {ignore}")
    if mode.startswith("legacy"):
        param.append(f"normalize: {mode.endswith('true') and 'true' or 'false'}")
        ref_mode = "VALID" if mode.endswith("true") else "BATCH_SIZE"
    else:
        param.append(f"normalization: {mode}")
        ref_mode = mode
    net = make_net('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" '
                   f'loss_param {{ {" ".join(param)} }} }}\n'
                   'layer { name: "prob" type: "Softmax" bottom: "x" top: "prob" }',
                   {"x": x.shape, "label": label.shape})
    assert net.loss_weights == {"loss": 1.0} and net.outputs == ["loss", "prob"]
    loss, grad, prob = caffe_softmax_loss(x, label, ignore, ref_mode)
    blobs, grads = run(net, {"x": x, "label": label}, "loss")
    assert blobs["loss"].item() == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(grads["x"], grad, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(blobs["prob"].detach().numpy(), prob, rtol=1e-5, atol=1e-7)


def test_softmax_loss_clamps_like_caffe():
    x = np.array([[0.0, 200.0]], dtype=np.float32)    # prob of class 0 underflows to 0: Caffe caps -log at FLT_MIN
    net = make_net('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" }',
                   {"x": x.shape, "label": (1,)})
    blobs, grads = run(net, {"x": x, "label": np.array([0.0], dtype=np.float32)}, "loss")
    assert blobs["loss"].item() == pytest.approx(-math.log(np.finfo(np.float32).tiny), rel=1e-6)
    np.testing.assert_allclose(grads["x"], [[-1.0, 1.0]], atol=1e-6)


def caffe_accuracy(x, label, top_k, ignore=None):
    correct = count = 0
    for scores, lab in zip(x, label.astype(int)):
        if ignore is not None and lab == ignore:
            continue
        better = -1
        for k in range(len(scores)):
            if better >= top_k:
                break
            better += scores[k] >= scores[lab]
        correct += better < top_k
        count += 1
    return correct / count if count else 0.0


@pytest.mark.parametrize("top_k,ignore", [(1, None), (2, None), (3, 0), (1, 1)])
def test_accuracy_counts_ties_against(top_k, ignore):
    x = RNG.integers(0, 3, (40, 5)).astype(np.float32)         # many ties
    label = RNG.integers(0, 5, 40).astype(np.float32)
    extra = f"ignore_label: {ignore}" if ignore is not None else ""
    net = make_net('layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" '
                   f'accuracy_param {{ top_k: {top_k} {extra} }} }}', {"x": x.shape, "label": label.shape})
    blobs, _ = run(net, {"x": x, "label": label})
    assert blobs["acc"].item() == pytest.approx(caffe_accuracy(x, label, top_k, ignore), abs=1e-7)


def test_accuracy_ties_example():
    net = make_net('layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" }',
                   {"x": (2, 3), "label": (2,)})
    x = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]], dtype=np.float32)
    blobs, _ = run(net, {"x": x, "label": np.array([0.0, 1.0], dtype=np.float32)})
    assert blobs["acc"].item() == 0.5      # the tie at the top counts as wrong


# ---------------------------------------------------------------- convolution, inner product, neurons

def numpy_conv(x, weight, bias, stride, pad, group):
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, oh, ow))
    og = o // group
    for g in range(group):
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, g * cg:(g + 1) * cg, i * stride:i * stride + kh, j * stride:j * stride + kw]
                out[:, g * og:(g + 1) * og, i, j] = np.einsum("nchw,ochw->no", patch, weight[g * og:(g + 1) * og])
    return out + bias[None, :, None, None]


def test_convolution_groups_pad_stride():
    x = RNG.standard_normal((2, 4, 9, 8)).astype(np.float32)
    net = make_net('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 6 '
                   'kernel_size: 3 stride: 2 pad: 1 group: 2 weight_filler { type: "gaussian" std: 1 } '
                   'bias_filler { type: "uniform" } } }', {"x": x.shape}, seed=3)
    w, b = (t.detach().numpy().astype(np.float64) for t in net.layer("c").blobs)
    assert w.shape == (6, 2, 3, 3) and b.shape == (6,)
    blobs, _ = run(net, {"x": x})
    np.testing.assert_allclose(blobs["y"].detach().numpy(), numpy_conv(x.astype(np.float64), w, b, 2, 1, 2),
                               rtol=1e-4, atol=1e-5)


def test_inner_product_axis_and_no_bias():
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    net = make_net('layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
                   'num_output: 5 axis: 2 bias_term: false weight_filler { type: "xavier" } } }', {"x": x.shape})
    (w,) = net.layer("ip").blobs
    assert tuple(w.shape) == (5, 4) and net.blob_shapes["y"] == (2, 3, 5)
    blobs, _ = run(net, {"x": x})
    np.testing.assert_allclose(blobs["y"].detach().numpy(), x @ w.detach().numpy().T, rtol=1e-5, atol=1e-6)


def test_relu_negative_slope_and_dropout():
    x = RNG.standard_normal((4, 1000)).astype(np.float32)
    body = ('layer { name: "r" type: "ReLU" bottom: "x" top: "x" relu_param { negative_slope: 0.1 } }\n'
            'layer { name: "d" type: "Dropout" bottom: "x" top: "x" dropout_param { dropout_ratio: 0.3 } }')
    test = make_net(body, {"x": x.shape}, "TEST")
    relu = np.where(x > 0, x, 0.1 * x)
    np.testing.assert_allclose(run(test, {"x": x})[0]["x"].detach().numpy(), relu, rtol=1e-6)
    train = make_net(body, {"x": x.shape}, "TRAIN", seed=5)
    y = run(train, {"x": x})[0]["x"].detach().numpy()
    kept = y != 0
    np.testing.assert_allclose(y[kept], relu[kept] / 0.7, rtol=1e-6)     # Caffe scales by 1/(1-p) at TRAIN
    assert 0.6 < kept.mean() < 0.8
    again = make_net(body, {"x": x.shape}, "TRAIN", seed=5)
    np.testing.assert_array_equal(run(again, {"x": x})[0]["x"].detach().numpy(), y)   # same seed, same mask


@pytest.mark.parametrize("layer, message", [
    ('name: "a" type: "AbsVal" bottom: "x" top: "x"',
     "layer 'a' (type AbsVal): AbsVal Layer does not allow in-place computation."),
    ('name: "e" type: "Exp" bottom: "x" top: "y" exp_param { base: -2 }',
     "layer 'e' (type Exp): exp_param.base must be strictly positive (or -1 for e), got -2.0"),
    ('name: "l" type: "Log" bottom: "x" top: "y" log_param { base: 1 }', "layer 'l' (type Log): log_param.base 1"),
])
def test_a_neuron_caffe_refuses_is_an_error(layer, message):
    with pytest.raises(EngineError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_net("layer { %s }" % layer, {"x": (2, 4, 5, 5)})


@pytest.mark.parametrize("layer, message", [
    ('name: "t" type: "Threshold" bottom: "x" top: "y"', "Caffe has no backward for Threshold"),
    ('name: "p" type: "Power" bottom: "x" top: "x" power_param { power: 2 }', "in place, Caffe's Backward overwrites"),
    ('name: "l" type: "Log" bottom: "x" top: "x"', "in place, Caffe's Backward overwrites"),
])
def test_a_backward_caffe_cannot_do_is_an_error_forward_runs(layer, message):
    """Caffe aborts in Threshold's Backward (NOT_IMPLEMENTED); its in-place Power/Log Backward overwrites the top
    diff it reads. The forward runs; the backward pass is an EngineError naming the layer."""
    x = RNG.uniform(0.5, 2.0, (2, 3)).astype(np.float32)
    net = make_net("layer { %s }" % layer, {"x": x.shape})
    top = net.outputs[0]
    assert run(net, {"x": x})[0][top].shape == x.shape
    with pytest.raises(EngineError, match=message):
        run(net, {"x": x}, grad_of=top)


# ---------------------------------------------------------------- fillers

def filler(text):
    return parse_text(text, pb.FillerParameter())


def test_fillers_distributions_and_determinism():
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    shape = (64, 32, 3, 3)
    c = fill(shape, filler('type: "constant" value: 0.25'), gen())
    assert torch.all(c == 0.25)
    g = fill(shape, filler('type: "gaussian" mean: 1 std: 0.5'), gen())
    assert abs(g.mean().item() - 1) < 0.02 and abs(g.std().item() - 0.5) < 0.02
    assert torch.equal(g, fill(shape, filler('type: "gaussian" mean: 1 std: 0.5'), gen()))
    u = fill(shape, filler('type: "uniform" min: -2 max: 3'), gen())
    assert u.min() >= -2 and u.max() <= 3 and abs(u.mean().item() - 0.5) < 0.05
    fan_in, fan_out = 32 * 9, 64 * 9
    x = fill(shape, filler('type: "xavier"'), gen())
    assert x.abs().max() <= math.sqrt(3 / fan_in) and x.abs().max() > 0.95 * math.sqrt(3 / fan_in)
    x = fill(shape, filler('type: "xavier" variance_norm: AVERAGE'), gen())
    assert x.abs().max() <= math.sqrt(3 / ((fan_in + fan_out) / 2))
    m = fill(shape, filler('type: "msra" variance_norm: FAN_OUT'), gen())
    assert abs(m.std().item() - math.sqrt(2 / fan_out)) < 0.003
    s = fill((100, 400), filler('type: "gaussian" std: 1 sparse: 10'), gen())
    assert abs((s != 0).float().mean().item() - 0.1) < 0.01       # keep probability sparse / num_outputs
    with pytest.raises(EngineError, match="Sparsity"):
        fill(shape, filler('type: "xavier" sparse: 3'), gen())
    b = fill((5, 7), filler('type: "positive_unitball"'), gen())
    np.testing.assert_allclose(b.sum(dim=1).numpy(), 1, rtol=1e-6)


def test_same_seed_same_weights_different_seed_different():
    body = ('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 4 '
            'kernel_size: 3 weight_filler { type: "gaussian" std: 0.01 } } }')
    a, b, c = (make_net(body, {"x": (1, 3, 8, 8)}, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.params[0].tensor, b.params[0].tensor)
    assert not torch.equal(a.params[0].tensor, c.params[0].tensor)


# ---------------------------------------------------------------- net semantics

SMALL = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 0 decay_mult: 0 }
        param { lr_mult: 0 decay_mult: 0 }
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc_a" type: "InnerProduct" bottom: "conv1" top: "fc_a" param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "fc_b" type: "InnerProduct" bottom: "conv1" top: "fc_b"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "sum" type: "Eltwise" bottom: "fc_a" bottom: "fc_b" top: "sum" eltwise_param { coeff: 1 coeff: -2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "sum" bottom: "label" top: "loss" loss_weight: 0.5 }
layer { name: "acc" type: "Accuracy" bottom: "sum" bottom: "label" top: "acc" include { phase: TEST } }
"""


def small_net(phase="TRAIN", seed=1):
    return make_net(SMALL, {"data": (2, 2, 5, 5), "label": (2,)}, phase, seed=seed)


def test_split_in_place_frozen_and_loss_weight():
    net = small_net()
    x = RNG.standard_normal((2, 2, 5, 5)).astype(np.float32)
    label = np.array([0.0, 2.0], dtype=np.float32)
    blobs, _ = run(net, {"data": x, "label": label})
    loss = net.loss(blobs)
    assert loss.item() == pytest.approx(0.5 * blobs["loss"].item())
    loss.backward()
    conv_w, conv_b, a_w, a_b, b_w, b_b = (p.tensor for p in net.params)
    assert [p.lr_mult for p in net.params] == [0, 0, 1, 2, 1, 1]
    assert conv_w.grad is None and conv_b.grad is None and not conv_w.requires_grad   # frozen: no diff
    # reference gradients by hand: the split blob conv1 feeds both fc layers
    h = np.maximum(0, numpy_conv(x.astype(np.float64), conv_w.detach().numpy(), conv_b.detach().numpy(), 1, 0, 1))
    h = h.reshape(2, -1)
    s = h @ a_w.detach().numpy().T + a_b.detach().numpy() - 2 * (h @ b_w.detach().numpy().T + b_b.detach().numpy())
    value, dsum, _ = caffe_softmax_loss(s, label)
    assert blobs["loss"].item() == pytest.approx(value, rel=1e-5)
    dsum *= 0.5
    np.testing.assert_allclose(a_w.grad.numpy(), dsum.T @ h, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(b_w.grad.numpy(), -2 * dsum.T @ h, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(b_b.grad.numpy(), -2 * dsum.sum(0), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("conv1_lr", [0, 1], ids=["frozen", "learning"])
def test_layer_by_layer_pass_gives_the_gradients_of_the_whole_net(conv1_lr):
    """`caffe time`'s passes (Net.forward_by_layer, backward_by_layer): each layer alone, its backward from its tops' gradients, a split blob
    (conv1 feeds fc_a and fc_b, fc_a feeds sum and act) getting the sum: the loss and every parameter gradient of
    the whole net's pass."""
    import time
    body = SMALL.replace("lr_mult: 0 decay_mult: 0", f"lr_mult: {conv1_lr} decay_mult: 0") + \
        'layer { name: "act" type: "TanH" bottom: "fc_a" top: "act" }\n' \
        'layer { name: "loss2" type: "SoftmaxWithLoss" bottom: "act" bottom: "label" top: "loss2" }\n'
    net = make_net(body, {"data": (2, 2, 5, 5), "label": (2,)}, "TRAIN", seed=1)
    inputs = {"data": torch.randn(2, 2, 5, 5), "label": torch.tensor([0.0, 2.0])}
    whole = net.loss(net(inputs))
    whole.backward()
    expected = [None if p.tensor.grad is None else p.tensor.grad.clone() for p in net.params]
    for p in net.params:
        p.tensor.grad = None
    forward, tape = net.forward_by_layer(inputs, time.perf_counter)
    assert float(net.loss(tape.values).detach()) == float(whole.detach())
    backward = net.backward_by_layer(tape, time.perf_counter)
    layers = ["conv1", "relu1", "fc_a", "fc_b", "sum", "loss", "act", "loss2"]
    forward = {net.layers[index].name: seconds for index, seconds in forward.items()}   # by index: names may repeat
    backward = {net.layers[index].name: seconds for index, seconds in backward.items()}
    assert list(forward) == layers and sorted(backward) == sorted(layers)
    assert all(seconds > 0 for seconds in forward.values())
    assert (backward["conv1"] > 0) == bool(conv1_lr) and all(backward[name] > 0 for name in layers[2:])
    for p, grad in zip(net.params, expected):
        assert (p.tensor.grad is None) == (grad is None) == (p.lr_mult == 0), p.layer_name
        if grad is not None:
            torch.testing.assert_close(p.tensor.grad, grad, rtol=1e-6, atol=1e-7)


def test_outputs_sorted_like_caffe_and_phase_filter():
    net = small_net("TEST")
    assert net.outputs == ["acc", "loss"] and net.loss_weights == {"loss": 0.5}
    assert "acc" not in small_net("TRAIN").blob_shapes


def test_frozen_first_layers_get_no_backward():
    net = small_net()
    x = torch.tensor(RNG.standard_normal((2, 2, 5, 5)), dtype=torch.float32)
    blobs = net({"data": x, "label": torch.tensor([0.0, 1.0])})
    assert not blobs["conv1"].requires_grad        # nothing below fc_a/fc_b needs a gradient


def test_force_backward_gives_input_gradients():
    text = 'force_backward: true\n' + SMALL
    net = Net(parse_text('layer { name: "d" type: "Input" top: "data" top: "label" input_param { shape { dim: 2 '
                         'dim: 2 dim: 5 dim: 5 } shape { dim: 2 } } }\n' + text, pb.NetParameter()), "TRAIN", seed=1)
    blobs = net({"data": torch.randn(2, 2, 5, 5), "label": torch.tensor([0.0, 1.0])})
    assert blobs["conv1"].requires_grad


def test_caffemodel_round_trip_rename_and_mismatch(tmp_path):
    source = small_net(seed=1)
    path = tmp_path / "small.caffemodel"
    write_caffemodel(path, source.to_caffemodel())
    saved = read_caffemodel(path)
    assert [lp.name for lp in saved.layer] == ["in_data", "in_label", "conv1", "relu1", "conv1_relu1_0_split", "fc_a",
                                              "fc_b", "sum", "loss"]   # with the Split layer Caffe inserts
    assert all(lp.phase == pb.TRAIN for lp in saved.layer)
    assert list(saved.layer[2].blobs[0].shape.dim) == [4, 2, 3, 3]
    # transfer: fc_b renamed -> keeps its filler values; the others are copied
    renamed = SMALL.replace('"fc_b"', '"fc_b-new"')
    target = make_net(renamed, {"data": (2, 2, 5, 5), "label": (2,)}, seed=2)
    before = target.layer("fc_b-new").blobs[0].detach().clone()
    copied = target.load_caffemodel(str(path))
    assert "fc_b" not in copied and "conv1" in copied and "fc_a" in copied
    assert torch.equal(target.layer("conv1").blobs[0], source.layer("conv1").blobs[0])
    assert torch.equal(target.layer("fc_a").blobs[1], source.layer("fc_a").blobs[1])
    assert torch.equal(target.layer("fc_b-new").blobs[0], before)
    # same name, other shape: an error naming the layer
    wider = make_net(SMALL.replace("num_output: 4", "num_output: 5"), {"data": (2, 2, 5, 5), "label": (2,)})
    with pytest.raises(EngineError, match="Cannot copy param 0 weights from layer 'conv1'; shape mismatch"):
        wider.load_caffemodel(path)


def test_legacy_4d_inner_product_blobs_and_v1_caffemodel(tmp_path):
    """2014 caffemodels: V1 `layers`, blobs with num/channels/height/width, IP weight (1, 1, out, in)."""
    net = small_net(seed=3)
    legacy = pb.NetParameter(name="old")
    for lp in net.to_caffemodel().layer:
        if not len(lp.blobs):
            continue
        v1 = legacy.layers.add(name=lp.name, type=pb.V1LayerParameter.CONVOLUTION if lp.type == "Convolution"
                               else pb.V1LayerParameter.INNER_PRODUCT)
        for blob in lp.blobs:
            dims = [1] * (4 - len(blob.shape.dim)) + list(blob.shape.dim)
            old = v1.blobs.add(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
            old.data.extend(blob.data)
    path = tmp_path / "caffe_imagenet_train_iter_10"          # no extension, as the 2014 snapshots
    path.write_bytes(legacy.SerializeToString())
    target = small_net(seed=4)
    target.load_caffemodel(path)
    for a, b in zip(net.params, target.params):
        assert torch.equal(a.tensor, b.tensor)
    bad = pb.NetParameter()
    bad.CopyFrom(legacy)
    bad.layers[1].blobs[0].channels = 2
    with pytest.raises(EngineError, match="fc_a"):
        target.load_caffemodel(upgrade_net(bad))


def test_multiple_weight_files_load_in_order(tmp_path):
    first, second = small_net(seed=1), small_net(seed=2)
    write_caffemodel(tmp_path / "a.caffemodel", first.to_caffemodel())
    only_fc_a = pb.NetParameter()
    only_fc_a.layer.add().CopyFrom([lp for lp in second.to_caffemodel().layer if lp.name == "fc_a"][0])
    write_caffemodel(tmp_path / "b.caffemodel", only_fc_a)
    target = small_net(seed=3)
    target.load_caffemodel([tmp_path / "a.caffemodel", tmp_path / "b.caffemodel"])
    assert torch.equal(target.layer("conv1").blobs[0], first.layer("conv1").blobs[0])
    assert torch.equal(target.layer("fc_a").blobs[0], second.layer("fc_a").blobs[0])


def test_concat_flatten_split_softmax():
    body = """
    layer { name: "split" type: "Split" bottom: "x" top: "x1" top: "x2" }
    layer { name: "cat" type: "Concat" bottom: "x1" bottom: "x2" top: "cat" concat_param { axis: 1 } }
    layer { name: "flat" type: "Flatten" bottom: "cat" top: "flat" }
    layer { name: "prob" type: "Softmax" bottom: "flat" top: "prob" }
    """
    x = RNG.standard_normal((2, 3, 2, 2)).astype(np.float32)
    net = make_net(body, {"x": x.shape})
    assert net.blob_shapes["cat"] == (2, 6, 2, 2) and net.blob_shapes["flat"] == (2, 24)
    blobs, grads = run(net, {"x": x}, "cat")
    np.testing.assert_allclose(grads["x"], 2 * np.ones_like(x))       # both split branches add up
    flat = np.concatenate([x, x], axis=1).reshape(2, -1)
    e = np.exp(flat - flat.max(1, keepdims=True))
    np.testing.assert_allclose(blobs["prob"].detach().numpy(), e / e.sum(1, keepdims=True), rtol=1e-5)


def test_layer_blobs_in_prototxt_initialise_the_layer():
    body = ('layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } '
            'blobs { shape { dim: 2 dim: 3 } data: 1 data: 2 data: 3 data: 4 data: 5 data: 6 } '
            'blobs { shape { dim: 2 } data: -1 data: 1 } }')
    net = make_net(body, {"x": (1, 3)})
    blobs, _ = run(net, {"x": np.array([[1.0, 0.0, -1.0]], dtype=np.float32)})
    np.testing.assert_allclose(blobs["y"].detach().numpy(), [[-3.0, -1.0]])


def test_v0_caffemodel_with_padding_layers_loads(tmp_path):
    """The 2014 snapshots are V0 NetParameters (`layers { layer { name type blobs } }`, padding layers without
    blobs); they load into the upgraded net by layer name."""
    net = small_net(seed=6)
    v0 = pb.NetParameter(name="CaffeNet", input=["data"])
    for lp in net.to_caffemodel().layer:
        if not len(lp.blobs):
            continue
        connection = v0.layers.add(bottom=["data"], top=[lp.name])
        connection.layer.name = lp.name
        connection.layer.type = "conv" if lp.type == "Convolution" else "innerproduct"
        for blob in lp.blobs:
            dims = [1] * (4 - len(blob.shape.dim)) + list(blob.shape.dim)
            old = connection.layer.blobs.add(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
            old.data.extend(blob.data)
        if lp.name == "conv1":
            pad = v0.layers.add()
            pad.layer.name, pad.layer.type, pad.layer.pad = "pad2", "padding", 1
            pad.bottom.append("conv1")
            pad.top.append("pad2")
    path = tmp_path / "caffe_imagenet_train_iter_5"
    path.write_bytes(v0.SerializeToString())
    target = small_net(seed=7)
    assert sorted(target.load_caffemodel(path)) == ["conv1", "fc_a", "fc_b"]
    for a, b in zip(net.params, target.params):
        assert torch.equal(a.tensor, b.tensor)


def test_lrn_backward_is_the_derivative_of_its_forward():
    from convnet_transfer.training.engine.layers import CrossChannelLRN
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: CrossChannelLRN.apply(t, 5, 0.3, 0.75, 1.5), (x,))


def test_channels_last_gives_the_same_numbers():
    body = SMALL.replace('bottom: "conv1" top: "conv1" }', 'bottom: "conv1" top: "conv1" }\n'
                         'layer { name: "norm" type: "LRN" bottom: "conv1" top: "norm" lrn_param { local_size: 3 } }')
    x = torch.randn(2, 2, 5, 5)
    label = torch.tensor([0.0, 1.0])
    plain = make_net(body, {"data": (2, 2, 5, 5), "label": (2,)}, "TRAIN", seed=1)
    fast = make_net(body, {"data": (2, 2, 5, 5), "label": (2,)}, "TRAIN", seed=1)
    fast.set_channels_last()
    a = plain({"data": x, "label": label})
    b = fast({"data": x, "label": label})
    assert b["conv1"].is_contiguous(memory_format=torch.channels_last)
    for name in ("conv1", "norm", "loss"):
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_init_log_reads_like_caffe(capsys):
    make_net(SMALL, {"data": (2, 2, 5, 5), "label": (2,)}, "TRAIN", log=True)
    err = capsys.readouterr().err
    assert "net.cpp:86] Creating Layer conv1" in err
    assert "net.cpp:131] Top shape: 2 4 3 3 (72)" in err
    assert "net.cpp:134]     with loss weight 0.5" in err
    assert "net.cpp:202] conv1 does not need backward computation." in err   # frozen, first
    assert "net.cpp:200] fc_a needs backward computation." in err
    assert "net.cpp:257] Network initialization done." in err


def test_loss_is_zero_without_loss_layers():
    net = make_net('layer { name: "r" type: "ReLU" bottom: "x" top: "y" }', {"x": (1, 2)})
    assert net.loss(net({"x": torch.ones(1, 2)})).item() == 0.0


def test_label_out_of_range_is_a_clear_error():
    net = make_net('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" }',
                   {"x": (2, 3), "label": (2,)})
    with pytest.raises(EngineError, match=r"layer 'loss'.*label value 3 is outside 0..2"):
        net({"x": torch.zeros(2, 3), "label": torch.tensor([0.0, 3.0])})


def test_two_layers_of_one_name_run_as_in_caffe_and_weights_fill_the_first(tmp_path):
    """Caffe allows it (mnist_autoencoder has two layers named 'loss'); CopyTrainedLayersFrom fills the first."""
    body = """layer { name: "ip" type: "InnerProduct" bottom: "x" top: "a" inner_product_param { num_output: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "a" top: "b" inner_product_param { num_output: 3 } }"""
    net = make_net(body, {"x": (4, 5)}, seed=1)
    assert [lp.name for lp in net.layer_params].count("ip") == 2 and len(net.params) == 4
    blobs, _ = run(net, {"x": RNG.standard_normal((4, 5))})
    assert tuple(blobs["b"].shape) == (4, 3)
    source = net.to_caffemodel()
    assert [len(lp.blobs) for lp in source.layer if lp.name == "ip"] == [2, 2]
    with pytest.raises(EngineError, match="Cannot copy param 0 weights from layer 'ip'; shape mismatch"):
        net.load_caffemodel(source)      # its second 'ip' (3x2) goes to our first too, as in Caffe: no fit
    first = net.layers[0].blobs[0].detach().clone()
    del source.layer[2:]                 # in_x (no blobs) and the first 'ip'
    with torch.no_grad():
        net.layers[0].blobs[0].zero_()
    assert net.load_caffemodel(source) == ["in_x", "ip"]
    assert torch.equal(net.layers[0].blobs[0].detach(), first)


def test_caffe_time_lists_two_layers_of_one_name_as_two_rows(tmp_path):
    """`caffe time` prints one forward and one backward line per layer, by name, two for two layers of one name."""
    from convnet_transfer.training.engine.train import time_net
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 5 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "a" inner_product_param { num_output: 2 '
        'weight_filler { type: "gaussian" std: 0.1 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "a" top: "b" inner_product_param { num_output: 3 '
        'weight_filler { type: "gaussian" std: 0.1 } } }\n')
    result = time_net(str(tmp_path / "net.prototxt"), iterations=2)
    rows = result["layers_ms"]
    assert [name for name, _, _ in rows] == ["in", "ip", "ip"]
    assert rows[1][1] > 0 and rows[2][1] > 0       # each "ip" timed on its own, not one merged row
