"""Our schema is Caffe's: formats/proto/caffe.proto against real Caffe's own caffe_pb2 (pycaffe, BVLC 9b89154).

Compared through descriptors (every message, field, default and enum), then by parsing the same prototxts with
both and comparing their binary and text forms: prototxts using messages the schema once lacked, and every
prototxt of the 2014 release. The package names differ ("convnet_transfer.caffe", "caffe"); nothing else may.
"""
import pytest
from google.protobuf import text_format

from convnet_transfer.formats import caffe_pb2 as ours


@pytest.fixture(scope="module")
def theirs(real_caffe):
    real_caffe.import_pycaffe()
    from caffe.proto import caffe_pb2
    return caffe_pb2


def _messages(file_descriptor) -> dict:
    """Every message of a file, nested ones included, by its name inside the package (e.g. "V1LayerParameter")."""
    found = {}

    def visit(descriptor, prefix):
        found[prefix + descriptor.name] = descriptor
        for nested in descriptor.nested_types:
            visit(nested, f"{prefix}{descriptor.name}.")

    for descriptor in file_descriptor.message_types_by_name.values():
        visit(descriptor, "")
    return found


def _local(full_name: str, package: str) -> str:
    assert full_name.startswith(package + "."), full_name
    return full_name[len(package) + 1:]


def _enum(enum, package) -> tuple:
    return _local(enum.full_name, package), [(value.name, value.number) for value in enum.values]


def _field(field, package) -> tuple:
    """All that makes a field: name, number, label, type, packing, default, and the message/enum it holds."""
    kind = field.message_type or field.enum_type
    return (field.name, field.number, field.is_repeated, field.is_required, field.type, field.is_packed,
            field.has_default_value, field.default_value if field.has_default_value else None,
            _enum(field.enum_type, package) if field.enum_type else None,
            _local(kind.full_name, package) if kind else None)


def _schema(module) -> dict:
    package = module.DESCRIPTOR.package
    schema = {"": [_enum(e, package) for e in module.DESCRIPTOR.enum_types_by_name.values()]}
    for name, message in _messages(module.DESCRIPTOR).items():
        schema[name] = ([_field(f, package) for f in message.fields],
                        [_enum(e, package) for e in message.enum_types])
    return schema


def test_every_message_field_default_and_enum_is_caffes(theirs):
    assert ours.DESCRIPTOR.package == "convnet_transfer.caffe" and theirs.DESCRIPTOR.package == "caffe"
    mine, caffe = _schema(ours), _schema(theirs)
    assert sorted(mine) == sorted(caffe)
    for name in caffe:
        assert mine[name] == caffe[name], name
    assert len(caffe) > 60 and sum(len(fields) for fields, _ in list(caffe.values())[1:]) > 400


def _same_in_both(theirs, message_name: str, text: str):
    """Parse `text` with both schemas: equal bytes and text, and each reads the other's bytes back to itself."""
    mine = text_format.Parse(text, getattr(ours, message_name)())
    caffe = text_format.Parse(text, getattr(theirs, message_name)())
    data = mine.SerializeToString(deterministic=True)
    assert data == caffe.SerializeToString(deterministic=True)
    assert getattr(theirs, message_name).FromString(data) == caffe
    assert getattr(ours, message_name).FromString(caffe.SerializeToString()) == mine
    assert text_format.MessageToString(mine) == text_format.MessageToString(caffe)
    return mine


# Messages and fields the schema lacked before it was made whole (issue 20).
NETS = {
    "siamese contrastive loss": """
        name: "siamese"
        layer { name: "pair" type: "Input" top: "a" top: "b" top: "sim"
                input_param { shape { dim: 4 dim: 2 } shape { dim: 4 dim: 2 } shape { dim: 4 } } }
        layer { name: "loss" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "sim" top: "loss"
                contrastive_loss_param { margin: 2 legacy_version: true } }
    """,
    "batch norm and scale": """
        layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x"
                param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 }
                batch_norm_param { use_global_stats: true moving_average_fraction: 0.9 eps: 1e-4 } }
        layer { name: "scale" type: "Scale" bottom: "x" top: "x" scale_param { bias_term: true axis: 1 } }
        layer { name: "prelu" type: "PReLU" bottom: "x" top: "x" prelu_param { channel_shared: true } }
        layer { name: "clip" type: "Clip" bottom: "x" top: "x" clip_param { min: -1 max: 1 } }
        layer { name: "swish" type: "Swish" bottom: "x" top: "x" swish_param { beta: 2 } }
    """,
    "recurrent": """
        layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
                recurrent_param { num_output: 8 expose_hidden: true debug_info: false
                                  weight_filler { type: "uniform" min: -0.08 max: 0.08 }
                                  bias_filler { type: "constant" value: 0 } } }
        layer { name: "embed" type: "Embed" bottom: "w" top: "e"
                embed_param { num_output: 4 input_dim: 10 bias_term: false } }
    """,
    "shapes and data": """
        layer { name: "dummy" type: "DummyData" top: "d"
                dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: "gaussian" std: 0.1 } } }
        layer { name: "crop" type: "Crop" bottom: "d" bottom: "d" top: "c" crop_param { axis: 1 offset: 0 } }
        layer { name: "reshape" type: "Reshape" bottom: "c" top: "r" reshape_param { shape { dim: 0 dim: -1 } } }
        layer { name: "py" type: "Python" bottom: "r" top: "p"
                python_param { module: "m" layer: "L" param_str: "{}" share_in_parallel: true } }
        layer { name: "spp" type: "SPP" bottom: "r" top: "s" spp_param { pyramid_height: 2 pool: AVE } }
    """,
}

SOLVERS = {
    "adam": """
        net: "train_val.prototxt" type: "Adam" base_lr: 0.001 momentum: 0.9 momentum2: 0.999 delta: 1e-8
        lr_policy: "fixed" max_iter: 100 snapshot_format: HDF5 iter_size: 2 clip_gradients: 10
    """,
    "rmsprop and weights": """
        net: "train_val.prototxt" type: "RMSProp" rms_decay: 0.98 weights: "a.caffemodel" weights: "b.caffemodel"
        layer_wise_reduce: false solver_type: ADADELTA
    """,
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_nets_with_fields_once_missing_mean_the_same(theirs, name):
    _same_in_both(theirs, "NetParameter", NETS[name])


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_solvers_with_fields_once_missing_mean_the_same(theirs, name):
    _same_in_both(theirs, "SolverParameter", SOLVERS[name])


def test_every_2014_prototxt_means_the_same(theirs, reference):
    paths = sorted(reference.rglob("*.prototxt"))
    assert paths, f"no prototxt under {reference}"
    for path in paths:
        message_name = "SolverParameter" if path.name.endswith("solver.prototxt") else "NetParameter"
        parsed = _same_in_both(theirs, message_name, path.read_text())
        assert parsed.ByteSize() > 0, path
    print(f"{len(paths)} prototxts of the 2014 release parse to the same messages in both schemas")


def test_every_prototxt_of_caffes_source_tree_means_the_same(theirs, caffe_source_prototxts):
    """The issue's test: text and binary round trips of every prototxt in Caffe's source tree (models/, examples/:
    nets in every format era, and solvers), compared with real Caffe's own caffe_pb2."""
    for path in caffe_source_prototxts:
        message_name = "SolverParameter" if "solver" in path.name else "NetParameter"
        parsed = _same_in_both(theirs, message_name, path.read_text())
        assert parsed.ByteSize() > 0, path
    assert len(caffe_source_prototxts) >= 50
    print(f"{len(caffe_source_prototxts)} prototxts of Caffe's source tree parse to the same messages in both schemas")
