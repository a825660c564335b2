"""Training fidelity against real Caffe: 20 SGD iterations (momentum, weight decay, lr_mult/decay_mult with a frozen
layer, step lr policy) on a small net of the paper's shape end with Caffe's weights, momentum history and losses
within 1e-4 relative.

Golden files (tests/golden/solver/, written by tests/golden/make_golden_solver.py with real Caffe) make the check
run without Caffe; where Caffe is installed the same comparison runs live, and Caffe resumes from our snapshot.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from convnet_transfer.formats import caffe_pb2 as pb
from convnet_transfer.formats import protoio

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("make_golden_solver", HERE / "golden" / "make_golden_solver.py")
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)

RTOL = 1e-4
ITERS = golden.ITERATIONS


def assert_close(ours: np.ndarray, caffe: np.ndarray, what: str) -> None:
    """Equal within 1e-4 relative to the blob's scale (elementwise rtol, atol = 1e-4 * max |caffe|)."""
    assert ours.shape == caffe.shape, f"{what}: shape {ours.shape} vs Caffe's {caffe.shape}"
    scale = float(np.abs(caffe).max()) or 1.0
    np.testing.assert_allclose(ours, caffe, rtol=RTOL, atol=RTOL * scale, err_msg=what)


def train_ours(case: Path, monkeypatch) -> None:
    from convnet_transfer.training.engine.train import train
    monkeypatch.chdir(case)
    assert train("solver.prototxt", weights="init.caffemodel") == "done"


def compare(case: Path, caffe_model: Path, caffe_state: Path, caffe_losses: list[float], our_log: str) -> None:
    ours = golden.caffemodel_params(case / f"snap_iter_{ITERS}.caffemodel")
    theirs = golden.caffemodel_params(caffe_model)
    init = golden.caffemodel_params(case / "init.caffemodel")
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        for i, (a, b) in enumerate(zip(ours[name], theirs[name])):
            assert_close(a, b, f"{name}[{i}] after {ITERS} iterations")
    for a, b in zip(ours["conv1"], init["conv1"]):   # lr_mult 0: frozen, bit-identical
        assert a.tobytes() == b.tobytes()
    for a, b in zip(ours["fc8"], init["fc8"]):
        assert not np.allclose(a, b)                  # the rest moved
    state_ours = protoio.read_binary(case / f"snap_iter_{ITERS}.solverstate", pb.SolverState)
    state_caffe = protoio.read_binary(caffe_state, pb.SolverState)
    assert state_ours.iter == state_caffe.iter == ITERS
    assert state_ours.current_step == state_caffe.current_step
    assert len(state_ours.history) == len(state_caffe.history)
    for k, (a, b) in enumerate(zip(state_ours.history, state_caffe.history)):
        assert_close(protoio.blob_to_array(a), protoio.blob_to_array(b), f"history blob {k}")
    losses = golden.logged_losses(our_log)
    assert len(losses) == ITERS
    np.testing.assert_allclose(losses, caffe_losses, rtol=RTOL, atol=1e-6, err_msg="loss per iteration")


def test_twenty_sgd_iterations_equal_caffe_golden(tmp_path, monkeypatch, capfd):
    case = golden.write_case(tmp_path)
    train_ours(case, monkeypatch)
    log = capfd.readouterr().err
    recorded = json.loads((golden.GOLDEN_DIR / "caffe_losses.json").read_text())["losses"]
    compare(case, golden.GOLDEN_DIR / f"caffe_iter_{ITERS}.caffemodel",
            golden.GOLDEN_DIR / f"caffe_iter_{ITERS}.solverstate", recorded, log)


def test_twenty_sgd_iterations_equal_caffe_live_and_caffe_resumes_our_snapshot(tmp_path, monkeypatch, capfd,
                                                                                real_caffe):
    caffe_case = golden.write_case(tmp_path / "caffe")
    caffe_log = golden.run_caffe(real_caffe, caffe_case)
    ours = golden.write_case(tmp_path / "ours")
    capfd.readouterr()
    train_ours(ours, monkeypatch)
    log = capfd.readouterr().err
    compare(ours, caffe_case / f"snap_iter_{ITERS}.caffemodel", caffe_case / f"snap_iter_{ITERS}.solverstate",
            golden.logged_losses(caffe_log), log)
    # Caffe reads our .solverstate (and the .caffemodel it names) and trains on from it
    (ours / "more.prototxt").write_text(golden.SOLVER.replace(f"max_iter: {ITERS}", f"max_iter: {ITERS + 1}")
                                        .replace(f"snapshot: {ITERS}", "snapshot: 1"))
    proc = real_caffe.run("caffe", "train", "-solver", "more.prototxt", "-snapshot", f"snap_iter_{ITERS}.solverstate",
                          cwd=str(ours), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (ours / f"snap_iter_{ITERS + 1}.caffemodel").is_file()
    assert f"Iteration {ITERS}, lr" in proc.stderr


def test_transfer_from_a_caffemodel_caffe_wrote_keeps_frozen_layers_bit_identical(tmp_path, monkeypatch):
    """The paper's AnB net: conv1-conv2 copied from Caffe's snapshot and frozen, fc8 renamed (re-learned)."""
    from convnet_transfer.training.engine.train import train
    case = golden.write_case(tmp_path)
    net = (case / "net.prototxt").read_text()
    net = net.replace('name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"\n'
                      '  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }',
                      'name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"\n'
                      '  param { lr_mult: 0 decay_mult: 1 } param { lr_mult: 0 decay_mult: 0 }')
    net = net.replace('name: "fc8"', 'name: "fc8-new"')
    assert net.count("lr_mult: 0") == 4 and "fc8-new" in net
    (case / "net.prototxt").write_text(net)
    (case / "solver.prototxt").write_text(golden.SOLVER.replace(f"max_iter: {ITERS}", "max_iter: 5"))
    monkeypatch.chdir(case)
    caffe_model = golden.GOLDEN_DIR / f"caffe_iter_{ITERS}.caffemodel"   # written by real Caffe
    assert train("solver.prototxt", weights=str(caffe_model)) == "done"
    source, ours = golden.caffemodel_params(caffe_model), golden.caffemodel_params(case / "snap_iter_5.caffemodel")
    for layer in ("conv1", "conv2"):
        for a, b in zip(ours[layer], source[layer]):
            assert a.tobytes() == b.tobytes(), f"{layer} changed although frozen"
    assert not np.array_equal(ours["fc7"][0], source["fc7"][0])     # copied, then fine-tuned
    assert "fc8-new" in ours and ours["fc8-new"][0].shape == source["fc8"][0].shape
