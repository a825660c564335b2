"""A net described as data (in the spirit of Caffe's net_spec.py): layers, and which of them transfer.

A `Layer` holds what every Caffe layer has (name, type, bottoms, tops, per-blob learning-rate and
decay multipliers, the phase it belongs to) and its type-specific parameters as a nested dict keyed
by the current Caffe field (`{"convolution_param": {"num_output": 96, "kernel_size": 11, ...}}`).
The Jinja templates in templates/ turn a list of layers into a prototxt, in the current format or
in the 2014 ("V0") one.

An `Architecture` is the net without its data layer, plus the facts the transfer protocol needs:
`transferable`, the ordered names of its transferable units (split point n copies the first n units;
`Architecture.units` says which layers each holds), and `classifier`, the last layer whose outputs
are the classes.

A transferable unit (`Architecture.units`) is a run of consecutive layers: up to the last layer its entry names
(by name, or as a name prefix followed by a separator) and the layers after it working in place on its blobs,
from right after the previous unit. So a residual block's name is the whole block (BatchNorm, Scale, shortcut,
join), and CaffeNet's units are its layers with weights one by one. docs/nets.md ("Residual nets") in full.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

__all__ = ["Enum", "Layer", "Architecture", "conv", "relu", "pool", "lrn", "fc", "dropout", "softmax_loss", "softmax",
           "accuracy", "gaussian", "constant", "xavier", "from_prototxt"]

PHASES = (None, "train", "val")


class Enum(str):
    """A protobuf enum value (written unquoted: `pool: MAX`), as opposed to a string (`type: "gaussian"`)."""


@dataclass
class Layer:
    name: str
    type: str                               # current Caffe type: Convolution, ReLU, Pooling, ...
    bottom: list[str]
    top: list[str]
    params: dict = field(default_factory=dict)   # {"convolution_param": {...}}; fillers inside
    lr_mult: tuple[float, ...] = ()         # one per parameter blob (weights, bias); () for no blobs
    decay_mult: tuple[float, ...] = ()
    phase: str | None = None                # None: both nets; "train" or "val": that one only

    @property
    def learnable(self) -> bool:
        return bool(self.lr_mult)

    def copy(self) -> "Layer":
        return copy.deepcopy(self)


@dataclass
class Architecture:
    name: str                               # registry name
    net_name: str                           # NetParameter.name
    layers: list[Layer]                     # everything after the data layer
    transferable: list[str]                 # ordered; n = 1..len(transferable)
    classifier: str                         # its num_output is the number of classes
    n_classes: int
    crop_size: int
    batch_size: int                         # train
    val_batch_size: int
    mirror: bool = True
    image_size: tuple[int, int, int] = (3, 256, 256)   # (channels, height, width) of the stored images
    scale: float | None = None              # transform_param.scale, when the pixels are scaled
    solver: dict = field(default_factory=dict)
    mode: str = "gpu"
    file_stem: str = ""                     # "imagenet_" -> imagenet_solver.prototxt, imagenet_train_lmdb, ...
    snapshot_prefix: str = "snapshot"

    def replace(self, **changes) -> "Architecture":
        return replace(self, **changes)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"architecture {self.name!r} has no layer {name!r}")

    def units(self) -> list[list[str]]:
        """The layer names of each transferable unit, in order (docs/nets.md, "Residual nets"); ValueError when
        an entry names no layer after the previous unit or its unit has no weights."""
        layers, start, units = self.layers, 0, []
        for i, entry in enumerate(self.transferable):
            later = {k for k, layer in enumerate(layers)                 # named by a later entry: left to it
                     if any(in_unit(layer.name, other) for other in self.transferable[i + 1:])}
            named = [k for k in range(start, len(layers)) if in_unit(layers[k].name, entry) and k not in later]
            if not named:
                after = f" after unit {self.transferable[i - 1]!r}" if i else ""
                raise ValueError(f"architecture {self.name!r}: layer {entry!r} (named as transferable) is not in "
                                 f"the net{after}: no layer is named {entry!r} or starts with {entry + '_'!r}; "
                                 f"its layers are {[layer.name for layer in layers]}")
            end, made = named[-1] + 1, {top for layer in layers[start:named[-1] + 1] for top in layer.top}
            while end < len(layers) and _in_place_on(layers[end], made) and end not in later:
                end += 1
            if not any(layer.learnable for layer in layers[start:end]):
                raise ValueError(f"architecture {self.name!r}: layer {entry!r} has no weights to transfer (its "
                                 f"unit: {[layer.name for layer in layers[start:end]]})")
            units.append([layer.name for layer in layers[start:end]])
            start = end
        return units

    def check(self) -> "Architecture":
        """Raise ValueError when `transferable` or `classifier` name a layer that is missing or has no weights,
        or the classifier is in a transferable unit."""
        names = {layer.name for layer in self.layers}
        if self.classifier not in names:
            raise ValueError(f"architecture {self.name!r}: layer {self.classifier!r} (named as classifier) "
                             f"is not in the net; its layers are {sorted(names)}")
        if not self.layer(self.classifier).learnable:
            raise ValueError(f"architecture {self.name!r}: layer {self.classifier!r} has no weights to transfer")
        if any(self.classifier in unit for unit in self.units()):
            raise ValueError(f"architecture {self.name!r}: the classifier {self.classifier!r} cannot be transferable")
        return self


def in_unit(name: str, entry: str) -> bool:
    """Whether layer `name` is named by the transferable entry `entry`: equal, or `entry` then a character that
    is not a letter or digit."""
    return name == entry or (name.startswith(entry) and not name[len(entry)].isalnum())


def _in_place_on(layer: Layer, blobs: set[str]) -> bool:
    """Whether `layer` works in place (one bottom, the same top) on one of `blobs`."""
    return len(layer.bottom) == 1 and layer.top == layer.bottom and layer.bottom[0] in blobs


# ---------------------------------------------------------------- layer helpers (net_spec style)

def gaussian(std: float) -> dict:
    return {"type": "gaussian", "std": std}


def constant(value: float = 0.0) -> dict:
    return {"type": "constant", "value": value}


def xavier() -> dict:
    return {"type": "xavier"}


def _learnable(weight_filler, bias_filler) -> dict:
    return {"weight_filler": weight_filler, "bias_filler": bias_filler}


def conv(name, bottom, *, num_output, kernel_size, stride=None, pad=None, group=None,
         weight_filler=None, bias_filler=None) -> Layer:
    p = {"num_output": num_output}
    if group is not None:
        p["group"] = group
    p["kernel_size"] = kernel_size
    if pad is not None:
        p["pad"] = pad
    if stride is not None:
        p["stride"] = stride
    p.update(_learnable(weight_filler or gaussian(0.01), bias_filler or constant(0)))
    return Layer(name, "Convolution", [bottom], [name], {"convolution_param": p}, (1, 2), (1, 0))


def fc(name, bottom, *, num_output, weight_filler=None, bias_filler=None) -> Layer:
    p = {"num_output": num_output, **_learnable(weight_filler or gaussian(0.01), bias_filler or constant(0))}
    return Layer(name, "InnerProduct", [bottom], [name], {"inner_product_param": p}, (1, 2), (1, 0))


def relu(name, blob) -> Layer:
    return Layer(name, "ReLU", [blob], [blob])


def pool(name, bottom, *, kernel_size, stride, method="MAX") -> Layer:
    return Layer(name, "Pooling", [bottom], [name],
                 {"pooling_param": {"pool": Enum(method), "kernel_size": kernel_size, "stride": stride}})


def lrn(name, bottom, *, local_size=5, alpha=0.0001, beta=0.75) -> Layer:
    return Layer(name, "LRN", [bottom], [name], {"lrn_param": {"local_size": local_size, "alpha": alpha, "beta": beta}})


def dropout(name, blob, ratio=0.5) -> Layer:
    return Layer(name, "Dropout", [blob], [blob], {"dropout_param": {"dropout_ratio": ratio}})


def softmax_loss(name, bottom) -> Layer:
    return Layer(name, "SoftmaxWithLoss", [bottom, "label"], [], phase="train")


def softmax(name, bottom) -> Layer:
    return Layer(name, "Softmax", [bottom], [name], phase="val")


def accuracy(name, bottom) -> Layer:
    return Layer(name, "Accuracy", [bottom, "label"], [name], phase="val")


# ---------------------------------------------------------------- your own net

# The solver a net of your own gets unless told otherwise (CaffeNet's schedule, shortened tenfold).
DEFAULT_SOLVER = dict(test_iter=100, test_interval=1000, base_lr=0.01, lr_policy="step", gamma=0.1, stepsize=10000,
                      display=100, max_iter=45000, momentum=0.9, weight_decay=0.0005, snapshot=5000)


def _bias_term(params: dict, message: str, default: bool) -> int:
    return int(bool(params.get(message, {}).get("bias_term", default)))


# How many parameter blobs a layer of these types has (Caffe's LayerSetUp), from its fields and its number of
# bottoms; a type not here keeps the multipliers its prototxt gives.
PARAM_BLOBS = {
    "Convolution": lambda params, bottoms: 1 + _bias_term(params, "convolution_param", True),
    "Deconvolution": lambda params, bottoms: 1 + _bias_term(params, "convolution_param", True),
    "InnerProduct": lambda params, bottoms: 1 + _bias_term(params, "inner_product_param", True),
    "Embed": lambda params, bottoms: 1 + _bias_term(params, "embed_param", True),
    "BatchNorm": lambda params, bottoms: 3,               # mean, variance, moving-average factor
    "Scale": lambda params, bottoms: int(bottoms == 1) + _bias_term(params, "scale_param", False),
    "Bias": lambda params, bottoms: int(bottoms == 1),    # a second bottom is the scale / the bias
    "PReLU": lambda params, bottoms: 1,
}


def _multipliers(lp, params: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(lr_mult, decay_mult) of each parameter blob of layer `lp`, one per blob so that the protocol freezes them
    all: those its prototxt gives, then Caffe's defaults (1 and 1; lr_mult 0 for BatchNorm's statistics, which
    Caffe never lets the solver learn)."""
    lr, decay = tuple(p.lr_mult for p in lp.param), tuple(p.decay_mult for p in lp.param)
    if lp.type in PARAM_BLOBS:
        blobs = PARAM_BLOBS[lp.type](params, len(lp.bottom))
        default_lr = 0.0 if lp.type == "BatchNorm" else 1.0
        lr, decay = lr + (default_lr,) * (blobs - len(lr)), decay + (1.0,) * (blobs - len(decay))
    return lr, decay


