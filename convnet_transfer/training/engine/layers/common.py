"""Common layers: inner product, softmax, and the layers that move, join or split blobs."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from convnet_transfer.formats.protoio import pb
from ..errors import EngineError
from .base import Layer, canonical_axis, register


@register
class InnerProductLayer(Layer):
    type_name = "InnerProduct"
    allowed = {"inner_product_param": {"num_output", "bias_term", "weight_filler", "bias_filler", "axis",
                                       "transpose"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.inner_product_param
        shape = bottom_shapes[0]
        self.axis = canonical_axis(p.axis, len(shape), self.where)
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


@register
class SoftmaxLayer(Layer):
    type_name = "Softmax"
    allowed = {"softmax_param": {"axis", "engine"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        self.axis = canonical_axis(lp.softmax_param.axis, len(bottom_shapes[0]), self.where)
        self.top_shapes = [tuple(bottom_shapes[0])]

    def forward(self, x):
        return [torch.softmax(x, dim=self.axis)]


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
        start = canonical_axis(lp.flatten_param.axis, len(shape), self.where)
        end = canonical_axis(lp.flatten_param.end_axis, len(shape), self.where)
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
        self.axis = canonical_axis(axis, len(shape), self.where)
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
