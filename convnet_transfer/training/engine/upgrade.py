"""Read net definitions in every format Caffe has used, upgraded in memory as Caffe does.

Caffe's src/caffe/util/upgrade_proto.cpp, step by step:

    V0 (2014: `layers { layer { type: "conv" kernelsize: 11 ... } }`, `padding` layers)
      -> V1 (`layers { type: CONVOLUTION convolution_param { ... } }`)     UpgradeV0Net (+ UpgradeV0PaddingLayers)
      -> data transformation fields moved into transform_param            UpgradeNetDataTransformation
      -> current (`layer { type: "Convolution" param { lr_mult } }`)       UpgradeV1Net
      -> `input:`/`input_dim:` fields become an Input layer                UpgradeNetInput
      -> BatchNorm with 3 param specs gets lr_mult/decay_mult 0            UpgradeNetBatchNorm

The V0 tables are in convnet_transfer/formats/legacy.py; solvers are read and upgraded by protoio.read_solver.

Where Caffe logs "Unknown parameter ... for layer type ..." and carries on, this module raises EngineError:
the parameter would be silently lost.

Public: upgrade_net, read_net_file, filter_net, net_needs_upgrade, insert_splits.
"""
from __future__ import annotations

import os

from convnet_transfer.formats import protoio
from convnet_transfer.formats.legacy import V0_ANY_TYPE, V0_FIELDS, V0_PADDING_TYPE, V0_TYPES, V1_TYPE_NAMES
from convnet_transfer.formats.protoio import pb
from .errors import EngineError

__all__ = ["upgrade_net", "read_net_file", "filter_net", "net_needs_upgrade", "insert_splits", "state_meets_rule"]

# ---------------------------------------------------------------- V0 -> V1

_V0_STRUCTURAL = {"name", "type", "blobs", "blobs_lr", "weight_decay"}


def _set_path(message, path: str, value) -> None:
    """Set `a.b` in `message` to `value`: a repeated scalar gets it appended, a message gets it copied."""
    *parents, leaf = path.split(".")
    target = message
    for part in parents:
        target = getattr(target, part)
    field = target.DESCRIPTOR.fields_by_name[leaf]
    if field.message_type is not None:
        getattr(target, leaf).CopyFrom(value)
    elif field.is_repeated:
        getattr(target, leaf).append(value)
    else:
        setattr(target, leaf, value)


def _upgrade_v0_padding_layers(net: pb.NetParameter) -> pb.NetParameter:
    """UpgradeV0PaddingLayers: drop `padding` layers, moving their `pad` into the conv/pool layer that reads them."""
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layers[:]
    last_top = {name: -1 for name in net.input}
    for i, connection in enumerate(net.layers):
        v0 = connection.layer
        if v0.type != V0_PADDING_TYPE:
            out.layers.add().CopyFrom(connection)
        for j, blob in enumerate(connection.bottom):
            if blob not in last_top:
                raise EngineError(f"V0 layer '{v0.name}': unknown bottom blob '{blob}' (no earlier layer makes it)")
            source_index = last_top[blob]
            if source_index == -1:
                continue
            source = net.layers[source_index]
            if source.layer.type == V0_PADDING_TYPE:
                if v0.type not in ("conv", "pool"):
                    raise EngineError(f"V0 layer '{v0.name}' (type {v0.type}) reads padding layer "
                                      f"'{source.layer.name}': only conv and pool layers may")
                if len(connection.bottom) != 1 or len(source.bottom) != 1 or len(source.top) != 1:
                    raise EngineError(f"V0 padding layer '{source.layer.name}' and the layer reading it must have "
                                      f"one bottom and one top each")
                target = out.layers[len(out.layers) - 1]
                target.layer.pad = source.layer.pad
                target.bottom[j] = source.bottom[0]
        for blob in connection.top:
            last_top[blob] = i
    return out


def _upgrade_v0_layer(connection: pb.V1LayerParameter) -> pb.V1LayerParameter:
    """UpgradeV0LayerParameter: one V0 layer (nested in `layers { layer { } }`) -> a V1 layer."""
    out = pb.V1LayerParameter()
    out.bottom.extend(connection.bottom)
    out.top.extend(connection.top)
    if not connection.HasField("layer"):
        return out
    v0 = connection.layer
    if v0.HasField("name"):
        out.name = v0.name
    layer_type = v0.type
    if v0.HasField("type"):
        if layer_type not in V0_TYPES:
            raise EngineError(f"V0 layer '{v0.name}': unknown layer type '{layer_type}'")
        out.type = pb.V1LayerParameter.LayerType.Value(V0_TYPES[layer_type])
    for blob in v0.blobs:
        out.blobs.add().CopyFrom(blob)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, value in v0.ListFields():
        if field.name in _V0_STRUCTURAL:
            continue
        targets = V0_FIELDS.get(field.name)
        if targets is None:
            raise EngineError(f"V0 layer '{v0.name}': parameter '{field.name}' is not supported")
        path = targets.get(layer_type, targets.get(V0_ANY_TYPE))
        if path is None:
            raise EngineError(f"V0 layer '{v0.name}': unknown parameter {field.name} for layer type {layer_type} "
                              f"(Caffe would drop it); remove it or fix the type")
        if field.name == "pool":
            value = pb.PoolingParameter.PoolMethod.Value(pb.V0LayerParameter.PoolMethod.Name(value))
        _set_path(out, path, value)
    return out


