"""Common layers: InnerProduct, Softmax, and the layers that compute, reshape, join, split or select blobs.

Each follows Caffe's Forward and Backward (src/caffe/layers/<x>_layer.cpp). The layers Caffe gives no Backward
(ArgMax) or that refuse to backpropagate to an index bottom (Embed, Filter, BatchReindex) raise an EngineError
naming the layer when a gradient would reach that bottom through them, where Caffe aborts (`refuse_backward`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from convnet_transfer.formats.protoio import pb
from ..errors import EngineError
from .base import Layer, canonical_axis, refuse_backward, register

MANY = 1 << 30   # no upper bound on bottoms or tops


def _axis_or_legacy(param, legacy: str, n_axes: int, where: str) -> int:
    """Concat's and Slice's axis: `axis` (negative counts from the end), or the legacy uint32 `concat_dim` /
    `slice_dim` (no negative indexing); not both."""
    if param.HasField("axis") and param.HasField(legacy):
        raise EngineError(f"{where}: Either axis or {legacy} should be specified; not both.")
    if param.HasField(legacy):
        dim = int(getattr(param, legacy))
        if dim >= n_axes:
            raise EngineError(f"{where}: {legacy} out of range ({dim} for a {n_axes}-axis blob)")
        return dim
    return canonical_axis(param.axis, n_axes, where)


def _refuse_in_place(lp, where: str) -> None:
    if any(top in lp.bottom for top in lp.top):
        raise EngineError(f"{where}: {lp.type} Layer does not allow in-place computation.")


def _check_indices(index: torch.Tensor, values: torch.Tensor, limit: int, where: str, what: str) -> None:
    """`values` (float) must hold integers in 0..limit-1; `index` is their truncation. Checked on the CPU only:
    on a GPU the check would stall the pipeline (torch's own device assert fires instead)."""
    if index.device.type != "cpu" or index.numel() == 0:
        return
    if bool((index != values).any()):
        raise EngineError(f"{where}: {what} must be integers, got {float(values[index != values][0])}")
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= limit:
        raise EngineError(f"{where}: {what} {high if high >= limit else low} is outside 0..{limit - 1}")


@register
class InnerProductLayer(Layer):
    """top = bottom (axes from `axis` on flattened) x weight^T + bias; weight (num_output, K), or (K, num_output)
    with `transpose`."""
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
    n_tops = (1, MANY)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        shapes = [tuple(int(d) for d in s.dim) for s in lp.input_param.shape]
        if len(shapes) not in (1, len(lp.top)):
            raise EngineError(f"{self.where}: input_param must give one shape, or one per top")
        self.top_shapes = shapes * len(lp.top) if len(shapes) == 1 else shapes

    def forward(self):
        raise EngineError(f"{self.where}: Input tops are given to Net.forward, not computed")


@register
class ParameterLayer(Layer):
    """Its one parameter blob (parameter_param.shape; zeros until set, as Caffe's) as its top: the top's diff is
    the blob's diff."""
    type_name = "Parameter"
    allowed = {"parameter_param": {"shape"}}
    n_bottoms = (0, 0)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        shape = tuple(int(d) for d in lp.parameter_param.shape.dim)
        self.add_blob(shape, pb.FillerParameter(type="constant", value=0))
        self.top_shapes = [shape]

    def forward(self):
        return [self.blobs[0]]


@register
class FlattenLayer(Layer):
    """Axes `axis`..`end_axis` of the bottom as one (a view)."""
    type_name = "Flatten"
    allowed = {"flatten_param": {"axis", "end_axis"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        _refuse_in_place(lp, self.where)
        shape = tuple(bottom_shapes[0])
        self.start = canonical_axis(lp.flatten_param.axis, len(shape), self.where)
        self.end = canonical_axis(lp.flatten_param.end_axis, len(shape), self.where)
        if self.end < self.start - 1:
            raise EngineError(f"{self.where}: flatten_param.end_axis ({self.end}) is before axis ({self.start})")
        self.top_shapes = [self._top_shape(shape)]

    def _top_shape(self, shape):
        return tuple(shape[:self.start]) + (math.prod(shape[self.start:self.end + 1]),) + tuple(shape[self.end + 1:])

    def forward(self, x):
        return [x.reshape(self._top_shape(x.shape))]


@register
class ReshapeLayer(Layer):
    """The bottom under a new shape (a view: Caffe shares data and diff). reshape_param.shape replaces the bottom's
    axes [axis, axis + num_axes) (num_axes -1: to the end); in it 0 copies the bottom's dimension at that place
    and one -1 is inferred from the count."""
    type_name = "Reshape"
    allowed = {"reshape_param": {"shape", "axis", "num_axes"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        _refuse_in_place(lp, self.where)
        p = lp.reshape_param
        self.dims = [int(d) for d in p.shape.dim]
        if self.dims.count(-1) > 1:
            raise EngineError(f"{self.where}: new shape contains multiple -1 dims; at most a single (1) value of -1 "
                              f"may be specified")
        if any(d < -1 for d in self.dims):
            raise EngineError(f"{self.where}: reshape_param.shape has a dimension below -1: {self.dims}")
        n_axes = len(bottom_shapes[0])
        start = p.axis if p.axis >= 0 else n_axes + p.axis + 1
        if not 0 <= start <= n_axes:
            raise EngineError(f"{self.where}: axis {p.axis} out of range for {n_axes}-D input blob")
        if p.num_axes < -1:
            raise EngineError(f"{self.where}: num_axes must be >= 0, or -1 for all")
        end = n_axes if p.num_axes == -1 else start + p.num_axes
        if end > n_axes:
            raise EngineError(f"{self.where}: end_axis = axis + num_axes is out of range")
        self.start, self.end = start, end
        self.top_shapes = [self._top_shape(tuple(bottom_shapes[0]))]

    def _top_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        start, end = self.start, self.end
        new = list(self.dims)
        for i, d in enumerate(new):
            if d == 0:
                if start + i >= len(shape):
                    raise EngineError(f"{self.where}: new shape contains a 0, but there was no corresponding bottom "
                                      f"axis to copy")
                new[i] = shape[start + i]
        top = list(shape[:start]) + new + list(shape[end:])
        count = math.prod(shape)
        if -1 in new:
            known = math.prod(d for d in top if d != -1)
            if known == 0 or count % known:
                raise EngineError(f"{self.where}: bottom count ({count}) must be divisible by the product of the "
                                  f"specified dimensions ({known})")
            top[start + new.index(-1)] = count // known
        if math.prod(top) != count:
            raise EngineError(f"{self.where}: output count must match input count (bottom {tuple(shape)}, "
                              f"top {tuple(top)})")
        return tuple(top)

    def forward(self, x):
        return [x.reshape(self._top_shape(tuple(x.shape)))]


@register
class ConcatLayer(Layer):
    """The bottoms joined along `axis` (legacy `concat_dim`)."""
    type_name = "Concat"
    allowed = {"concat_param": {"axis", "concat_dim"}}
    n_bottoms = (1, MANY)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        shape = tuple(bottom_shapes[0])
        self.axis = _axis_or_legacy(lp.concat_param, "concat_dim", len(shape), self.where)
        for other in bottom_shapes[1:]:
            if len(other) != len(shape):
                raise EngineError(f"{self.where}: All inputs must have the same #axes ({shape} and {tuple(other)})")
            if any(a != b for i, (a, b) in enumerate(zip(shape, other)) if i != self.axis):
                raise EngineError(f"{self.where}: All inputs must have the same shape, except at concat_axis "
                                  f"({self.axis}): {shape} and {tuple(other)}")
        total = sum(s[self.axis] for s in bottom_shapes)
        self.top_shapes = [shape[:self.axis] + (total,) + shape[self.axis + 1:]]

    def forward(self, *xs):
        return [torch.cat(xs, dim=self.axis)]


@register
class SliceLayer(Layer):
    """The bottom cut along `axis` (legacy `slice_dim`) at the `slice_point`s, or into equal parts, one per top."""
    type_name = "Slice"
    allowed = {"slice_param": {"axis", "slice_dim", "slice_point"}}
    n_tops = (1, MANY)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        shape = tuple(bottom_shapes[0])
        self.axis = _axis_or_legacy(lp.slice_param, "slice_dim", len(shape), self.where)
        size, n_tops = shape[self.axis], len(lp.top)
        points = [int(v) for v in lp.slice_param.slice_point]
        if points:
            if len(points) != n_tops - 1:
                raise EngineError(f"{self.where}: {len(points)} slice_point(s) for {n_tops} tops; give one fewer "
                                  f"than the tops")
            if n_tops > size:
                raise EngineError(f"{self.where}: {n_tops} tops for slice axis {self.axis} of size {size}")
            bounds = [0] + points + [size]
            if any(b <= a for a, b in zip(bounds[:-2], bounds[1:-1])) or points[-1] > size:
                raise EngineError(f"{self.where}: slice_point {points} must increase within 1..{size}")
            self.sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        else:
            if size % n_tops:
                raise EngineError(f"{self.where}: Number of top blobs ({n_tops}) should evenly divide input slice "
                                  f"axis ({size})")
            self.sizes = [size // n_tops] * n_tops
        self.top_shapes = [shape[:self.axis] + (s,) + shape[self.axis + 1:] for s in self.sizes]

    def forward(self, x):
        return list(torch.split(x, self.sizes, dim=self.axis))


@register
class SplitLayer(Layer):
    """The bottom as each top; the bottom's diff is the sum of the tops' diffs."""
    type_name = "Split"
    n_tops = (1, MANY)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        _refuse_in_place(lp, self.where)
        self.top_shapes = [tuple(bottom_shapes[0])] * len(lp.top)

    def forward(self, x):
        return [x] * len(self.lp.top)


@register
class SilenceLayer(Layer):
    """Takes bottoms, makes nothing (their diffs from it: 0)."""
    type_name = "Silence"
    n_bottoms = (1, MANY)
    n_tops = (0, 0)

    def forward(self, *xs):
        return []


@register
class TileLayer(Layer):
    """`tiles` copies of the bottom, one after the other along `axis`."""
    type_name = "Tile"
    allowed = {"tile_param": {"axis", "tiles"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.tile_param
        shape = tuple(bottom_shapes[0])
        self.axis = canonical_axis(p.axis, len(shape), self.where)
        if not p.HasField("tiles"):
            raise EngineError(f"{self.where}: Number of tiles must be specified (tile_param.tiles)")
        if p.tiles <= 0:
            raise EngineError(f"{self.where}: Number of tiles must be positive (tile_param.tiles: {p.tiles})")
        self.repeats = [1] * len(shape)
        self.repeats[self.axis] = int(p.tiles)
        self.top_shapes = [tuple(d * r for d, r in zip(shape, self.repeats))]

    def forward(self, x):
        return [x.repeat(*self.repeats)]


class _ProdTopOverBottom(torch.autograd.Function):
    """x0 * x1 * ... whose gradient to x_i is top / x_i * top_diff: Eltwise PROD with stable_prod_grad false."""

    @staticmethod
    def forward(ctx, *xs):
        top = xs[0] * xs[1]
        for x in xs[2:]:
            top = top * x
        ctx.save_for_backward(top, *xs)
        return top

    @staticmethod
    def backward(ctx, grad):
        top, *xs = ctx.saved_tensors
        return tuple(top / x * grad if need else None for x, need in zip(xs, ctx.needs_input_grad))


@register
class EltwiseLayer(Layer):
    """PROD, SUM (one `coeff` per bottom, default 1) or MAX of bottoms of one shape, with Caffe's backward: PROD's
    gradient to a bottom is the product of the others (stable_prod_grad, the default) or top / bottom; MAX's goes
    to the bottom that won (bottom 1 on a tie of bottoms 0 and 1, else the earliest)."""
    type_name = "Eltwise"
    allowed = {"eltwise_param": {"operation", "coeff", "stable_prod_grad"}}
    n_bottoms = (2, MANY)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.eltwise_param
        for i, shape in enumerate(bottom_shapes[1:], 1):
            if tuple(shape) != tuple(bottom_shapes[0]):
                raise EngineError(f"{self.where}: bottoms must have one shape: bottom[0]: {tuple(bottom_shapes[0])}, "
                                  f"bottom[{i}]: {tuple(shape)}")
        if len(p.coeff) not in (0, len(bottom_shapes)):
            raise EngineError(f"{self.where}: Eltwise Layer takes one coefficient per bottom blob "
                              f"({len(p.coeff)} coeff for {len(bottom_shapes)} bottoms)")
        if len(p.coeff) and p.operation != pb.EltwiseParameter.SUM:
            raise EngineError(f"{self.where}: Eltwise layer only takes coefficients for summation (Caffe ignores "
                              f"eltwise_param.coeff for MAX and refuses it for PROD); remove it")
        if not p.stable_prod_grad and p.operation != pb.EltwiseParameter.PROD:
            raise EngineError(f"{self.where}: eltwise_param.stable_prod_grad is for the PROD operation (Caffe "
                              f"ignores it here); remove it")
        self.op = p.operation
        self.stable_prod_grad = p.stable_prod_grad
        self.coeff = list(p.coeff) or [1.0] * len(bottom_shapes)
        self.top_shapes = [tuple(bottom_shapes[0])]

    def forward(self, *xs):
        if self.op == pb.EltwiseParameter.PROD:
            if not self.stable_prod_grad:
                return [_ProdTopOverBottom.apply(*xs)]
            out = xs[0]
            for x in xs[1:]:
                out = out * x
            return [out]
        if self.op == pb.EltwiseParameter.MAX:
            out = torch.where(xs[0] > xs[1], xs[0], xs[1])
            for x in xs[2:]:
                out = torch.where(x > out, x, out)
            return [out]
        out = xs[0] * self.coeff[0] if self.coeff[0] != 1.0 else xs[0]
        for c, x in zip(self.coeff[1:], xs[1:]):
            out = out + (x * c if c != 1.0 else x)
        return [out]


@register
class ReductionLayer(Layer):
    """SUM, ASUM (of |x|), SUMSQ or MEAN over the axes from `axis` to the end, times `coeff`: the top keeps the
    axes before `axis`."""
    type_name = "Reduction"
    allowed = {"reduction_param": {"operation", "axis", "coeff"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.reduction_param
        shape = tuple(bottom_shapes[0])
        self.axis = canonical_axis(p.axis, len(shape), self.where)
        self.op = p.operation
        coeff = np.float32(p.coeff)
        if self.op == pb.ReductionParameter.MEAN:
            coeff = coeff / np.float32(math.prod(shape[self.axis:]))   # Caffe: coeff_ /= dim_, in float
        self.coeff = float(coeff)
        self.top_shapes = [shape[:self.axis]]

    def forward(self, x):
        flat = x.reshape(tuple(x.shape[:self.axis]) + (-1,))
        if self.op == pb.ReductionParameter.ASUM:
            flat = flat.abs()
        elif self.op == pb.ReductionParameter.SUMSQ:
            flat = flat * flat
        top = flat.sum(-1)
        return [top * self.coeff if self.coeff != 1.0 else top]


def _caffe_top_k(values: torch.Tensor, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest of `values` along `dim` and their indices, in Caffe's order (std::partial_sort of (value,
    index) pairs with std::greater: larger values first, and of equal values the larger index first)."""
    size = values.shape[dim]
    ordered, order = torch.sort(values.flip(dim), dim=dim, descending=True, stable=True)
    return ordered.narrow(dim, 0, k), (size - 1 - order).narrow(dim, 0, k)


@register
class ArgMaxLayer(Layer):
    """The indices (as floats) of the `top_k` largest values along `axis`, or their values with `out_max_val`;
    without `axis`, over each item's flattened values, the top (N, 1, top_k, 1...) holding the indices, or with
    `out_max_val` (N, 2, top_k, 1...) the indices then the values. No backward (Caffe: NOT_IMPLEMENTED)."""
    type_name = "ArgMax"
    allowed = {"argmax_param": {"out_max_val", "top_k", "axis"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.argmax_param
        shape = tuple(bottom_shapes[0])
        self.k, self.out_max_val = int(p.top_k), p.out_max_val
        if self.k < 1:
            raise EngineError(f"{self.where}: top k must not be less than 1.")
        self.axis = canonical_axis(p.axis, len(shape), self.where) if p.HasField("axis") else None
        if self.axis is not None:
            if self.k > shape[self.axis]:
                raise EngineError(f"{self.where}: top_k ({self.k}) must be less than or equal to the dimension of "
                                  f"the axis ({shape[self.axis]}).")
            self.top_shapes = [shape[:self.axis] + (self.k,) + shape[self.axis + 1:]]
        else:
            if self.k > math.prod(shape[1:]):
                raise EngineError(f"{self.where}: top_k ({self.k}) must be less than or equal to the dimension of "
                                  f"the flattened bottom blob per instance ({math.prod(shape[1:])}).")
            top = [1] * max(len(shape), 3)
            top[0], top[1], top[2] = shape[0], 2 if self.out_max_val else 1, self.k
            self.top_shapes = [tuple(top)]
        self.message = (f"{self.where}: a gradient reaches it, but Caffe's ArgMax has no backward (Not Implemented "
                        f"Yet); take its top out of the loss")

    def forward(self, x):
        with torch.no_grad():
            if self.axis is not None:
                values, index = _caffe_top_k(x, self.k, self.axis)
                top = values if self.out_max_val else index.to(x.dtype)
            else:
                values, index = _caffe_top_k(x.reshape(x.shape[0], -1), self.k, 1)
                rows = [index.to(x.dtype)] + ([values] if self.out_max_val else [])
                top = torch.stack(rows, 1).reshape((x.shape[0],) + self.top_shapes[0][1:])
        return [refuse_backward(top, x, self.message)]


@register
class EmbedLayer(Layer):
    """top[..., :] = weight[index] (+ bias): one row of the (input_dim, num_output) weight per index of the bottom
    (integers held as floats); the top has the bottom's shape plus num_output. Gradients go to the blobs only."""
    type_name = "Embed"
    allowed = {"embed_param": {"num_output", "input_dim", "bias_term", "weight_filler", "bias_filler"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.embed_param
        if p.num_output <= 0:
            raise EngineError(f"{self.where}: EmbedLayer num_output must be positive (embed_param.num_output)")
        if p.input_dim <= 0:
            raise EngineError(f"{self.where}: EmbedLayer input_dim must be positive (embed_param.input_dim)")
        self.input_dim = int(p.input_dim)
        self.add_blob((p.input_dim, p.num_output), p.weight_filler)
        self.bias_term = p.bias_term
        if p.bias_term:
            self.add_blob((p.num_output,), p.bias_filler)
        self.top_shapes = [tuple(bottom_shapes[0]) + (int(p.num_output),)]

    def forward(self, x):
        index = x.long()
        _check_indices(index, x.detach(), self.input_dim, self.where, "the index")
        top = F.embedding(index, self.blobs[0])
        if self.bias_term:
            top = top + self.blobs[1]
        return [refuse_backward(top, x, f"{self.where}: Can't backpropagate to EmbedLayer input (its indices); "
                                        f"give it propagate_down: false")]


@register
class FilterLayer(Layer):
    """The items (along axis 0) of each bottom but the last whose selector (the last bottom, N x 1 x ...) is not
    zero, in order: one top per filtered bottom. The tops' first dimension changes with the selector at each
    forward, as Caffe's Reshape makes it; the shapes the net is built with (`top_shapes`) have all N items, as
    Caffe's first Reshape gives them."""
    type_name = "Filter"
    n_bottoms = (2, MANY)
    n_tops = (1, MANY)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        selector = tuple(bottom_shapes[-1])
        if len(lp.top) != len(bottom_shapes) - 1:
            raise EngineError(f"{self.where}: needs one top per bottom to filter ({len(bottom_shapes) - 1}: the last "
                              f"bottom is the selector), got {len(lp.top)}")
        if any(d != 1 for d in selector[1:]):
            raise EngineError(f"{self.where}: Selector blob dimensions must be singletons (1), except the first "
                              f"(selector shape {selector})")
        for shape in bottom_shapes[:-1]:
            if not shape or shape[0] != selector[0]:
                raise EngineError(f"{self.where}: Each bottom should have the same 0th dimension as the selector "
                                  f"blob ({tuple(shape)} and {selector})")
        self.top_shapes = [tuple(s) for s in bottom_shapes[:-1]]

    def forward(self, *xs):
        selector = xs[-1]
        kept = torch.nonzero(selector.reshape(-1) != 0).squeeze(1)
        message = f"{self.where}: Filter Layer cannot backpropagate to filter index inputs (the selector)"
        return [refuse_backward(x.index_select(0, kept), selector, message) for x in xs[:-1]]


@register
class BatchReindexLayer(Layer):
    """top[i] = bottom[index[i]] along axis 0, `index` (the second bottom, 1-D) holding item numbers as floats; the
    bottom's diff sums the diffs of the tops that copied each item."""
    type_name = "BatchReindex"
    n_bottoms = (2, 2)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        shape, index = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(index) != 1:
            raise EngineError(f"{self.where}: the index bottom must be 1-D, got shape {index}")
        self.top_shapes = [index + shape[1:]]

    def forward(self, x, index):
        values = index.detach()
        if values.numel() and float(values.min()) < 0:
            raise EngineError(f"{self.where}: Index specified for reindex layer was negative.")
        if values.numel() and float(values.max()) >= x.shape[0]:
            raise EngineError(f"{self.where}: Index specified for reindex layer was greater than batch size.")
        item = values.long()
        return [refuse_backward(x.index_select(0, item), index, f"{self.where}: Cannot backprop to index.")]
