"""Convolution with parameter gradients summed as accurately as Caffe sums them.

Caffe's Convolution backward computes each image's weight gradient (one im2col + gemm over its output positions)
and adds the images' gradients up; the bias gradient is a sum over the batch's output positions. oneDNN (torch's
CPU convolution) accumulates the weight gradient over the whole batch's positions in one fp32 accumulator per
thread, and the bias gradient likewise: measured against float64, its parameter gradients were 3-15x further off
than Caffe's (CaffeNet's conv2 at batch 32: weights 4e-6, bias 4e-6 relative; per image as Caffe: 3e-7).
Here the forward and the bottom gradient are torch's own, the bias is added after the convolution so autograd
sums its gradient with torch's pairwise reduction, and on the CPU the weight gradient is computed for groups of
images of at most POSITIONS output positions each (one image when an image has more), then added up. On other
devices the weight gradient is one call (cuDNN's accuracy there is not measured yet). The price on the CPU:
CaffeNet's five convolutions, forward + backward at batch 32 on 2 threads, took about 2x as long (1.6-3.6x
measured), and with `caffe_torch`'s malloc setting (engine.train.keep_freed_memory) training CaffeNet at batch 32
ran at a fifth of the speed (8 img/s against 41, bench/bench_train.py). So it is opt-in: $CAFFE_TORCH_SUMS=caffe
(or SUMS = "caffe") turns it on; by default ("fast") `convolution` is F.conv2d itself, bit for bit the engine's
earlier numbers (the default run's, the goldens').
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

__all__ = ["convolution", "POSITIONS", "SUMS", "SUMS_ENV"]

SUMS_ENV = "CAFFE_TORCH_SUMS"
SUMS = os.environ.get(SUMS_ENV, "fast")   # "caffe": parameter gradients summed as Caffe sums them (slower)

POSITIONS = 512       # output positions one oneDNN weight-gradient call may sum (0: the whole batch in one call)


class _Convolution(torch.autograd.Function):
    """F.conv2d without bias; backward: torch's bottom gradient, the weight gradient summed by groups of images."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conf = (list(stride), list(padding), list(dilation), False, [0, 0], groups)
        return F.conv2d(x, weight, None, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, top_diff):
        x, weight = ctx.saved_tensors
        backward = torch.ops.aten.convolution_backward
        bottom_diff = weight_diff = None
        if ctx.needs_input_grad[0]:
            bottom_diff = backward(top_diff, x, weight, None, *ctx.conf, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            n, _, oh, ow = top_diff.shape
            images = n if top_diff.device.type != "cpu" or not POSITIONS else max(1, POSITIONS // (oh * ow))
            for i in range(0, n, images):       # added up group by group, as Caffe adds its images' gradients
                part = backward(top_diff[i:i + images], x[i:i + images], weight, None, *ctx.conf,
                                [False, True, False])[1]
                weight_diff = part if weight_diff is None else weight_diff.add_(part)
        return bottom_diff, weight_diff, None, None, None, None


def convolution(x, weight, bias, stride, padding, dilation, groups) -> torch.Tensor:
    """Caffe's Convolution forward, as F.conv2d; its parameter gradients summed as accurately as Caffe's. Under
    autocast, computed in the autocast dtype as F.conv2d would be (the casts are differentiable). With SUMS "fast"
    (the default), F.conv2d itself."""
    if SUMS != "caffe":
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x, weight, bias = x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
    with torch.autocast(device, enabled=False):
        top = _Convolution.apply(x, weight, stride, padding, dilation, groups)
        return top if bias is None else top + bias.view(1, -1, 1, 1)
