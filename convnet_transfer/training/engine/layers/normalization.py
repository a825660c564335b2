"""Normalisation layers: BatchNorm, Scale, Bias, MVN (Caffe's batch_norm_layer, scale_layer, bias_layer,
mvn_layer).

BatchNorm keeps Caffe's three blobs: the sums of the batch means and of the (unbiased) batch variances, each
decayed by moving_average_fraction, and the scale factor (their total weight) of shape (1,): the running mean is
blob 0 / blob 2. Caffe's LayerSetUp gives each blob `param { lr_mult: 0 }` and refuses another lr_mult; so does
ours (the Net reads the layer's `lp`), so the solver never changes them: TRAIN forward does.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from convnet_transfer.formats.protoio import pb
from ..errors import EngineError
from .base import Layer, canonical_axis, register


def _constant_filler(value: float) -> pb.FillerParameter:
    filler = pb.FillerParameter()
    filler.type = "constant"
    filler.value = value
    return filler


def _per_channel(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """(C,) -> (1, C, 1, ...) broadcast over a blob of `ndim` axes."""
    return values.reshape((1, -1) + (1,) * (ndim - 2))


@register
class BatchNormLayer(Layer):
    """top = (bottom - mean) / sqrt(variance + eps) per channel (axis 1): the batch's statistics, which TRAIN
    forward folds into the blobs, or with use_global_stats (default: phase TEST) the stored ones."""
    type_name = "BatchNorm"
    allowed = {"batch_norm_param": {"use_global_stats", "moving_average_fraction", "eps"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.batch_norm_param
        shape = tuple(bottom_shapes[0])
        if len(shape) < 2:
            raise EngineError(f"{self.where}: BatchNorm needs a bottom of at least 2 axes (N, C, ...), got {shape}")
        self.use_global_stats = p.use_global_stats if p.HasField("use_global_stats") else ctx.phase == "TEST"
        self.fraction = float(np.float32(p.moving_average_fraction))
        self.eps = float(np.float32(p.eps))
        m = math.prod(shape) // shape[1]
        self.correction = float(np.float32(m) / np.float32(m - 1)) if m > 1 else 1.0
        for blob_shape in ((shape[1],), (shape[1],), (1,)):
            self.add_blob(blob_shape, _constant_filler(0.0))
        self.lp = self._statistics_unlearned(lp)
        self.top_shapes = [shape]

    def _statistics_unlearned(self, lp: pb.LayerParameter) -> pb.LayerParameter:
        """Caffe's LayerSetUp: a copy of `lp` with `param { lr_mult: 0 }` for each blob it leaves unspecified; an
        EngineError for one it gives another lr_mult."""
        fixed = pb.LayerParameter()
        fixed.CopyFrom(lp)
        for i in range(len(self.blobs)):
            if i == len(fixed.param):
                fixed.param.add().lr_mult = 0.0
            elif fixed.param[i].lr_mult != 0:
                raise EngineError(f"{self.where}: param {i} has lr_mult {fixed.param[i].lr_mult}: Cannot configure "
                                  f"batch normalization statistics as layer parameters (lr_mult must be 0)")
        return fixed

    def forward(self, x):
        dims = [0] + list(range(2, x.dim()))
        if self.use_global_stats:
            factor = self.blobs[2].detach()
            scale = torch.where(factor == 0, torch.zeros_like(factor), 1 / factor)
            mean, variance = self.blobs[0] * scale, self.blobs[1] * scale
            centered = x - _per_channel(mean, x.dim())
        else:
            mean = x.mean(dim=dims)
            centered = x - _per_channel(mean, x.dim())
            variance = (centered * centered).mean(dim=dims)
            self._fold_statistics(mean.detach(), variance.detach())
        return [centered / _per_channel(torch.sqrt(variance + self.eps), x.dim())]

    @torch.no_grad()
    def _fold_statistics(self, mean: torch.Tensor, variance: torch.Tensor) -> None:
        """Caffe's moving averages: s = fraction * s + 1, sum_mean = fraction * sum_mean + mean, sum_var =
        fraction * sum_var + m/(m-1) * variance (m = values per channel)."""
        sum_mean, sum_var, factor = self.blobs
        factor.mul_(self.fraction).add_(1.0)
        sum_mean.mul_(self.fraction).add_(mean.to(sum_mean.dtype))
        sum_var.mul_(self.fraction).add_(variance.to(sum_var.dtype), alpha=self.correction)


class _Broadcast(Layer):
    """Scale and Bias: bottom 0 combined with an operand (bottom 1, or a learned blob) whose shape is that of
    bottom 0's axes axis .. axis + num_axes - 1 (num_axes -1: to the end; a scalar operand applies everywhere)."""
    n_bottoms = (1, 2)
    param_name = ""

    def operand_shape(self, shape: tuple[int, ...], axis: int, num_axes: int) -> tuple[int, ...]:
        """The learned operand's shape (Caffe's LayerSetUp with one bottom)."""
        axis = canonical_axis(axis, len(shape), self.where)
        if num_axes < -1:
            raise EngineError(f"{self.where}: {self.param_name}.num_axes must be non-negative, or -1 to extend to "
                              f"the end of bottom[0]")
        if num_axes >= 0 and len(shape) < axis + num_axes:
            raise EngineError(f"{self.where}: the operand's shape extends past bottom[0]'s shape when applied "
                              f"starting with bottom[0] axis = {axis}")
        return tuple(shape[axis:]) if num_axes == -1 else tuple(shape[axis:axis + num_axes])

    def operand_view(self, bottom_shapes, axis: int, num_axes: int, filler: pb.FillerParameter) -> tuple:
        """The operand's broadcast shape: bottom 1's, or that of a blob added here (LayerSetUp + Reshape)."""
        shape = tuple(bottom_shapes[0])
        if len(bottom_shapes) == 1:
            self.add_blob(self.operand_shape(shape, axis, num_axes), filler)
        operand = tuple(bottom_shapes[1]) if len(bottom_shapes) > 1 else tuple(self.blobs[0].shape)
        return self.broadcast_shape(shape, operand, axis)

    def broadcast_shape(self, shape: tuple[int, ...], operand: tuple[int, ...], axis: int) -> tuple[int, ...]:
        """Caffe's Reshape checks; the operand's shape padded with 1s to broadcast over bottom 0."""
        axis = 0 if len(operand) == 0 else canonical_axis(axis, len(shape), self.where)
        if len(shape) < axis + len(operand):
            raise EngineError(f"{self.where}: the operand's shape extends past bottom[0]'s shape when applied "
                              f"starting with bottom[0] axis = {axis}")
        for i, d in enumerate(operand):
            if shape[axis + i] != d:
                raise EngineError(f"{self.where}: dimension mismatch between bottom[0]->shape({axis + i}) = "
                                  f"{shape[axis + i]} and the operand's shape({i}) = {d}")
        return (1,) * axis + tuple(operand) + (1,) * (len(shape) - axis - len(operand))


