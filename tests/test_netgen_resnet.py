"""The transfer protocol on a residual net: resnet_small (convnet_transfer/nets/architectures/resnet_small.prototxt,
BatchNorm + Scale after every convolution, Eltwise joins, projection shortcuts), rendered as a user's own prototxt.

- which layers each split point n copies, freezes or re-initialises (a unit is a whole residual block), the
  BatchNorm flags and the names, in the train and val nets, and the base net equal to the user's file;
- real Caffe constructs every rendered net, and trains a frozen AnB net and a fine-tuned AnB+ net for a few
  iterations from its base net's weights: the frozen layers and BatchNorm statistics stay byte for byte, the
  fine-tuned ones move, the re-initialised ones are not the base net's;
- the same training check with our engine (caffe_torch), once it has Caffe's BatchNorm and Scale layers.
"""
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from convnet_transfer.cli.gen_nets import main as gen_nets_main
from convnet_transfer.data import databases, datasets, layout
from convnet_transfer.experiment import as_chw
from convnet_transfer.formats import protoio
from convnet_transfer.formats.protoio import pb
from convnet_transfer.nets import architectures, netgen
from convnet_transfer.nets.architectures import resnet_small
from convnet_transfer.nets.catalog import transfer_catalog
from convnet_transfer.training import realcaffe
from convnet_transfer.training.engine.layers import LAYERS
from test_engine_solver import weights_of
from test_netgen_caffe import construct_all, fake_data_root

ARCH = architectures.get("resnet_small")
UNITS = ARCH.units()
N = 2                                   # the split point the checks look at: conv1 and res2a copied
COPIED = [name for unit in UNITS[:N] for name in unit]
ABOVE = [name for unit in UNITS[N:] for name in unit]
CATALOG = transfer_catalog(splits=("0",), n_layers=len(UNITS), pairs=("AA", "AB"), fine_tuned=True, natman=False,
                           nolearn=True, reduced=(), whole=True)
WEIGHTED = {"Convolution", "BatchNorm", "Scale", "InnerProduct"}


def layers_of(path: Path) -> dict[str, pb.LayerParameter]:
    return {layer.name: layer for layer in protoio.read_net(path).layer}


def multipliers(layer: pb.LayerParameter) -> list[tuple[float, float]]:
    return [(p.lr_mult, p.decay_mult) for p in layer.param]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resnet") / "gen"
    netgen.render_experiment(CATALOG, out, out.parent / "data", arch="resnet_small")
    return out


# ---------------------------------------------------------------- the units

def test_a_unit_is_a_residual_block_with_its_batchnorm_scale_shortcut_and_join():
    assert ARCH.transferable == ["conv1", "res2a", "res3a", "res4a", "res4b"]
    assert UNITS[0] == ["conv1", "bn_conv1", "scale_conv1", "conv1_relu"]
    assert UNITS[2] == ["res3a_branch1", "bn3a_branch1", "scale3a_branch1",
                        "res3a_branch2a", "bn3a_branch2a", "scale3a_branch2a", "res3a_branch2a_relu",
                        "res3a_branch2b", "bn3a_branch2b", "scale3a_branch2b", "res3a", "res3a_relu"]
    names = [layer.name for layer in ARCH.layers]
    assert sum(UNITS, []) == names[:names.index("pool5")]        # every layer up to the head, once, in order
    assert (ARCH.classifier, ARCH.n_classes, ARCH.crop_size) == ("fc10", 10, 28)
    # CaffeNet's units hold its layers with weights one by one: the paper's split points are unchanged
    caffenet = architectures.get("caffenet")
    assert [[name for name in unit if caffenet.layer(name).learnable] for unit in caffenet.units()] == \
        [[name] for name in caffenet.transferable]


