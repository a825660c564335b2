"""Real Caffe on the GPU beside our engine on the same GPU: 20 iterations of every solver type from the same
weights on the same LMDB, Caffe's CUDA build against its own CPU golden and our engine against it, within 1e-4
(fp32, TF32 off), weights, history and losses.

The [gpu] variants need a CUDA build of Caffe (tools/install_caffe --cuda, or its bundle named by $CAFFE_ROOT)
and a GPU that answers `caffe device_query`; without a CUDA device they skip, saying so (bench/device_check.sh
runs them on a lent GPU machine, with $CONVNET_TRANSFER_REQUIRE_CAFFE_GPU=1 so that a bundle that cannot reach
the GPU fails instead of skipping). The [cpu] variants run the very same code with the CPU solver of the Caffe
found (the CUDA build where there is one, as in CI), so everything but the device is tried on every machine.
"""
from __future__ import annotations

import json

import pytest
import torch

from conftest import REQUIRE_CAFFE_ENV, missing
import test_engine_solvers as solvers
import test_engine_train_fidelity as fidelity

REQUIRE_GPU_ENV = "CONVNET_TRANSFER_REQUIRE_CAFFE_GPU"
ITERS = fidelity.ITERS


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def caffe_on(request):
    """(the real Caffe to run, the extra `caffe train` arguments that put it on the device, our engine's gpu)."""
    from convnet_transfer.training import realcaffe
    if request.param == "gpu" and not torch.cuda.is_available():
        missing("no CUDA device here: real Caffe on the GPU is compared with our engine on a GPU machine "
                "(bash bench/device_check.sh)", REQUIRE_GPU_ENV)
    found = realcaffe.find_caffe(gpu=True)
    if found is None or not found.ok:
        why = "no Caffe build found" if found is None else found.problem
        message = f"real Caffe is needed ({why}); build it with tools/install_caffe --cuda"
        missing(message, REQUIRE_GPU_ENV if request.param == "gpu" else REQUIRE_CAFFE_ENV)
    if request.param == "cpu":
        return found, (), None
    query = realcaffe.device_query(found, 0)
    if not query.ok:
        missing(f"real Caffe at {found.root} does not run on GPU 0: {query.message}", REQUIRE_GPU_ENV)
    return found, ("-gpu", "0"), "0"


@pytest.fixture(autouse=True)
def fp32():
    """Our engine in fp32 with TF32 off on CUDA, as Caffe's cuBLAS computes by default."""
    if torch.cuda.is_available():
        from convnet_transfer.training.engine.train import set_precision
        assert set_precision("fp32", torch.device("cuda")) == "fp32"


def test_twenty_sgd_iterations_of_caffe_and_ours_on_one_device(caffe_on, tmp_path, monkeypatch, capfd):
    caffe, device_args, gpu = caffe_on
    golden = fidelity.golden
    theirs = golden.write_case(tmp_path / "caffe")
    caffe_log = golden.run_caffe(caffe, theirs, *device_args)
    assert ("Using GPUs 0" if gpu else "Use CPU.") in caffe_log, caffe_log[-2000:]
    recorded = json.loads((golden.GOLDEN_DIR / "caffe_losses.json").read_text())["losses"]
    # Caffe on this device equals Caffe's CPU golden ...
    fidelity.compare(theirs, golden.GOLDEN_DIR / f"caffe_iter_{ITERS}.caffemodel",
                     golden.GOLDEN_DIR / f"caffe_iter_{ITERS}.solverstate", recorded, caffe_log)
    # ... and our engine on the same device equals Caffe there
    ours = golden.write_case(tmp_path / "ours")
    monkeypatch.chdir(ours)
    from convnet_transfer.training.engine.train import train
    capfd.readouterr()
    assert train("solver.prototxt", weights="init.caffemodel", gpu=gpu) == "done"
    fidelity.compare(ours, theirs / f"snap_iter_{ITERS}.caffemodel", theirs / f"snap_iter_{ITERS}.solverstate",
                     golden.logged_losses(caffe_log), capfd.readouterr().err)


@pytest.mark.parametrize("solver_type", solvers.TYPES)
def test_twenty_iterations_of_each_solver_type_caffe_and_ours_on_one_device(caffe_on, solver_type, tmp_path,
                                                                            monkeypatch, capfd):
    caffe, device_args, gpu = caffe_on
    theirs = solvers.golden.write_case(tmp_path / "caffe", solver_type)
    caffe_log = solvers.golden.sgd_golden.run_caffe(caffe, theirs, *device_args)
    recorded = json.loads((solvers.golden.GOLDEN_DIR / "losses.json").read_text())[solver_type]
    solvers.check_against(theirs, solvers.golden.sgd_golden.logged_losses(caffe_log),
                          lambda it: solvers.golden.GOLDEN_DIR / f"{solver_type}_iter_{it}", recorded, solver_type)
    ours, losses = solvers.trained(tmp_path, solver_type, monkeypatch, capfd, gpu=gpu)
    solvers.check_against(ours, losses, lambda it: theirs / f"snap_iter_{it}",
                          solvers.golden.sgd_golden.logged_losses(caffe_log), solver_type)
