"""Neuron layers: one bottom, one top of the same shape, may run in place.

Each forward is written so that autograd gives Caffe's Backward_cpu, ties included: ReLU/ELU/PReLU take the
negative branch at x = 0 (Caffe's `x <= 0`), Clip passes the gradient at its bounds (`min <= x <= max`), AbsVal
has gradient 0 at 0, Power with scale or power 0 has gradient 0, Threshold has no backward at all (as Caffe).

In place (top = bottom), Caffe's Backward of ReLU (negative_slope < 0), ELU (alpha < 0), BNLL and Clip reads
the bottom it has overwritten with the top: its gradient is then the derivative's formula evaluated at the top.
Those layers give that gradient (`caffe_in_place`); where the two agree (ReLU with negative_slope >= 0, ELU with
alpha >= 0: every paper net) autograd runs as usual. In-place Log and Power also overwrite the top diff before
reading it: a backward pass through them is refused (forward is fine). AbsVal in place is refused, as Caffe.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from convnet_transfer.formats.protoio import pb
from ..errors import EngineError
from .base import Elementwise, Layer, refuse_backward, register


class _GivenBackward(torch.autograd.Function):
    """top = the given values; bottom diff = top diff * the given derivative (Caffe's Backward, when it is not the
    derivative of its Forward)."""

    @staticmethod
    def forward(ctx, bottom, top, derivative):
        ctx.save_for_backward(derivative)
        return top.clone()

    @staticmethod
    def backward(ctx, grad):
        (derivative,) = ctx.saved_tensors
        return grad * derivative, None, None


class Neuron(Elementwise):
    """A neuron layer. In place: `in_place_derivative(top)`, where defined, is Caffe's backward factor; where
    `in_place_refused` is set, a backward pass is refused with it."""
    in_place_derivative = None
    in_place_refused = ""

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        self.in_place = lp.top[0] == lp.bottom[0]

    def caffe_in_place(self, x, top):
        """`top`, with Caffe's in-place gradient when the layer runs in place (or its refusal)."""
        if not (self.in_place and x.requires_grad):
            return top
        if self.in_place_refused:
            return refuse_backward(top, x, f"{self.where}: in place, {self.in_place_refused}; give it its own top")
        if self.in_place_derivative is None:
            return top
        top = top.detach()
        return _GivenBackward.apply(x, top, self.in_place_derivative(top))


@register
class ReLULayer(Neuron):
    type_name = "ReLU"
    allowed = {"relu_param": {"negative_slope", "engine"}}

    def forward(self, x):
        slope = self.lp.relu_param.negative_slope
        top = F.leaky_relu(x, slope) if slope else F.relu(x)
        return [self.caffe_in_place(x, top) if slope < 0 else top]

    def in_place_derivative(self, top):
        return torch.where(top > 0, 1.0, self.lp.relu_param.negative_slope).to(top.dtype)


def _neuron(type_name: str, function, param: str | None = None, in_place_derivative=None) -> type[Layer]:
    """Register a neuron layer without parameters of its own: top = function(bottom)."""
    return register(type(f"{type_name}Layer", (Neuron,), {
        "type_name": type_name, "allowed": {param: {"engine"}} if param else {},
        "in_place_derivative": staticmethod(in_place_derivative) if in_place_derivative else None,
        "forward": lambda self, x: [self.caffe_in_place(x, function(x))]}))


_neuron("Sigmoid", torch.sigmoid, "sigmoid_param")
_neuron("TanH", torch.tanh, "tanh_param")
# log(1 + e^x); gradient sigmoid(x) (Caffe's clamp of x at 50 there changes nothing in fp32)
_neuron("BNLL", F.softplus, in_place_derivative=lambda top: torch.sigmoid(top.clamp(max=50)))


@register
class AbsValLayer(Neuron):
    type_name = "AbsVal"

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        if self.in_place:
            raise EngineError(f"{self.where}: AbsVal Layer does not allow in-place computation.")

    def forward(self, x):
        return [torch.abs(x)]


@register
class ELULayer(Neuron):
    """top = x (x > 0), alpha (e^x - 1) (x <= 0); gradient alpha e^x at x <= 0."""
    type_name = "ELU"
    allowed = {"elu_param": {"alpha"}}

    def forward(self, x):
        alpha = self.lp.elu_param.alpha
        top = F.elu(x, alpha)
        return [self.caffe_in_place(x, top) if alpha < 0 else top]

    def in_place_derivative(self, top):
        return torch.where(top > 0, torch.ones_like(top), top + self.lp.elu_param.alpha)


