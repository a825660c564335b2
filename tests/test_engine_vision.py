"""Vision layers where pycaffe (CPU) cannot write a golden, and their refusals.

STOCHASTIC pooling exists in Caffe's GPU code only (pooling_layer.cpp: NOT_IMPLEMENTED on the CPU), so it is
checked against numpy ports of Caffe's CUDA kernels (pooling_layer.cu: StoPoolForwardTest, StoPoolForwardTrain,
StoPoolBackward), loop for loop. TRAIN draws its uniforms from the net's random stream (Caffe's curand draws cannot
be replayed): given the same uniforms, the port and the engine pick the same elements; the draws themselves are
checked for Caffe's distribution (an element is picked with probability value / window sum).
Everything else of the vision family is compared with real Caffe in tests/test_engine_layer_goldens.py.
"""
import numpy as np
import pytest
import torch

from convnet_transfer.formats.protoio import parse_text, pb
from convnet_transfer.training.engine import EngineError, Net
from convnet_transfer.training.engine.layers.vision import PoolGeometry, pool_geometry, stochastic_pool

STOCHASTIC = pb.PoolingParameter.STOCHASTIC
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: stochastic pooling runs on the CPU only here"))]


def make_net(body: str, shapes: dict, phase="TEST") -> Net:
    text = "".join(f'layer {{ name: "in_{n}" type: "Input" top: "{n}" input_param {{ shape {{ '
                   + " ".join(f"dim: {d}" for d in s) + " } } }\n" for n, s in shapes.items())
    return Net(parse_text(text + body, pb.NetParameter()), phase, seed=5)


def windows(g: PoolGeometry):
    """Caffe's StoPool windows: (ph, pw, hstart, hend, wstart, wend), no padding, clipped to the input."""
    (h, w), (kh, kw), (sh, sw) = g.size, g.kernel, g.stride
    for ph in range(g.out[0]):
        for pw in range(g.out[1]):
            yield ph, pw, ph * sh, min(ph * sh + kh, h), pw * sw, min(pw * sw + kw, w)


def caffe_stochastic_test(x, g):
    """StoPoolForwardTest, in float32 as Caffe accumulates."""
    top = np.zeros(x.shape[:2] + g.out, np.float32)
    for n, c in np.ndindex(*x.shape[:2]):
        for ph, pw, hs, he, ws, we in windows(g):
            total, squares = np.float32(0), np.float32(0)
            for h in range(hs, he):
                for w in range(ws, we):
                    total += x[n, c, h, w]
                    squares += x[n, c, h, w] * x[n, c, h, w]
            top[n, c, ph, pw] = squares / total if total > 0 else 0
    return top


def caffe_stochastic_train(x, g, uniforms, top_diff):
    """StoPoolForwardTrain with the given uniforms (Caffe's rand_idx), then StoPoolBackward: (top, bottom diff)."""
    top = np.zeros(x.shape[:2] + g.out, np.float32)
    diff = np.zeros_like(x)
    for n, c in np.ndindex(*x.shape[:2]):
        for ph, pw, hs, he, ws, we in windows(g):
            total = np.float32(0)
            for h in range(hs, he):
                for w in range(ws, we):
                    total += x[n, c, h, w]
            threshold = np.float32(uniforms[n, c, ph, pw] * total)
            running, chosen = np.float32(0), None
            for h in range(hs, he):
                for w in range(ws, we):
                    running += x[n, c, h, w]
                    if chosen is None and running >= threshold:
                        chosen = (h, w)
            top[n, c, ph, pw] = x[n, c][chosen]
            diff[n, c][chosen] += top_diff[n, c, ph, pw]
    return top, diff


GEOMETRIES = [((7, 8), (3, 3), (2, 2)), ((6, 5), (2, 3), (2, 1)), ((5, 5), (5, 5), (1, 1)), ((4, 6), (2, 2), (2, 2))]


def _nonnegative(shape, seed):
    """Values >= 0 (as after a ReLU), with some all-zero windows."""
    x = np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)
    x[0, 0] = 0
    x[x < 0.2] = 0
    return x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size, kernel, stride", GEOMETRIES)