def _message_to_dict(message) -> dict:
    """A protobuf message -> nested dict of its set fields (enums by name, repeated fields as lists)."""
    out = {}
    for fd, value in message.ListFields():
        if fd.type == fd.TYPE_MESSAGE:
            value = [_message_to_dict(v) for v in value] if _is_repeated(fd) else _message_to_dict(value)
        elif fd.type == fd.TYPE_ENUM:
            value = [Enum(fd.enum_type.values_by_number[v].name) for v in value] if _is_repeated(fd) \
                else Enum(fd.enum_type.values_by_number[value].name)
        elif _is_repeated(fd):
            value = list(value)
        out[fd.name] = value
    return out


def _is_repeated(fd) -> bool:
    return fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED


def _check_bottoms(path: Path, net) -> None:
    """Every bottom of a layer is a top of a layer above it in the same phase's net (Net::Init's check, which
    would otherwise stop the net only when it is trained: Unknown bottom blob)."""
    from convnet_transfer.formats.protoio import pb
    for phase in (pb.TRAIN, pb.TEST):
        made = set(net.input)
        for lp in net.layer:
            if any(rule.phase == phase for rule in lp.exclude if rule.HasField("phase")) or \
                    any(rule.phase != phase for rule in lp.include if rule.HasField("phase")):
                continue
            for bottom in lp.bottom:
                if bottom not in made:
                    raise ValueError(f"{path}: layer {lp.name!r} takes bottom {bottom!r}, which no layer above it "
                                     f"makes in the {pb.Phase.Name(phase)} net (Caffe would stop on it: Unknown "
                                     f"bottom blob); check the spelling of that bottom and of the top it means")
            made.update(lp.top)