def test_units_by_name_prefix_and_in_place_layers():
    """An entry names the layers it prefixes; a block no entry names joins the next unit; the layers working in
    place on a unit's blobs (a BatchNorm named otherwise) end it, unless a later entry names them."""
    assert ARCH.replace(transferable=["conv1", "res3a"]).check().units()[1] == UNITS[1] + UNITS[2]
    no_relu = ARCH.replace(layers=[layer for layer in ARCH.layers if layer.name != "conv1_relu"])
    assert no_relu.replace(transferable=["conv1"]).check().units() == [["conv1", "bn_conv1", "scale_conv1"]]
    assert no_relu.replace(transferable=["conv1", "scale_conv1"]).check().units() == \
        [["conv1", "bn_conv1"], ["scale_conv1"]]
    assert ARCH.replace(transferable=["conv1", "res2a_branch2b"]).check().units() == \
        [["conv1", "bn_conv1", "scale_conv1", "conv1_relu"], UNITS[1][:7]]   # a split inside a block


def test_unit_errors():
    with pytest.raises(ValueError, match=r"'res5a' .* is not in the net after unit 'res4b'"):
        ARCH.replace(transferable=["conv1", "res4b", "res5a"]).check()
    with pytest.raises(ValueError, match=r"'res2a' .* is not in the net after unit 'res3a'"):
        ARCH.replace(transferable=["res3a", "res2a"]).check()            # out of order
    with pytest.raises(ValueError, match="'conv1_relu' has no weights"):
        ARCH.replace(transferable=["conv1", "conv1_relu"]).check()
    with pytest.raises(ValueError, match="classifier 'fc10' cannot be transferable"):
        ARCH.replace(transferable=["conv1", "fc10"]).check()


# ---------------------------------------------------------------- the rendered nets

def test_frozen_transfer_net_keeps_the_copied_blocks_and_their_statistics(rendered):
    train = layers_of(rendered / "transfer0A0B_1_2" / "train.prototxt")
    for name in COPIED:
        layer = train[name]
        assert multipliers(layer) == [(0, 0)] * {"Convolution": 1, "BatchNorm": 3, "Scale": 2}.get(layer.type, 0)
        assert layer.batch_norm_param.HasField("use_global_stats") == (layer.type == "BatchNorm")
        if layer.type == "BatchNorm":
            assert layer.batch_norm_param.use_global_stats
    for name in ABOVE:                   # re-initialised: renamed when it has blobs, as in the base net otherwise
        base = ARCH.layer(name)
        layer = train.get(f"{name}-new") if base.learnable else train[name]
        assert layer is not None, name
        assert multipliers(layer) == list(zip(base.lr_mult, base.decay_mult))
        assert not layer.batch_norm_param.HasField("use_global_stats")
    assert train["res3a_branch2a-new"].convolution_param.weight_filler.type == "msra"
    assert list(train["res3a"].bottom) == ["res3a_branch1-new", "res3a_branch2b-new"]
    assert list(train["res3a_branch1-new"].bottom) == ["res2a"]        # reads the copied block's output
    assert list(train["res4a_branch1-new"].bottom) == ["res3a"]
    assert train["fc10-new"].inner_product_param.num_output == 10
    val = layers_of(rendered / "transfer0A0B_1_2" / "val.prototxt")
    assert val["bn2a_branch2b"].batch_norm_param.use_global_stats and not val["bn2a_branch2b"].param
    assert not val["bn3a_branch1-new"].HasField("batch_norm_param")
    assert not val["res3a_branch2a-new"].convolution_param.HasField("weight_filler")
    assert not val["scale4b_branch2b-new"].param


def test_fine_tuned_and_nolearn_nets(rendered):
    tuned = layers_of(rendered / "transfer-ft0A0B_1_2" / "train.prototxt")
    for name in COPIED:                  # copied, names kept, learning as in the base net, statistics computed
        assert multipliers(tuned[name]) == list(zip(ARCH.layer(name).lr_mult, ARCH.layer(name).decay_mult))
        assert not tuned[name].HasField("batch_norm_param")
    assert "res3a_branch1-new" in tuned and "res3a_branch1" not in tuned
    nolearn = layers_of(rendered / "nolearn_1_2" / "train.prototxt")
    assert not [name for name in nolearn if name.endswith("-new")]
    assert multipliers(nolearn["scale2a_branch2b"]) == [(0, 0), (0, 0)]
    assert not nolearn["bn2a_branch2b"].HasField("batch_norm_param")   # no base net: no statistics to keep
    assert multipliers(nolearn["res3a_branch2a"]) == [(1, 1)]


