"""A Caffe net as a torch module: Caffe's Net::Init, Forward, CopyTrainedLayersFrom and ToProto.

    net = Net(read_net_file("train_val.prototxt"), "TRAIN", {"data": (256, 3, 227, 227), "label": (256,)}, seed=1)
    blobs = net(blobs={"data": images, "label": labels})     # every blob, by name
    net.loss(blobs).backward()                               # parameter gradients in net.params[i].tensor.grad
    net.load_caffemodel("base_iter_450000.caffemodel")       # same-name layers copied, the rest keep fillers
    write_caffemodel("x.caffemodel", net.to_caffemodel())

Caffe semantics kept:
- The net is filtered by phase/level/stages (include/exclude rules) and upgraded from V0/V1 if needed.
- Blobs are names; a layer whose top is its bottom (in place) rebinds the name, and a blob read by several layers
  gets the sum of their gradients (what Caffe's inserted Split layers do). An in-place write after another use of
  the blob (a layer reading it, its loss) is refused, as Caffe's Split makes it ("produced by multiple sources").
- Data layers (Data, ImageData, ...) produce nothing here: their tops, and those of Input layers, are given to
  forward(); `input_shapes` gives their shapes at build time (Input layers carry their own).
- Parameters: `params` in Caffe's learnable_params order, with lr_mult/decay_mult (default 1, 1) from the `param`
  blocks as the layer's set-up leaves them (BatchNorm adds lr_mult 0 ones). A parameter with lr_mult 0 (frozen)
  has requires_grad False and no gradient, as Caffe computes no diff for it; layers below the first one that
  learns get no backward pass at all (Caffe's "does not need backward computation"). `param { name }` shares a
  blob between layers: one tensor in each (gradients summed), one entry in `params` (the owner's).
- Loss: sum over tops with a loss weight, any top of any layer (top 0 of a *Loss layer: 1 unless `loss_weight`
  says otherwise). propagate_down false on a bottom stops its gradient, unless force_backward overrides it
  (Net::Init; never for a loss layer's labels).
- Net outputs: the blobs no later layer reads, sorted by name (Caffe keeps them in a std::set).
"""
from __future__ import annotations

import math
import os
from typing import Iterable, NamedTuple

import numpy as np
import torch
from torch import nn

from convnet_transfer.formats.protoio import pb
from . import glog
from .errors import EngineError
from .layers import CAFFE_DATA_LAYER_TYPES, LAYERS, LOSS_LAYER_TYPES, BuildContext, layer_where
from .upgrade import filter_net, insert_splits, net_needs_upgrade, upgrade_net
from .weights import array_to_blob_fast, blob_shape_equals, blob_values, proto_shape_string, read_caffemodel

__all__ = ["Net", "Param", "channels_last_on", "MEMORY_FORMAT_ENV"]

MEMORY_FORMAT_ENV = "CAFFE_TORCH_MEMORY_FORMAT"


def channels_last_on(device: torch.device | str) -> bool:
    """Whether nets and batches on `device` are kept channels-last (NHWC) in memory: $CAFFE_TORCH_MEMORY_FORMAT
    "nhwc" or "nchw" when set, else NHWC on the CPU (oneDNN: 13-17% faster on CaffeNet, bench/bench_engine.py)
    and NCHW elsewhere (not yet measured on a GPU: bench_engine.py --memory-format nchw,nhwc compares them)."""
    chosen = os.environ.get(MEMORY_FORMAT_ENV, "").strip().lower()
    if chosen not in ("", "nchw", "nhwc"):
        raise EngineError(f"${MEMORY_FORMAT_ENV}={chosen!r}: use nchw or nhwc (or leave it unset).")
    return chosen == "nhwc" if chosen else torch.device(device).type == "cpu"


class Param(NamedTuple):
    """One learnable blob: the layer it belongs to, its index in the layer, the tensor, and its multipliers."""
    layer_name: str
    index: int
    tensor: nn.Parameter
    lr_mult: float
    decay_mult: float

    @property
    def frozen(self) -> bool:
        """lr_mult 0: no gradient (Caffe computes no diff for it); the solver updates it by its momentum alone."""
        return self.lr_mult == 0


def _phase_name(phase) -> str:
    if isinstance(phase, str):
        name = phase.upper()
    else:
        name = pb.Phase.Name(int(phase))
    if name not in ("TRAIN", "TEST"):
        raise EngineError(f"phase must be TRAIN or TEST, got {phase!r}")
    return name