def from_prototxt(path: str | os.PathLike, transferable: list[str], *, classifier: str | None = None,
                  n_classes: int | None = None, crop_size: int | None = None, batch_size: int | None = None,
                  val_batch_size: int | None = None, image_size=(3, 256, 256), name: str | None = None,
                  solver: dict | None = None, mode: str = "cpu") -> Architecture:
    """Your own net: a train_val prototxt in the current Caffe format and the ordered names of its transferable
    layers. Its data layers are dropped (netgen writes its own, pointing at each split's database; crop, batch
    size and mirror are taken from them unless given); layers with `include { phase: TRAIN/TEST }` go to the
    train/val net only. `classifier` defaults to the last learnable layer, `n_classes` to its num_output."""
    from convnet_transfer.formats import protoio

    path = Path(path)
    net = protoio.read_net(path)
    if net.layers:
        raise ValueError(f"{path}: uses the legacy `layers {{ }}` format; upgrade it first with Caffe's "
                         f"upgrade_net_proto_text, then give the upgraded file")
    layers, data = [], {}
    for lp in net.layer:
        if lp.type not in protoio.CAFFE_LAYER_TYPES:
            raise ValueError(f"{path}: layer {lp.name!r} has type {lp.type!r}, which is not a Caffe layer type "
                             f"(Caffe would stop on it: Unknown layer type); check its spelling (types are "
                             f"case-sensitive: Convolution, InnerProduct, ReLU, ...)")
        phases = {protoio.pb.Phase.Name(rule.phase).lower() for rule in lp.include if rule.HasField("phase")}
        phase = {"train": "train", "test": "val"}[phases.pop()] if len(phases) == 1 else None
        if lp.type in ("Data", "ImageData", "Input", "DummyData", "MemoryData"):
            transform = _message_to_dict(lp.transform_param)
            data_param = _message_to_dict(lp.data_param)
            data[phase or "train"] = (transform, data_param)
            continue
        params = {fd.name: _message_to_dict(value) for fd, value in lp.ListFields()
                  if fd.name.endswith("_param") and fd.type == fd.TYPE_MESSAGE}
        lr, decay = _multipliers(lp, params)
        layers.append(Layer(lp.name, lp.type, list(lp.bottom), list(lp.top), params, lr, decay, phase))
    _check_bottoms(path, net)
    learnable = [layer.name for layer in layers if layer.learnable]
    if not learnable:
        raise ValueError(f"{path}: the net has no layer with weights")
    classifier = classifier or learnable[-1]
    classifier_layer = next(layer for layer in layers if layer.name == classifier) if classifier in learnable else None
    if classifier_layer is None:
        raise ValueError(f"{path}: classifier {classifier!r} is not a layer with weights; those are {learnable}")
    type_param = next(iter(classifier_layer.params.values()), {})
    train_transform, train_data = data.get("train", ({}, {}))
    _, val_data = data.get("val", ({}, {}))
    arch = Architecture(
        name=name or path.stem, net_name=net.name or path.stem, layers=layers, transferable=list(transferable),
        classifier=classifier, n_classes=n_classes or int(type_param.get("num_output", 0)) or 2,
        crop_size=crop_size if crop_size is not None else int(train_transform.get("crop_size", 0)),
        batch_size=batch_size or int(train_data.get("batch_size", 64)),
        val_batch_size=val_batch_size or int(val_data.get("batch_size", 0) or train_data.get("batch_size", 64)),
        mirror=bool(train_transform.get("mirror", False)), image_size=tuple(image_size),
        scale=train_transform.get("scale"), solver={**DEFAULT_SOLVER, **(solver or {})}, mode=mode)
    return arch.check()
