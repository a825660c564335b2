"""Vision layers (Caffe's vision_layers): Convolution, Deconvolution, Im2col, Crop, LRN, Pooling and SPP.

Convolution and Deconvolution follow BaseConvolutionLayer: the channel axis is convolution_param.axis, every axis
after it is spatial (0 to 3 spatial axes here: torch's conv1d/2d/3d; a 0-D convolution is a fully connected map
of the channel axis), the axes before it are the batch; N bottoms give N tops through the same weights.

Pooling and SPP (pooling_layer.cpp/.cu, spp_layer.cpp): Caffe's pooling geometry is computed exactly for every
setting Caffe accepts. The input is padded explicitly (-inf for MAX, zeros otherwise) to cover every window of
Caffe's output size, windows that start in the padding or reach past the input included, and AVE divides by
Caffe's window size (the window clipped to the input plus its padding). A window wholly outside the input
(stride > kernel in CEIL mode) gives Caffe's AVE (0 divided by Caffe's size there, 0 or negative: -0 or NaN) and
is refused for MAX (Caffe's backward writes out of bounds) and STOCHASTIC (Caffe leaves the top unset).
STOCHASTIC is Caffe's GPU code (its CPU code is NOT_IMPLEMENTED): TEST takes the probability-weighted average
sum(x^2) / sum(x) of each window (0 where sum(x) <= 0); TRAIN picks in each window the first element whose
running sum reaches u * sum(x), u uniform from the net's random stream (Caffe's draws cannot be replayed), and
routes the top's diff to it.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from convnet_transfer.formats.protoio import pb
from ..errors import EngineError
from .base import Elementwise, Layer, canonical_axis, register
from .conv_gradients import convolution

CONV_FIELDS = {"num_output", "bias_term", "pad", "kernel_size", "stride", "dilation", "pad_h", "pad_w", "kernel_h",
               "kernel_w", "stride_h", "stride_w", "group", "weight_filler", "bias_filler", "engine",
               "force_nd_im2col", "axis"}
MANY = 1 << 30


def _per_axis(p, field: str, hw: str | None, n: int, default: int | None, where: str) -> tuple[int, ...]:
    """One value per spatial axis, as BaseConvolutionLayer::LayerSetUp reads it: `<hw>_h`/`<hw>_w` (2-D only),
    or the repeated `field` once or once per axis (or not at all, when it has a default)."""
    values = list(getattr(p, field))
    if hw and (p.HasField(f"{hw}_h") or p.HasField(f"{hw}_w")):
        if n != 2:
            raise EngineError(f"{where}: {hw}_h & {hw}_w can only be used for 2D convolution.")
        if values:
            raise EngineError(f"{where}: Either {field} or {hw}_h/w should be specified; not both.")
        return int(getattr(p, f"{hw}_h")), int(getattr(p, f"{hw}_w"))
    if len(values) not in ((1, n) if default is None else (0, 1, n)):
        raise EngineError(f"{where}: {field} must be specified once, or once per spatial dimension ({field} "
                          f"specified {len(values)} times; {n} spatial dims).")
    if not values:
        return tuple(int(default) for _ in range(n))
    return tuple(int(values[0 if len(values) == 1 else i]) for i in range(n))


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """The channel axis and, per spatial axis, kernel, pad, stride and dilation of a convolution_param."""
    axis: int
    kernel: tuple[int, ...]
    pad: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]

    def extents(self) -> tuple[int, ...]:
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    def conv_out(self, spatial) -> tuple[int, ...]:
        """ConvolutionLayer::compute_output_shape: (in + 2 pad - extent) / stride + 1 (C's division)."""
        return tuple(int((i + 2 * p - e) / s) + 1 for i, p, e, s in zip(spatial, self.pad, self.extents(), self.stride))

    def deconv_out(self, spatial) -> tuple[int, ...]:
        """DeconvolutionLayer::compute_output_shape: stride (in - 1) + extent - 2 pad."""
        return tuple(s * (i - 1) + e - 2 * p for i, p, e, s in zip(spatial, self.pad, self.extents(), self.stride))

    def tail_padding(self, spatial) -> list[int]:
        """F.pad's zeros after each spatial axis where the padded input is shorter than one kernel extent (Caffe
        still makes one output there, its im2col reading zeros past the end); [] when none is needed."""
        short = [max(0, e - i - 2 * p) for i, p, e in zip(spatial, self.pad, self.extents())]
        return [v for s in reversed(short) for v in (0, s)] if any(short) else []

    def check_out(self, spatial, out, where: str) -> None:
        if any(o <= 0 for o in out):
            raise EngineError(f"{where}: input {'x'.join(map(str, spatial))} is too small for kernel "
                              f"{'x'.join(map(str, self.kernel))} (pad {', '.join(map(str, self.pad))})")


def conv_geometry(p: pb.ConvolutionParameter, shape, where: str, min_spatial: int = 0) -> ConvGeometry:
    """Caffe's reading of a convolution_param on a bottom of `shape`, with its checks and messages."""
    axis = canonical_axis(p.axis, len(shape), where)
    n = len(shape) - axis - 1
    if n < min_spatial:
        raise EngineError(f"{where}: needs at least {min_spatial} spatial axes after the channel axis {axis}")
    kernel = _per_axis(p, "kernel_size", "kernel", n, None, where)
    stride = _per_axis(p, "stride", "stride", n, 1, where)
    pad = _per_axis(p, "pad", "pad", n, 0, where)
    dilation = _per_axis(p, "dilation", None, n, 1, where)
    if any(k <= 0 for k in kernel):
        raise EngineError(f"{where}: Filter dimensions must be nonzero.")
    if any(s <= 0 for s in stride):
        raise EngineError(f"{where}: Stride dimensions must be nonzero.")
    return ConvGeometry(axis, kernel, pad, stride, dilation)


TORCH_CONV = {False: {1: F.conv1d, 2: convolution, 3: F.conv3d},   # 2-D: parameter gradients summed as Caffe
              True: {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}}


class _ConvolutionBase(Layer):
    """BaseConvolutionLayer: the checks, the weight (and bias) blobs, N bottoms to N tops with one set of weights."""
    allowed = {"convolution_param": CONV_FIELDS}
    n_bottoms = (1, MANY)
    n_tops = (1, MANY)
    transposed = False      # Deconvolution: the weight maps outputs to inputs

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.convolution_param
        shape = _equal_bottoms(self, lp, bottom_shapes)
        g = self.geometry = conv_geometry(p, shape, self.where)
        if len(g.kernel) > 3:
            raise EngineError(f"{self.where}: {len(g.kernel)} spatial axes; this engine runs convolutions with up to "
                              f"3 (torch's conv1d/2d/3d)")
        if not p.HasField("num_output") or p.num_output == 0:
            raise EngineError(f"{self.where}: convolution_param.num_output must be set")
        channels, outputs, group = shape[g.axis], int(p.num_output), int(p.group)
        if group <= 0 or channels % group or outputs % group:
            raise EngineError(f"{self.where}: {channels} input channels and num_output {outputs} must both be "
                              f"multiples of group {group}")
        spatial = shape[g.axis + 1:]
        out = g.deconv_out(spatial) if self.transposed else g.conv_out(spatial)
        g.check_out(spatial, out, self.where)
        self.tail = [] if self.transposed else g.tail_padding(spatial)
        self.groups = group
        if self.transposed:
            self.add_blob((channels, outputs // group) + g.kernel, p.weight_filler)
        else:
            self.add_blob((outputs, channels // group) + g.kernel, p.weight_filler)
        self.bias_term = p.bias_term
        if p.bias_term:
            self.add_blob((outputs,), p.bias_filler)
        n = max(len(g.kernel), 1)       # a 0-D convolution runs as a 1-D one over a length-1 axis
        self.function = TORCH_CONV[self.transposed][n]
        self.options = dict(stride=g.stride or (1,), padding=g.pad or (0,), dilation=g.dilation or (1,),
                            groups=group)
        self.top_shapes = [tuple(shape[:g.axis]) + (outputs,) + out] * len(bottom_shapes)

    def forward(self, *xs):
        return [self._convolve(x) for x in xs]

    def _convolve(self, x):
        weight, bias = self.blobs[0], (self.blobs[1] if self.bias_term else None)
        axis, zero_d = self.geometry.axis, not self.geometry.kernel
        if self.tail:
            x = F.pad(x, self.tail)
        if axis == 1 and not zero_d:
            return self.function(x, weight, bias, **self.options)
        outer = x.shape[:axis]
        x = x.reshape((-1,) + x.shape[axis:])
        if zero_d:
            x, weight = x.unsqueeze(-1), weight.unsqueeze(-1)
        y = self.function(x, weight, bias, **self.options)
        if zero_d:
            y = y.squeeze(-1)
        return y.reshape(outer + y.shape[1:])


def _equal_bottoms(layer: Layer, lp, bottom_shapes) -> tuple[int, ...]:
    """Caffe's checks of a layer that maps each bottom to a top of its own, all bottoms of one shape."""
    if len(lp.top) != len(bottom_shapes):
        raise EngineError(f"{layer.where}: {lp.type} Layer produces one top blob as output for each bottom blob "
                          f"input.")
    shape = tuple(bottom_shapes[0])
    for j, other in enumerate(bottom_shapes[1:], 1):
        if tuple(other) != shape:
            raise EngineError(f"{layer.where}: shape mismatch - bottom[0]: {shape} vs. bottom[{j}]: {tuple(other)}")
    return shape


@register
class ConvolutionLayer(_ConvolutionBase):
    """Caffe's Convolution: weight (num_output, C/group, *kernel), bias (num_output,); cross-correlation with
    pad, stride, dilation and groups; output (in + 2 pad - dilation (kernel - 1) - 1) / stride + 1."""
    type_name = "Convolution"


@register
class DeconvolutionLayer(_ConvolutionBase):
    """Caffe's Deconvolution (the transpose of Convolution): weight (C, num_output/group, *kernel), bias
    (num_output,); output stride (in - 1) + dilation (kernel - 1) + 1 - 2 pad."""
    type_name = "Deconvolution"
    transposed = True


def im2col(x: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """Caffe's im2col (and im2col_nd) of x (num, C, *spatial): (num, C * prod(kernel), *out), the column channel
    index being channel-major (c, then kernel offsets in axis order); zero padding; autograd gives col2im."""
    n = len(g.kernel)
    if any(g.pad):
        x = F.pad(x, [p for pad in reversed(g.pad) for p in (pad, pad)])
    for d, (extent, stride, dilation) in enumerate(zip(g.extents(), g.stride, g.dilation)):
        x = x.unfold(2 + d, extent, stride)             # appends this axis's window at the end
        if dilation > 1:
            x = x[..., ::dilation]
    order = (0, 1) + tuple(range(2 + n, 2 + 2 * n)) + tuple(range(2, 2 + n))
    x = x.permute(order)
    return x.reshape((x.shape[0], x.shape[1] * math.prod(g.kernel)) + tuple(x.shape[2 + n:]))


@register
class Im2colLayer(Layer):
    """Caffe's Im2col: each image's convolution columns, top (..., C * prod(kernel), *out) at the channel axis."""
    type_name = "Im2col"
    allowed = {"convolution_param": {"pad", "kernel_size", "stride", "dilation", "pad_h", "pad_w", "kernel_h",
                                     "kernel_w", "stride_h", "stride_w", "force_nd_im2col", "axis"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        shape = tuple(bottom_shapes[0])
        g = self.geometry = conv_geometry(lp.convolution_param, shape, self.where, min_spatial=1)
        spatial = shape[g.axis + 1:]
        out = g.conv_out(spatial)
        g.check_out(spatial, out, self.where)
        self.tail = g.tail_padding(spatial)
        self.top_shapes = [shape[:g.axis] + (shape[g.axis] * math.prod(g.kernel),) + out]

    def forward(self, x):
        axis = self.geometry.axis
        outer = x.shape[:axis]
        if self.tail:
            x = F.pad(x, self.tail)
        columns = im2col(x.reshape((-1,) + x.shape[axis:]), self.geometry)
        return [columns.reshape(outer + columns.shape[1:])]


@register
class CropLayer(Layer):
    """Caffe's Crop: bottom[0] cut to the shape of bottom[1] on the axes from crop_param.axis on, at `offset`
    (none: 0; one: every axis; else one per cropped axis). Backward fills the cropped region of bottom[0]'s diff
    (zeros elsewhere); bottom[1] only gives a shape and gets no diff."""
    type_name = "Crop"
    allowed = {"crop_param": {"axis", "offset"}}
    n_bottoms = (2, 2)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.crop_param
        data, reference = (tuple(s) for s in bottom_shapes)
        start = canonical_axis(p.axis, len(data), self.where)
        offsets = list(p.offset)
        if len(offsets) > 1 and start + len(offsets) != len(data):
            raise EngineError(f"{self.where}: number of offset values specified must be equal to the number of "
                              f"dimensions following axis.")
        if len(reference) != len(data):
            raise EngineError(f"{self.where}: bottom[1] has {len(reference)} axes, bottom[0] {len(data)}")
        self.slices, shape = [], list(data)
        for i in range(start, len(data)):
            offset = int(offsets[0 if len(offsets) == 1 else i - start]) if offsets else 0
            if data[i] - offset < reference[i]:
                raise EngineError(f"{self.where}: the crop for dimension {i} is out-of-bounds with size "
                                  f"{reference[i]} and offset {offset}")
            self.slices.append(slice(offset, offset + reference[i]))
            shape[i] = reference[i]
        self.start = start
        self.top_shapes = [tuple(shape)]

    def forward(self, x, reference):
        return [x[(slice(None),) * self.start + tuple(self.slices)]]


@register
class LRNLayer(Elementwise):
    """Local response normalisation, Caffe's convention:
    ACROSS_CHANNELS: top = x * (k + alpha/n * sum over the n channels centred on c of x^2) ^ -beta
    WITHIN_CHANNEL:  top = x * (1 + alpha/n^2 * sum over the n x n window (zero padded) of x^2) ^ -beta
    (n = local_size, odd; k is not used within channel, as in Caffe)."""
    type_name = "LRN"
    allowed = {"lrn_param": {"local_size", "alpha", "beta", "norm_region", "k", "engine"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.lrn_param
        if len(bottom_shapes[0]) != 4:
            raise EngineError(f"{self.where}: needs a 4-D bottom, got shape {bottom_shapes[0]}")
        if p.local_size % 2 != 1:
            raise EngineError(f"{self.where}: LRN only supports odd values for local_size, got {p.local_size}")
        self.size, self.alpha, self.beta, self.k = int(p.local_size), float(p.alpha), float(p.beta), float(p.k)
        self.across = p.norm_region == pb.LRNParameter.ACROSS_CHANNELS

    def forward(self, x):
        if self.across:
            return [CrossChannelLRN.apply(x, self.size, self.alpha, self.beta, self.k)]
        n = self.size
        mean = F.avg_pool2d(x * x, n, 1, (n - 1) // 2, count_include_pad=True)
        return [x * (1.0 + self.alpha * mean).pow(-self.beta)]


def _channel_window_sum(t: torch.Tensor, size: int) -> torch.Tensor:
    """Sum over the `size` channels centred on each channel (zero beyond the ends)."""
    half = (size - 1) // 2
    channels = t.shape[1]
    padded = F.pad(t, (0, 0, 0, 0, half, half))
    total = padded[:, 0:channels].clone()
    for i in range(1, size):
        total += padded[:, i:i + channels]
    return total


class CrossChannelLRN(torch.autograd.Function):
    """LRN across channels with Caffe's analytic backward (CrossChannelBackward_cpu):
    scale = k + alpha/n * window_sum(x^2);  top = x * scale^-beta;
    dx = dtop * scale^-beta - 2 alpha beta / n * x * window_sum(dtop * top / scale)."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        scale = _channel_window_sum(x * x, size).mul_(alpha / size).add_(k)
        power = scale.pow(-beta)          # kept for backward: a fractional power costs more than the rest
        ctx.save_for_backward(x, scale, power)
        ctx.constants = (size, alpha, beta)
        return x * power

    @staticmethod
    def backward(ctx, grad):
        x, scale, power = ctx.saved_tensors
        size, alpha, beta = ctx.constants
        top = x * power                   # the forward's top, bit for bit
        ratio = _channel_window_sum(grad * top / scale, size)
        dx = grad * power - (2.0 * alpha * beta / size) * x * ratio
        return dx, None, None, None, None


# ---------------------------------------------------------------- pooling

MAX, AVE, STOCHASTIC = pb.PoolingParameter.MAX, pb.PoolingParameter.AVE, pb.PoolingParameter.STOCHASTIC
assert (pb.SPPParameter.MAX, pb.SPPParameter.AVE, pb.SPPParameter.STOCHASTIC) == (MAX, AVE, STOCHASTIC)


def caffe_pool_output_size(size: int, kernel: int, pad: int, stride: int, ceil: bool = True) -> int:
    """PoolingLayer::Reshape: ceil (or floor) of (size + 2 pad - kernel) / stride, + 1; with padding, the last
    window must start inside the image (else one fewer)."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@dataclasses.dataclass(frozen=True)
class PoolGeometry:
    """A pooling's (h, w) pairs: input size, kernel, stride, pad, and Caffe's output size."""
    size: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    out: tuple[int, int]

    def padding(self) -> list[int]:
        """F.pad's (left, right, top, bottom) that makes the input exactly the span of Caffe's windows (a negative
        right/bottom pad drops rows no window reaches)."""
        (h, w), (kh, kw), (sh, sw), (ph, pw), (oh, ow) = self.size, self.kernel, self.stride, self.pad, self.out
        return [pw, (ow - 1) * sw + kw - w - pw, ph, (oh - 1) * sh + kh - h - ph]

    def empty_windows(self) -> bool:
        """Whether a window starts past the input (then it holds no input at all)."""
        return any((o - 1) * s - p >= n for n, s, p, o in zip(self.size, self.stride, self.pad, self.out))

    def divisor(self, device, dtype) -> torch.Tensor:
        """AVE's divisor per output (oh, ow): Caffe's pool_size, the window clipped to the padded input."""
        sizes = []
        for n, k, s, p, o in zip(self.size, self.kernel, self.stride, self.pad, self.out):
            start = torch.arange(o, device=device) * s - p
            sizes.append((torch.clamp(start + k, max=n + p) - start).to(dtype))
        return sizes[0][:, None] * sizes[1][None, :]


def pool_geometry(size, kernel, stride, pad, method, ceil: bool, where: str) -> PoolGeometry:
    """Caffe's checks (PoolingLayer::LayerSetUp, Reshape) and output size."""
    if min(kernel) <= 0:
        raise EngineError(f"{where}: Filter dimensions cannot be zero.")
    if min(stride) <= 0:
        raise EngineError(f"{where}: stride must be positive")
    if any(pad):
        if method not in (MAX, AVE):
            raise EngineError(f"{where}: Padding implemented only for average and max pooling.")
        if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
            raise EngineError(f"{where}: pad must be smaller than the kernel (pad {pad[0]}x{pad[1]}, kernel "
                              f"{kernel[0]}x{kernel[1]})")
    out = tuple(caffe_pool_output_size(n, k, p, s, ceil) for n, k, p, s in zip(size, kernel, pad, stride))
    if min(out) <= 0:
        raise EngineError(f"{where}: input {size[0]}x{size[1]} is too small for kernel {kernel[0]}x{kernel[1]}")
    g = PoolGeometry(tuple(size), tuple(kernel), tuple(stride), tuple(pad), out)
    if method != AVE and g.empty_windows():
        name = pb.PoolingParameter.PoolMethod.Name(method)
        raise EngineError(f"{where}: a pooling window starts past the input (input {size[0]}x{size[1]}, kernel "
                          f"{kernel[0]}x{kernel[1]}, stride {stride[0]}x{stride[1]}): Caffe's {name} pooling leaves "
                          f"it undefined (MAX's backward writes out of bounds); not supported")
    return g


def _padded(x: torch.Tensor, g: PoolGeometry, value: float) -> torch.Tensor:
    padding = g.padding()
    return F.pad(x, padding, value=value) if any(padding) else x


def max_pool(x: torch.Tensor, g: PoolGeometry, with_mask: bool):
    """(top, mask or None): the maximum over each window's input elements, the diff going to the first maximum
    in row-major order (as Caffe's strict '>' scan); mask: its index h * width + w in the input plane."""
    xp = _padded(x, g, float("-inf"))
    if not with_mask:
        top, index = F.max_pool2d(xp, g.kernel, g.stride), None
    else:
        top, index = F.max_pool2d(xp, g.kernel, g.stride, return_indices=True)
        width = xp.shape[-1]
        index = ((index // width - g.pad[0]) * g.size[1] + index % width - g.pad[1]).to(x.dtype)
    return top, index


def sum_pool(x: torch.Tensor, g: PoolGeometry) -> torch.Tensor:
    """The sum over each window (zero padding)."""
    return F.avg_pool2d(_padded(x, g, 0.0), g.kernel, g.stride, divisor_override=1)


def ave_pool(x: torch.Tensor, g: PoolGeometry) -> torch.Tensor:
    return sum_pool(x, g) / g.divisor(x.device, x.dtype)


def stochastic_pool(x: torch.Tensor, g: PoolGeometry, train: bool, generator) -> torch.Tensor:
    """Caffe's StoPoolForwardTest (TEST) and StoPoolForwardTrain + StoPoolBackward (TRAIN); see the module."""
    if not train:
        total = sum_pool(x, g)
        positive = total > 0
        return torch.where(positive, sum_pool(x * x, g) / torch.where(positive, total, 1.0), 0.0)
    n, c = x.shape[:2]
    columns = F.unfold(_padded(x, g, 0.0), g.kernel, stride=g.stride)
    columns = columns.reshape(n, c, g.kernel[0] * g.kernel[1], -1)
    running = columns.cumsum(2)
    threshold = torch.rand((n, c, 1, columns.shape[-1]), generator=generator, device=x.device,
                           dtype=x.dtype) * running[:, :, -1:]
    chosen = (running >= threshold).to(torch.uint8).argmax(2, keepdim=True)     # the first one reaching it
    return columns.gather(2, chosen).reshape(n, c, *g.out)


def pool(x: torch.Tensor, method: int, g: PoolGeometry, train: bool = False, generator=None) -> torch.Tensor:
    """The top of `method` pooling (a pooling_param enum value) of x (N, C, H, W)."""
    if method == MAX:
        return max_pool(x, g, False)[0]
    if method == AVE:
        return ave_pool(x, g)
    return stochastic_pool(x, g, train, generator)


def _pair(p, single: str, hw: str, default: int, where: str) -> tuple[int, int]:
    """A pooling_param size: `single` (e.g. kernel_size), or `hw`_h and `hw`_w (both), not both spellings."""
    has_h, has_w = p.HasField(f"{hw}_h"), p.HasField(f"{hw}_w")
    if has_h or has_w:
        if p.HasField(single) or not (has_h and has_w):
            raise EngineError(f"{where}: {single} is {single} OR {hw}_h and {hw}_w are required.")
        return int(getattr(p, f"{hw}_h")), int(getattr(p, f"{hw}_w"))
    value = int(getattr(p, single)) if p.HasField(single) else default
    return value, value


@register
class PoolingLayer(Layer):
    """Caffe's Pooling: MAX (second top: the argmax mask), AVE, STOCHASTIC; kernel_size or kernel_h/w,
    pad, stride, global_pooling, round_mode CEIL or FLOOR (see the module for the geometry)."""
    type_name = "Pooling"
    allowed = {"pooling_param": {"pool", "pad", "pad_h", "pad_w", "kernel_size", "kernel_h", "kernel_w", "stride",
                                 "stride_h", "stride_w", "engine", "global_pooling", "round_mode"}}
    n_tops = (1, 2)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.pooling_param
        n, c, h, w = self.image_bottom(bottom_shapes[0])
        self.method = p.pool
        if len(lp.top) > 1 and self.method != MAX:
            raise EngineError(f"{self.where}: Pooling Layer produces at most 1 top blob(s) as output.")
        if p.global_pooling:
            if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise EngineError(f"{self.where}: with global_pooling, the kernel size cannot be given")
            kernel = (h, w)
        else:
            if not p.HasField("kernel_size") and not (p.HasField("kernel_h") and p.HasField("kernel_w")):
                raise EngineError(f"{self.where}: For non-square filters both kernel_h and kernel_w are required.")
            kernel = _pair(p, "kernel_size", "kernel", 0, self.where)
        pad, stride = _pair(p, "pad", "pad", 0, self.where), _pair(p, "stride", "stride", 1, self.where)
        if p.global_pooling and (any(pad) or stride != (1, 1)):
            raise EngineError(f"{self.where}: with global_pooling, only pad = 0 and stride = 1 are allowed")
        self.geometry = pool_geometry((h, w), kernel, stride, pad, self.method,
                                      p.round_mode == pb.PoolingParameter.CEIL, self.where)
        self.train_phase = self.method == STOCHASTIC and ctx.phase == "TRAIN"
        self.generator = None       # set by the Net where train_phase: the net's random stream on the device
        self.top_shapes = [(n, c) + self.geometry.out] * len(lp.top)

    def forward(self, x):
        if self.method == MAX:
            top, mask = max_pool(x, self.geometry, len(self.top_shapes) > 1)
            return [top] if mask is None else [top, mask]
        return [pool(x, self.method, self.geometry, self.train_phase, self.generator)]


@register
class SPPLayer(Layer):
    """Caffe's SPP (spatial pyramid pooling): level i pools into 2^i x 2^i bins (kernel and stride
    ceil(size / 2^i), pad (kernel 2^i - size + 1) / 2, Caffe's pooling geometry); the levels' tops, flattened,
    are concatenated along axis 1 (pyramid_height 1: the one pooling's 4-D top)."""
    type_name = "SPP"
    allowed = {"spp_param": {"pyramid_height", "pool", "engine"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.spp_param
        n, c, h, w = self.image_bottom(bottom_shapes[0])
        if p.pyramid_height <= 0:
            raise EngineError(f"{self.where}: spp_param.pyramid_height must be set (>= 1)")
        self.method = p.pool
        self.levels = []
        for level in range(p.pyramid_height):
            bins = 2 ** level
            kernel = (-(-h // bins), -(-w // bins))
            pad = ((kernel[0] * bins - h + 1) // 2, (kernel[1] * bins - w + 1) // 2)
            self.levels.append(pool_geometry((h, w), kernel, kernel, pad, self.method, True,
                                             f"{self.where}, pyramid level {level}"))
        self.train_phase = self.method == STOCHASTIC and ctx.phase == "TRAIN"
        self.generator = None
        if len(self.levels) == 1:
            self.top_shapes = [(n, c) + self.levels[0].out]
        else:
            self.top_shapes = [(n, sum(c * g.out[0] * g.out[1] for g in self.levels))]

    def forward(self, x):
        tops = [pool(x, self.method, g, self.train_phase, self.generator) for g in self.levels]
        if len(tops) == 1:
            return tops
        return [torch.cat([t.flatten(1) for t in tops], 1)]
