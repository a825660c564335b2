"""Caffe's solver types other than SGD (Nesterov, AdaGrad, RMSProp, AdaDelta, Adam), against real Caffe: 20
iterations from the same weights end with Caffe's weights, history (both sets for AdaDelta and Adam) and losses
within 1e-4 relative; our snapshot resumes to our uninterrupted run bit for bit, Caffe's snapshot resumes with us
to Caffe's end, and ours with Caffe to ours.

Golden files (tests/golden/solvers/, written by tests/golden/make_golden_solvers.py with real Caffe) make the
checks run without Caffe; where Caffe is installed the same comparisons run live. SGD: test_engine_train_fidelity.py.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from convnet_transfer.formats import caffe_pb2 as pb
from convnet_transfer.formats import protoio
from convnet_transfer.training.engine.solver import SolverError
from convnet_transfer.training.engine.updates import UPDATE_RULES

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("make_golden_solvers", HERE / "golden" / "make_golden_solvers.py")
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)

RTOL = 1e-4
ITERS, HALF = golden.ITERATIONS, golden.HALF
TYPES = list(golden.TYPES)


def assert_close(ours: np.ndarray, caffe: np.ndarray, what: str) -> None:
    """Equal within 1e-4 relative to the blob's scale (elementwise rtol, atol = 1e-4 * max |caffe|)."""
    assert ours.shape == caffe.shape, f"{what}: shape {ours.shape} vs Caffe's {caffe.shape}"
    scale = float(np.abs(caffe).max()) or 1.0
    np.testing.assert_allclose(ours, caffe, rtol=RTOL, atol=RTOL * scale, err_msg=what)


def history(path: Path) -> tuple[pb.SolverState, list[np.ndarray]]:
    state = protoio.read_binary(path, pb.SolverState)
    return state, [protoio.blob_to_array(b) for b in state.history]


def compare_snapshots(ours: Path, theirs: Path, what: str) -> None:
    """`ours` and `theirs`: snapshot prefixes (…_iter_N without the suffix); weights, history, iter equal."""
    a, b = (golden.sgd_golden.caffemodel_params(Path(f"{p}.caffemodel")) for p in (ours, theirs))
    assert sorted(a) == sorted(b)
    for name in b:
        for i, (x, y) in enumerate(zip(a[name], b[name])):
            assert_close(x, y, f"{what}: {name}[{i}]")
    (state_a, hist_a), (state_b, hist_b) = history(Path(f"{ours}.solverstate")), history(Path(f"{theirs}.solverstate"))
    assert (state_a.iter, state_a.current_step) == (state_b.iter, state_b.current_step)
    assert len(hist_a) == len(hist_b)
    for k, (x, y) in enumerate(zip(hist_a, hist_b)):
        assert_close(x, y, f"{what}: history blob {k}")


def train_ours(case: Path, monkeypatch, **kwargs) -> str:
    from convnet_transfer.training.engine.train import train
    monkeypatch.chdir(case)
    return train("solver.prototxt", **kwargs)


def trained(tmp_path: Path, solver_type: str, monkeypatch, capfd, **kwargs) -> tuple[Path, list[float]]:
    """Our 20 iterations from init.caffemodel (snapshots at 10 and 20) and the losses we logged."""
    case = golden.write_case(tmp_path / "ours", solver_type)
    capfd.readouterr()
    assert train_ours(case, monkeypatch, weights="init.caffemodel", **kwargs) == "done"
    return case, golden.sgd_golden.logged_losses(capfd.readouterr().err)


def check_against(case: Path, losses: list[float], caffe_prefix, caffe_losses: list[float], solver_type) -> None:
    """Our run in `case` equals Caffe's (snapshots at 10 and 20, losses); frozen conv1 bit-identical."""
    for it in (HALF, ITERS):
        compare_snapshots(case / f"snap_iter_{it}", caffe_prefix(it), f"{solver_type} after {it} iterations")
    np.testing.assert_allclose(losses, caffe_losses, rtol=RTOL, atol=1e-6, err_msg=f"{solver_type}: losses")
    ours, init = (golden.sgd_golden.caffemodel_params(case / name) for name in
                  (f"snap_iter_{ITERS}.caffemodel", "init.caffemodel"))
    for a, b in zip(ours["conv1"], init["conv1"]):   # lr_mult 0: frozen, bit-identical
        assert a.tobytes() == b.tobytes()
    assert not np.allclose(ours["ip2"][0], init["ip2"][0])
    _, hist = history(case / f"snap_iter_{ITERS}.solverstate")
    assert len(hist) == 8 * UPDATE_RULES[solver_type].history_sets
    if solver_type not in ("Nesterov",):   # the decay of a frozen layer reaches an adaptive solver's history
        assert np.abs(hist[0]).max() > 0


def resume(case: Path, source: Path, prefix: str, monkeypatch) -> Path:
    """A copy of `case` resumed to 20 iterations from the snapshot `source/prefix_iter_10` (copied in as snap_…,
    without our .rng side file: the data starts from the beginning, as Caffe's does, at an epoch's end here)."""
    resumed = case.parent / f"resumed_from_{source.name}"
    shutil.copytree(case, resumed, ignore=shutil.ignore_patterns("snap_*"))
    for suffix in ("caffemodel", "solverstate"):
        shutil.copyfile(source / f"{prefix}_iter_{HALF}.{suffix}", resumed / f"snap_iter_{HALF}.{suffix}")
    assert train_ours(resumed, monkeypatch, snapshot=f"snap_iter_{HALF}.solverstate") == "done"
    return resumed


