"""`tools/caffe_torch`: Caffe's command line (flags, exit codes, logs, signals), run as a real subprocess."""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from convnet_transfer.cli.caffe_torch import EXIT_DIVERGED, EXIT_ERROR, EXIT_STOPPED, UsageError, parse_args

from test_engine_solver import SOLVER, make_case

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "caffe_torch"


TINY_DEPLOY = (
    'name: "tiny" layer { name: "data" type: "Input" top: "data" top: "label"\n'
    '  input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } shape { dim: 2 } } }\n'
    'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"\n'
    '  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }\n'
    'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
    'layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 3 } }\n'
    'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }\n')


def caffe_torch(*args, cwd, timeout=240, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(TOOL), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_flags_are_parsed_as_gflags_does():
    positional, flags = parse_args(["train", "-solver", "s.prototxt", "--weights=a.caffemodel,b.caffemodel",
                                    "-gpu=all", "--sigint_effect", "snapshot"])
    assert positional == ["train"]
    assert flags["solver"] == "s.prototxt" and flags["weights"] == "a.caffemodel,b.caffemodel"
    assert flags["gpu"] == "all" and flags["sigint_effect"] == "snapshot" and flags["iterations"] == "50"
    with pytest.raises(UsageError, match="unknown command line flag 'solvr'"):
        parse_args(["train", "-solvr", "x"])
    with pytest.raises(UsageError, match="missing its argument"):
        parse_args(["train", "-solver"])


def test_bad_command_lines_exit_non_zero_with_a_message(tmp_path):
    proc = caffe_torch("train", "-solver", "s", "-weights", "w", "-snapshot", "x", cwd=tmp_path)
    assert proc.returncode == EXIT_ERROR and "not both" in proc.stderr
    proc = caffe_torch("train", "-solver", "missing.prototxt", cwd=tmp_path)
    assert proc.returncode == EXIT_ERROR and "missing.prototxt" in proc.stderr
    where = re.search(r"^E\d{4} [\d:.]+ +\d+ (\S+)] ProtoFileError: ", proc.stderr, re.M).group(1)
    assert re.fullmatch(r"protoio\.py:\d+", where), where   # where the engine raised it
    proc = caffe_torch("brew", cwd=tmp_path)
    assert proc.returncode == EXIT_ERROR and "Unknown action: brew" in proc.stderr
    proc = caffe_torch("train", "-nonsense", "1", cwd=tmp_path)
    assert proc.returncode == EXIT_ERROR and "unknown command line flag 'nonsense'" in proc.stderr
    proc = caffe_torch("-help", cwd=tmp_path)
    assert proc.returncode == 0 and "train -solver" in proc.stdout


def test_train_sh_runs_with_caffe_set_to_the_engine_then_test_and_time(tmp_path):
    case = make_case(tmp_path, max_iter=4, snapshot=2)
    # what a generated train.sh runs: ${CAFFE:-caffe} train -solver <solver>, output appended to a log
    script = 'set -e; ${CAFFE:-caffe} train -solver solver.prototxt >> run.log 2>&1'
    proc = subprocess.run(["bash", "-c", script], cwd=case, env={**os.environ, "CAFFE": str(TOOL)},
                          capture_output=True, text=True, timeout=240)
    log = (case / "run.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert (case / "snap_iter_4.caffemodel").is_file() and (case / "snap_iter_4.solverstate").is_file()
    assert "Iteration 0, Testing net (#0)" in log and "Optimization Done." in log
    assert all(line[0] in "IWEF" and "] " in line for line in log.splitlines() if line.strip()), \
        "every line is a glog line"

    proc = caffe_torch("test", "-model", "net.prototxt", "-weights", "snap_iter_4.caffemodel", "-iterations", "2",
                       cwd=case)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Batch 1, accuracy = " in proc.stderr and "] accuracy = " in proc.stderr

    proc = caffe_torch("time", "-model", "net.prototxt", "-iterations", "2", cwd=case)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Average Forward-Backward:" in proc.stderr
    # Caffe's "Average time per layer": every layer of the TRAIN net, forward and backward, in the net's order;
    # the passes are their sums
    per_layer = re.findall(r"\] +(\S+)\t(forward|backward): (\S+) ms\.", proc.stderr)
    assert [(name, way) for name, way, _ in per_layer] == [(name, way) for name in ("data", "conv1", "relu1", "pool1",
                                                           "fc6", "relu6", "drop6", "fc8", "loss")
                                                           for way in ("forward", "backward")]
    for way in ("Forward", "Backward"):
        total = float(re.search(rf"Average {way} pass: (\S+) ms", proc.stderr).group(1))
        assert sum(float(ms) for _, w, ms in per_layer if w == way.lower()) == pytest.approx(total, rel=1e-4)


def test_time_fills_input_layers_with_zeros_as_caffe(tmp_path):
    # `caffe time -model deploy.prototxt`: Input-layer tops that nothing feeds are zeros in Caffe
    (tmp_path / "deploy.prototxt").write_text(TINY_DEPLOY)
    proc = caffe_torch("time", "-model", "deploy.prototxt", "-iterations", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Average Forward-Backward:" in proc.stderr
    assert "Initial loss: 1.09861" in proc.stderr          # zero input, zero bias: uniform softmax, ln 3


def test_memory_format_is_chosen_by_the_environment_or_the_device(tmp_path, monkeypatch):
    import torch
    from convnet_transfer.training.engine.errors import EngineError
    from convnet_transfer.training.engine.net import MEMORY_FORMAT_ENV, Net
    from convnet_transfer.training.engine.upgrade import read_net_file
    (tmp_path / "deploy.prototxt").write_text(TINY_DEPLOY)
    param = read_net_file(tmp_path / "deploy.prototxt")

    def conv_weight_is_nhwc() -> bool:
        weight = Net(param, "TEST", {}).place(torch.device("cpu")).params[0].tensor
        assert weight.dim() == 4 and weight.shape[1] > 1 and weight.shape[2] > 1
        return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()

    monkeypatch.delenv(MEMORY_FORMAT_ENV, raising=False)
    assert conv_weight_is_nhwc()                          # the CPU's default
    monkeypatch.setenv(MEMORY_FORMAT_ENV, "nchw")
    assert not conv_weight_is_nhwc()
    monkeypatch.setenv(MEMORY_FORMAT_ENV, "NHWC")
    assert conv_weight_is_nhwc()
    monkeypatch.setenv(MEMORY_FORMAT_ENV, "planar")
    with pytest.raises(EngineError, match=f"{MEMORY_FORMAT_ENV}='planar': use nchw or nhwc"):
        Net(param, "TEST", {}).place(torch.device("cpu"))

    logs = {}
    for layout in ("nchw", "nhwc"):
        proc = caffe_torch("time", "-model", "deploy.prototxt", "-iterations", "2", cwd=tmp_path,
                           env={MEMORY_FORMAT_ENV: layout})
        assert proc.returncode == 0, proc.stderr[-2000:]
        logs[layout] = proc.stderr
    assert all("Initial loss: 1.09861" in text for text in logs.values())
    proc = caffe_torch("time", "-model", "deploy.prototxt", cwd=tmp_path, env={MEMORY_FORMAT_ENV: "planar"})
    assert proc.returncode == EXIT_ERROR and f"${MEMORY_FORMAT_ENV}='planar'" in proc.stderr


def test_caffe_parse_log_reads_our_log(tmp_path, real_caffe):
    # Caffe's own log parser: in the build prefix when install_caffe keeps it, or in a Caffe source tree ($CAFFE_SRC)
    roots = [real_caffe.root] + ([Path(os.environ["CAFFE_SRC"])] if os.environ.get("CAFFE_SRC") else [])
    candidates = [p for root in roots for pattern in ("tools/extra/parse_log.py", "*/tools/extra/parse_log.py",
                                                      "*/*/tools/extra/parse_log.py")
                  for p in root.glob(pattern)]
    if not candidates:
        pytest.skip(f"Caffe's tools/extra/parse_log.py is not under {real_caffe.root} (set $CAFFE_SRC to a Caffe "
                    f"source tree to run this check)")
    # parse_log.py is Python 2 in one line (a `print` statement): copy it beside us with that line made a call
    import re
    for name in ("parse_log.py", "extract_seconds.py"):
        text = (candidates[0].parent / name).read_text()
        (tmp_path / name).write_text(re.sub(r"^(\s*)print (.+)$", r"\1print(\2)", text, flags=re.M))
    parse_log = tmp_path / "parse_log.py"
    case = make_case(tmp_path / "net", max_iter=10, snapshot=0)
    proc = caffe_torch("train", "-solver", "solver.prototxt", cwd=case)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (case / "ours.log").write_text(proc.stderr)
    run = subprocess.run([sys.executable, str(parse_log), "ours.log", "."], cwd=case, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    with open(case / "ours.log.train") as f:
        train = list(csv.DictReader(f))
    with open(case / "ours.log.test") as f:
        test = list(csv.DictReader(f))
    assert [float(r["NumIters"]) for r in train] == [0, 5]
    assert "loss" in train[0] and float(train[0]["LearningRate"]) == pytest.approx(0.05)
    assert [float(r["NumIters"]) for r in test] == [0, 10] and "accuracy" in test[0]


def test_sigterm_snapshots_then_stops_and_the_run_resumes(tmp_path):
    case = make_case(tmp_path, max_iter=100000, snapshot=0)
    (case / "solver.prototxt").write_text((case / "solver.prototxt").read_text().replace("display: 5", "display: 1"))
    proc = subprocess.Popen([str(TOOL), "train", "-solver", "solver.prototxt"], cwd=case, stderr=subprocess.PIPE,
                            text=True)
    lines = []
    deadline = time.time() + 240
    for line in proc.stderr:
        lines.append(line)
        if "Iteration 3, lr" in line:
            proc.send_signal(signal.SIGTERM)
            break
        assert time.time() < deadline, "training did not reach iteration 3"
    _, rest = proc.communicate(timeout=120)
    log = "".join(lines) + rest
    assert proc.returncode == EXIT_STOPPED, log[-2000:]
    assert "Optimization stopped early." in log
    snapshots = sorted(case.glob("snap_iter_*.solverstate"))
    assert len(snapshots) == 1
    stopped_at = int(snapshots[0].name.split("_iter_")[1].split(".")[0])
    assert stopped_at >= 4
    # resume for two more iterations
    (case / "more.prototxt").write_text((case / "solver.prototxt").read_text()
                                        .replace("max_iter: 100000", f"max_iter: {stopped_at + 2}"))
    done = caffe_torch("train", "-solver", "more.prototxt", "-snapshot", snapshots[0].name, cwd=case)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"Iteration {stopped_at + 1}, lr" in done.stderr
    assert (case / f"snap_iter_{stopped_at + 2}.caffemodel").is_file()


def test_diverging_run_exits_with_its_own_code(tmp_path):
    case = make_case(tmp_path, base_lr=1e5, max_iter=50, snapshot=5)
    proc = caffe_torch("train", "-solver", "solver.prototxt", cwd=case)
    assert proc.returncode == EXIT_DIVERGED, proc.stderr[-2000:]
    assert "training diverged" in proc.stderr and "Iteration " in proc.stderr


def test_a_damaged_database_stops_training_with_a_message_naming_it(tmp_path):
    """data.mdb overwritten with garbage (a copy that broke off, a full disk): no traceback, the database named
    and what to do; nothing else in the directory is touched."""
    case = make_case(tmp_path)
    (case / "train_lmdb" / "data.mdb").write_bytes(os.urandom(64 << 10))
    before = sorted(p.name for p in case.iterdir())
    proc = caffe_torch("train", "-solver", "solver.prototxt", cwd=case)
    assert proc.returncode == EXIT_ERROR, proc.stderr[-2000:]
    assert "train_lmdb: cannot open it as an LMDB database" in proc.stderr and "re-create it" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in case.iterdir() if not p.name.endswith(".log")) == before


def test_our_log_parser_reads_the_engine_log(tmp_path):
    from convnet_transfer.results.logs import parse_log
    case = make_case(tmp_path, max_iter=10, snapshot=0)
    proc = caffe_torch("train", "-solver", "solver.prototxt", cwd=case)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (case / "net.20261124-183000.log").write_text(proc.stderr)
    parsed = parse_log(case / "net.20261124-183000.log")
    assert list(parsed.train["NumIters"]) == [0, 5, 10]
    assert parsed.train["LearningRate"][0] == pytest.approx(0.05)
    assert list(parsed.test["NumIters"]) == [0, 10]
    assert np.all((parsed.test["accuracy"] >= 0) & (parsed.test["accuracy"] <= 1))
    assert not parsed.warnings


FAULTS = """
import resource, sys
import torch
if sys.argv[1] == "keep":
    from convnet_transfer.training.engine.train import keep_freed_memory
    assert keep_freed_memory()
faults = []
for _ in range(12):       # what training does each iteration: a large tensor allocated, written, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 << 20)
    x.fill_(1)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[2:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_the_command_keeps_freed_memory_for_the_next_iteration():
    """`caffe_torch` calls keep_freed_memory: a 64 MB tensor freed and allocated again reuses pages already
    touched instead of faulting fresh ones in (page faults counted in a fresh process, with and without)."""
    import inspect
    from convnet_transfer.cli import caffe_torch as command
    assert "keep_freed_memory()" in inspect.getsource(command.run_command)
    counts = {}
    for mode in ("default", "keep"):
        proc = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        counts[mode] = int(proc.stdout.split()[-1])
    assert counts["default"] > 0 and counts["keep"] * 4 <= counts["default"], counts