@register
class PReLULayer(Layer):
    """top = max(x, 0) + slope[c] min(x, 0): one slope per channel (axis 1), or one for all (channel_shared, a
    0-axis blob); filler default constant 0.25. In place is fine: autograd keeps the bottom (Caffe copies it)."""
    type_name = "PReLU"
    allowed = {"prelu_param": {"filler", "channel_shared"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        shape = tuple(bottom_shapes[0])
        if len(shape) < 2:
            raise EngineError(f"{self.where}: Number of axes of bottom blob must be >=2.")
        param = lp.prelu_param
        filler = param.filler if param.HasField("filler") else pb.FillerParameter(type="constant", value=0.25)
        self.add_blob(() if param.channel_shared else (shape[1],), filler)
        self.top_shapes = [shape]

    def forward(self, x):
        (slope,) = self.blobs
        if slope.dim():
            slope = slope.reshape((1, -1) + (1,) * (x.dim() - 2))
        return [torch.where(x > 0, x, x * slope)]


# Why an in-place Log or Power cannot run backward (their Backward_cpu writes bottom_diff = top_diff, then reads it)
OVERWRITES_TOP_DIFF = ("Caffe's Backward overwrites the top diff before reading it (the bottom's gradient would be "
                       "the squared derivative, whatever the top diff)")


def _log_base(base: float, where: str, field: str) -> float:
    """log(base), base -1 meaning e (Caffe's Exp/Log LayerSetUp, its checks)."""
    if base == -1:
        return 1.0
    if not base > 0:
        raise EngineError(f"{where}: {field}.base must be strictly positive (or -1 for e), got {base}")
    return math.log(base)


@register
class ExpLayer(Neuron):
    """top = base^(shift + scale x) = base^shift * e^(scale log(base) x); base -1 is e."""
    type_name = "Exp"
    allowed = {"exp_param": {"base", "scale", "shift"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.exp_param
        self.inner_scale = _log_base(p.base, self.where, "exp_param") * p.scale
        self.outer_scale = 1.0 if p.shift == 0 else (math.exp(p.shift) if p.base == -1 else p.base ** p.shift)

    def forward(self, x):
        top = torch.exp(x if self.inner_scale == 1 else x * self.inner_scale)
        return [top if self.outer_scale == 1 else top * self.outer_scale]


@register
class LogLayer(Neuron):
    """top = log_base(shift + scale x); base -1 is e."""
    type_name = "Log"
    allowed = {"log_param": {"base", "scale", "shift"}}
    in_place_refused = OVERWRITES_TOP_DIFF

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        log_base = _log_base(lp.log_param.base, self.where, "log_param")
        if log_base == 0:
            raise EngineError(f"{self.where}: log_param.base 1 has no logarithm (Caffe: Inf result: 1/log(base))")
        self.base_scale = 1.0 / log_base

    def affine(self, x):
        p = self.lp.log_param
        y = x if p.scale == 1 else x * p.scale
        return y if p.shift == 0 else y + p.shift

    def forward(self, x):
        top = torch.log(self.affine(x))
        return [self.caffe_in_place(x, top if self.base_scale == 1 else top * self.base_scale)]


@register
class PowerLayer(Neuron):
    """top = (shift + scale x)^power; scale or power 0 gives a constant top (1, or shift^power) and gradient 0."""
    type_name = "Power"
    allowed = {"power_param": {"power", "scale", "shift"}}
    in_place_refused = OVERWRITES_TOP_DIFF

    def forward(self, x):
        p = self.lp.power_param
        if p.power * p.scale == 0:
            return [torch.full_like(x, 1.0) if p.power == 0 else torch.full_like(x, p.shift) ** p.power]
        top = x if p.scale == 1 else x * p.scale
        top = top if p.shift == 0 else top + p.shift
        return [self.caffe_in_place(x, top if p.power == 1 else top ** p.power)]


@register
class ClipLayer(Neuron):
    """top = max(min, min(x, max)); gradient passes where min <= x <= max (bounds included). In place, Caffe tests
    the clipped top: the gradient passes everywhere."""
    type_name = "Clip"
    allowed = {"clip_param": {"min", "max"}}

    def forward(self, x):
        low, high = self.lp.clip_param.min, self.lp.clip_param.max
        if low > high:      # Caffe's max(min, min(x, max)) is min everywhere, with no gradient
            return [torch.full_like(x, low)]
        return [self.caffe_in_place(x, torch.clamp(x, low, high))]

    def in_place_derivative(self, top):
        low, high = self.lp.clip_param.min, self.lp.clip_param.max
        return ((top >= low) & (top <= high)).to(top.dtype)


@register
class SwishLayer(Neuron):
    """top = x sigmoid(beta x)."""
    type_name = "Swish"
    allowed = {"swish_param": {"beta"}, "sigmoid_param": {"engine"}}

    def forward(self, x):
        beta = self.lp.swish_param.beta
        return [x * torch.sigmoid(x * beta if beta != 1 else x)]


@register
class ThresholdLayer(Neuron):
    """top = 1 if x > threshold else 0. A backward pass through it is an EngineError, where Caffe aborts."""
    type_name = "Threshold"
    allowed = {"threshold_param": {"threshold"}}

    def forward(self, x):
        top = (x > self.lp.threshold_param.threshold).to(x.dtype)
        if not x.requires_grad:
            return [top]
        return [refuse_backward(top, x, f"{self.where}: Caffe has no backward for Threshold (Backward_cpu is "
                                 f"NOT_IMPLEMENTED and aborts); keep it off the path to the loss")]


@register
class DropoutLayer(Neuron):
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
