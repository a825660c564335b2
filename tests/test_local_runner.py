"""The local runner (make -j N over the tree) on the fake resumable trainer of tests/fake_tree.py:
dependency order, N nets at once, GPU slots, Ctrl-C then resume, finished nets never retrained, failures."""
from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_tree import FAKE_COMMAND, make_tree, small_experiment, timeline  # noqa: E402

from convnet_transfer.training.local_runner import gpu_slots, run_local, wait_for  # noqa: E402
from convnet_transfer.training.slurm import tree_status  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(subprocess.run(["which", "make", "flock"], capture_output=True).returncode != 0,
                                reason="GNU make and flock (util-linux) are needed for the local runner")


def runs_of(root: Path, names) -> dict[str, list[tuple[float, float, str]]]:
    """net -> [(start, end, start extra)] of each run, from the fake trainer's timeline."""
    out = {}
    for name in names:
        rows, spans = timeline(root / name), []
        for start, end in zip(rows[::2], rows[1::2]):
            assert start[0] == "start" and end[0] in ("end", "stop", "fail"), rows
            spans.append((start[1], end[1], start[3]))
        out[name] = spans
    return out


def test_order_parallel_gpus_and_no_retraining(tmp_path):
    nets = small_experiment(seconds_per_iter=0.1)
    root = make_tree(tmp_path / "tree", nets)
    result = run_local(root, jobs=2, gpus="0,1", caffe=FAKE_COMMAND, progress=False)
    assert result.ok, result.describe()
    assert set(result.nets) == {n["name"] for n in nets}
    assert all(s.state == "finished" and s.iteration == 20 and s.accuracy == pytest.approx(0.52)
               for s in result.nets.values()), result.describe()

    runs = runs_of(root, result.nets)
    assert all(len(r) == 1 for r in runs.values()), runs
    # order: every transfer net started after its base net ended, from its final snapshot
    for spec in nets:
        if spec.get("depends_on"):
            (start, _, how), = runs[spec["name"]]
            (_, base_end, _), = runs[spec["depends_on"]]
            assert start >= base_end and how.startswith("weights:"), (spec, start, base_end)
    # -j 2: some nets ran at the same time, never more than 2, never two on one GPU
    spans = [(s, e, how.split("gpu=")[-1]) for r in runs.values() for s, e, how in r]
    overlapping = [(a, b) for a, b in itertools.combinations(spans, 2) if a[0] < b[1] and b[0] < a[1]]
    assert overlapping, "no two nets ran in parallel with -j 2"
    assert all(a[2] != b[2] for a, b in overlapping), overlapping
    assert {gpu for _, _, gpu in spans} <= {"0", "1"}
    for s, _, _ in spans:
        assert sum(1 for a, b, _ in spans if a <= s < b) <= 2

    # running it again trains nothing: make sees every final snapshot
    again = run_local(root, jobs=2, caffe=FAKE_COMMAND, progress=False)
    assert again.ok
    assert runs_of(root, result.nets) == runs
    dry = subprocess.run(["make", "-C", str(root), "-f", "local/Makefile", "-n"], capture_output=True, text=True)
    assert "run_net.sh" not in dry.stdout, dry.stdout


@pytest.mark.slow
def test_interrupt_then_resume(tmp_path):
    """Ctrl-C (SIGINT to tools/submit --local) snapshots the nets in training; the same command resumes them."""
    nets = small_experiment(seconds_per_iter=0.15)
    for spec in nets:
        spec["max_iter"] = 40
    root = make_tree(tmp_path / "tree", nets)
    cmd = [str(REPO / "tools" / "submit"), "--local", "-j", "2", "--caffe", FAKE_COMMAND, str(root)]
    # SIGINT's default action restored for it: a test run started in the background of a script (`cmd &`) has
    # SIGINT ignored, children inherit that, and Python then leaves SIGINT ignored
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def training() -> bool:   # some net is training and has written its first snapshot
        return any(timeline(root / n["name"])[-1:] and timeline(root / n["name"])[-1][0] == "start"
                   and list((root / n["name"]).glob("*_iter_5.solverstate")) for n in nets)

    assert wait_for(training, timeout=60), "no net reached its first snapshot"
    running = [s for s in tree_status(root) if s.state == "running"]      # what tools/submit --status shows
    assert running and all(s.detail == "local runner" for s in running), running
    assert any(s.iteration is not None and s.iteration >= 5 for s in running), running
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out            # 128 + SIGINT
    assert "interrupted" in out and "stopped" in out, out

    stopped = {n["name"]: timeline(root / n["name"]) for n in nets}
    stopped = {name: rows for name, rows in stopped.items() if rows and rows[-1][0] == "stop"}
    assert stopped, "no net was stopped by the Ctrl-C"
    for name, rows in stopped.items():
        assert rows[-1][3] == "SIGINT"
        it = rows[-1][2]
        assert (root / name / f"{name}_iter_{it}.solverstate").exists()     # snapshot at the stop
        assert not (root / name / f"{name}_iter_40.caffemodel").exists()
    for spec in nets:                                  # nothing started after the Ctrl-C
        if spec.get("depends_on") in stopped:
            assert not timeline(root / spec["name"]), spec

    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for spec in nets:
        rows = timeline(root / spec["name"])
        assert rows[-1][0] == "end" and rows[-1][2] == 40, rows
        trained = sum(end[2] - start[2] for start, end in zip(rows[::2], rows[1::2]))
        assert trained == 40, f"{spec['name']}: iterations lost or repeated: {rows}"
    for name, rows in stopped.items():
        resumed = timeline(root / name)[len(rows)]
        assert resumed[0] == "start" and resumed[2] == rows[-1][2]
        assert resumed[3] == f"resume:{name}_iter_{rows[-1][2]}.solverstate"


