"""Bad values are refused (or warned about) through the real command lines, never taken silently (issue 18, class 5).

Each case runs the real tool in a subprocess on real files written here, and checks the exit code, that the one
message names the file or value, that there is no traceback, and that nothing written before is lost.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"


def tool(name: str, *args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(TOOLS / name), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def refused(result: subprocess.CompletedProcess, *names: str) -> str:
    """The run failed with one clear message naming every one of `names`, and no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    for name in names:
        assert name in output, output
    return output


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def write_images(folder: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 6, 3), 7 * i % 256, np.uint8)).save(folder / name)


# ---------------------------------------------------------------- image lists: one reader, one set of rules

@pytest.mark.parametrize("lines, where, value", [
    ("a/0.png 0\na/1.png -1\n", ":2", "'-1'"),
    ("a/0.png 0\na/1.png 99999999999\n", ":2", "99999999999"),
    ("a/0.png 0\na/1.png 1\na/0.png 1\n", ":3", "'a/0.png' is listed twice"),
    ("\n\n", "", "no images listed"),
    ("a/0.png 0\na/1.png ²\n", ":2", "'²'"),
])
def test_make_dbs_refuses_what_make_splits_refuses(tmp_path, lines, where, value):
    write_images(tmp_path / "images", ["a/0.png", "a/1.png"])
    listing = tmp_path / "files.txt"
    listing.write_text(lines)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "kept.txt").write_text("made before")
    before = snapshot(tmp_path)
    made = tool("make_dbs", "--list", listing, "--root", tmp_path / "images", "--out", tmp_path / "out" / "db",
                "--size", "6x6", "--workers", "0", "--no-progress")
    refused(made, f"{listing}{where}", value)
    assert snapshot(tmp_path) == before                       # no database, no .partial, nothing lost
    split = tool("make_splits", "--train", listing, "--n-classes", "2", "--out", tmp_path / "out",
                 "--seeds", "none", "--reduced", "none", "--no-progress")
    refused(split, f"{listing}{where}", value)
    assert snapshot(tmp_path) == before


def test_int32_label_named_even_within_n_classes(tmp_path):
    """A label past int32 is named even when --n-classes would allow it (the Datum could not hold it)."""
    listing = tmp_path / "train.txt"
    listing.write_text("a.png 0\nb.png 1\nc.png 2147483648\n")
    result = tool("make_splits", "--train", listing, "--n-classes", str(2**31), "--out", tmp_path / "data",
                  "--seeds", "none", "--reduced", "none", "--no-progress")
    refused(result, f"{listing}:3", "2147483648", "int32")
    assert not (tmp_path / "data").exists()
    result = tool("make_splits", "--train", listing, "--n-classes", str(2**31 + 1), "--out", tmp_path / "data",
                  "--seeds", "none", "--reduced", "none", "--no-progress")
    refused(result, "n_classes = 2147483649", "int32")
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------- caffe_torch: weights that fill nothing, base_lr < 0

@pytest.mark.slow
def test_weights_that_fill_no_layer_train_from_scratch_with_a_loud_warning(tmp_path):
    """Caffe's CopyTrainedLayersFrom copies layers by name and ignores the rest without a word; we keep that
    (exit 0, the net trains) but log a glog WARNING naming the file and how many layers were copied."""
    from convnet_transfer.formats import protoio
    from convnet_transfer.formats.protoio import pb
    from test_engine_solver import make_case

    case = make_case(tmp_path / "net", max_iter=2, snapshot=2)
    (case / "empty.caffemodel").write_bytes(b"")
    foreign = pb.NetParameter(name="another")
    foreign.layer.add(name="conv_other", type="Convolution").blobs.append(
        protoio.array_to_blob(np.ones((4, 3, 3, 3), np.float32)))
    protoio.write_binary(case / "foreign.caffemodel", foreign)
    for weights in ("empty.caffemodel", "foreign.caffemodel"):
        before = (case / weights).read_bytes()
        result = tool("caffe_torch", "train", "-solver", "solver.prototxt", "-weights", weights, cwd=case)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        warning = [line for line in result.stderr.splitlines() if line.startswith("W") and weights in line]
        assert len(warning) == 1 and "NONE of the 3 layers with weights" in warning[0], result.stderr[-3000:]
        assert "Optimization Done." in result.stderr and (case / weights).read_bytes() == before
        scored = tool("caffe_torch", "test", "-model", "net.prototxt", "-weights", weights, "-iterations", "1",
                      cwd=case)
        assert scored.returncode == 0 and "NONE of the 3 layers with weights" in scored.stderr, scored.stderr[-3000:]
    # the net's own snapshot fills every layer: said as an INFO line, no warning
    result = tool("caffe_torch", "train", "-solver", "solver.prototxt", "-weights", "snap_iter_2.caffemodel", cwd=case)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Copied 3 of the 3 layers with weights of net tiny from snap_iter_2.caffemodel" in result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("W")]