def test_base_net_is_the_users_net(rendered):
    for phase, name in ((pb.TRAIN, "train.prototxt"), (pb.TEST, "val.prototxt")):
        theirs = protoio.read_net(resnet_small.PROTOTXT)
        ours = protoio.read_net(rendered / "half0A" / name)
        expected = [layer for layer in theirs.layer if not layer.include or layer.include[0].phase == phase]
        for layer in expected:
            layer.ClearField("include")
            if phase == pb.TEST:         # the val net: no fillers, no learning rates
                layer.ClearField("param")
                for group in (layer.convolution_param, layer.inner_product_param):
                    group.ClearField("weight_filler")
                    group.ClearField("bias_filler")
                for field in ("convolution_param", "inner_product_param"):
                    if not getattr(layer, field).ListFields():
                        layer.ClearField(field)
        assert ours.name == theirs.name
        assert list(ours.layer)[1:] == expected[1:], name        # the data layer is gen_nets' own


def test_gen_nets_prototxt_gives_the_registered_nets(tmp_path):
    only = ["--only", "half0A,transfer0A0B_1_3,transfer-ft0B0A_1_5,nolearn_1_1", "--data", "data", "--quiet"]
    for args, out in ((["--prototxt", resnet_small.PROTOTXT, "--transferable", ",".join(ARCH.transferable)], "a"),
                      (["--arch", "resnet_small"], "b")):
        result = CliRunner().invoke(gen_nets_main, [*map(str, args), "--out", str(tmp_path / out), *only])
        assert result.exit_code == 0, result.output
    for net in ("half0A", "transfer0A0B_1_3", "transfer-ft0B0A_1_5", "nolearn_1_1"):
        for name in ("train.prototxt", "val.prototxt"):
            assert protoio.read_net(tmp_path / "a" / net / name) == protoio.read_net(tmp_path / "b" / net / name)
    listed = CliRunner().invoke(gen_nets_main, ["--arch", "resnet_small", "--list"])
    assert "transfer0A0B_1_5" in listed.output and "transfer0A0B_1_6" not in listed.output
    refused = CliRunner().invoke(gen_nets_main, ["--prototxt", str(resnet_small.PROTOTXT), "--transferable",
                                                 "conv1,res9", "--all", "--out", str(tmp_path / "c")])
    assert refused.exit_code != 0 and "'res9'" in refused.output and not (tmp_path / "c").exists()
    old = CliRunner().invoke(gen_nets_main, ["--arch", "resnet_small", "--only", "half0A", "--format", "2014",
                                             "--out", str(tmp_path / "d")])
    assert old.exit_code != 0 and "BatchNorm has no 2014 (V0) form" in old.output


# ---------------------------------------------------------------- real Caffe, and our engine

@pytest.mark.slow
def test_caffe_constructs_every_rendered_net(real_caffe, tmp_path):
    data = fake_data_root(tmp_path, CATALOG, (1, 28, 28))
    netgen.render_experiment(CATALOG, tmp_path / "gen", data, arch="resnet_small", batch_size=2)
    done = construct_all(real_caffe, tmp_path / "gen", [("train.prototxt", "train"), ("val.prototxt", "test")])
    # distinct train nets: base (= whole) + 5 frozen + 5 fine-tuned + 5 nolearn; val nets: base + 5 renamed
    # + 5 frozen (their BatchNorm layers say use_global_stats)
    trains = [seen for seen in done if seen["file"] == "train.prototxt"]
    assert (len(trains), len(done) - len(trains)) == (16, 11)
    for seen in done:
        shapes = seen["shapes"]
        assert shapes["pool5"] == [2, 64, 1, 1]
        assert shapes["fc10" if "fc10" in shapes else "fc10-new"] == [2, 10]