def _upgrade_v0_net(net: pb.NetParameter) -> pb.NetParameter:
    padded = _upgrade_v0_padding_layers(net)
    out = pb.NetParameter()
    if padded.HasField("name"):
        out.name = padded.name
    for connection in padded.layers:
        out.layers.add().CopyFrom(_upgrade_v0_layer(connection))
    out.input.extend(padded.input)
    out.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        out.force_backward = padded.force_backward
    return out


# ---------------------------------------------------------------- data transformation fields

_TRANSFORM_HOSTS = {"DATA": "data_param", "IMAGE_DATA": "image_data_param", "WINDOW_DATA": "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def _needs_data_upgrade(net: pb.NetParameter) -> bool:
    for layer in net.layers:
        host = _TRANSFORM_HOSTS.get(pb.V1LayerParameter.LayerType.Name(layer.type)) if layer.type else None
        if host and any(getattr(layer, host).HasField(f) for f in _TRANSFORM_FIELDS):
            return True
    return False


def _upgrade_data_transformation(net: pb.NetParameter) -> None:
    for layer in net.layers:
        host_name = _TRANSFORM_HOSTS.get(pb.V1LayerParameter.LayerType.Name(layer.type)) if layer.type else None
        if not host_name or not layer.HasField(host_name):
            continue
        host = getattr(layer, host_name)
        for field in _TRANSFORM_FIELDS:
            if host.HasField(field):
                setattr(layer.transform_param, field, getattr(host, field))
                host.ClearField(field)


# ---------------------------------------------------------------- V1 -> current

# V1 *_param messages copied as they are into the current layer
_V1_COPIED = [f.name for f in pb.V1LayerParameter.DESCRIPTOR.fields
              if f.name.endswith("_param") and f.name in pb.LayerParameter.DESCRIPTOR.fields_by_name]


def _upgrade_v1_layer(v1: pb.V1LayerParameter) -> pb.LayerParameter:
    layer = pb.LayerParameter()
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    for rule in v1.include:
        layer.include.add().CopyFrom(rule)
    for rule in v1.exclude:
        layer.exclude.add().CopyFrom(rule)
    if v1.HasField("type"):
        layer.type = V1_TYPE_NAMES[pb.V1LayerParameter.LayerType.Name(v1.type)]
    for blob in v1.blobs:
        layer.blobs.add().CopyFrom(blob)

    def spec(i):
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = pb.ParamSpec.DimCheckMode.Value(pb.V1LayerParameter.DimCheckMode.Name(mode))
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for name in _V1_COPIED:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    if v1.HasField("layer"):
        raise EngineError(f"layer '{v1.name}': a V1 layer that also holds a V0 `layer {{ }}` block; "
                          f"write the net in one format")
    return layer


def _upgrade_v1_net(net: pb.NetParameter) -> pb.NetParameter:
    if len(net.layer):
        raise EngineError("the net defines both `layer` (current format) and `layers` (V1/V0) fields; "
                          "Caffe refuses such a net: write all layers in one format")
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layers[:]
    del out.layer[:]
    for v1 in net.layers:
        out.layer.add().CopyFrom(_upgrade_v1_layer(v1))
    return out


# ---------------------------------------------------------------- inputs, batch norm

def _upgrade_input(net: pb.NetParameter) -> None:
    """UpgradeNetInput: `input`, `input_shape`/`input_dim` -> an Input layer first in the net."""
    has_shape, has_dim = len(net.input_shape) > 0, len(net.input_dim) > 0
    if has_shape or has_dim:
        layer = pb.LayerParameter(name="input", type="Input")
        for i, name in enumerate(net.input):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        rest = [pb.LayerParameter.FromString(l.SerializeToString()) for l in net.layer]
        del net.layer[:]
        net.layer.extend([layer] + rest)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


def _upgrade_batch_norm(net: pb.NetParameter) -> None:
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


# ---------------------------------------------------------------- public

def net_needs_upgrade(net: pb.NetParameter) -> bool:
    return (len(net.layers) > 0 or len(net.input) > 0
            or any(l.type == "BatchNorm" and len(l.param) == 3 for l in net.layer))


def upgrade_net(net: pb.NetParameter) -> pb.NetParameter:
    """A copy of `net` in the current `layer` format (UpgradeNetAsNeeded). Works on prototxts and caffemodels."""
    out = pb.NetParameter()
    out.CopyFrom(net)
    if any(connection.HasField("layer") for connection in out.layers):
        out = _upgrade_v0_net(out)
    if _needs_data_upgrade(out):
        _upgrade_data_transformation(out)
    if len(out.layers):
        out = _upgrade_v1_net(out)
    if len(out.input):
        _upgrade_input(out)
    _upgrade_batch_norm(out)
    return out


def read_net_file(path: str | os.PathLike) -> pb.NetParameter:
    """Read a net prototxt (current, V1 or V0 format) and upgrade it (ReadNetParamsFromTextFileOrDie)."""
    net = protoio.read_net(path)
    try:
        return upgrade_net(net)
    except EngineError as err:
        raise EngineError(f"{path}: {err}") from None


# ---------------------------------------------------------------- FilterNet

def _phase_value(phase) -> int:
    if isinstance(phase, str):
        return pb.Phase.Value(phase.upper())
    return int(phase)


def state_meets_rule(state: pb.NetState, rule: pb.NetStateRule) -> bool:
    """Net::StateMeetsRule."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    if any(stage not in state.stage for stage in rule.stage):
        return False
    if any(stage in state.stage for stage in rule.not_stage):
        return False
    return True


def filter_net(net: pb.NetParameter, phase="TRAIN", level: int | None = None, stages=()) -> pb.NetParameter:
    """Net::FilterNet: keep the layers whose include/exclude rules match the state (phase, level, stages).

    The state is `net.state` merged with the arguments, as the solver does with train_state/test_state
    (NetState::MergeFrom): `phase` set, `level` replaced when given, `stages` added to the net's own."""
    state = pb.NetState()
    state.CopyFrom(net.state)
    state.phase = _phase_value(phase)
    if level is not None:
        state.level = level
    state.stage.extend(s for s in stages if s not in state.stage)
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    out.state.CopyFrom(state)
    for layer in net.layer:
        if len(layer.include) and len(layer.exclude):
            raise EngineError(f"layer '{layer.name}': specify either include rules or exclude rules; not both")
        included = len(layer.include) == 0
        if any(state_meets_rule(state, rule) for rule in layer.exclude):
            included = False
        if any(state_meets_rule(state, rule) for rule in layer.include):
            included = True
        if included:
            out.layer.add().CopyFrom(layer)
    return out


# ---------------------------------------------------------------- InsertSplits

def insert_splits(net: pb.NetParameter) -> pb.NetParameter:
    """Caffe's InsertSplits (util/insert_splits.cpp): a top read by several bottoms (or read once and also a
    loss) gets a Split layer `<blob>_<layer>_<index>_split` right after its layer, with tops
    `<blob>_<layer>_<index>_split_<k>` that the readers use instead. This is the layer list Caffe's Net holds,
    and so what its caffemodels contain."""
    last_top: dict[str, tuple[int, int]] = {}
    source_of: dict[tuple[int, int], tuple[int, int]] = {}
    readers: dict[tuple[int, int], int] = {}
    loss_weight: dict[tuple[int, int], float] = {}
    for i, layer in enumerate(net.layer):
        for j, blob in enumerate(layer.bottom):
            if blob not in last_top:
                raise EngineError(f"Unknown bottom blob '{blob}' (layer '{layer.name}', bottom index {j})")
            source_of[(i, j)] = last_top[blob]
            readers[last_top[blob]] = readers.get(last_top[blob], 0) + 1
        for j, blob in enumerate(layer.top):
            last_top[blob] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            top = last_top[layer.top[j]]
            loss_weight[top] = layer.loss_weight[j]
            if loss_weight[top]:
                readers[top] = readers.get(top, 0) + 1
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    next_split: dict[tuple[int, int], int] = {}
    for i, original in enumerate(net.layer):
        layer = out.layer.add()
        layer.CopyFrom(original)
        for j, blob in enumerate(layer.bottom):
            top = source_of[(i, j)]
            if readers.get(top, 0) > 1:
                k = next_split.get(top, 0)
                next_split[top] = k + 1
                layer.bottom[j] = f"{blob}_{net.layer[top[0]].name}_{top[1]}_split_{k}"
        for j, blob in enumerate(original.top):
            count = readers.get((i, j), 0)
            if count > 1:
                weight = loss_weight.get((i, j), 0.0)
                split = out.layer.add(name=f"{blob}_{original.name}_{j}_split", type="Split", bottom=[blob])
                split.top.extend(f"{blob}_{original.name}_{j}_split_{k}" for k in range(count))
                if weight:
                    split.loss_weight.extend([weight] + [0.0] * (count - 1))
                    del layer.loss_weight[:]
                    next_split[(i, j)] = next_split.get((i, j), 0) + 1
    return out