@pytest.mark.parametrize("solver_type", TYPES)
def test_twenty_iterations_equal_caffe_golden_and_resume(tmp_path, monkeypatch, capfd, solver_type):
    case, losses = trained(tmp_path, solver_type, monkeypatch, capfd)
    recorded = json.loads((golden.GOLDEN_DIR / "losses.json").read_text())[solver_type]
    check_against(case, losses, lambda it: golden.GOLDEN_DIR / f"{solver_type}_iter_{it}", recorded, solver_type)
    # our snapshot at 10 resumes to our uninterrupted run, bit for bit
    ours = resume(case, case, "snap", monkeypatch)
    for name in (f"snap_iter_{ITERS}.caffemodel", f"snap_iter_{ITERS}.solverstate"):
        assert (ours / name).read_bytes() == (case / name).read_bytes()
    # Caffe's snapshot at 10 resumes with us to Caffe's end
    caffe_half = tmp_path / "caffe_half"
    caffe_half.mkdir()
    for suffix in ("caffemodel", "solverstate"):
        shutil.copyfile(golden.golden_file(solver_type, HALF, suffix), caffe_half / f"caffe_iter_{HALF}.{suffix}")
    theirs = resume(case, caffe_half, "caffe", monkeypatch)
    compare_snapshots(theirs / f"snap_iter_{ITERS}", golden.GOLDEN_DIR / f"{solver_type}_iter_{ITERS}",
                      f"{solver_type}: Caffe's state at {HALF} resumed by us")


@pytest.mark.parametrize("solver_type", TYPES)
def test_twenty_iterations_equal_caffe_live_and_each_resumes_the_other(tmp_path, monkeypatch, capfd, solver_type,
                                                                      real_caffe):
    caffe_case = golden.write_case(tmp_path / "caffe", solver_type)
    caffe_log = golden.sgd_golden.run_caffe(real_caffe, caffe_case)
    case, losses = trained(tmp_path, solver_type, monkeypatch, capfd)
    check_against(case, losses, lambda it: caffe_case / f"snap_iter_{it}", golden.sgd_golden.logged_losses(caffe_log),
                  solver_type)
    theirs = resume(case, caffe_case, "snap", monkeypatch)   # we resume Caffe's
    compare_snapshots(theirs / f"snap_iter_{ITERS}", caffe_case / f"snap_iter_{ITERS}",
                      f"{solver_type}: Caffe's state at {HALF} resumed by us")
    # Caffe resumes ours (the .solverstate and the .caffemodel it names) to our end
    by_caffe = tmp_path / "caffe_resumes_ours"
    shutil.copytree(case, by_caffe, ignore=shutil.ignore_patterns(f"snap_iter_{ITERS}.*"))
    proc = real_caffe.run("caffe", "train", "-solver", "solver.prototxt", "-snapshot",
                          f"snap_iter_{HALF}.solverstate", cwd=str(by_caffe), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    compare_snapshots(by_caffe / f"snap_iter_{ITERS}", case / f"snap_iter_{ITERS}",
                      f"{solver_type}: our state at {HALF} resumed by Caffe")


@pytest.mark.parametrize("lines, message", [
    ('type: "AdaGrad"\nmomentum: 0.9\n', "Momentum cannot be used with AdaGrad."),
    ('type: "RMSProp"\nmomentum: 0.9\n', "Momentum cannot be used with RMSProp."),
    ('type: "RMSProp"\nrms_decay: 1\n', "rms_decay should lie between 0 and 1."),
    ('type: "Lion"\n', "Unknown solver type: Lion (known types: AdaDelta, AdaGrad, Adam, Nesterov, RMSProp, SGD)"),
])
def test_constants_caffe_refuses_are_refused_before_training(tmp_path, monkeypatch, lines, message):
    case = golden.write_case(tmp_path, "Adam")
    (case / "solver.prototxt").write_text(golden.SOLVER % {"iters": ITERS, "half": HALF} + "base_lr: 0.1\n" + lines)
    with pytest.raises(SolverError, match="^solver.prototxt: " + message.replace("(", r"\(").replace(")", r"\)")):
        train_ours(case, monkeypatch)
    assert not list(case.glob("snap_iter_*"))


def test_a_solver_state_of_another_solver_type_is_refused(tmp_path, monkeypatch):
    """Adam keeps two history sets, AdaGrad one: resuming one's state with the other names both counts."""
    case = golden.write_case(tmp_path, "AdaGrad")
    shutil.copyfile(golden.golden_file("Adam", HALF, "solverstate"), case / f"snap_iter_{HALF}.solverstate")
    shutil.copyfile(golden.golden_file("Adam", HALF, "caffemodel"), case / f"snap_iter_{HALF}.caffemodel")
    with pytest.raises(SolverError, match=r"Incorrect length of history blobs \(16 in the file, 8 for 8 learnable "
                                          r"parameters in the net and solver type AdaGrad\)"):
        train_ours(case, monkeypatch, snapshot=f"snap_iter_{HALF}.solverstate")

