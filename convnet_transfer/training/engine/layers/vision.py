"""Vision layers: convolution, pooling, local response normalisation (Caffe's vision_layers)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from convnet_transfer.formats.protoio import pb
from ..errors import EngineError
from .base import Elementwise, Layer, register, spatial_pair
from .conv_gradients import convolution


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
        kh, kw = spatial_pair(p.kernel_size, p.kernel_h, p.kernel_w, p.HasField("kernel_h"), 0, self.where, "kernel_size")
        ph, pw = spatial_pair(p.pad, p.pad_h, p.pad_w, p.HasField("pad_h"), 0, self.where, "pad")
        sh, sw = spatial_pair(p.stride, p.stride_h, p.stride_w, p.HasField("stride_h"), 1, self.where, "stride")
        dh, dw = spatial_pair(p.dilation, 0, 0, False, 1, self.where, "dilation")
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
        return [convolution(x, self.blobs[0], bias, self.stride, self.padding, self.dilation, self.groups)]


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