@register
class BiasLayer(_Broadcast):
    """top = bottom 0 + bias (bottom 1, or a learned blob filled by bias_param.filler), broadcast."""
    type_name = "Bias"
    param_name = "bias_param"
    allowed = {"bias_param": {"axis", "num_axes", "filler"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.bias_param
        self.view = self.operand_view(bottom_shapes, p.axis, p.num_axes, p.filler)
        self.top_shapes = [tuple(bottom_shapes[0])]

    def forward(self, x, bias=None):
        return [x + (self.blobs[0] if bias is None else bias).reshape(self.view)]


@register
class ScaleLayer(_Broadcast):
    """top = bottom 0 * scale (bottom 1, or a learned blob: scale_param.filler, default constant 1), broadcast;
    with bias_term, + a learned bias (bias_filler) of the scale's axes, Caffe's blob after the scale's."""
    type_name = "Scale"
    param_name = "scale_param"
    allowed = {"scale_param": {"axis", "num_axes", "filler", "bias_term", "bias_filler"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.scale_param
        shape = tuple(bottom_shapes[0])
        filler = p.filler if p.HasField("filler") else _constant_filler(1.0)
        self.view = self.operand_view(bottom_shapes, p.axis, p.num_axes, filler)
        self.bias_view = None
        if p.bias_term:
            # Caffe's inner Bias layer: bias_param { axis num_axes: the scale's } on bottom 0
            num_axes = len(bottom_shapes[1]) if len(bottom_shapes) > 1 else p.num_axes
            self.add_blob(self.operand_shape(shape, p.axis, num_axes), p.bias_filler)
            self.bias_view = self.broadcast_shape(shape, tuple(self.blobs[-1].shape), p.axis)
        self.top_shapes = [shape]

    def forward(self, x, scale=None):
        top = x * (self.blobs[0] if scale is None else scale).reshape(self.view)
        if self.bias_view is not None:
            top = top + self.blobs[-1].reshape(self.bias_view)
        return [top]


@register
class MVNLayer(Layer):
    """Mean-variance normalisation per image and channel (across_channels: per image): top = (x - mean), divided
    by (std + eps) with normalize_variance. Caffe adds eps to the standard deviation, and its backward takes
    d(std + eps)/dx as (x - mean) / (n * (std + eps)): the forward below makes autograd give that. The top is 4-D
    (Caffe's legacy num, channels, height, width). In place only without normalize_variance (see __init__)."""
    type_name = "MVN"
    allowed = {"mvn_param": {"normalize_variance", "across_channels", "eps"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        shape = tuple(bottom_shapes[0])
        if len(shape) > 4:
            raise EngineError(f"{self.where}: MVN reads its bottom as (num, channels, height, width); got {shape} "
                              f"of {len(shape)} axes (Caffe's legacy accessors take at most 4)")
        p = lp.mvn_param
        if p.normalize_variance and lp.top[0] == lp.bottom[0]:
            raise EngineError(f"{self.where}: MVN with normalize_variance cannot run in place: Caffe's backward then "
                              f"overwrites the top diff it still reads (a wrong gradient); give it its own top")
        self.normalize_variance = p.normalize_variance
        self.across_channels = p.across_channels
        self.eps = float(np.float32(p.eps))
        self.top_shapes = [shape + (1,) * (4 - len(shape))]

    def forward(self, x):
        shape = self.top_shapes[0]
        rows = shape[0] if self.across_channels else shape[0] * shape[1]
        x = x.reshape(rows, -1)
        centered = x - x.mean(dim=1, keepdim=True)
        if not self.normalize_variance:
            return [centered.reshape(shape)]
        variance = (centered * centered).mean(dim=1, keepdim=True)
        denominator = (torch.sqrt(variance) + self.eps).detach()
        # value std + eps; gradient d(variance) / (2 (std + eps)) as Caffe's backward
        denominator = denominator + (variance - variance.detach()) / (2 * denominator)
        return [(centered / denominator).reshape(shape)]
