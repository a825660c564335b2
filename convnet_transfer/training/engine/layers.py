"""Caffe's layers as torch modules, with Caffe's shapes, parameters and numerics.

A registry, `LAYERS = {"Convolution": ConvolutionLayer, ...}`, maps Caffe's type strings to classes. Each class
declares the `*_param` messages it reads and, for each, the fields it implements; the Net checks every layer's
LayerParameter against that list (`check_fields`), so a field the engine would ignore is an EngineError naming
the layer and the field, never silently dropped. A field left at its default value is always accepted.

Each layer is built from its LayerParameter and the shapes of its bottoms (as Caffe's LayerSetUp + Reshape),
exposes `top_shapes`, its parameter blobs `blobs` (an nn.ParameterList, Caffe's blob order) and
`forward(*bottoms) -> list of tops`. Gradients come from autograd; where Caffe's backward differs from the
derivative of its forward (the loss clamp, pooling ties), the forward is written so that autograd gives Caffe's.

Data layers (Data, ImageData, ...) are not here: the Net takes their tops as inputs (see net.py).
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from convnet_transfer.formats.protoio import pb
from .errors import EngineError
from .fillers import fill

__all__ = ["LAYERS", "CAFFE_DATA_LAYER_TYPES", "LOSS_LAYER_TYPES", "Layer", "BuildContext", "check_fields",
           "caffe_pool_output_size", "register", "CrossChannelLRN"]

# Every data layer type of Caffe: the Net takes their tops as inputs (data.ENGINE_DATA_LAYER_TYPES: those it reads).
CAFFE_DATA_LAYER_TYPES = {"Data", "ImageData", "WindowData", "MemoryData", "HDF5Data", "DummyData"}
# Caffe's loss layers: top 0 has loss_weight 1 unless the layer says otherwise.
LOSS_LAYER_TYPES = {"SoftmaxWithLoss", "EuclideanLoss", "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss",
                    "SigmoidCrossEntropyLoss", "ContrastiveLoss"}
FLT_MIN = 1.1754943508222875e-38

# LayerParameter fields every layer may carry (handled by the Net)
GENERIC_FIELDS = {"name", "type", "bottom", "top", "phase", "loss_weight", "param", "blobs", "propagate_down",
                  "include", "exclude"}


@dataclasses.dataclass
class BuildContext:
    """What a layer needs besides its LayerParameter: the phase, where to put parameters, how to fill them."""
    phase: str = "TRAIN"
    generator: torch.Generator | None = None   # CPU generator for fillers
    meta: bool = False                         # parameters on the meta device, not filled (shape checks only)


def _is_default(message, field, value) -> bool:
    if field.is_repeated:
        return len(value) == 0
    if field.message_type is not None:
        return False
    return value == field.default_value


def layer_where(lp: pb.LayerParameter) -> str:
    """How an error names a layer: "layer 'conv1' (type Convolution)"."""
    return f"layer '{lp.name}' (type {lp.type})"


def check_fields(lp: pb.LayerParameter, allowed: dict[str, set[str] | None]) -> None:
    """EngineError if `lp` sets a LayerParameter field, or a field of an allowed `*_param`, outside `allowed`.

    `allowed` maps "<x>_param" to the set of its fields the layer implements (None: any)."""
    for field, value in lp.ListFields():
        if field.name in GENERIC_FIELDS:
            continue
        if field.name not in allowed:
            raise EngineError(f"{layer_where(lp)}: field '{field.name}' is not used by a {lp.type} layer (Caffe "
                              f"ignores it too); remove it")
        fields = allowed[field.name]
        if fields is None:
            continue
        for sub, sub_value in value.ListFields():
            if sub.name not in fields and not _is_default(value, sub, sub_value):
                raise EngineError(f"{layer_where(lp)}: {field.name}.{sub.name} is not supported by this engine")


def _canonical_axis(axis: int, n_axes: int, where: str) -> int:
    if not -n_axes <= axis < n_axes:
        raise EngineError(f"{where}: axis {axis} out of range for a {n_axes}-axis blob")
    return axis % n_axes


class Layer(nn.Module):
    """Base class: checks fields, creates parameter blobs, knows its tops' shapes."""
    type_name = ""
    allowed: dict[str, set[str] | None] = {}
    n_bottoms: tuple[int, int] = (1, 1)     # (min, max)
    n_tops: tuple[int, int] = (1, 1)

    def __init__(self, lp: pb.LayerParameter, bottom_shapes: list[tuple[int, ...]], ctx: BuildContext):
        super().__init__()
        self.name = lp.name
        self.where = layer_where(lp)
        check_fields(lp, self.allowed)
        lo, hi = self.n_bottoms
        if not lo <= len(bottom_shapes) <= hi:
            raise EngineError(f"{self.where}: takes {lo}..{hi} bottoms, got {len(bottom_shapes)}")
        lo, hi = self.n_tops
        if not lo <= len(lp.top) <= hi:
            raise EngineError(f"{self.where}: makes {lo}..{hi} tops, got {len(lp.top)}")
        self.lp = lp
        self.ctx = ctx
        self.blobs = nn.ParameterList()
        self.top_shapes: list[tuple[int, ...]] = []

    def image_bottom(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """`shape`, which must be 4-D (N, C, H, W): else an EngineError naming the layer."""
        if len(shape) != 4:
            raise EngineError(f"{self.where}: needs a 4-D bottom (N, C, H, W), got shape {shape}")
        return shape

    def add_blob(self, shape: tuple[int, ...], filler: pb.FillerParameter) -> None:
        """Parameter blob number len(self.blobs): from the layer's `blobs` when the prototxt gives them, else
        from `filler` (Caffe: Layer() copies layer_param.blobs; LayerSetUp fills only when there are none)."""
        index = len(self.blobs)
        shape = tuple(int(d) for d in shape)
        if self.ctx.meta:
            data = torch.empty(shape, device="meta")
        elif len(self.lp.blobs):
            if len(self.lp.blobs) <= index:
                raise EngineError(f"{self.where}: the prototxt gives {len(self.lp.blobs)} blobs, the layer needs more")
            source = self.lp.blobs[index]
            values = source.double_data or source.data
            if len(values) != math.prod(shape):
                raise EngineError(f"{self.where}: blob {index} in the prototxt has {len(values)} values, "
                                  f"the layer needs shape {shape}")
            data = torch.tensor(list(values), dtype=torch.float32).reshape(shape)
        else:
            data = fill(shape, filler, self.ctx.generator, self.where)
        self.blobs.append(nn.Parameter(data))


LAYERS: dict[str, type[Layer]] = {}


def register(cls):
    LAYERS[cls.type_name] = cls
    return cls


def _two(values, h, w, has_hw: bool, default: int, where: str, name: str) -> tuple[int, int]:
    """Caffe's kernel/pad/stride spelling: `x_h`/`x_w`, or a repeated `x` with 0, 1 or 2 values."""
    if has_hw:
        return int(h), int(w)
    values = list(values)
    if len(values) == 0:
        return default, default
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    raise EngineError(f"{where}: {name} has {len(values)} values; this engine runs 2-D convolutions only")


@register
class ConvolutionLayer(Layer):
    type_name = "Convolution"
    allowed = {"convolution_param": {"num_output", "bias_term", "pad", "kernel_size", "stride", "dilation", "pad_h",
                                     "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w", "group",
                                     "weight_filler", "bias_filler", "engine", "force_nd_im2col", "axis"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.convolution_param
        n, c, h, w = self.image_bottom(bottom_shapes[0])
        if p.axis != 1:
            raise EngineError(f"{self.where}: convolution_param.axis {p.axis} is not supported (only 1)")
        if not p.HasField("num_output") or p.num_output == 0:
            raise EngineError(f"{self.where}: convolution_param.num_output must be set")
        kh, kw = _two(p.kernel_size, p.kernel_h, p.kernel_w, p.HasField("kernel_h"), 0, self.where, "kernel_size")
        ph, pw = _two(p.pad, p.pad_h, p.pad_w, p.HasField("pad_h"), 0, self.where, "pad")
        sh, sw = _two(p.stride, p.stride_h, p.stride_w, p.HasField("stride_h"), 1, self.where, "stride")
        dh, dw = _two(p.dilation, 0, 0, False, 1, self.where, "dilation")
        if kh <= 0 or kw <= 0 or sh <= 0 or sw <= 0:
            raise EngineError(f"{self.where}: kernel size and stride must be positive")
        group = int(p.group)
        if c % group or p.num_output % group:
            raise EngineError(f"{self.where}: {c} input channels and num_output {p.num_output} must both be "
                              f"multiples of group {group}")
        oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
        ow = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
        if oh <= 0 or ow <= 0:
            raise EngineError(f"{self.where}: input {h}x{w} is too small for kernel {kh}x{kw} (pad {ph}, {pw})")
        self.stride, self.padding, self.dilation, self.groups = (sh, sw), (ph, pw), (dh, dw), group
        self.add_blob((p.num_output, c // group, kh, kw), p.weight_filler)
        self.bias_term = p.bias_term
        if p.bias_term:
            self.add_blob((p.num_output,), p.bias_filler)
        self.top_shapes = [(n, int(p.num_output), oh, ow)]

    def forward(self, x):
        bias = self.blobs[1] if self.bias_term else None
        return [F.conv2d(x, self.blobs[0], bias, self.stride, self.padding, self.dilation, self.groups)]


@register
class InnerProductLayer(Layer):
    type_name = "InnerProduct"
    allowed = {"inner_product_param": {"num_output", "bias_term", "weight_filler", "bias_filler", "axis",
                                       "transpose"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.inner_product_param
        shape = bottom_shapes[0]
        self.axis = _canonical_axis(p.axis, len(shape), self.where)
        k = math.prod(shape[self.axis:])
        n_out = int(p.num_output)
        if n_out == 0:
            raise EngineError(f"{self.where}: inner_product_param.num_output must be set")
        self.transpose = p.transpose
        self.add_blob((k, n_out) if p.transpose else (n_out, k), p.weight_filler)
        self.bias_term = p.bias_term
        if p.bias_term:
            self.add_blob((n_out,), p.bias_filler)
        self.top_shapes = [tuple(shape[:self.axis]) + (n_out,)]

    def forward(self, x):
        x = x.reshape(tuple(x.shape[:self.axis]) + (-1,))
        weight = self.blobs[0].t() if self.transpose else self.blobs[0]
        bias = self.blobs[1] if self.bias_term else None
        return [F.linear(x, weight, bias)]


class _Elementwise(Layer):
    """A neuron layer: one bottom, one top of the same shape (may be in place)."""

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        self.top_shapes = [tuple(bottom_shapes[0])]


@register
class ReLULayer(_Elementwise):
    type_name = "ReLU"
    allowed = {"relu_param": {"negative_slope", "engine"}}

    def forward(self, x):
        slope = self.lp.relu_param.negative_slope
        return [F.leaky_relu(x, slope) if slope else F.relu(x)]


def _neuron(type_name: str, function, param: str | None = None) -> type[Layer]:
    """Register a neuron layer without parameters of its own: top = function(bottom)."""
    return register(type(f"{type_name}Layer", (_Elementwise,), {
        "type_name": type_name, "allowed": {param: {"engine"}} if param else {},
        "forward": lambda self, x: [function(x)]}))


_neuron("Sigmoid", torch.sigmoid, "sigmoid_param")
_neuron("TanH", torch.tanh, "tanh_param")
_neuron("AbsVal", torch.abs)


@register
class PowerLayer(_Elementwise):
    type_name = "Power"
    allowed = {"power_param": {"power", "scale", "shift"}}

    def forward(self, x):
        p = self.lp.power_param
        return [(p.shift + p.scale * x) ** p.power]


@register
class DropoutLayer(_Elementwise):
    """TRAIN: top = bottom * mask / (1 - ratio), mask ~ Bernoulli(1 - ratio); TEST: top = bottom."""
    type_name = "Dropout"
    allowed = {"dropout_param": {"dropout_ratio"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        self.ratio = float(lp.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise EngineError(f"{self.where}: dropout_ratio must be in [0, 1), got {self.ratio}")
        self.scale = 1.0 / (1.0 - self.ratio)
        self.train_phase = ctx.phase == "TRAIN"
        self.generator = None       # set by the Net: a torch.Generator on the blobs' device

    def forward(self, x):
        if not self.train_phase:
            return [x]
        mask = torch.empty_like(x).bernoulli_(1.0 - self.ratio, generator=self.generator)
        return [x * mask * self.scale]


def caffe_pool_output_size(size: int, kernel: int, pad: int, stride: int, ceil: bool = True,
                           torch_rule: bool = False) -> int:
    """PoolingLayer::Reshape: ceil (or floor) of (size + 2 pad - kernel) / stride, + 1; with padding, the last
    window must start inside the image (else one fewer). torch_rule: PyTorch's size, which drops such a window
    in ceil mode with or without padding."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if (ceil if torch_rule else pad) and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@register
class PoolingLayer(Layer):
    """MAX and AVE pooling with Caffe's output size. AVE divides by the window clipped to the padded input
    (PyTorch's count_include_pad=True is that rule); MAX ignores padding and routes the gradient to the first
    maximum, as Caffe does."""
    type_name = "Pooling"
    allowed = {"pooling_param": {"pool", "pad", "pad_h", "pad_w", "kernel_size", "kernel_h", "kernel_w", "stride",
                                 "stride_h", "stride_w", "engine", "global_pooling", "round_mode"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.pooling_param
        n, c, h, w = self.image_bottom(bottom_shapes[0])
        if p.pool not in (pb.PoolingParameter.MAX, pb.PoolingParameter.AVE):
            raise EngineError(f"{self.where}: pooling_param.pool {pb.PoolingParameter.PoolMethod.Name(p.pool)} "
                              f"is not supported (MAX and AVE are)")
        self.pool = p.pool
        if p.global_pooling:
            if p.HasField("kernel_size") or p.HasField("kernel_h"):
                raise EngineError(f"{self.where}: with global_pooling, the kernel size cannot be given")
            kh, kw = h, w
        elif p.HasField("kernel_h") or p.HasField("kernel_w"):
            kh, kw = p.kernel_h, p.kernel_w
        else:
            kh = kw = p.kernel_size
        ph, pw = (p.pad_h, p.pad_w) if p.HasField("pad_h") or p.HasField("pad_w") else (p.pad, p.pad)
        sh, sw = (p.stride_h, p.stride_w) if p.HasField("stride_h") or p.HasField("stride_w") else (p.stride, p.stride)
        if kh <= 0 or kw <= 0:
            raise EngineError(f"{self.where}: kernel size must be set and positive")
        if p.global_pooling and (ph or pw or sh != 1 or sw != 1):
            raise EngineError(f"{self.where}: with global_pooling, only pad = 0 and stride = 1 are allowed")
        if ph >= kh or pw >= kw:
            raise EngineError(f"{self.where}: pad must be smaller than the kernel")
        ceil = p.round_mode == pb.PoolingParameter.CEIL
        oh = caffe_pool_output_size(h, kh, ph, sh, ceil)
        ow = caffe_pool_output_size(w, kw, pw, sw, ceil)
        self.kernel, self.stride, self.padding = (kh, kw), (sh, sw), (ph, pw)
        # PyTorch computes the same size in ceil mode unless a window would start past the input (stride >
        # kernel without padding): refuse that geometry rather than compute something else.
        if self.pool == pb.PoolingParameter.MAX and (2 * ph > kh or 2 * pw > kw):
            raise EngineError(f"{self.where}: MAX pooling with pad > kernel/2 is not supported")
        self.ceil_mode = ceil
        th = caffe_pool_output_size(h, kh, ph, sh, ceil, torch_rule=True)
        tw = caffe_pool_output_size(w, kw, pw, sw, ceil, torch_rule=True)
        if (th, tw) != (oh, ow):
            raise EngineError(f"{self.where}: this geometry (input {h}x{w}, kernel {kh}x{kw}, stride {sh}x{sw}, "
                              f"pad {ph}x{pw}) makes Caffe pool windows that start outside the input; not supported")
        self.top_shapes = [(n, c, oh, ow)]

    def forward(self, x):
        if self.pool == pb.PoolingParameter.MAX:
            return [F.max_pool2d(x, self.kernel, self.stride, self.padding, ceil_mode=self.ceil_mode)]
        return [F.avg_pool2d(x, self.kernel, self.stride, self.padding, ceil_mode=self.ceil_mode,
                             count_include_pad=True)]


@register
class LRNLayer(_Elementwise):
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


@register
class SoftmaxLayer(Layer):
    type_name = "Softmax"
    allowed = {"softmax_param": {"axis", "engine"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        self.axis = _canonical_axis(lp.softmax_param.axis, len(bottom_shapes[0]), self.where)
        self.top_shapes = [tuple(bottom_shapes[0])]

    def forward(self, x):
        return [torch.softmax(x, dim=self.axis)]


def _outer_inner(shape, axis):
    return math.prod(shape[:axis]), math.prod(shape[axis + 1:])


def _check_labels(label: torch.Tensor, classes: int, valid, where: str) -> None:
    """Labels must be integers in 0..classes-1 (Caffe only DCHECKs this). Checked on the CPU only: on a GPU the
    check would stall the pipeline (torch's own device assert fires instead)."""
    if label.device.type != "cpu" or label.numel() == 0:
        return
    checked = label if valid is None else label[valid]
    if not checked.numel():
        return
    low, high = int(checked.min()), int(checked.max())
    if low < 0 or high >= classes:
        raise EngineError(f"{where}: label value {high if high >= classes else low} is outside 0..{classes - 1} "
                          f"(the net predicts {classes} classes): the database's labels do not fit this net; "
                          f"check the split's files.txt and num_output")


@register
class SoftmaxWithLossLayer(Layer):
    """loss = -sum over non-ignored positions of log(max(prob[label], FLT_MIN)) / normalizer.
    normalizer: VALID (default) = number of non-ignored labels; FULL = outer*inner; BATCH_SIZE = outer; NONE = 1;
    at least 1. The legacy `normalize: false` means BATCH_SIZE, `normalize: true` VALID. Gradient:
    (prob - onehot) / normalizer at non-ignored positions, 0 elsewhere (the FLT_MIN clamp does not cut it)."""
    type_name = "SoftmaxWithLoss"
    allowed = {"softmax_param": {"axis", "engine"}, "loss_param": {"ignore_label", "normalization", "normalize"}}
    n_bottoms = (2, 2)
    n_tops = (1, 2)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        shape = bottom_shapes[0]
        self.axis = _canonical_axis(lp.softmax_param.axis, len(shape), self.where)
        outer, inner = _outer_inner(shape, self.axis)
        if outer * inner != math.prod(bottom_shapes[1]):
            raise EngineError(f"{self.where}: number of labels must match number of predictions; e.g., if softmax "
                              f"axis == 1 and prediction shape is (N, C, H, W), label count (number of labels) "
                              f"must be N*H*W, with integer values in {{0, 1, ..., C-1}}")
        lparam = lp.loss_param
        self.ignore_label = lparam.ignore_label if lparam.HasField("ignore_label") else None
        if not lparam.HasField("normalization") and lparam.HasField("normalize"):
            self.normalization = pb.LossParameter.VALID if lparam.normalize else pb.LossParameter.BATCH_SIZE
        else:
            self.normalization = lparam.normalization
        self.top_shapes = [()] + ([tuple(shape)] if len(lp.top) > 1 else [])

    def forward(self, x, label):
        axis = self.axis
        log_prob = torch.log_softmax(x, dim=axis)
        classes = x.shape[axis]
        moved = log_prob.movedim(axis, -1).reshape(-1, classes)
        label = label.reshape(-1).long()
        if self.ignore_label is not None:
            valid = label != self.ignore_label
            safe = torch.where(valid, label, torch.zeros_like(label))
        else:
            valid = None
            safe = label
        _check_labels(safe, classes, valid, self.where)
        picked = moved.gather(1, safe.unsqueeze(1)).squeeze(1)
        # forward value log(max(prob, FLT_MIN)); the gradient stays that of log_softmax, as in Caffe
        floor = math.log(FLT_MIN)
        picked = picked + (picked.clamp(min=floor) - picked).detach()
        if valid is not None:
            picked = picked * valid
            count = valid.sum()
        else:
            count = None
        loss = -picked.sum() / self._normalizer(x.shape, count)
        tops = [loss]
        if len(self.lp.top) > 1:
            tops.append(torch.softmax(x, dim=axis))
        return tops

    def _normalizer(self, shape, valid_count):
        outer, inner = _outer_inner(shape, self.axis)
        mode = self.normalization
        if mode == pb.LossParameter.FULL:
            value = outer * inner
        elif mode == pb.LossParameter.VALID:
            value = outer * inner if valid_count is None else valid_count
        elif mode == pb.LossParameter.BATCH_SIZE:
            value = outer
        else:
            value = 1
        if isinstance(value, torch.Tensor):
            return value.clamp(min=1).to(torch.float32)
        return float(max(1, value))


@register
class AccuracyLayer(Layer):
    """Fraction of non-ignored positions whose true class is among the top_k scores. Ties count against:
    a position is correct when fewer than top_k other classes score >= the true class (accuracy_layer.cpp).
    Optional second top: per-class accuracy."""
    type_name = "Accuracy"
    allowed = {"accuracy_param": {"top_k", "axis", "ignore_label"}}
    n_bottoms = (2, 2)
    n_tops = (1, 2)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.accuracy_param
        shape = bottom_shapes[0]
        self.axis = _canonical_axis(p.axis, len(shape), self.where)
        self.top_k = int(p.top_k)
        if self.top_k > shape[self.axis]:
            raise EngineError(f"{self.where}: top_k {self.top_k} must be at most the number of classes "
                              f"{shape[self.axis]}")
        outer, inner = _outer_inner(shape, self.axis)
        if outer * inner != math.prod(bottom_shapes[1]):
            raise EngineError(f"{self.where}: number of labels must match number of predictions")
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None
        self.top_shapes = [()] + ([(shape[self.axis],)] if len(lp.top) > 1 else [])

    @torch.no_grad()
    def forward(self, x, label):
        classes = x.shape[self.axis]
        scores = x.movedim(self.axis, -1).reshape(-1, classes)
        label = label.reshape(-1).long()
        valid = label != self.ignore_label if self.ignore_label is not None else torch.ones_like(label, dtype=bool)
        safe = torch.where(valid, label, torch.zeros_like(label))
        _check_labels(safe, classes, valid, self.where)
        true_score = scores.gather(1, safe.unsqueeze(1))
        better = (scores >= true_score).sum(dim=1) - 1
        correct = (better < self.top_k) & valid
        count = valid.sum()
        accuracy = torch.where(count > 0, correct.sum().float() / count.clamp(min=1).float(),
                               torch.zeros((), device=x.device))
        tops = [accuracy]
        if len(self.lp.top) > 1:
            per_class_n = torch.zeros(classes, device=x.device).index_add_(0, safe[valid],
                                                                           torch.ones_like(safe[valid], dtype=torch.float32))
            per_class_ok = torch.zeros(classes, device=x.device).index_add_(0, safe[correct],
                                                                            torch.ones_like(safe[correct], dtype=torch.float32))
            tops.append(torch.where(per_class_n > 0, per_class_ok / per_class_n.clamp(min=1), per_class_n))
        return tops


@register
class InputLayer(Layer):
    """Tops of the given shapes; their values come from the caller (Net.forward's `blobs`)."""
    type_name = "Input"
    allowed = {"input_param": {"shape"}}
    n_bottoms = (0, 0)
    n_tops = (1, 1 << 30)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        shapes = [tuple(int(d) for d in s.dim) for s in lp.input_param.shape]
        if len(shapes) not in (1, len(lp.top)):
            raise EngineError(f"{self.where}: input_param must give one shape, or one per top")
        self.top_shapes = shapes * len(lp.top) if len(shapes) == 1 else shapes

    def forward(self):
        raise EngineError(f"{self.where}: Input tops are given to Net.forward, not computed")


@register
class FlattenLayer(Layer):
    type_name = "Flatten"
    allowed = {"flatten_param": {"axis", "end_axis"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        shape = tuple(bottom_shapes[0])
        if lp.top[0] == lp.bottom[0]:
            raise EngineError(f"{self.where}: Flatten layer does not allow in-place computation")
        start = _canonical_axis(lp.flatten_param.axis, len(shape), self.where)
        end = _canonical_axis(lp.flatten_param.end_axis, len(shape), self.where)
        self.start, self.end = start, end
        self.top_shapes = [shape[:start] + (math.prod(shape[start:end + 1]),) + shape[end + 1:]]

    def forward(self, x):
        return [x.flatten(self.start, self.end)]


@register
class ConcatLayer(Layer):
    type_name = "Concat"
    allowed = {"concat_param": {"axis", "concat_dim"}}
    n_bottoms = (1, 1 << 30)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.concat_param
        if p.HasField("axis") and p.HasField("concat_dim"):
            raise EngineError(f"{self.where}: either axis or concat_dim should be specified; not both")
        shape = tuple(bottom_shapes[0])
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        self.axis = _canonical_axis(axis, len(shape), self.where)
        for other in bottom_shapes[1:]:
            if len(other) != len(shape) or any(a != b for i, (a, b) in enumerate(zip(shape, other)) if i != self.axis):
                raise EngineError(f"{self.where}: bottoms {shape} and {tuple(other)} differ outside axis {self.axis}")
        total = sum(s[self.axis] for s in bottom_shapes)
        self.top_shapes = [shape[:self.axis] + (total,) + shape[self.axis + 1:]]

    def forward(self, *xs):
        return [torch.cat(xs, dim=self.axis)]


@register
class EltwiseLayer(Layer):
    type_name = "Eltwise"
    allowed = {"eltwise_param": {"operation", "coeff", "stable_prod_grad"}}
    n_bottoms = (2, 1 << 30)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.eltwise_param
        if any(tuple(s) != tuple(bottom_shapes[0]) for s in bottom_shapes):
            raise EngineError(f"{self.where}: all bottoms must have the same shape")
        if len(p.coeff) and (p.operation != pb.EltwiseParameter.SUM or len(p.coeff) != len(bottom_shapes)):
            raise EngineError(f"{self.where}: Eltwise coefficients need the SUM operation and one per bottom")
        self.op = p.operation
        self.coeff = list(p.coeff) or [1.0] * len(bottom_shapes)
        self.top_shapes = [tuple(bottom_shapes[0])]

    def forward(self, *xs):
        if self.op == pb.EltwiseParameter.PROD:
            out = xs[0]
            for x in xs[1:]:
                out = out * x
            return [out]
        if self.op == pb.EltwiseParameter.MAX:
            out = xs[0]
            for x in xs[1:]:
                out = torch.where(x > out, x, out)   # first maximum wins, as Caffe's argmax
            return [out]
        out = xs[0] * self.coeff[0] if self.coeff[0] != 1.0 else xs[0]
        for c, x in zip(self.coeff[1:], xs[1:]):
            out = out + (x * c if c != 1.0 else x)
        return [out]


@register
class SplitLayer(Layer):
    type_name = "Split"
    n_tops = (1, 1 << 30)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        self.top_shapes = [tuple(bottom_shapes[0])] * len(lp.top)

    def forward(self, x):
        return [x] * len(self.lp.top)


@register
class SilenceLayer(Layer):
    type_name = "Silence"
    n_bottoms = (1, 1 << 30)
    n_tops = (0, 0)

    def forward(self, *xs):
        return []