def half_databases(data: Path) -> None:
    """half0A / half0B of 48 Fashion-MNIST training images each (classes 0-4; 5-9 as 0-4), written by the data
    stage (databases.write_arrays, with their means); the valid folders link to the train databases."""
    fashion = datasets.FashionMNIST()
    items = fashion.items("train")[:400]
    for half, classes in (("A", range(0, 5)), ("B", range(5, 10))):
        chosen = [(name, label - classes[0]) for name, label in items if label in classes][:48]
        train = data / layout.list_folder(f"half0{half}", "train")
        train.mkdir(parents=True)
        databases.write_arrays(train / "lmdb", ((databases.make_key(i, name), as_chw(fashion.image(name), 1, 28), label)
                                                for i, (name, label) in enumerate(chosen)),
                               mean_path=train / layout.MEAN, progress=False)
        valid = data / layout.list_folder(f"half0{half}", "valid")
        valid.mkdir()
        (valid / "lmdb").symlink_to(train / "lmdb")


def train_in_turn(nets: Path, names: list[str], caffe: list[str], env: dict) -> None:
    """Run each net's train.sh with `caffe` as $CAFFE, base net first."""
    for name in names:
        proc = subprocess.run(["bash", "train.sh"], cwd=nets / name, env={**env, "CAFFE": shlex.join(caffe)},
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{name}:\n{(proc.stdout + proc.stderr)[-4000:]}"


def check_frozen_and_tuned(nets: Path, iterations: int) -> None:
    snapshot = f"snapshot_iter_{iterations}.caffemodel"
    base = weights_of(nets / "half0A" / snapshot)
    frozen = weights_of(nets / "transfer0A0B_1_2" / snapshot)
    tuned = weights_of(nets / "transfer-ft0A0B_1_2" / snapshot)
    copied = [name for name in COPIED if name in base]
    assert {ARCH.layer(name).type for name in copied} == {"Convolution", "BatchNorm", "Scale"}
    for name in copied:
        assert [b.tobytes() for b in frozen[name]] == [b.tobytes() for b in base[name]], f"frozen {name} moved"
        for i, (now, before) in enumerate(zip(tuned[name], base[name])):
            assert not np.array_equal(now, before), f"fine-tuned {name}[{i}] did not move"
    for name in (name for name in ABOVE if name in base):
        for model in (frozen, tuned):
            assert name not in model
            assert not np.array_equal(model[f"{name}-new"][0], base[name][0]), f"{name}-new is the base net's"


def train_the_transfer_nets(tmp_path: Path, caffe: list[str], env: dict, iterations: int = 4) -> Path:
    half_databases(tmp_path / "data")
    nets = ["half0A", "transfer0A0B_1_2", "transfer-ft0A0B_1_2"]
    netgen.render_experiment(CATALOG, tmp_path / "gen", tmp_path / "data", arch="resnet_small", only=nets,
                             batch_size=8, n_classes=5,
                             solver=dict(max_iter=iterations, snapshot=iterations, test_iter=1, test_interval=100,
                                         display=1))
    train_in_turn(tmp_path / "gen", nets, caffe, env)
    return tmp_path / "gen"


@pytest.mark.slow
def test_caffe_trains_a_frozen_transfer_net_from_its_base_net(real_caffe, tmp_path):
    nets = train_the_transfer_nets(tmp_path, [str(real_caffe.caffe)], real_caffe.env())
    check_frozen_and_tuned(nets, 4)


@pytest.mark.slow
@pytest.mark.skipif("BatchNorm" not in LAYERS or "Scale" not in LAYERS,
                    reason="the engine has no BatchNorm/Scale layers yet (engine/layers/normalization.py)")
def test_engine_trains_a_frozen_transfer_net_from_its_base_net(tmp_path):
    nets = train_the_transfer_nets(tmp_path, realcaffe.caffe_command("torch"), dict(os.environ))
    check_frozen_and_tuned(nets, 4)
