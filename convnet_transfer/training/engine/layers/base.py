"""The layer machinery: the registry of Caffe layer types, the base class and the checks every layer shares.

A registry, `LAYERS = {"Convolution": ConvolutionLayer, ...}`, maps Caffe's type strings to classes (one module
per family beside this one: vision, neuron, common, loss, normalization, recurrent, datalayers). Each class
declares the `*_param` messages it reads and, for each, the fields it implements; the Net checks every layer's
LayerParameter against that list (`check_fields`), so a field the engine would ignore is an EngineError naming
the layer and the field, never silently dropped. A field left at its default value is always accepted.

Each layer is built from its LayerParameter and the shapes of its bottoms (as Caffe's LayerSetUp + Reshape),
exposes `top_shapes`, its parameter blobs `blobs` (an nn.ParameterList, Caffe's blob order) and
`forward(*bottoms) -> list of tops`. Gradients come from autograd; where Caffe's backward differs from the
derivative of its forward (the loss clamp, pooling ties), the forward is written so that autograd gives Caffe's.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from convnet_transfer.formats.protoio import pb
from ..errors import EngineError
from ..fillers import fill

# Every data layer type of Caffe: those in LAYERS (datalayers.py) compute their tops in the net; the Net takes the
# others' tops as inputs, which engine/data.py's sources read (data.ENGINE_DATA_LAYER_TYPES).
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


def canonical_axis(axis: int, n_axes: int, where: str) -> int:
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


class Elementwise(Layer):
    """A neuron layer: one bottom, one top of the same shape (may be in place)."""

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        self.top_shapes = [tuple(bottom_shapes[0])]


class _NoBackward(torch.autograd.Function):
    """Identity on `top`; a gradient reaching it raises EngineError(message)."""

    @staticmethod
    def forward(ctx, top, bottom, message):
        ctx.message = message
        return top.view_as(top)

    @staticmethod
    def backward(ctx, grad):
        raise EngineError(ctx.message)


def refuse_backward(top: torch.Tensor, bottom: torch.Tensor, message: str) -> torch.Tensor:
    """`top`, such that a backward pass through it raises EngineError(message) when `bottom` wants a gradient: a
    layer whose Caffe Backward aborts when asked to propagate down to `bottom`, has no Backward at all (ArgMax,
    Threshold), or computes what no one could want (in-place Log and Power)."""
    if torch.is_grad_enabled() and bottom.requires_grad:
        return _NoBackward.apply(top, bottom, message)
    return top
