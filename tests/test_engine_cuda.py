"""The engine on CUDA: the CPU fidelity checks again on the GPU, fp32 (TF32 off), against the same Caffe goldens.

Every test here needs a CUDA device and is skipped without one, saying so. This project's CI machines have no
GPU: run them on a GPU machine, e.g. with `bash bench/device_check.sh` (the tests, then the GPU benchmarks).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test_engine_fidelity import GOLDEN, NETS, WEIGHTS, compare_with_golden
from test_engine_solver import data_layer, make_case, weights_of
import test_engine_solvers as solvers
import test_engine_train_fidelity as train_fidelity

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here: the engine's GPU checks run on a GPU machine "
                                       "(bash bench/device_check.sh)")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fp32():
    from convnet_transfer.training.engine.train import set_precision
    assert set_precision("fp32", torch.device("cuda")) == "fp32"
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("name", NETS)
def test_forward_loss_and_gradients_equal_caffe_golden_on_cuda(name):
    assert compare_with_golden(GOLDEN, name, WEIGHTS[name], device="cuda")


def test_twenty_sgd_iterations_equal_caffe_golden_on_cuda(tmp_path, monkeypatch, capfd):
    import json
    from convnet_transfer.training.engine.train import train
    case = train_fidelity.golden.write_case(tmp_path)
    monkeypatch.chdir(case)
    assert train("solver.prototxt", weights="init.caffemodel", gpu="0") == "done"
    log = capfd.readouterr().err
    assert "Using GPUs 0" in log
    recorded = json.loads((train_fidelity.golden.GOLDEN_DIR / "caffe_losses.json").read_text())["losses"]
    iters = train_fidelity.ITERS
    train_fidelity.compare(case, train_fidelity.golden.GOLDEN_DIR / f"caffe_iter_{iters}.caffemodel",
                           train_fidelity.golden.GOLDEN_DIR / f"caffe_iter_{iters}.solverstate", recorded, log)


@pytest.mark.parametrize("solver_type", solvers.TYPES)
def test_twenty_iterations_of_each_solver_type_equal_caffe_golden_on_cuda(tmp_path, monkeypatch, capfd, solver_type):
    import json
    case, losses = solvers.trained(tmp_path, solver_type, monkeypatch, capfd, gpu="0")
    recorded = json.loads((solvers.golden.GOLDEN_DIR / "losses.json").read_text())[solver_type]
    solvers.check_against(case, losses, lambda it: solvers.golden.GOLDEN_DIR / f"{solver_type}_iter_{it}", recorded,
                          solver_type)


def assert_gpu_batches_equal_cpu(layer, phase: str, seed: int, batches: int) -> int:
    """The layer's source on CUDA and on the CPU with one seed give the same batches bit for bit (the CUDA ones on
    the GPU); returns the CUDA source's number of decoding workers."""
    from convnet_transfer.training.engine.data import DataLayerSource
    gpu, cpu = DataLayerSource(layer, phase, "cuda", seed=seed), DataLayerSource(layer, phase, "cpu", seed=seed)
    try:
        assert cpu.workers == 0
        for _ in range(batches):
            a, b = gpu.next_batch(), cpu.next_batch()
            assert a["data"].is_cuda and a["label"].is_cuda
            assert a["data"].cpu().numpy().tobytes() == b["data"].numpy().tobytes()
            assert torch.equal(a["label"].cpu(), b["label"])
        return gpu.workers
    finally:
        gpu.close()
        cpu.close()


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_data_layer_feeds_the_gpu_with_the_cpu_transform_bit_for_bit(tmp_path, monkeypatch, phase):
    """Pinned uint8 batches, transformed on the GPU, equal the CPU source's numpy transform with the same seed."""
    make_case(tmp_path)
    monkeypatch.chdir(tmp_path)
    layer = data_layer('name: "d" type: "Data" top: "data" top: "label" transform_param { mean_file: '
                        '"mean.binaryproto" crop_size: 5 mirror: true scale: 0.25 } '
                        'data_param { source: "train_lmdb" batch_size: 16 backend: LMDB }')
    # 80 records from 40: wraps around; raw Datums: copied by the reading thread, no worker processes
    assert assert_gpu_batches_equal_cpu(layer, phase, seed=7, batches=5) == 0


def test_encoded_records_decoded_by_workers_feed_the_gpu_as_the_cpu(tmp_path, monkeypatch):
    """PNG Datums: the default worker processes under CUDA decode into shared memory, the batch goes to the GPU
    pinned; equal to the CPU source decoding in its thread."""
    from convnet_transfer.data.images import encode_image
    from test_engine_solver import write_values
    from convnet_transfer.formats import caffe_pb2 as pb
    monkeypatch.chdir(tmp_path)
    rng = np.random.RandomState(3)
    write_values(tmp_path / "png_lmdb", [pb.Datum(data=encode_image(rng.randint(0, 256, (9, 9, 3)).astype(np.uint8),
                                                                     "png"), label=i % 4, encoded=True)
                                          .SerializeToString() for i in range(40)])
    layer = data_layer('name: "d" type: "Data" top: "data" top: "label" transform_param { crop_size: 7 '
                        'mirror: true mean_value: 100 } data_param { source: "png_lmdb" batch_size: 16 backend: LMDB }')
    assert assert_gpu_batches_equal_cpu(layer, "TRAIN", seed=1, batches=4) > 0


def test_frozen_layers_stay_bit_identical_on_cuda(tmp_path, monkeypatch):
    case = make_case(tmp_path / "run", max_iter=6, snapshot=3, conv1_lr=0)
    from convnet_transfer.training.engine.train import train
    monkeypatch.chdir(case)
    assert train("solver.prototxt", gpu="0") == "done"
    first, last = weights_of(case / "snap_iter_3.caffemodel"), weights_of(case / "snap_iter_6.caffemodel")
    for a, b in zip(first["conv1"], last["conv1"]):
        assert a.tobytes() == b.tobytes()
    assert not np.array_equal(first["fc8"][0], last["fc8"][0])


def test_deterministic_mode_gives_identical_weights_and_resume_equals_an_uninterrupted_run(tmp_path):
    """$CAFFE_TORCH_DETERMINISTIC=1 on CUDA: two runs, and a run stopped at 10 and resumed, end with the same bits."""
    env = dict(os.environ, CAFFE_TORCH_DETERMINISTIC="1")
    tool = [sys.executable, str(ROOT / "tools" / "caffe_torch"), "train", "-gpu", "0"]
    results = []
    for run in ("a", "b", "resumed"):
        case = make_case(tmp_path / run, max_iter=20, snapshot=10)
        if run == "resumed":
            (case / "short.prototxt").write_text((case / "solver.prototxt").read_text().replace("max_iter: 20",
                                                                                                 "max_iter: 10"))
            first = subprocess.run(tool + ["-solver", "short.prototxt"], cwd=case, capture_output=True, text=True)
            assert first.returncode == 0, first.stderr[-2000:]
            extra = ["-snapshot", "snap_iter_10.solverstate"]
        else:
            extra = []
        proc = subprocess.run(tool + ["-solver", "solver.prototxt", *extra], cwd=case, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results.append((case / "snap_iter_20.caffemodel").read_bytes())
    assert results[0] == results[1] == results[2]
