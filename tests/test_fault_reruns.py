"""Reruns with other settings (issue 18, class 3): a rerun never mixes old snapshots and new settings silently.

train.sh records what a net is trained with (trained_with.txt) when its training starts; a rerun with other
settings (run_experiment --iterations, gen_nets with another solver field, a base net retrained since) is
refused by train.sh, tools/submit and run_experiment, naming the setting and the path, with nothing deleted;
tools/submit --status never calls such a net finished; the same settings again retrain nothing.
Real runs: tools/run_experiment --quick, tools/gen_nets, tools/submit and train.sh in bash with caffe_torch."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from convnet_transfer.data import datasets
from convnet_transfer.nets import netgen
from convnet_transfer.nets.tree import read_tree, settings_change

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CAFFE_TORCH = f"{PYTHON} {REPO / 'tools' / 'caffe_torch'}"
TRAINED_WITH = "max_iter 30 -> 40"          # the quick run's 30 iterations, then --iterations 40
RECORD = "trained_with.txt"                # what train.sh records a net is trained with (tree.RECORD)

needs_data = pytest.mark.skipif(
    not (datasets.FASHION_MNIST_ROOT / "train-labels-idx1-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
needs_make = pytest.mark.skipif(subprocess.run(["which", "make", "flock"], capture_output=True).returncode != 0,
                                reason="GNU make and flock are needed for the local runner")


def _env(**extra) -> dict:
    env = dict(os.environ, CONVNET_TRANSFER_NO_VENV="1", **extra)
    for name in ("CAFFE", "CAFFE_GPU"):
        env.pop(name, None)
    env.update(extra)
    return env


def tool(name: str, *args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, str(REPO / "tools" / name), *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=_env(**env))


def experiment(out: Path, *args) -> subprocess.CompletedProcess:
    return tool("run_experiment", "--quick", "--no-progress", "--out", out, *args)


def train_sh(net_dir: Path, caffe: str = CAFFE_TORCH) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(net_dir / "train.sh")], capture_output=True, text=True, timeout=600,
                          env=_env(CAFFE=caffe))


def made(nets_dir: Path) -> dict[str, str]:
    """What training made: every snapshot, log and record, by path -> md5 (gen_nets's own files left out)."""
    return {str(p.relative_to(nets_dir)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(nets_dir.rglob("*"))
            if p.is_file() and not p.is_symlink()
            and ("_iter_" in p.name or p.suffix == ".log" or p.name == RECORD)}


def states(nets_dir: Path) -> dict[str, dict]:
    result = tool("submit", "--status", "--json", nets_dir)
    assert result.returncode == 0, result.stderr
    return {s["name"]: s for s in json.loads(result.stdout)}


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished quick run (16 nets, 30 iterations each), copied by each test that changes it."""
    out = tmp_path_factory.mktemp("reruns") / "quick"
    result = experiment(out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def copy(trained: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(trained, out, symlinks=True)
    return out


# ---------------------------------------------------------------- train.sh and the status agree (no training)

FAKE_CAFFE = 'echo "caffe-args: $*"\n'


def test_train_sh_and_status_name_the_same_change(tmp_path):
    netgen.render_experiment(None, tmp_path, "data", only="half0A,transfer0A0B_1_1", scale=0.001)
    fake = tmp_path / "fake_caffe.sh"
    fake.write_text(FAKE_CAFFE)
    caffe = f"bash {fake}"
    base, net = tmp_path / "half0A", tmp_path / "transfer0A0B_1_1"
    (base / "caffe_imagenet_train_iter_450.caffemodel").write_bytes(b"base weights")
    assert train_sh(net, caffe).returncode == 0                  # started from scratch: recorded
    record = (net / RECORD).read_text()
    assert "imagenet_solver.prototxt: max_iter: 450\n" in record and "#" not in record
    assert f"weights: {hashlib.md5(b'base weights').hexdigest()} basenet/caffe_imagenet_train_iter_450.caffemodel" \
        in record
    tree = {n.name: n for n in read_tree(tmp_path)}
    assert settings_change(tree["transfer0A0B_1_1"], tree["half0A"]) is None   # no snapshot yet

    (net / "caffe_imagenet_train_iter_100.solverstate").write_bytes(b"s")
    solver = net / "imagenet_solver.prototxt"
    solver.write_text("# a comment changes nothing\n" + solver.read_text().replace("max_iter", "   max_iter"))
    assert settings_change(tree["transfer0A0B_1_1"], tree["half0A"]) is None
    assert train_sh(net, caffe).returncode == 0                  # same settings: resumed

    netgen.render_experiment(None, tmp_path, "data", only="transfer0A0B_1_1", scale=0.001, solver={"max_iter": 500})
    change = settings_change(tree["transfer0A0B_1_1"], tree["half0A"])
    assert change == "imagenet_solver.prototxt: max_iter 450 -> 500"
    proc = train_sh(net, caffe)
    assert proc.returncode == 1 and change in proc.stderr and str(net) in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "move its snapshots" in proc.stderr

    netgen.render_experiment(None, tmp_path, "data", only="transfer0A0B_1_1", scale=0.001)
    (base / "caffe_imagenet_train_iter_450.caffemodel").write_bytes(b"retrained base weights")
    tree = {n.name: n for n in read_tree(tmp_path)}
    change = settings_change(tree["transfer0A0B_1_1"], tree["half0A"])
    assert change.startswith("its base net was retrained: basenet/caffe_imagenet_train_iter_450.caffemodel has md5 "
                             + hashlib.md5(b"retrained base weights").hexdigest())
    proc = train_sh(net, caffe)
    assert proc.returncode == 1 and change in proc.stderr, proc.stderr
    assert len(list(net.glob("*.log"))) == 2                     # the refused runs started nothing
    assert record == (net / RECORD).read_text()

    (net / "caffe_imagenet_train_iter_100.solverstate").unlink()   # nothing trained: starts afresh, recorded anew
    assert train_sh(net, caffe).returncode == 0
    assert hashlib.md5(b"retrained base weights").hexdigest() in (net / RECORD).read_text()


# ---------------------------------------------------------------- real runs

@pytest.mark.slow
@needs_data
@needs_make
def test_rerun_with_other_iterations_is_refused_and_loses_nothing(trained, tmp_path):
    out = copy(trained, tmp_path)
    nets = out / "nets"
    before = made(nets)
    result = experiment(out, "--iterations", "40")
    no_traceback(result)
    assert result.returncode == 1, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert TRAINED_WITH in error and str(nets) in error and "another --out" in error, error
    assert "[4/5]" not in result.stderr and made(nets) == before          # nothing trained, nothing deleted

    status = states(nets)                                    # never "finished": old snapshots, new settings
    assert {s["state"] for s in status.values()} == {"changed"}
    assert all(TRAINED_WITH in s["detail"] for s in status.values())

    result = tool("submit", "--local", "--engine", "torch", nets)
    no_traceback(result)
    assert result.returncode == 1 and TRAINED_WITH in result.stderr and str(nets) in result.stderr, result.stderr
    result = tool("submit", "--slurm", "--dry-run", nets)
    assert result.returncode == 1 and TRAINED_WITH in result.stderr, result.stderr
    result = train_sh(nets / "transfer0A0B_1_2")
    assert result.returncode == 1 and TRAINED_WITH in result.stderr, result.stderr
    assert str(nets / "transfer0A0B_1_2") in result.stderr
    assert made(nets) == before

    result = experiment(out)                                 # the settings they were trained with: all there
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training 0 of 16 nets" in result.stderr and made(nets) == before
    assert {s["state"] for s in states(nets).values()} == {"finished"}


@pytest.mark.slow
@needs_data
@needs_make
def test_a_stopped_net_is_not_resumed_under_another_schedule(trained, tmp_path):
    out = copy(trained, tmp_path)
    nets = out / "nets"
    for path in (nets / "half0B").glob("snapshot_iter_30*"):       # stopped at iteration 15
        path.unlink()
    before = made(nets)
    result = experiment(out, "--iterations", "40")
    assert result.returncode == 1 and TRAINED_WITH in result.stderr and "half0B" in result.stderr
    result = train_sh(nets / "half0B")
    no_traceback(result)
    assert result.returncode == 1 and TRAINED_WITH in result.stderr and "half0B" in result.stderr, result.stderr
    assert made(nets) == before
    assert states(nets)["half0B"]["state"] == "changed"


@pytest.mark.slow
@needs_data
@needs_make
def test_a_tree_trained_before_records_keeps_its_settings(trained, tmp_path):
    out = copy(trained, tmp_path)
    nets = out / "nets"
    for record in nets.glob(f"*/{RECORD}"):
        record.unlink()
    result = experiment(out)                                 # no record: taken as trained with these settings
    assert result.returncode == 0 and "training 0 of 16 nets" in result.stderr, result.stderr[-3000:]
    before = made(nets)
    result = experiment(out, "--iterations", "40")           # recorded before the new settings are written
    no_traceback(result)
    assert result.returncode == 1 and TRAINED_WITH in result.stderr, result.stderr[-3000:]
    assert "solver.prototxt: max_iter: 30" in (nets / "half0A" / RECORD).read_text()
    assert {k: v for k, v in made(nets).items() if not k.endswith(RECORD)} == before


@pytest.mark.slow
@needs_data
@needs_make
def test_transfer_nets_on_a_retrained_base_net_are_detected(trained, tmp_path):
    out = copy(trained, tmp_path)
    nets = out / "nets"
    old = tmp_path / "old_half0A"
    old.mkdir()
    for path in list((nets / "half0A").glob("snapshot_iter_*")) + [nets / "half0A" / RECORD]:
        path.rename(old / path.name)                         # start half0A afresh, with another seed
    solver = nets / "half0A" / "solver.prototxt"
    solver.write_text("\n".join("random_seed: 12345" if line.startswith("random_seed:") else line
                                for line in solver.read_text().splitlines()) + "\n")
    assert train_sh(nets / "half0A").returncode == 0
    before = made(nets)

    status = states(nets)
    assert status["half0A"]["state"] == "finished" and status["half0B"]["state"] == "finished"
    for name, s in status.items():
        if name.startswith("transfer0A0B_"):
            assert s["state"] == "changed" and "its base net was retrained" in s["detail"], s
        elif name.startswith("transfer0B0B_"):
            assert s["state"] == "finished", s
    result = tool("submit", "--local", "--engine", "torch", nets)
    no_traceback(result)
    assert result.returncode == 1 and "its base net was retrained" in result.stderr, result.stderr
    assert "transfer0A0B_1_1" in result.stderr and "7 nets" in result.stderr
    result = train_sh(nets / "transfer0A0B_1_1")
    assert result.returncode == 1 and "its base net was retrained" in result.stderr, result.stderr
    assert made(nets) == before


@pytest.mark.slow
@needs_data
@needs_make
def test_gen_nets_with_another_solver_setting_over_a_trained_tree(trained, tmp_path):
    nets = tmp_path / "nets"
    render = ["gen_nets", "--only", "half0A,transfer0A0B_1_1", "--arch", "caffenet_small", "--data", trained / "data",
              "--out", nets, "--classes", "5", "--max-iter", "6", "--snapshot", "3", "--test-interval", "6",
              "--test-iter", "1", "--batch-size", "16", "--quiet"]
    assert tool(*render).returncode == 0
    result = tool("submit", "--local", "--engine", "torch", nets)
    assert result.returncode == 0, result.stdout + result.stderr
    before = made(nets)

    result = tool(*render, "--base-lr", "0.02")
    no_traceback(result)
    assert result.returncode == 0
    warning = result.stderr.strip()
    assert "base_lr 0.01 -> 0.02" in warning and str(nets) in warning, warning
    assert "half0A" in warning and "transfer0A0B_1_1" in warning and "refuse" in warning
    result = tool("submit", "--local", "--engine", "torch", nets)
    no_traceback(result)
    assert result.returncode == 1 and "base_lr 0.01 -> 0.02" in result.stderr, result.stdout + result.stderr
    assert {s["state"] for s in states(nets).values()} == {"changed"}
    assert made(nets) == before

    result = tool(*render)                                   # the old settings again: trained, nothing redone
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    result = tool("submit", "--local", "--engine", "torch", nets)
    assert result.returncode == 0, result.stdout + result.stderr
    assert made(nets) == before
    assert {s["state"] for s in states(nets).values()} == {"finished"}
