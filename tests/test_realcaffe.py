"""Real BVLC Caffe (tools/install_caffe): its binaries and pycaffe run here, and read/write the same files as
our own schema. The `real_caffe` tests skip without a build (and fail in CI, CONVNET_TRANSFER_REQUIRE_CAFFE=1).
The find/choose tests need no build."""
import re
import stat
import subprocess
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

from convnet_transfer.formats import caffe_pb2 as pb
from convnet_transfer.formats import protoio
from convnet_transfer.training import caffe_build, realcaffe


# ------------------------------------------------------------------------------ no build needed

def _clear_env(monkeypatch, tmp_path):
    for name in ("CAFFE_ROOT", "CAFFE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(realcaffe.PREFIX_ENV, str(tmp_path / "no-such-prefix"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))


def test_nothing_found_means_our_engine(monkeypatch, tmp_path):
    _clear_env(monkeypatch, tmp_path)
    assert realcaffe.find_caffe() is None
    command = realcaffe.caffe_command("auto")
    assert command == realcaffe.caffe_command("torch")
    assert "caffe_torch" in " ".join(command)
    with pytest.raises(realcaffe.CaffeNotFound, match="tools/install_caffe"):
        realcaffe.caffe_command("caffe")
    with pytest.raises(ValueError):
        realcaffe.caffe_command("tensorflow")


def test_broken_caffe_root_says_why(monkeypatch, tmp_path):
    _clear_env(monkeypatch, tmp_path)
    (tmp_path / "root" / "bin").mkdir(parents=True)
    monkeypatch.setenv("CAFFE_ROOT", str(tmp_path / "root"))
    found = realcaffe.find_caffe()
    assert found is not None and not found.ok and "no caffe binary" in found.problem
    fake = tmp_path / "root" / "bin" / "caffe"
    fake.write_bytes(b"\x7fELF not really")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    found = realcaffe.find_caffe()
    assert not found.ok and str(fake) in found.problem
    with pytest.raises(realcaffe.CaffeNotFound, match=str(fake)):
        realcaffe.caffe_command("caffe")
    with pytest.warns(RuntimeWarning, match="does not run"):
        assert realcaffe.caffe_command("auto") == realcaffe.caffe_command("torch")


def test_caffe_variable_naming_our_engine_is_not_real_caffe(monkeypatch, tmp_path):
    # train.sh runs ${CAFFE:-caffe}; CAFFE may name our engine, which must not pass for real Caffe.
    _clear_env(monkeypatch, tmp_path)
    script = tmp_path / "caffe"
    script.write_text("#!/bin/sh\necho caffe version 1.0.0\n")
    script.chmod(0o755)
    monkeypatch.setenv("CAFFE", str(script))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert realcaffe.find_caffe() is None


def test_fixes_refuse_an_unexpected_source(tmp_path):
    (tmp_path / "src" / "caffe" / "util").mkdir(parents=True)
    (tmp_path / "src" / "caffe" / "util" / "io.cpp").write_text("// nothing to fix here\n")
    with pytest.raises(caffe_build.InstallError, match="not applicable"):
        caffe_build.apply_fixes(tmp_path)


def test_env_lines_name_the_prefix(tmp_path):
    lines = realcaffe.env_lines(tmp_path)
    assert lines[0] == f"export CAFFE_ROOT={tmp_path}"
    assert f"{tmp_path}/bin" in lines[1] and f"{tmp_path}/python" in lines[1]


# ------------------------------------------------------------------------------ real Caffe

def test_caffe_binary_runs(real_caffe):
    proc = real_caffe.run("caffe", "--version")
    assert "caffe version 1.0.0" in proc.stdout + proc.stderr
    assert realcaffe.caffe_command("auto") == [str(real_caffe.caffe)]
    assert realcaffe.caffe_command("caffe") == [str(real_caffe.caffe)]


def test_pycaffe_imports_beside_our_schema(real_caffe):
    caffe = real_caffe.import_pycaffe()
    from caffe.proto import caffe_pb2 as theirs
    assert Path(caffe.__file__).resolve().is_relative_to(real_caffe.python_dir.resolve())
    assert theirs.DESCRIPTOR.package == "caffe" and pb.DESCRIPTOR.package == "convnet_transfer.caffe"
    # the same bytes mean the same Datum in both schemas
    ours = pb.Datum(channels=3, height=2, width=1, data=bytes(range(6)), label=7)
    datum = theirs.Datum.FromString(ours.SerializeToString())
    array = caffe.io.datum_to_array(datum)
    assert array.shape == (3, 2, 1) and array.ravel().tolist() == list(range(6)) and datum.label == 7
    back = caffe.io.array_to_datum(array, 7)
    assert pb.Datum.FromString(back.SerializeToString()) == ours


def test_pycaffe_forward_is_an_inner_product(real_caffe, tmp_path):
    caffe = real_caffe.import_pycaffe()
    caffe.set_mode_cpu()
    net_file = tmp_path / "ip.prototxt"
    net_file.write_text("""
name: "ip"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "constant" value: 0.5 } } }
""")
    net = caffe.Net(str(net_file), caffe.TEST)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    net.blobs["data"].data[...] = x
    out = net.forward()["ip"]
    weight, bias = net.params["ip"][0].data, net.params["ip"][1].data
    assert weight.shape == (4, 3) and np.all(bias == 0.5)
    np.testing.assert_allclose(out, x @ weight.T + bias, rtol=1e-5, atol=1e-5)


def _images(tmp_path, n=4, size=(5, 3)):
    """n tiny RGB PNGs with known pixels, and Caffe's list file '<name> <label>'."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    root.mkdir()
    arrays, lines = [], []
    for i in range(n):
        rgb = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)  # H, W, RGB
        Image.fromarray(rgb).save(root / f"im{i}.png")
        arrays.append(rgb)
        lines.append(f"im{i}.png {i % 3}")
    (tmp_path / "files.txt").write_text("\n".join(lines) + "\n")
    return root, arrays


def test_convert_imageset_and_compute_image_mean(real_caffe, tmp_path):
    root, arrays = _images(tmp_path)
    db = tmp_path / "train_lmdb"
    real_caffe.run("convert_imageset", "-backend", "lmdb", f"{root}/", tmp_path / "files.txt", db)
    with lmdb.open(str(db), readonly=True, lock=False) as env, env.begin() as txn:
        records = list(txn.cursor())
    assert [k.decode() for k, _ in records] == [f"{i:08d}_im{i}.png" for i in range(4)]
    for i, (_, value) in enumerate(records):
        datum = pb.Datum.FromString(value)
        assert (datum.channels, datum.height, datum.width, datum.label) == (3, 3, 5, i % 3)
        chw = np.frombuffer(datum.data, np.uint8).reshape(3, 3, 5)
        np.testing.assert_array_equal(chw, arrays[i][:, :, ::-1].transpose(2, 0, 1))  # BGR, C-H-W
    mean_file = tmp_path / "mean.binaryproto"
    real_caffe.run("compute_image_mean", "-backend", "lmdb", db, mean_file)
    mean = protoio.read_mean(mean_file)
    expected = np.mean([a[:, :, ::-1].transpose(2, 0, 1).astype(np.float64) for a in arrays], axis=0)
    np.testing.assert_allclose(np.asarray(mean).reshape(3, 3, 5), expected, rtol=1e-6)


def test_upgrade_tools_rewrite_old_prototxt(real_caffe, tmp_path):
    v1 = tmp_path / "v1.prototxt"
    v1.write_text("""
name: "old"
input: "data"
input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
         blobs_lr: 1 blobs_lr: 2 convolution_param { num_output: 2 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
""")
    new = tmp_path / "new.prototxt"
    real_caffe.run("upgrade_net_proto_text", v1, new)
    net = protoio.read_text(new, pb.NetParameter)
    # V1 `layers` become `layer`, and the deprecated input/input_dim fields an Input layer
    assert [(layer.name, layer.type) for layer in net.layer] == [
        ("input", "Input"), ("conv", "Convolution"), ("relu", "ReLU")]
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 1, 4, 4]
    assert [p.lr_mult for p in net.layer[1].param] == [1, 2]
    assert not net.layers and not net.input and not net.input_dim
    old_solver = tmp_path / "old_solver.prototxt"
    old_solver.write_text('net: "new.prototxt"\nbase_lr: 0.01\nsolver_type: NESTEROV\n')
    new_solver = tmp_path / "new_solver.prototxt"
    real_caffe.run("upgrade_solver_proto_text", old_solver, new_solver)
    solver = protoio.read_text(new_solver, pb.SolverParameter)
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")


def _tiny_lmdb(path, n=16, shape=(1, 4, 4)):
    rng = np.random.default_rng(1)
    with lmdb.open(str(path), map_size=1 << 24) as env, env.begin(write=True) as txn:
        for i in range(n):
            datum = pb.Datum(channels=shape[0], height=shape[1], width=shape[2], label=i % 2,
                             data=rng.integers(0, 256, size=shape, dtype=np.uint8).tobytes())
            txn.put(f"{i:08d}".encode(), datum.SerializeToString())


TINY_NET = """
name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label"
        transform_param { scale: 0.00390625 }
        data_param { source: "train_lmdb" backend: LMDB batch_size: 4 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
TINY_SOLVER = """
net: "net.prototxt"
base_lr: 0.1 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed"
display: 1 max_iter: 5 snapshot_prefix: "snap/tiny" solver_mode: CPU random_seed: 1
"""


def write_tiny_training(folder) -> None:
    """A 5-iteration CPU training in `folder`: train_lmdb, net.prototxt, solver.prototxt, snap/ (snapshots
    snap/tiny_iter_5.*); also used by tests/test_caffe_cuda_build.py."""
    _tiny_lmdb(folder / "train_lmdb")
    (folder / "net.prototxt").write_text(TINY_NET)
    (folder / "solver.prototxt").write_text(TINY_SOLVER)
    (folder / "snap").mkdir()


@pytest.mark.slow
def test_caffe_trains_a_tiny_net(real_caffe, tmp_path):
    write_tiny_training(tmp_path)
    proc = subprocess.run(realcaffe.caffe_command("caffe") + ["train", "-solver", "solver.prototxt"],
                          cwd=tmp_path, env=real_caffe.env(), capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "Optimization Done." in log
    # BVLC master's training lines: "Iteration 4 (… iter/s, …s/1 iters), loss = 0.69", then "Iteration 5, loss = …"
    assert re.search(r"solver\.cpp:\d+\] Iteration 4 \([^)]*\), loss = [-+.\deE]+", log)
    assert re.search(r"\] Iteration 5, loss = [-+.\deE]+", log)
    assert "Snapshotting to binary proto file snap/tiny_iter_5.caffemodel" in log
    model = protoio.read_binary(tmp_path / "snap" / "tiny_iter_5.caffemodel", pb.NetParameter)
    ip = next(layer for layer in model.layer if layer.name == "ip")
    assert [list(b.shape.dim) for b in ip.blobs] == [[2, 16], [2]]
    state = protoio.read_binary(tmp_path / "snap" / "tiny_iter_5.solverstate", pb.SolverState)
    assert state.iter == 5 and len(state.history) == 2