@pytest.mark.slow
def test_negative_base_lr_warns(tmp_path):
    from test_engine_solver import make_case

    case = make_case(tmp_path / "net", base_lr=-0.01, max_iter=2, snapshot=0)
    result = tool("caffe_torch", "train", "-solver", "solver.prototxt", cwd=case)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    warning = [line for line in result.stderr.splitlines() if line.startswith("W") and "base_lr" in line]
    assert len(warning) == 1 and "solver.prototxt" in warning[0] and "-0.01" in warning[0], result.stderr[-3000:]


# ---------------------------------------------------------------- run_experiment: too few classes for two halves

def image_folder(root: Path, classes: list[str], per_class: int = 5) -> Path:
    write_images(root, [f"{c}/{i}.png" for c in classes for i in range(per_class)])
    return root


def test_folder_of_three_classes_is_refused_before_anything_is_made(tmp_path):
    """3 classes make halves of 1 and 2 classes: a 1-class half reports 100% whatever the net learned."""
    root = image_folder(tmp_path / "images", ["ant", "bee", "cat"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    result = tool("run_experiment", "--quick", "--dataset", "folder", "--dataset-root", root, "--out", out,
                  "--jobs", "1", "--no-progress")
    message = refused(result, str(root), "3 classes", "at least 4 classes")
    assert result.returncode == 1 and "[1/5]" not in message
    assert snapshot(tmp_path) == before


def test_four_classes_make_halves_of_two(tmp_path):
    from convnet_transfer.data import datasets, splits
    from convnet_transfer import experiment

    data = datasets.open_dataset("folder", root=image_folder(tmp_path / "images", ["ant", "bee", "cat", "dog"]))
    settings = experiment.settings_for(quick=True, per_class=None)
    experiment.make_lists(data, tmp_path / "data", settings, progress=False)
    for half in ("half0A", "half0B"):
        labels = {label for _, label in splits.read_list(tmp_path / "data" / f"{half}_train" / "files.txt")}
        assert labels == {0, 1}


# ---------------------------------------------------------------- gen_nets --prototxt: unknown types, hostile names

OWN_NET = """name: %(net)s
layer { name: "data" type: "Data" top: "data" top: "label" data_param { batch_size: 8 } }
layer { name: %(conv)s type: %(type)s bottom: "data" top: %(blob)s
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: %(relu)s type: "ReLU" bottom: %(blob)s top: %(blob)s }
layer { name: %(fc)s type: "InnerProduct" bottom: %(blob)s top: "fc7" inner_product_param { num_output: 4 } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8" inner_product_param { num_output: 4 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }
"""
PLAIN = dict(net='"mine"', conv='"conv1"', type='"Convolution"', blob='"conv1"', relu='"relu1"', fc='"fc7"')
# as protobuf text writes them: a quote, a backslash, a newline, a tab, non-ASCII (UTF-8 bytes in octal and as is)
HOSTILE = dict(net=r'"my \"net\"\nv2"', conv=r'"conv \"1\""', type='"Convolution"', blob=r'"c\\1 \303\274"',
               relu=r'"relu\n1"', fc='"fc\t7 é"')
HOSTILE_NAMES = ['conv "1"', "fc\t7 é"]


def gen_nets(prototxt: Path, transferable: list[str], out: Path, *extra) -> subprocess.CompletedProcess:
    return tool("gen_nets", "--prototxt", prototxt, "--transferable", ",".join(transferable), "--all",
                "--out", out, "--data", "data", "--quiet", *extra)


def test_unknown_layer_type_has_its_own_message(tmp_path):
    """A type Caffe does not know (a typo, a fork's layer) is named as such, not as 'has no weights to transfer';
    the nets rendered before, and their logs, stay as they were."""
    prototxt = tmp_path / "mine.prototxt"
    prototxt.write_text(OWN_NET % PLAIN)
    out = tmp_path / "nets"
    made = gen_nets(prototxt, ["conv1", "fc7"], out)
    assert made.returncode == 0, made.stderr
    (out / "half0A" / "half0A.20261204-000000.log").write_text("a training log")
    for typo in ("MagicConv", "convolution"):
        prototxt.write_text(OWN_NET % {**PLAIN, "type": f'"{typo}"'})
        before = snapshot(tmp_path)
        result = gen_nets(prototxt, ["conv1", "fc7"], out)
        message = refused(result, str(prototxt), "'conv1'", f"'{typo}'", "not a Caffe layer type")
        assert "no weights" not in message
        assert snapshot(tmp_path) == before


def rendered_names(path: Path) -> tuple[str, list[str], list[list[str]]]:
    """The net name, layer names and tops of a rendered net file, read back by protobuf's text parser."""
    from convnet_transfer.formats import protoio

    net = protoio.read_net(path)
    if net.layers:                              # the 2014 (V0) format: layers { layer { name } top }
        return net.name, [c.layer.name for c in net.layers], [list(c.top) for c in net.layers]
    return net.name, [layer.name for layer in net.layer], [list(layer.top) for layer in net.layer]


@pytest.mark.parametrize("fmt", ["current", "2014"])
def test_hostile_names_are_written_as_protobuf_text(tmp_path, fmt):
    """Names holding a quote, a backslash, a newline, a tab or non-ASCII come back from every file unchanged."""
    from convnet_transfer.formats import protoio

    prototxt = tmp_path / "mine\n$(touch PWNED).prototxt"     # its stem names the architecture in comments
    prototxt.write_text(OWN_NET % HOSTILE)
    out = tmp_path / "nets"
    extra = ("--format", "2014", "--backend", "leveldb") if fmt == "2014" else ()
    result = gen_nets(prototxt, HOSTILE_NAMES, out, *extra)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    blob = "c\\1 ü"
    base = rendered_names(out / "half0A" / "train.prototxt")
    assert base == ('my "net"\nv2', ["data", 'conv "1"', "relu\n1", "fc\t7 é", "fc8", "loss"],
                    [["data", "label"], [blob], [blob], ["fc7"], ["fc8"], ["loss"]])
    transfer = rendered_names(out / "transfer0A0B_1_1" / "train.prototxt")
    assert transfer[1] == ["data", 'conv "1"', "relu\n1", "fc\t7 é-new", "fc8-new", "loss"]
    for path in out.rglob("*.prototxt"):
        (protoio.read_solver if path.name.endswith("solver.prototxt") else protoio.read_net)(path)
    for script in out.rglob("train.sh"):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
    assert "# Written by tools/gen_nets (architecture mine $(touch PWNED))" in (out / "half0A" / "train.sh").read_text()
    if fmt == "current":                        # the 2014 files have no header comment
        assert (out / "half0A" / "train.prototxt").read_text().startswith(
            "# half0A: base net on half0A; architecture mine $(touch PWNED)\n")


HOSTILE_ALPHABET = ['"', "\\", "\n", "\t", "\r", "'", "\x00", "\x7f", "a", "Z", "0", " ", "#", ":", "{", "}", "é", "ü",
                    "中", "😀", "\\n", '\\"', "\\303"]


def hostile_strings(count: int = 400, seed: int = 0) -> list[str]:
    rng = np.random.RandomState(seed)
    words = ["", 'conv "1"', "a\\b", "line\nbreak", "tab\there", "naïve 中文 😀"]
    for _ in range(count):
        words.append("".join(rng.choice(HOSTILE_ALPHABET, size=rng.randint(1, 12))))
    return words


def net_text(names: list[str]) -> str:
    """A NetParameter whose layer names (and tops) are `names`, each written by netgen's prototxt scalar filter."""
    from convnet_transfer.nets.netgen import _pb

    layers = "".join(f'layer {{ name: {_pb(name)} type: "ReLU" top: {_pb(name)} }}\n' for name in names)
    return f"name: {_pb(names[-1])}\n{layers}"


def test_prototxt_strings_round_trip_through_protobuf():
    """Every string netgen writes reads back unchanged with protobuf's text parser (property test)."""
    from convnet_transfer.formats import protoio

    names = hostile_strings()
    net = protoio.parse_text(net_text(names), protoio.pb.NetParameter())
    assert [layer.name for layer in net.layer] == names and [layer.top[0] for layer in net.layer] == names
    assert net.name == names[-1]


@pytest.mark.slow
def test_prototxt_strings_round_trip_through_real_caffe(tmp_path, real_caffe):
    """The same through Caffe's own C++ parser (upgrade_net_proto_text reads and writes the net) and pycaffe's
    caffe_pb2."""
    import json

    from convnet_transfer.formats import protoio

    names = hostile_strings(200, seed=1)
    (tmp_path / "in.prototxt").write_text(net_text(names))
    real_caffe.run("upgrade_net_proto_text", tmp_path / "in.prototxt", tmp_path / "out.prototxt")
    assert [layer.name for layer in protoio.read_net(tmp_path / "out.prototxt").layer] == names
    read = ("import json, sys\nfrom google.protobuf import text_format\nfrom caffe.proto import caffe_pb2\n"
            "net = text_format.Parse(open(sys.argv[1], encoding='utf-8').read(), caffe_pb2.NetParameter())\n"
            "print(json.dumps([layer.name for layer in net.layer]))\n")
    if real_caffe.python_dir:
        proc = subprocess.run([sys.executable, "-c", read, str(tmp_path / "in.prototxt")], env=real_caffe.env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout.splitlines()[-1]) == names


@pytest.mark.slow
def test_one_multiplier_per_blob_whatever_the_prototxt_gives(tmp_path):
    """A convolution without bias (bias_term: false) and no `param` got two param blocks, which Caffe and the
    engine refuse ("Too many params"); one `param` block for two blobs left the bias learning in a frozen net."""
    from convnet_transfer.formats import protoio
    from convnet_transfer.training.engine.net import Net

    prototxt = tmp_path / "mine.prototxt"
    text = (OWN_NET % PLAIN).replace("kernel_size: 3 }", "kernel_size: 3 bias_term: false }")
    prototxt.write_text(text.replace('name: "fc7" type: "InnerProduct"',
                                     'name: "fc7" type: "InnerProduct" param { lr_mult: 2 }'))
    out = tmp_path / "nets"
    result = gen_nets(prototxt, ["conv1", "fc7"], out)
    assert result.returncode == 0, result.stderr
    net = protoio.read_net(out / "transfer0A0B_1_2" / "train.prototxt")     # conv1 and fc7 copied and frozen
    mults = {layer.name: [(p.lr_mult, p.decay_mult) for p in layer.param] for layer in net.layer}
    assert mults["conv1"] == [(0, 0)] and mults["fc7"] == [(0, 0), (0, 0)] and len(mults["fc8-new"]) == 2
    data = net.layer[0]
    data.Clear()
    data.name, data.type = "data", "Input"
    data.top.extend(["data", "label"])
    data.input_param.shape.add(dim=[2, 3, 8, 8])
    data.input_param.shape.add(dim=[2])
    built = Net(net, "TRAIN")                   # the engine builds it (Caffe's checks of `param` included)
    assert [p.lr_mult for p in built.params] == [0, 0, 0, 1, 1]


def test_make_splits_writes_no_empty_list(tmp_path):
    """What make_dbs refuses to read, make_splits does not write: a half whose classes have no validation image."""
    (tmp_path / "train.txt").write_text("".join(f"t{i}.png {i % 4}\n" for i in range(8)))
    (tmp_path / "val.txt").write_text("v0.png 0\nv2.png 2\n")
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    result = tool("make_splits", "--train", tmp_path / "train.txt", "--val", tmp_path / "val.txt", "--n-classes", "4",
                  "--out", out, "--seeds", "0,1,2", "--reduced", "none", "--no-progress")
    refused(result, "half2B_valid/files.txt would list no image", str(tmp_path / "val.txt"), "1, 3")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- malformed files met on the way

def test_a_corrupt_image_stops_run_experiment_naming_it(tmp_path):
    """An image file that cannot be decoded: one line naming it, the lists already made are kept."""
    root = image_folder(tmp_path / "images", ["ant", "bee", "cat", "dog"])
    broken = root / "bee" / "3.png"
    broken.write_bytes(broken.read_bytes()[:40])          # a truncated PNG
    out = tmp_path / "out"
    result = tool("run_experiment", "--quick", "--dataset", "folder", "--dataset-root", root, "--out", out,
                  "--jobs", "1", "--no-progress")
    refused(result, str(broken))
    assert (out / "data" / "md5sums.txt").is_file()      # stage 1 finished and stays


def test_a_malformed_solver_stops_submit_naming_it(tmp_path):
    """tools/submit over a tree whose solver.prototxt is malformed: one line naming the file and line, for the
    local runner, the Slurm plan and the status alike; nothing is written."""
    from convnet_transfer.nets import netgen

    nets = tmp_path / "nets"
    netgen.render_experiment(None, nets, tmp_path / "data", arch="caffenet_small", only=["half0A", "half0B"])
    solver = nets / "half0A" / "solver.prototxt"
    solver.write_text(solver.read_text().replace("max_iter:", "max_iter =", 1).replace("base_lr:", "base_lr {", 1))
    before = snapshot(tmp_path)
    for args in (["--local"], ["--slurm", "--dry-run"], ["--status"]):
        result = tool("submit", *args, nets)
        refused(result, str(solver), "mend it")
        assert snapshot(tmp_path) == before
