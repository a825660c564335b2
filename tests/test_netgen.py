"""gen_nets: the 170 nets against the 2014 release, the current format against Caffe's V0 upgrade rules,
the transfer protocol on other architectures, train.sh, and re-running without losing anything."""
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from google.protobuf import text_format

from convnet_transfer.nets import architectures, netgen
from convnet_transfer.formats import protoio
from convnet_transfer.nets.catalog import transfer_catalog
from convnet_transfer.cli.gen_nets import main as gen_nets_main
from convnet_transfer.formats.protoio import pb
from convnet_transfer.resources import templates_dir

FILES = ("imagenet_solver.prototxt", "imagenet_train.prototxt", "imagenet_val.prototxt")


def render_in(root: Path, **kwargs) -> netgen.RenderReport:
    """Render as the 2014 tree was laid out: <root>/results/<net> with links to ../../ilsvrc12/data/..."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        return netgen.render_experiment(out_root="results", data_root="ilsvrc12/data", **kwargs)


@pytest.fixture(scope="module")
def tree_2014(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen2014")
    report = render_in(root, format="2014")
    assert len(report.nets) == 170 and not report.updated and not report.unchanged
    return root / "results"


@pytest.fixture(scope="module")
def tree_current(tmp_path_factory):
    root = tmp_path_factory.mktemp("gencurrent")
    render_in(root)
    return root / "results"


def without_data_paths(net: pb.NetParameter) -> pb.NetParameter:
    """The net with its database source, backend and mean file cleared (they name files, not the net)."""
    for conn in net.layers:
        conn.layer.ClearField("source")
        conn.layer.ClearField("meanfile")
    for layer in net.layer:
        layer.data_param.ClearField("source")
        layer.data_param.ClearField("backend")
        layer.transform_param.ClearField("mean_file")
        for field in ("data_param", "transform_param"):
            if not getattr(layer, field).ListFields():
                layer.ClearField(field)
    return net


def message_diff(a, b, name_a, name_b) -> str:
    return "\n".join(difflib.unified_diff(text_format.MessageToString(a).splitlines(),
                                          text_format.MessageToString(b).splitlines(),
                                          name_a, name_b, lineterm="", n=2))


# ---------------------------------------------------------------- the 2014 format = the 2014 files

def test_2014_format_equals_every_reference_file(reference, tree_2014):
    problems = []
    for ref_dir in sorted((reference / "results").iterdir()):
        for name in FILES:
            ours, theirs = tree_2014 / ref_dir.name / name, ref_dir / name
            if name.endswith("solver.prototxt"):
                a, b = protoio.read_solver(theirs), protoio.read_solver(ours)
            else:
                a, b = without_data_paths(protoio.read_net(theirs)), without_data_paths(protoio.read_net(ours))
            if a != b:
                problems.append(message_diff(a, b, str(theirs), str(ours)))
    assert not problems, f"{len(problems)} files differ:\n" + "\n".join(problems[:3])


def test_2014_format_keeps_the_release_quirks(tree_2014):
    net = protoio.read_net(tree_2014 / "transfer0A0B_1_3" / "imagenet_train.prototxt")
    layers = {conn.layer.name: conn for conn in net.layers}
    assert layers["fc8-new"].layer.num_output == 1000          # 1000 outputs on a 500-class half
    assert list(layers["conv3"].layer.blobs_lr) == [0, 0]       # frozen
    assert list(layers["conv4-new"].layer.blobs_lr) == [1, 2]   # renamed: trained from its filler
    assert list(layers["relu4"].bottom) == ["conv4-new"]
    netbase = protoio.read_net(tree_2014 / "netbase" / "imagenet_train.prototxt")
    assert [c.layer.name for c in netbase.layers if c.layer.type == "padding"] == ["pad2", "pad3", "pad4", "pad5"]


def parse_symlinks(path: Path) -> dict:
    links = {}
    for line in path.read_text().splitlines():
        if line.strip():
            name, target = line.split(" -> ")
            links[name.strip()] = target.strip()
    return links


def test_links_equal_the_reference_symlinks(reference, tree_2014):
    """basenet exactly; database links to the same split and phase (the 2014 tree named the reduced
    databases `reduced-NNNN/`, the contract's data layout `reducedNNNN_train/`)."""
    problems = []
    for ref_dir in sorted((reference / "results").iterdir()):
        expected = parse_symlinks(ref_dir / "symlinks.txt")
        net_dir = tree_2014 / ref_dir.name
        for name, target in expected.items():
            target = re.sub(r"/reduced-(\d{4})/", r"/reduced\1_train/", target)
            ours = os.readlink(net_dir / name) if (net_dir / name).is_symlink() else None
            if ours != target:
                problems.append(f"{ref_dir.name}/{name}: ours {ours}, 2014 {target}")
        has_base = (net_dir / "basenet").is_symlink()
        if has_base != ("basenet" in expected):
            problems.append(f"{ref_dir.name}: basenet link {'present' if has_base else 'missing'}")
        mean = os.readlink(net_dir / "imagenet_mean.binaryproto")
        train_db = re.sub(r"/reduced-(\d{4})/", r"/reduced\1_train/", expected["imagenet_train_leveldb"])
        if mean != train_db.replace("/leveldb", "/mean.binaryproto"):
            problems.append(f"{ref_dir.name}: mean link {mean}")
    assert not problems, "\n".join(problems[:20])


# ---------------------------------------------------------------- the current format = the upgraded 2014 net

# Caffe's V0 -> current upgrade (src/caffe/util/upgrade_proto.cpp: UpgradeV0PaddingLayers,
# UpgradeV0LayerParameter, UpgradeV0LayerType, UpgradeV1LayerParameter), transcribed here for the
# fields the 2014 nets use: a test oracle independent of the templates and of the engine's upgrade.
V0_TYPES = {"data": "Data", "conv": "Convolution", "relu": "ReLU", "pool": "Pooling", "lrn": "LRN",
            "innerproduct": "InnerProduct", "dropout": "Dropout", "softmax_loss": "SoftmaxWithLoss",
            "softmax": "Softmax", "accuracy": "Accuracy"}
V0_FIELDS = {  # V0 field: {V0 type: (param group, field)}
    "num_output": {"conv": ("convolution_param", "num_output"), "innerproduct": ("inner_product_param", "num_output")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                    "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"), "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "source": {"data": ("data_param", "source")},
    "batchsize": {"data": ("data_param", "batch_size")},
    "meanfile": {"*": ("transform_param", "mean_file")},
    "cropsize": {"*": ("transform_param", "crop_size")},
    "mirror": {"*": ("transform_param", "mirror")},
    "scale": {"*": ("transform_param", "scale")},
}


def upgrade_v0(net: pb.NetParameter) -> pb.NetParameter:
    out = pb.NetParameter(name=net.name)
    padding = {}                                    # top of a padding layer -> (its bottom, pad)
    for conn in net.layers:
        v0 = conn.layer
        if v0.type == "padding":
            padding[conn.top[0]] = (conn.bottom[0], v0.pad)
            continue
        v0 = pb.V0LayerParameter.FromString(v0.SerializeToString())
        bottoms = list(conn.bottom)
        for i, blob in enumerate(bottoms):
            if blob in padding:
                assert v0.type in ("conv", "pool")
                bottoms[i], pad = padding[blob]
                v0.pad = pad
        layer = out.layer.add(name=v0.name, type=V0_TYPES[v0.type], bottom=bottoms, top=list(conn.top))
        for fd, value in v0.ListFields():
            if fd.name in ("name", "type", "blobs_lr", "weight_decay"):
                continue
            where = V0_FIELDS[fd.name]
            group, field = where.get(v0.type) or where["*"]
            target = getattr(layer, group)
            if isinstance(value, pb.FillerParameter):
                getattr(target, field).CopyFrom(value)
            elif target.DESCRIPTOR.fields_by_name[field].is_repeated:
                getattr(target, field).append(value)
            else:
                setattr(target, field, value)
        for i, lr in enumerate(v0.blobs_lr):
            while len(layer.param) <= i:
                layer.param.add()
            layer.param[i].lr_mult = lr
        for i, decay in enumerate(v0.weight_decay):
            while len(layer.param) <= i:
                layer.param.add()
            layer.param[i].decay_mult = decay
    return out


def test_oracle_folds_padding_layers(reference):
    """netbase (padding layers) and half0A (pad in the convolutions) upgrade to the same net."""
    folder = reference / "results"
    for name in ("imagenet_train.prototxt", "imagenet_val.prototxt"):
        a = without_data_paths(upgrade_v0(protoio.read_net(folder / "netbase" / name)))
        b = without_data_paths(upgrade_v0(protoio.read_net(folder / "half0A" / name)))
        assert a == b


def test_current_format_is_the_upgraded_2014_net(reference, tree_current):
    problems = []
    for ref_dir in sorted((reference / "results").iterdir()):
        for name in FILES[1:]:
            theirs = without_data_paths(upgrade_v0(protoio.read_net(ref_dir / name)))
            ours = protoio.read_net(tree_current / ref_dir.name / name)
            assert not ours.layers
            assert ours.layer[0].data_param.backend == pb.DataParameter.LMDB
            ours = without_data_paths(ours)
            if ours != theirs:
                problems.append(message_diff(theirs, ours, f"upgraded {ref_dir / name}", name))
        a = protoio.read_solver(ref_dir / FILES[0])
        b = protoio.read_solver(tree_current / ref_dir.name / FILES[0])
        if a != b:
            problems.append(message_diff(a, b, str(ref_dir / FILES[0]), FILES[0]))
    assert not problems, f"{len(problems)} files differ:\n" + "\n".join(problems[:3])


def test_current_format_layout(tree_current):
    text = (tree_current / "transfer0A0B_1_3" / "imagenet_train.prototxt").read_text()
    assert 'type: "Convolution"' in text and "param {" in text and "lr_mult" in text and "layers {" not in text
    assert os.readlink(tree_current / "transfer0A0B_1_3" / "imagenet_train_lmdb") == \
        "../../ilsvrc12/data/half0B_train/lmdb"


# ---------------------------------------------------------------- other architectures, your own net

def test_caffenet_small_protocol(tmp_path):
    cat = transfer_catalog(splits=("0",), n_layers=7, pairs=("AA", "AB"), fine_tuned=True, natman=False,
                           nolearn=True, reduced=(), whole=True)
    report = netgen.render_experiment(cat, tmp_path / "gen", tmp_path / "data", arch="caffenet_small",
                                      n_classes={"half0A": 5, "half0B": 5}, scale=0.01)
    assert len(report.nets) == len(cat) == 2 + 4 * 7 + 7 + 1
    net_dir = tmp_path / "gen" / "transfer0A0B_1_2"
    assert sorted(p.name for p in net_dir.iterdir()) == ["basenet", "mean.binaryproto", "solver.prototxt",
                                                         "train.prototxt", "train.sh", "train_lmdb", "val.prototxt",
                                                         "val_lmdb"]
    net = protoio.read_net(net_dir / "train.prototxt")
    layers = {layer.name: layer for layer in net.layer}
    assert [p.lr_mult for p in layers["conv2"].param] == [0, 0]
    assert "conv3-new" in layers and [p.lr_mult for p in layers["conv3-new"].param] == [1, 2]
    assert layers["fc8-new"].inner_product_param.num_output == 5
    assert layers["data"].transform_param.crop_size == 28
    assert os.readlink(net_dir / "train_lmdb") == str(tmp_path / "data" / "half0B_train" / "lmdb")
    solver = protoio.read_solver(net_dir / "solver.prototxt")
    assert (solver.max_iter, solver.stepsize, solver.solver_mode) == (40, 30, pb.SolverParameter.CPU)
    assert str(tmp_path / "data" / "half0B_train" / "lmdb") in report.missing_data
    whole = protoio.read_net(tmp_path / "gen" / "netbase" / "val.prototxt")
    assert whole.layer[-3].name == "fc8" and whole.layer[-3].inner_product_param.num_output == 10
    ft = protoio.read_net(tmp_path / "gen" / "transfer-ft0A0B_1_2" / "train.prototxt")
    assert [p.lr_mult for p in next(l for l in ft.layer if l.name == "conv2").param] == [1, 2]
    nolearn = protoio.read_net(tmp_path / "gen" / "nolearn_1_2" / "train.prototxt")
    assert [l.name for l in nolearn.layer if l.name.endswith("-new")] == []
    assert [p.lr_mult for p in next(l for l in nolearn.layer if l.name == "conv2").param] == [0, 0]
    assert [p.lr_mult for p in next(l for l in nolearn.layer if l.name == "conv3").param] == [1, 2]


def spatial_sizes(arch) -> list[int]:
    """Output height after each layer of an architecture (Caffe's rounding: floor for conv, ceil for pool)."""
    size, sizes = arch.crop_size, []
    for layer in arch.layers:
        p = layer.params.get("convolution_param") or layer.params.get("pooling_param")
        if p:
            k, s, pad = p["kernel_size"], p.get("stride", 1), p.get("pad", 0)
            span = size + 2 * pad - k
            size = (span // s if layer.type == "Convolution" else -(-span // s)) + 1
            sizes.append(size)
    return sizes


def test_architectures_registry_and_shapes():
    assert {"caffenet", "caffenet_small"} <= set(architectures.names())
    assert spatial_sizes(architectures.get("caffenet")) == [55, 27, 27, 13, 13, 13, 13, 6]
    small = architectures.get("caffenet_small")
    assert spatial_sizes(small) == [28, 14, 14, 7, 7, 7, 7, 3]
    assert small.transferable == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    assert architectures.get("caffenet_small", n_classes=3).n_classes == 3
    with pytest.raises(KeyError, match="did you mean caffenet"):
        architectures.get("cafenet")


def test_your_own_prototxt_gives_the_same_nets(tmp_path):
    """A net file plus its ordered transferable layers: rendering caffenet_small's own train prototxt as a
    user's net gives the same transfer nets as the registered architecture."""
    cat = transfer_catalog(splits=("0",), pairs=("AB",), fine_tuned=False, natman=False, nolearn=True,
                           reduced=(), whole=True)
    netgen.render_experiment(cat, tmp_path / "a", "data", arch="caffenet_small", only="half0A")
    # a train_val prototxt: the base net's train net, its loss for TRAIN, prob and accuracy for TEST
    train_val = protoio.read_net(tmp_path / "a" / "half0A" / "train.prototxt")
    train_val.layer[-1].include.add(phase=pb.TRAIN)
    train_val.layer.add(name="prob", type="Softmax", bottom=["fc8"], top=["prob"]).include.add(phase=pb.TEST)
    train_val.layer.add(name="accuracy", type="Accuracy", bottom=["prob", "label"],
                        top=["accuracy"]).include.add(phase=pb.TEST)
    (tmp_path / "train_val.prototxt").write_text(text_format.MessageToString(train_val))
    arch = architectures.from_prototxt(tmp_path / "train_val.prototxt",
                                       ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"],
                                       image_size=(1, 28, 28), val_batch_size=100,
                                       solver=architectures.get("caffenet_small").solver)
    assert (arch.classifier, arch.n_classes, arch.crop_size, arch.batch_size) == ("fc8", 10, 28, 64)
    netgen.render_experiment(cat, tmp_path / "b", "data", arch=arch)
    netgen.render_experiment(cat, tmp_path / "c", "data", arch="caffenet_small")
    for net in cat:
        for name in ("train.prototxt", "val.prototxt", "solver.prototxt"):
            read = protoio.read_solver if name.startswith("solver") else protoio.read_net
            ours, theirs = read(tmp_path / "b" / net.name / name), read(tmp_path / "c" / net.name / name)
            assert ours == theirs, message_diff(theirs, ours, "caffenet_small", f"own prototxt: {net.name}/{name}")


def test_user_prototxt_errors(tmp_path):
    legacy = tmp_path / "v1.prototxt"
    legacy.write_text('layers { name: "fc" type: INNER_PRODUCT }')
    with pytest.raises(ValueError, match="legacy .* upgrade_net_proto_text"):
        architectures.from_prototxt(legacy, ["fc"])
    arch = architectures.get("caffenet")
    with pytest.raises(ValueError, match="'relu1' has no weights"):
        arch.replace(transferable=["conv1", "relu1"]).check()


def test_2014_format_of_the_small_net_has_a_v0_form(tmp_path):
    cat = transfer_catalog(splits=("0",), pairs=("AB",), fine_tuned=False, natman=False, nolearn=False,
                           reduced=(), whole=False)
    netgen.render_experiment(cat, tmp_path, "data", arch="caffenet_small", format="2014")
    net = protoio.read_net(tmp_path / "transfer0A0B_1_7" / "train.prototxt")
    assert net.layers[1].layer.type == "conv" and net.layers[1].layer.weight_filler.type == "xavier"


# ---------------------------------------------------------------- re-running loses nothing

def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_rerun_leaves_snapshots_and_logs_byte_identical(tmp_path):
    only = "half0A,transfer0A0B_1_*,nolearn_1_1"
    first = netgen.render_experiment(None, tmp_path, "data", only=only, scale=0.001)
    # 9 nets x (3 prototxts, train.sh, 3 links) + 7 basenet links + nets.json
    assert len(first.created) == 9 * 7 + 7 + 1 and not first.updated
    produced = {}
    for net_dir in (tmp_path / n for n in ("half0A", "transfer0A0B_1_3", "nolearn_1_1")):
        for name in ("caffe_imagenet_train_iter_10.caffemodel", "caffe_imagenet_train_iter_10.solverstate",
                     "caffe_imagenet_train_iter_20", "caffe_imagenet_train_iter_20.solverstate",
                     f"{net_dir.name}.20260101-000000.log", "140403_063910_x.o227963.gz", "notes.txt"):
            (net_dir / name).write_bytes(os.urandom(64))
            produced[net_dir / name] = (net_dir / name).read_bytes()
    before = digest(tmp_path)
    same = netgen.render_experiment(None, tmp_path, "data", only=only, scale=0.001)
    assert not same.created and not same.updated and len(same.unchanged) == len(first.created)
    assert digest(tmp_path) == before
    changed = netgen.render_experiment(None, tmp_path, "data", only=only, scale=0.002, mode="cpu")
    assert {Path(p).name for p in changed.updated} == {"imagenet_solver.prototxt", "train.sh"}
    assert not changed.created
    for path, data in produced.items():
        assert path.read_bytes() == data
    assert not [p for p in tmp_path.rglob("*.part")]


def test_a_foreign_file_in_the_way_is_an_error(tmp_path):
    netgen.render_experiment(None, tmp_path, "data", only="half0A")
    link = tmp_path / "half0A" / "imagenet_mean.binaryproto"
    link.unlink()
    link.write_bytes(b"a real mean file")
    with pytest.raises(netgen.NetgenError, match="imagenet_mean.binaryproto is a real file"):
        netgen.render_experiment(None, tmp_path, "data", only="half0A")
    assert link.read_bytes() == b"a real mean file"


# ---------------------------------------------------------------- errors

def test_unknown_net_is_a_clear_error(tmp_path):
    with pytest.raises(netgen.NetgenError, match=r"unknown net 'transfer0A0C_1_1'; did you mean transfer0A0B_1_1"):
        netgen.render_experiment(None, tmp_path, "data", only="transfer0A0C_1_1")
    assert not list(tmp_path.iterdir())
    result = CliRunner().invoke(gen_nets_main, ["--only", "halfX", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown net 'halfX'" in result.output


def test_undefined_template_variable_is_a_clear_error(tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(templates_dir(), templates)
    solver = templates / "current" / "solver.prototxt.j2"
    solver.write_text(solver.read_text() + "momentum2: {{ momentum_two }}\n")
    with pytest.raises(netgen.NetgenError, match=r"template current/solver.prototxt.j2: 'momentum_two' is undefined"):
        netgen.render_experiment(None, tmp_path / "out", "data", only="half0A", templates=templates)
    assert not (tmp_path / "out").exists()
    with pytest.raises(netgen.NetgenError, match="2014 format knows only LevelDB"):
        netgen.render_experiment(None, tmp_path / "out", "data", only="half0A", format="2014", backend="lmdb")
    with pytest.raises(netgen.NetgenError, match="unknown solver field"):
        netgen.render_experiment(None, tmp_path / "out", "data", only="half0A", solver={"max_iters": 3})


# ---------------------------------------------------------------- train.sh

FAKE_CAFFE = """#!/usr/bin/env bash
# stands in for `caffe` (not built here): prints the arguments it was given
echo "caffe-args: $*"
"""


def run_train_sh(net_dir: Path, fake: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CAFFE=f"bash {fake}")
    env.pop("CAFFE_GPU", None)
    return subprocess.run(["bash", str(net_dir / "train.sh")], env=env, capture_output=True, text=True)


def test_train_sh_weights_resume_and_finish(tmp_path):
    netgen.render_experiment(None, tmp_path, "data", only="half0A,transfer0A0B_1_3", scale=0.001)
    fake = tmp_path / "fake_caffe.sh"
    fake.write_text(FAKE_CAFFE)
    net_dir = tmp_path / "transfer0A0B_1_3"
    script = (net_dir / "train.sh").read_text()
    assert "set -euo pipefail" in script and os.access(net_dir / "train.sh", os.X_OK)

    proc = run_train_sh(net_dir, fake)                   # base net not trained
    assert proc.returncode == 1 and "half0A is not trained yet" in proc.stderr
    assert not list(net_dir.glob("*.log"))

    (tmp_path / "half0A" / "caffe_imagenet_train_iter_450").write_bytes(b"2014 snapshot")
    assert run_train_sh(net_dir, fake).returncode == 0
    (tmp_path / "half0A" / "caffe_imagenet_train_iter_450.caffemodel").write_bytes(b"w")
    assert run_train_sh(net_dir, fake).returncode == 0
    for name in ("caffe_imagenet_train_iter_90.solverstate", "caffe_imagenet_train_iter_100.solverstate"):
        (net_dir / name).write_bytes(b"s")
    assert run_train_sh(net_dir, fake).returncode == 0
    logs = sorted(net_dir.glob("transfer0A0B_1_3.*.log"))
    assert len(logs) == 3, "a new log file per run"
    assert [log.read_text().strip() for log in logs] == [
        "caffe-args: train -solver imagenet_solver.prototxt -weights basenet/caffe_imagenet_train_iter_450",
        "caffe-args: train -solver imagenet_solver.prototxt -weights basenet/caffe_imagenet_train_iter_450.caffemodel",
        "caffe-args: train -solver imagenet_solver.prototxt -snapshot caffe_imagenet_train_iter_100.solverstate"]

    (net_dir / "caffe_imagenet_train_iter_450.caffemodel").write_bytes(b"final")
    proc = run_train_sh(net_dir, fake)
    assert proc.returncode == 0 and "already trained" in proc.stderr
    assert len(list(net_dir.glob("*.log"))) == 3


def test_train_sh_gpu_flag_and_failure(tmp_path):
    netgen.render_experiment(None, tmp_path, "data", only="half0A", scale=0.001)
    fake = tmp_path / "fail.sh"
    fake.write_text('echo "caffe-args: $*"; exit 3\n')
    env = dict(os.environ, CAFFE=f"bash {fake}", CAFFE_GPU="0")
    proc = subprocess.run(["bash", str(tmp_path / "half0A" / "train.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 3
    log = next((tmp_path / "half0A").glob("half0A.*.log")).read_text()
    assert log.strip() == "caffe-args: train -solver imagenet_solver.prototxt -gpu 0"


# ---------------------------------------------------------------- command line, nets.json

def test_cli_list_and_nets_json(tmp_path):
    runner = CliRunner()
    result = runner.invoke(gen_nets_main, ["--list"])
    assert result.exit_code == 0
    lines = result.output.splitlines()[1:]
    assert len(lines) == 170 and lines[0].split()[:4] == ["half0A", "one", "base", "-"]
    assert "transfer-ft1B1A_1_7      two       transfer  half1B" in result.output
    result = runner.invoke(gen_nets_main, ["--only", "half1*,transfer1A1B_1_2", "--out", str(tmp_path / "g"),
                                           "--scale", "0.001", "--max-iter", "7", "--batch-size", "4", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "3 nets: 23 files created" in result.output  # 3 x 7 + basenet + nets.json
    entries = json.loads((tmp_path / "g" / "nets.json").read_text())
    assert [e["name"] for e in entries] == ["half1A", "half1B", "transfer1A1B_1_2"]
    assert entries[2] | {} == {**entries[2], "kind": "transfer", "block": "two", "depends_on": "half1A",
                               "split": "half1B", "n": 2, "fine_tuned": False, "dir": "transfer1A1B_1_2"}
    solver = protoio.read_solver(tmp_path / "g" / "half1A" / "imagenet_solver.prototxt")
    assert solver.max_iter == 7 and solver.stepsize == 100
    net = protoio.read_net(tmp_path / "g" / "half1A" / "imagenet_val.prototxt")
    assert net.layer[0].data_param.batch_size == 4
    runner.invoke(gen_nets_main, ["--only", "netbase", "--out", str(tmp_path / "g"), "--quiet"])
    entries = json.loads((tmp_path / "g" / "nets.json").read_text())
    assert [e["name"] for e in entries] == ["half1A", "half1B", "transfer1A1B_1_2", "netbase"]
    result = runner.invoke(gen_nets_main, ["--out", str(tmp_path / "g")])
    assert result.exit_code == 2 and "--all" in result.output