# Caffe's AllowForceBackward: the bottoms force_backward does not reach (those no gradient is defined for)
_NOT_FORCED_BACKWARD = {"EuclideanLoss": (), "ContrastiveLoss": (2,), "RNN": (1,), "LSTM": (1,), "LSTMUnit": (2,)}


def _force_backward_reaches(layer_type: str, bottom: int) -> bool:
    """Whether force_backward makes a layer of `layer_type` backpropagate to its bottom number `bottom`: all but a
    loss layer's labels (bottom 1; ContrastiveLoss's similarity, bottom 2) and a recurrent layer's `cont`."""
    default = (1,) if layer_type in LOSS_LAYER_TYPES else ()
    return bottom not in _NOT_FORCED_BACKWARD.get(layer_type, default)


class LayerTape(NamedTuple):
    """What `Net.forward_by_layer` ran: (its index in `layers`, the layer, its bottoms' tensors, its detached inputs,
    its outputs) per step, and every blob by name."""
    steps: list
    values: dict


class Net(nn.Module):
    """Caffe's Net on torch. See the module docstring."""

    def __init__(self, net_param: pb.NetParameter, phase="TRAIN", input_shapes: dict | None = None, *,
                 level: int | None = None, stages: Iterable[str] = (), seed: int | None = None, device="cpu",
                 meta: bool = False, log: bool = False):
        super().__init__()
        if net_needs_upgrade(net_param):
            net_param = upgrade_net(net_param)
        self.phase = _phase_name(phase)
        self.net_param = filter_net(net_param, self.phase, level, tuple(stages))
        self.name = self.net_param.name
        self.force_backward = self.net_param.force_backward
        self.seed = seed
        self._log = log
        input_shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}

        generator = torch.Generator()
        generator.manual_seed(seed if seed is not None else torch.seed())
        ctx = BuildContext(phase=self.phase, generator=generator, meta=meta)

        self.layer_params: list[pb.LayerParameter] = []   # every layer after filtering, data layers included
        self.data_layers: list[pb.LayerParameter] = []
        self.input_blobs: list[str] = []                  # tops given to forward()
        self.layers = nn.ModuleList()                     # the computing layers, in order
        self._steps: list[tuple[int, list[str], list[str], list[bool]]] = []
        self.blob_shapes: dict[str, tuple[int, ...]] = {}
        self.loss_weights: dict[str, float] = {}            # loss top -> its weight
        self._readers: dict[str, int] = {}                  # blob -> layers that read its latest value so far
        # layer name -> index in self.layers (-1: data/Input), the FIRST layer of that name: Caffe allows two layers
        # of one name and CopyTrainedLayersFrom fills the first
        self._layer_index: dict[str, int] = {}
        self._positions: list[int] = []                   # per layer_params entry: its index in self.layers, or -1
        self._layer_tops: list[list[tuple[str, tuple]]] = []   # per layer_params entry: its tops and shapes (init log)
        available: set[str] = set()   # blobs no later layer has read yet: the net outputs at the end
        produced: set[str] = set()
        for lp in self.net_param.layer:
            self._check_blobs(lp, produced)
            self.layer_params.append(lp)
            if lp.type in CAFFE_DATA_LAYER_TYPES or lp.type == "Input":
                tops = self._add_input_layer(lp, input_shapes, ctx)
            else:
                tops = self._add_computing_layer(lp, ctx)
                available.difference_update(lp.bottom)
            available.update(tops)
            produced.update(lp.top)
        self.outputs: list[str] = sorted(available)
        self.params: list[Param] = self._learnable_params()
        self.dropout_generators: dict[str, torch.Generator] = {}   # device -> generator (dropout_generator)
        self.channels_last = False
        if log:
            self._log_init()
        if not meta and str(device) != "cpu":
            self.to(device)

    def _check_blobs(self, lp: pb.LayerParameter, produced: set[str]) -> None:
        """Caffe's AppendBottom/AppendTop checks: bottoms exist, a top is produced once (unless in place)."""
        where = layer_where(lp)
        for j, bottom in enumerate(lp.bottom):
            if bottom not in self.blob_shapes:
                raise EngineError(f"Unknown bottom blob '{bottom}' ({where}, bottom index {j})")
        for j, top in enumerate(lp.top):
            in_place = j < len(lp.bottom) and lp.bottom[j] == top
            if top in produced and not in_place:
                raise EngineError(f"Top blob '{top}' produced by multiple sources ({where})")
            if in_place and (self._readers.get(top, 0) or top in self.loss_weights or list(lp.bottom).count(top) > 1):
                # InsertSplits gives a blob with several uses (layers reading it, its loss) a Split whose tops
                # replace its bottoms: this layer's then differs from its top, and Net::Init fails so
                raise EngineError(f"Top blob '{top}' produced by multiple sources ({where}): it is overwritten in "
                                  f"place after another use (a layer reading it, or its loss_weight), which Caffe "
                                  f"refuses; give this layer its own top")
        for bottom in lp.bottom:
            self._readers[bottom] = self._readers.get(bottom, 0) + 1
        for top in lp.top:
            self._readers[top] = 0

    def _add_input_layer(self, lp: pb.LayerParameter, input_shapes: dict, ctx: BuildContext) -> list[str]:
        """A data or Input layer: its tops become inputs of forward(), shaped by `input_shapes` (Input layers
        carry their own shapes), except for the data layers the engine computes in the net (layers.datalayers:
        DummyData, MemoryData, HDF5Data), built as computing layers. Returns the tops."""
        if lp.type in LAYERS and lp.type != "Input":
            return self._add_computing_layer(lp, ctx)
        shapes = []
        for top in lp.top:
            if top in input_shapes:
                shapes.append(input_shapes[top])
            elif lp.type == "Input":
                shapes = None
                break
            else:
                raise EngineError(f"{layer_where(lp)}: the shape of its top '{top}' must be given in input_shapes")
        if lp.type == "Input":
            layer = LAYERS["Input"](lp, [], ctx)
            shapes = [input_shapes.get(t, s) for t, s in zip(lp.top, layer.top_shapes)]
        else:
            self.data_layers.append(lp)
        self._record_layer(lp, -1, shapes)
        for top, shape in zip(lp.top, shapes):
            self.blob_shapes[top] = shape
            self.input_blobs.append(top)
        return list(lp.top)

    def _add_computing_layer(self, lp: pb.LayerParameter, ctx: BuildContext) -> list[str]:
        """Build a layer of the registry on its bottoms' shapes, with Caffe's checks of `param`, propagate_down
        and loss_weight. Returns its tops that can be net outputs (not an anonymous loss top)."""
        where = layer_where(lp)
        cls = LAYERS.get(lp.type)
        if cls is None:
            raise EngineError(f"{where}: layer type '{lp.type}' is not supported by this engine "
                              f"(supported: {', '.join(sorted(LAYERS))}, and the data layers "
                              f"{', '.join(sorted(CAFFE_DATA_LAYER_TYPES))})")
        anonymous = []
        if len(lp.top) == 0 and lp.type in LOSS_LAYER_TYPES:
            # Caffe's AutoTopBlobs: a loss layer without a top (2014 nets) gets an anonymous one, which counts
            # in the loss but is not a net output
            lp = pb.LayerParameter.FromString(lp.SerializeToString())
            anonymous = [f"(automatic:{lp.name})"]
            lp.top.extend(anonymous)
        layer = cls(lp, [self.blob_shapes[b] for b in lp.bottom], ctx)
        n_blobs = len(layer.blobs)
        if len(lp.param) > n_blobs:
            raise EngineError(f"Too many params specified for layer {lp.name} ({len(lp.param)} `param` blocks, "
                              f"the layer has {n_blobs} parameter blobs)")
        if len(lp.propagate_down) not in (0, len(lp.bottom)):
            raise EngineError(f"{where}: propagate_down param must be specified either 0 or bottom_size times")
        propagate = list(lp.propagate_down) or [True] * len(lp.bottom)
        if self.force_backward:      # Net::Init: force_backward overrides propagate_down where the layer allows it
            propagate = [p or _force_backward_reaches(lp.type, j) for j, p in enumerate(propagate)]
        self._add_loss_tops(lp, layer.top_shapes)
        self._record_layer(lp, len(self.layers), layer.top_shapes)
        self._steps.append((len(self.layers), list(lp.bottom), list(lp.top), propagate))
        self.layers.append(layer)
        return [top for top in lp.top if top not in anonymous]

    def _record_layer(self, lp: pb.LayerParameter, position: int, shapes) -> None:
        self._layer_index.setdefault(lp.name, position)
        self._positions.append(position)
        self._layer_tops.append(list(zip(lp.top, shapes)))

    def _add_loss_tops(self, lp: pb.LayerParameter, shapes: list[tuple[int, ...]]) -> None:
        """Record the shapes and loss weights of a layer's tops (Layer::SetLossWeights: any top of any layer may
        have one; a *Loss layer without any gets one, 1, LossLayer::LayerSetUp, so that a loss layer with a second
        top needs both given, e.g. InfogainLoss's `top: "loss" top: "prob" loss_weight: 1 loss_weight: 0`)."""
        weights = list(lp.loss_weight)
        if not weights and lp.type in LOSS_LAYER_TYPES:
            weights = [1.0]
        if weights and len(weights) != len(lp.top):
            raise EngineError(f"{layer_where(lp)}: loss_weight must be unspecified or specified once per top blob "
                              f"({len(lp.top)} tops, {len(weights)} loss_weight"
                              f"{'; a loss layer without loss_weight has one, 1' if not lp.loss_weight else ''})")
        for j, top in enumerate(lp.top):
            self.blob_shapes[top] = tuple(shapes[j])
            if weights and weights[j]:
                self.loss_weights[top] = float(weights[j])

    def _learnable_params(self) -> list[Param]:
        """Caffe's learnable_params (Net::AppendParam): every computing layer's blobs in layer order, with
        lr_mult/decay_mult from the `param` blocks of the layer after its set-up (default 1, 1). A blob whose
        `param { name }` an earlier blob has is shared: the layer holds the owner's tensor (one tensor, the
        gradients of all its layers summed), and only the owner is learnable, its multipliers set by the first
        sharer that gives them (a different one: an EngineError, as Caffe's check). A tensor no layer learns
        (lr_mult 0 in each) gets no gradient."""
        params, owners, given = [], {}, []
        learns: dict[int, bool] = {}
        for index, layer in enumerate(self.layers):
            specs = layer.lp.param
            for i in range(len(layer.blobs)):
                spec = specs[i] if i < len(specs) else pb.ParamSpec()
                if spec.name in owners:
                    owner = owners[spec.name]
                    layer.blobs[i] = self._shared_blob(layer, i, spec, params[owner])
                    params[owner] = self._merge_multipliers(params[owner], spec, given[owner], layer.name)
                else:
                    if spec.name:
                        owners[spec.name] = len(params)
                    params.append(Param(layer.name, i, layer.blobs[i], float(spec.lr_mult), float(spec.decay_mult)))
                    given.append([spec.HasField("lr_mult"), spec.HasField("decay_mult")])
                key = id(layer.blobs[i])
                learns[key] = learns.get(key, False) or spec.lr_mult != 0
        for param in params:
            param.tensor.requires_grad_(learns[id(param.tensor)])
        return params

    def _shared_blob(self, layer, i: int, spec: pb.ParamSpec, owner: Param) -> nn.Parameter:
        """The owner's tensor for blob `i` of `layer`, after Caffe's checks: the same shape (share_mode STRICT), or
        the same count (PERMISSIVE; this engine shares only equal shapes)."""
        own, theirs = tuple(layer.blobs[i].shape), tuple(owner.tensor.shape)
        say = (f"Cannot share param '{spec.name}' owned by layer '{owner.layer_name}' with layer '{layer.name}'; "
               f"{{}}.  Owner layer param shape is {theirs}; sharing layer {{}} shape {own}")
        if spec.share_mode == pb.ParamSpec.PERMISSIVE:
            if math.prod(own) != math.prod(theirs):
                raise EngineError(say.format("count mismatch", "shape is"))
            if own != theirs:
                raise EngineError(say.format("share_mode PERMISSIVE between different shapes is not supported by "
                                             "this engine (reshape one of the layers)", "has"))
        elif own != theirs:
            raise EngineError(say.format("shape mismatch", "expects"))
        self._say("net.cpp:467", f"Sharing parameters '{spec.name}' owned by layer '{owner.layer_name}', param "
                                 f"index {owner.index}")
        return owner.tensor

    @staticmethod
    def _merge_multipliers(owner: Param, spec: pb.ParamSpec, given: list[bool], layer_name: str) -> Param:
        """Caffe's AppendParam for a sharer: an lr_mult/decay_mult it gives must equal the one the owner's
        first giver gave; the first given one is the shared parameter's."""
        for k, field in enumerate(("lr_mult", "decay_mult")):
            if not spec.HasField(field):
                continue
            value = float(getattr(spec, field))
            if given[k] and value != getattr(owner, field):
                raise EngineError(f"layer '{layer_name}': Shared param '{spec.name}' has mismatched {field} "
                                  f"({value}; {getattr(owner, field)} before)")
            given[k] = True
            owner = owner._replace(**{field: value})
        return owner

    def _log_init(self) -> None:
        """The lines Caffe's Net::Init logs (net.cpp), so that our logs read like Caffe's."""
        from google.protobuf import text_format
        say = glog.info
        say("net.cpp:53", f"Initializing net from parameters: \n{text_format.MessageToString(self.net_param)}")
        memory = 0
        needs = {}
        grad_blobs: set[str] = set()
        for k, lp in enumerate(self.layer_params):
            say("net.cpp:86", f"Creating Layer {lp.name}")
            for b in lp.bottom:
                say("net.cpp:408", f"{lp.name} <- {b}")
            for j, t in enumerate(lp.top):
                in_place = j < len(lp.bottom) and lp.bottom[j] == t
                say("net.cpp:370" if in_place else "net.cpp:382", f"{lp.name} -> {t}" + (" (in-place)" * in_place))
            say("net.cpp:124", f"Setting up {lp.name}")
            for top, shape in self._layer_tops[k]:
                count = int(np.prod(shape)) if len(shape) else 1
                say("net.cpp:131", "Top shape: " + "".join(f"{d} " for d in shape) + f"({count})")
                if top in self.loss_weights:
                    say("net.cpp:134", f"    with loss weight {glog.fmt(self.loss_weights[top])}")
                memory += count
            say("net.cpp:139", f"Memory required for data: {memory * 4}")
            index = self._positions[k]
            n_blobs = len(self.layers[index].blobs) if index >= 0 else 0
            learns = any((lp.param[i].lr_mult if i < len(lp.param) else 1.0) != 0 for i in range(n_blobs))
            need = learns or any(b in grad_blobs for b in lp.bottom)
            needs[k] = need
            for t, _ in self._layer_tops[k]:
                (grad_blobs.add if need else grad_blobs.discard)(t)
        # a layer that no loss depends on needs no backward either (Net::Init's second pass)
        wanted = set(self.loss_weights)
        for k in reversed(range(len(self.layer_params))):
            lp = self.layer_params[k]
            contributes = any(t in wanted for t, _ in self._layer_tops[k])
            if contributes:
                wanted.update(lp.bottom)
            if needs[k] and contributes:
                say("net.cpp:200", f"{lp.name} needs backward computation.")
            else:
                say("net.cpp:202", f"{lp.name} does not need backward computation.")
        for name in self.outputs:
            say("net.cpp:244", f"This network produces output {name}")
        say("net.cpp:257", "Network initialization done.")

    # ------------------------------------------------------------ running

    def dropout_generator(self, device: torch.device) -> torch.Generator:
        """The generator of the dropout masks on `device` (seeded seed + 1 when first used); the solver saves and
        restores its state with a snapshot."""
        key = str(device)
        if key not in self.dropout_generators:
            generator = torch.Generator(device=device)
            generator.manual_seed((self.seed if self.seed is not None else torch.seed()) + 1)
            self.dropout_generators[key] = generator
        return self.dropout_generators[key]

    def set_channels_last(self, enabled: bool = True) -> "Net":
        """Keep 4-D parameters and inputs in channels-last (NHWC) memory: oneDNN and cuDNN convolutions are often
        faster so; the numbers are the same up to float rounding. Returns the net."""
        self.channels_last = enabled
        memory_format = torch.channels_last if enabled else torch.contiguous_format
        self._apply(lambda t: t.contiguous(memory_format=memory_format) if t.dim() == 4 else t)   # not 3-D convs'
        return self

    def place(self, device: torch.device) -> "Net":
        """Move the net to `device`, in the memory format `channels_last_on(device)` chooses. Returns the net."""
        self.to(device)
        return self.set_channels_last(channels_last_on(device))

    def forward(self, blobs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run every computing layer in order on `blobs` (the data and Input tops); return all blobs by name."""
        values = self._inputs(blobs)
        for index, bottoms, tops, propagate in self._steps:
            layer = self._layer_to_run(index, values[bottoms[0]] if bottoms else None)
            inputs = [values[b] if p else values[b].detach() for b, p in zip(bottoms, propagate)]
            outputs = layer(*inputs)
            for name, value in zip(tops, outputs):
                values[name] = value
        return values

    def forward_by_layer(self, blobs: dict[str, torch.Tensor], clock) -> tuple[dict[str, float], "LayerTape"]:
        """A forward pass as `caffe time` runs it: each layer on detached inputs (its own autograd graph), `clock()`
        (seconds, after waiting for the device) read around each. Returns the seconds per layer (by its index in
        `layers`: two layers may share a name) and the tape `backward_by_layer` needs (its `values`: every blob,
        by name)."""
        values = self._inputs(blobs)
        seconds, steps = {}, []
        for index, bottoms, tops, propagate in self._steps:
            layer = self._layer_to_run(index, values[bottoms[0]] if bottoms else None)
            sources = [values[b] for b in bottoms]
            inputs = [x.detach().requires_grad_(p and x.requires_grad) for x, p in zip(sources, propagate)]
            start = clock()
            outputs = layer(*inputs)
            seconds[index] = clock() - start
            steps.append((index, layer, sources, inputs, outputs))
            for name, value in zip(tops, outputs):
                values[name] = value
        return seconds, LayerTape(steps, values)

    def backward_by_layer(self, tape: "LayerTape", clock) -> dict[str, float]:
        """The backward pass of `forward_by_layer`, layer by layer from the last: each layer's backward alone from
        its tops' gradients, a blob read by several layers getting the sum of theirs (Caffe's Split). Parameter
        gradients accumulate in their .grad, as Caffe's diffs. Returns the seconds per layer (by index, as
        forward_by_layer)."""
        values = tape.values
        grads = {id(values[name]): torch.full_like(values[name], weight) for name, weight in self.loss_weights.items()
                 if values[name].requires_grad}
        seconds = {}
        for index, layer, sources, inputs, outputs in reversed(tape.steps):
            tops = [(out, grads.pop(id(out))) for out in outputs if id(out) in grads]
            bottoms = [(source, x) for source, x in zip(sources, inputs) if x.requires_grad]
            params = [w for w in layer.blobs if w.requires_grad]
            seconds[index] = 0.0
            if not tops or not (bottoms or params):
                continue
            start = clock()
            got = torch.autograd.grad([out for out, _ in tops], [x for _, x in bottoms] + params,
                                      [g for _, g in tops], allow_unused=True)
            seconds[index] = clock() - start
            for (source, _), g in zip(bottoms, got):
                if g is not None:
                    grads[id(source)] = grads[id(source)] + g if id(source) in grads else g
            for w, g in zip(params, got[len(bottoms):]):
                if g is not None:
                    w.grad = g if w.grad is None else w.grad + g
        return seconds

    def _inputs(self, blobs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The blobs a pass starts from: the given inputs, in the net's memory format, requiring grad under
        force_backward."""
        missing = [name for name in self.input_blobs if name not in blobs]
        if missing:
            raise EngineError(f"Net '{self.name}': forward() needs the input blob(s) {', '.join(missing)}")
        values = dict(blobs)
        if self.channels_last:
            for name in self.input_blobs:
                if values[name].dim() == 4 and values[name].is_floating_point():
                    values[name] = values[name].contiguous(memory_format=torch.channels_last)
        if self.force_backward:
            for name in self.input_blobs:
                if values[name].is_floating_point() and not values[name].requires_grad:
                    values[name] = values[name].detach().requires_grad_(True)
        return values

    def _layer_to_run(self, index: int, first_bottom: torch.Tensor | None):
        layer = self.layers[index]
        if getattr(layer, "train_phase", False):
            layer.generator = self.dropout_generator(first_bottom.device)
        return layer

    def loss(self, blobs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Caffe's net loss: sum over loss tops of loss_weight * (sum of the top's values); 0 when the net has no
        loss top (as Net::Forward returns)."""
        total = None
        for name, weight in self.loss_weights.items():
            term = blobs[name].sum() * weight
            total = term if total is None else total + term
        if total is None:
            device = next((v.device for v in blobs.values() if isinstance(v, torch.Tensor)), None)
            return torch.zeros((), device=device)
        return total

    # ------------------------------------------------------------ weights

    def layer(self, name: str):
        """The computing layer named `name` (None for data/Input layers)."""
        index = self._layer_index[name]
        return self.layers[index] if index >= 0 else None

    def _say(self, where: str, message: str) -> None:
        if self._log:
            glog.info(where, message)

    def load_caffemodel(self, source) -> list[str]:
        """Caffe's CopyTrainedLayersFrom: for each layer of `source` (a path, a NetParameter, or a list of them,
        loaded in order) with the name of a layer of this net, copy its blobs; other source layers are ignored and
        net layers not in the source keep their values (fillers). Returns the names of the layers copied."""
        if isinstance(source, (list, tuple)):
            copied = []
            for item in source:
                copied += self.load_caffemodel(item)
            return copied
        origin = "NetParameter"
        if isinstance(source, (str, os.PathLike)):
            origin = str(source)
            source = read_caffemodel(source)
        elif net_needs_upgrade(source):
            source = upgrade_net(source)
        copied = []
        split_names = self._split_layer_names()
        for source_layer in source.layer:
            name = source_layer.name
            if name in split_names and name not in self._layer_index and not len(source_layer.blobs):
                continue                       # a Split layer Caffe inserted: this net has it too (no blobs)
            if name not in self._layer_index:
                self._say("net.cpp:746", f"Ignoring source layer {name}")
                continue
            index = self._layer_index[name]
            target = self.layers[index].blobs if index >= 0 else []
            if len(target) != len(source_layer.blobs):
                raise EngineError(f"{origin}: Incompatible number of blobs for layer {name} (source has "
                                  f"{len(source_layer.blobs)}, net has {len(target)})")
            for j, (tensor, blob) in enumerate(zip(target, source_layer.blobs)):
                shape = tuple(tensor.shape)
                if not blob_shape_equals(shape, blob):
                    raise EngineError(
                        f"{origin}: Cannot copy param {j} weights from layer '{name}'; shape mismatch.  Source param "
                        f"shape is {proto_shape_string(blob)}; target param shape is "
                        f"{' '.join(map(str, shape))} ({tensor.numel()}). To learn this layer's parameters from "
                        f"scratch rather than copying from a saved net, rename the layer.")
                values = blob_values(blob).reshape(shape)
                with torch.no_grad():
                    tensor.copy_(torch.from_numpy(values))
            copied.append(name)
        return copied

    def layer_rows(self) -> list[tuple[str, int]]:
        """Each layer of the net as `caffe time` lists it, in order: (its name, its index in `layers`, or -1 for a
        data layer, whose batches come from outside)."""
        return list(zip((lp.name for lp in self.layer_params), self._positions))

    def weighted_layers(self) -> list[str]:
        """The names of the layers that have parameter blobs (what CopyTrainedLayersFrom can copy), in order."""
        return [lp.name for lp, index in zip(self.layer_params, self._positions)
                if index >= 0 and len(self.layers[index].blobs)]

    def _split_layer_names(self) -> set[str]:
        source = pb.NetParameter()
        source.layer.extend(self.layer_params)
        return {lp.name for lp in insert_splits(source).layer if lp.name not in self._layer_index}

    def to_caffemodel(self, write_diff: bool = False) -> pb.NetParameter:
        """Net::ToProto: the layers Caffe's Net holds for this definition (filtered, in the current format, with
        the Split layers InsertSplits adds, phase set, loss layers with their loss_weight) and their blobs (float
        data with `shape`; with write_diff, the gradients too). Real Caffe's caffemodel of the same net has the
        same layer messages."""
        out = pb.NetParameter()
        out.name = self.name
        source = pb.NetParameter()
        source.layer.extend(self.layer_params)
        positions = iter(self._positions)        # the original layers, in order, between the inserted Splits
        for lp in insert_splits(source).layer:
            inserted = lp.name not in self._layer_index
            index = -1 if inserted else next(positions)
            layer = out.layer.add()
            layer.CopyFrom(lp)
            if not layer.HasField("phase"):
                layer.phase = pb.Phase.Value(self.phase)
            if layer.type in LOSS_LAYER_TYPES and not len(layer.loss_weight):
                layer.loss_weight.append(1.0)      # LossLayer::LayerSetUp adds it to its layer_param_
            del layer.blobs[:]
            if index < 0:
                continue
            del layer.param[:]
            layer.param.extend(self.layers[index].lp.param)   # as the layer's set-up left them (BatchNorm's)
            for tensor in self.layers[index].blobs:
                diff = None
                if write_diff:
                    grad = tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)
                    diff = grad.detach().float().cpu().numpy()
                layer.blobs.add().CopyFrom(array_to_blob_fast(tensor.detach().float().cpu().numpy(), diff))
        return out
