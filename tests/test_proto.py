"""The Caffe schema and its I/O: generated code up to date, errors naming file:line, the 2014 mean file."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from convnet_transfer.formats import protoio
from convnet_transfer.formats.protoio import ProtoFileError


def test_generated_code_matches_caffe_proto():
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools is not installed (pip install -e .[dev]): cannot regenerate caffe_pb2.py to compare")
    proc = subprocess.run([sys.executable, "-m", "convnet_transfer.formats.proto", "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_malformed_prototxt_names_file_and_line(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "data"\n  type "Data"\n}\n')   # line 4 lacks its colon
    with pytest.raises(ProtoFileError, match=rf"{path}:4:\d+: malformed NetParameter"):
        protoio.read_net(path)
    path.write_text('name: "x"\nno_such_field: 3\n')
    with pytest.raises(ProtoFileError, match=rf"{path}:2:"):
        protoio.read_net(path)


def test_text_round_trip(tmp_path):
    solver = protoio.pb.SolverParameter(base_lr=0.01, max_iter=450000, snapshot_prefix="caffenet_train")
    protoio.write_text(tmp_path / "solver.prototxt", solver)
    assert protoio.read_solver(tmp_path / "solver.prototxt") == solver


def test_truncated_binary_is_a_clear_error(tmp_path):
    mean = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    protoio.write_mean(tmp_path / "mean.binaryproto", mean)
    assert np.array_equal(protoio.read_mean(tmp_path / "mean.binaryproto"), mean)
    data = (tmp_path / "mean.binaryproto").read_bytes()
    (tmp_path / "cut.binaryproto").write_bytes(data[:len(data) // 2])
    with pytest.raises(ProtoFileError, match=r"cut\.binaryproto.*truncated"):
        protoio.read_mean(tmp_path / "cut.binaryproto")
    with pytest.raises(ProtoFileError, match="cannot read"):
        protoio.read_mean(tmp_path / "missing.binaryproto")


def test_2014_imagenet_mean(reference):
    mean = protoio.read_mean(reference / "results" / "netbase" / "imagenet_mean.binaryproto")
    assert mean.shape == (3, 256, 256) and mean.dtype == np.float32
    channels = mean.mean(axis=(1, 2))
    print("2014 ImageNet mean, per channel (B, G, R):", channels)
    assert np.allclose(channels, (104, 117, 123), atol=2)
