"""Neuron layers: one bottom, one top of the same shape, may run in place."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import EngineError
from .base import Elementwise, Layer, register


@register
class ReLULayer(Elementwise):
    type_name = "ReLU"
    allowed = {"relu_param": {"negative_slope", "engine"}}

    def forward(self, x):
        slope = self.lp.relu_param.negative_slope
        return [F.leaky_relu(x, slope) if slope else F.relu(x)]


def _neuron(type_name: str, function, param: str | None = None) -> type[Layer]:
    """Register a neuron layer without parameters of its own: top = function(bottom)."""
    return register(type(f"{type_name}Layer", (Elementwise,), {
        "type_name": type_name, "allowed": {param: {"engine"}} if param else {},
        "forward": lambda self, x: [function(x)]}))


_neuron("Sigmoid", torch.sigmoid, "sigmoid_param")
_neuron("TanH", torch.tanh, "tanh_param")
_neuron("AbsVal", torch.abs)


@register
class PowerLayer(Elementwise):
    type_name = "Power"
    allowed = {"power_param": {"power", "scale", "shift"}}

    def forward(self, x):
        p = self.lp.power_param
        return [(p.shift + p.scale * x) ** p.power]


@register
class DropoutLayer(Elementwise):
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