def test_failure_stops_only_dependents(tmp_path, capfd):
    nets = small_experiment(seconds_per_iter=0.05)
    nets[0]["fail_at"] = 3                                   # halfA fails
    root = make_tree(tmp_path / "tree", nets)
    result = run_local(root, jobs=2, caffe=FAKE_COMMAND, progress=False)
    assert result.returncode != 0 and not result.ok
    s = result.nets
    assert s["halfA"].state == "failed" and "Check failed: loss is NaN" in s["halfA"].detail, s["halfA"]
    for name in ("transferAB_1_1", "transferAB_1_2"):
        assert s[name].state == "not started" and not timeline(root / name)
    for name in ("halfB", "transferBA_1_1", "transferBA_1_2", "netbase"):
        assert s[name].state == "finished", s[name]

    # only the chosen nets (and the base nets they need) are trained; quiet: no line per net on stdout
    root2 = make_tree(tmp_path / "tree2", small_experiment(seconds_per_iter=0.05))
    capfd.readouterr()
    result = run_local(root2, jobs=1, nets=["transferBA_1_1"], caffe=FAKE_COMMAND, progress=False, quiet=True)
    assert result.ok and set(result.nets) == {"transferBA_1_1"}
    assert timeline(root2 / "halfB") and not timeline(root2 / "halfA") and not timeline(root2 / "netbase")
    assert "transferBA_1_1" not in "".join(capfd.readouterr())


def test_gpus_our_engine_cannot_see_stop_before_any_net(tmp_path):
    """caffe_torch -gpu N without that device trains on the CPU (with a warning); a tree asked to run on GPUs
    stops before its first net instead, naming the ids and PyTorch's build (the id asked for is one past the
    devices there are, so this holds on a GPU machine too)."""
    import torch

    from convnet_transfer.nets.tree import TreeError
    from convnet_transfer.training.runners import trainer_env
    root = make_tree(tmp_path / "tree", small_experiment(seconds_per_iter=0.1))
    absent, ours = str(torch.cuda.device_count()), trainer_env("torch")["CAFFE"]
    with pytest.raises(TreeError, match=f"^GPU {absent} asked for, but PyTorch here .* sees {absent} CUDA dev"):
        run_local(root, jobs=1, gpus=f"{absent},", caffe=ours, progress=False)   # blank: no slot
    assert not (root / "local").exists()     # nothing written, nothing started
    assert gpu_slots(" 0,,1, 1") == gpu_slots(["0", "1", " 1 "]) == ["0", "1", "1"] and gpu_slots(None) == []


def test_gpus_real_caffe_cannot_use_stop_before_any_net(tmp_path, real_caffe):
    """Real Caffe asked to train on a GPU it cannot use (a CPU-only build, or a CUDA build without that device)
    would abort every net at its start: `caffe device_query` is asked first, and its one line stops the run."""
    import torch

    from convnet_transfer.nets.tree import TreeError
    root = make_tree(tmp_path / "tree", small_experiment(seconds_per_iter=0.1))
    absent = str(torch.cuda.device_count())
    with pytest.raises(TreeError, match=rf"^GPU {absent} asked for, but the real Caffe that trains \(.*caffe\) cannot "
                                        rf"use them: (this Caffe is a CPU-only build|no usable GPU {absent}: )"):
        run_local(root, jobs=1, gpus=absent, env=real_caffe.env(), caffe=str(real_caffe.caffe), progress=False)
    assert not (root / "local").exists()     # nothing written, nothing started