def test_stochastic_test_phase_is_caffes_weighted_average(size, kernel, stride, device):
    x = _nonnegative((2, 3) + size, 1)
    net = make_net('layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: STOCHASTIC '
                   f'kernel_h: {kernel[0]} kernel_w: {kernel[1]} stride_h: {stride[0]} stride_w: {stride[1]} }} }}',
                   {"x": x.shape}, "TEST").to(device)
    g = net.layer("p").geometry
    top = net({"x": torch.from_numpy(x).to(device)})["y"]
    np.testing.assert_allclose(top.cpu().numpy(), caffe_stochastic_test(x, g), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size, kernel, stride", GEOMETRIES)
def test_stochastic_train_picks_and_routes_as_caffe_given_the_same_uniforms(size, kernel, stride, device):
    x = _nonnegative((2, 3) + size, 2)
    g = pool_geometry(size, kernel, stride, (0, 0), STOCHASTIC, True, "test")
    generator = torch.Generator(device=device).manual_seed(11)
    bottom = torch.from_numpy(x).to(device).requires_grad_(True)
    top = stochastic_pool(bottom, g, True, generator)
    top_diff = np.random.default_rng(3).standard_normal(top.shape).astype(np.float32)
    top.backward(torch.from_numpy(top_diff).to(device))
    generator.manual_seed(11)
    uniforms = torch.rand((2, 3, 1, g.out[0] * g.out[1]), generator=generator, device=device)
    expected_top, expected_diff = caffe_stochastic_train(x, g, uniforms.cpu().numpy().reshape(top.shape), top_diff)
    np.testing.assert_array_equal(top.detach().cpu().numpy(), expected_top)
    np.testing.assert_allclose(bottom.grad.cpu().numpy(), expected_diff, rtol=1e-6, atol=1e-7)


def test_stochastic_train_picks_with_probability_value_over_sum():
    """Each window holds 1, 2, 3, 4 (2x2): over many windows each is picked about value/10 of the time."""
    x = np.tile(np.array([[1, 2], [3, 4]], np.float32), (1, 1, 100, 100))
    net = make_net('layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: STOCHASTIC '
                   'kernel_size: 2 stride: 2 } }', {"x": x.shape}, "TRAIN")
    top = net({"x": torch.from_numpy(x)})["y"].numpy()
    frequencies = [(top == v).mean() for v in (1, 2, 3, 4)]
    np.testing.assert_allclose(frequencies, [0.1, 0.2, 0.3, 0.4], atol=0.015)     # 10000 windows: ~5 sigma
    again = make_net('layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: STOCHASTIC '
                     'kernel_size: 2 stride: 2 } }', {"x": x.shape}, "TRAIN")
    np.testing.assert_array_equal(again({"x": torch.from_numpy(x)})["y"].numpy(), top)   # the net's seeded stream


def test_stochastic_spp_levels_are_stochastic_poolings():
    """(Caffe's pyramid pads a size not divisible by 2^level, which STOCHASTIC refuses: 8x8 needs no padding.)"""
    x = _nonnegative((2, 3, 8, 8), 4)
    net = make_net('layer { name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 3 '
                   'pool: STOCHASTIC } }', {"x": x.shape}, "TEST")
    top = net({"x": torch.from_numpy(x)})["y"].numpy()
    expected = [caffe_stochastic_test(x, g).reshape(2, -1) for g in net.layer("s").levels]
    np.testing.assert_allclose(top, np.concatenate(expected, 1), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("layer, shapes, message", [
    ('type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 1 stride: 3 }', {"x": (1, 1, 5, 7)},
     "a pooling window starts past the input (input 5x7, kernel 1x1, stride 3x3): Caffe's MAX pooling leaves it "
     "undefined"),
    ('type: "Pooling" bottom: "x" top: "y" top: "m" pooling_param { pool: AVE kernel_size: 2 }', {"x": (1, 1, 4, 4)},
     "Pooling Layer produces at most 1 top blob(s) as output."),
    ('type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 2 kernel_h: 2 kernel_w: 3 }',
     {"x": (1, 1, 4, 4)}, "kernel_size is kernel_size OR kernel_h and kernel_w are required."),
    ('type: "SPP" bottom: "x" top: "y"', {"x": (1, 1, 4, 4)}, "spp_param.pyramid_height must be set"),
    ('type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 3 }', {"x": (1, 1, 1, 4)},
     "pyramid level 1: pad must be smaller than the kernel"),
    ('type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 2 pool: STOCHASTIC }', {"x": (1, 1, 9, 8)},
     "pyramid level 1: Padding implemented only for average and max pooling."),
    ('type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 2 kernel_size: 1 }',
     {"x": (1, 1, 2, 2, 2, 2)}, "4 spatial axes; this engine runs convolutions with up to 3"),
    ('type: "Deconvolution" bottom: "x" top: "y" convolution_param { num_output: 2 kernel_size: 1 }',
     {"x": (1, 1, 2, 2, 2, 2)}, "4 spatial axes; this engine runs convolutions with up to 3"),
    ('type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 2 kernel_size: 3 }',
     {"x": (1, 1, 1, 5)}, "input 1x5 is too small for kernel 3x3 (pad 0, 0)"),
    ('type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 3 dilation: 4 pad: 1 stride: 2 }',
     {"x": (1, 1, 2, 5)}, "input 2x5 is too small for kernel 3x3 (pad 1, 1)"),
    ('type: "Convolution" bottom: "x" bottom: "x2" top: "y" top: "y2" convolution_param { num_output: 2 '
     'kernel_size: 1 }', {"x": (1, 1, 2, 2), "x2": (1, 1, 2, 3)}, "shape mismatch - bottom[0]: (1, 1, 2, 2) vs. "
     "bottom[1]: (1, 1, 2, 3)"),
    ('type: "Deconvolution" bottom: "x" bottom: "x2" top: "y" convolution_param { num_output: 2 kernel_size: 1 }',
     {"x": (1, 1, 2, 2), "x2": (1, 1, 2, 2)}, "Deconvolution Layer produces one top blob as output for each bottom"),
    ('type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 2 kernel_size: 1 kernel_h: 1 '
     'kernel_w: 1 }', {"x": (1, 1, 2, 2)}, "Either kernel_size or kernel_h/w should be specified; not both."),
    ('type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 2 kernel_h: 1 kernel_w: 1 }',
     {"x": (1, 1, 2, 2, 2)}, "kernel_h & kernel_w can only be used for 2D convolution."),
    ('type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 1 axis: 1 }', {"x": (2, 3)},
     "needs at least 1 spatial axes"),
    ('type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { offset: 2 }', {"x": (1, 1, 4, 4), "r": (1, 1, 3, 3)},
     "the crop for dimension 2 is out-of-bounds with size 3 and offset 2"),
    ('type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { axis: 1 offset: 0 offset: 1 }',
     {"x": (1, 1, 4, 4), "r": (1, 1, 3, 3)}, "number of offset values specified must be equal to the number of "
     "dimensions following axis."),
])
def test_a_vision_layer_caffe_would_refuse_is_an_error_naming_it(layer, shapes, message):
    with pytest.raises(EngineError) as error:
        make_net('layer { name: "v" %s }' % layer, shapes)
    assert message in str(error.value) and "layer 'v'" in str(error.value)


def test_a_net_with_3d_convolutions_runs_channels_last_on_its_4d_blobs():
    """The CPU keeps 4-D parameters and inputs channels-last (Net.place); 5-D ones stay as they are."""
    net = make_net('layer { name: "c3" type: "Convolution" bottom: "v" top: "y" convolution_param { num_output: 2 '
                   'kernel_size: 3 } }\nlayer { name: "c2" type: "Convolution" bottom: "x" top: "z" '
                   'convolution_param { num_output: 2 kernel_size: 3 } }', {"v": (1, 2, 4, 5, 5), "x": (1, 2, 5, 5)})
    volume, image = torch.randn(1, 2, 4, 5, 5), torch.randn(1, 2, 5, 5)
    expected = net({"v": volume, "x": image})
    net.set_channels_last(True)
    assert net.layer("c2").blobs[0].is_contiguous(memory_format=torch.channels_last)
    blobs = net({"v": volume, "x": image})
    for name in ("y", "z"):
        torch.testing.assert_close(blobs[name], expected[name], rtol=1e-5, atol=1e-6)
