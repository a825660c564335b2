"""tools/submit --slurm on a real Slurm cluster (tools/slurm_localhost starts one on this machine).

The tree is the fake resumable trainer of tests/fake_tree.py (fast, but with Caffe's files, logs and signal
behaviour); Slurm, sbatch, the job scripts, the dependencies, the time limit and the requeue are all real.
Without the Slurm binaries (or root) the tests skip, saying so; in CI ($CONVNET_TRANSFER_REQUIRE_SLURM=1) they fail.
"""
from __future__ import annotations

import calendar
import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_tree import FAKE_COMMAND, make_tree, small_experiment, timeline  # noqa: E402

from convnet_transfer.nets import tree  # noqa: E402
from convnet_transfer.training import realcaffe, slurm  # noqa: E402
from convnet_transfer.training.runners import trainer_env  # noqa: E402
import slurm_localhost
from conftest import missing  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
REQUIRE_ENV = "CONVNET_TRANSFER_REQUIRE_SLURM"


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local cluster, started by tools/slurm_localhost when it is not running (and stopped again after)."""
    absent = slurm_localhost.binaries_missing()
    if absent:
        missing(f"Slurm is not installed ({', '.join(absent)} missing): apt-get install slurm-wlm munge", REQUIRE_ENV)
    if os.geteuid() != 0:
        missing("the local Slurm cluster needs root (its daemons run as root)", REQUIRE_ENV)
    started = not slurm_localhost.status().up
    if started:
        proc = subprocess.run([str(REPO / "tools" / "slurm_localhost"), "start"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr + proc.stdout
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(slurm_localhost.state_dir() / "slurm.conf")
    assert slurm_localhost.status().up
    yield slurm_localhost.state_dir()
    if saved is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = saved
    if started:
        slurm_localhost.stop()


def submit_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "tools" / "submit"), *args], capture_output=True, text=True, timeout=120)


def status_json(root: Path) -> dict[str, dict]:
    proc = submit_cli("--status", "--json", str(root))
    assert proc.returncode == 0, proc.stderr
    return {s["name"]: s for s in json.loads(proc.stdout)}


# ---------------------------------------------------------------------------------------------- the plan

def test_plan_groups_arrays_by_base_net_with_task_dependencies(tmp_path):
    root = make_tree(tmp_path / "tree", small_experiment())
    options = slurm.SlurmOptions(partition="gpu", account="lab", qos="high", time="24:00:00", gpus_per_task=1,
                                 cpus_per_task=4, mem="32G", array_limit=3, extra=("--constraint=a100",),
                                 caffe="/opt/caffe/bin/caffe", signal_lead=600)
    p = slurm.plan(root, options, queued={})
    assert [(j.name, [n.name for n in j.nets], j.after) for j in p.jobs] == [
        ("ct-one", ["halfA", "halfB"], []),
        ("ct-whenever", ["netbase"], []),
        ("ct-after-halfA", ["transferAB_1_1", "transferAB_1_2"], [("JOB_one", 0)]),
        ("ct-after-halfB", ["transferBA_1_1", "transferBA_1_2"], [("JOB_one", 1)]),
    ]
    assert p.jobs[3].sbatch_argv({"JOB_one": "41"})[:3] == ["sbatch", "--parsable", "--dependency=afterok:41_1"]
    script = p.jobs[2].script
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --qos=high", "#SBATCH --time=24:00:00",
                 "#SBATCH --gpus-per-task=1", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=32G",
                 "#SBATCH --constraint=a100", "#SBATCH --array=0-1%3", "#SBATCH --requeue",
                 "#SBATCH --signal=B:USR1@600", f"#SBATCH --output={root}/slurm/%x_%A_%a.out",
                 "export CAFFE=/opt/caffe/bin/caffe", "  transferAB_1_2_iter_20.caffemodel"):
        assert line in script, line
    for job in p.jobs:                                   # valid bash
        check = subprocess.run(["bash", "-n"], input=job.script, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_trainer_is_real_caffe_with_its_libraries_or_our_engine_or_the_command_given(tmp_path, real_caffe,
                                                                                      monkeypatch):
    monkeypatch.delenv("CAFFE", raising=False)
    base = {"LD_LIBRARY_PATH": "/opt/cuda/lib64", "PATH": "/usr/bin"}
    env = trainer_env("auto", base=base)
    assert env["CAFFE"] == str(real_caffe.caffe) and env["PATH"] == "/usr/bin"
    libs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert libs[-1] == "/opt/cuda/lib64" and (Path(libs[0]) / "libcaffe.so").exists(), libs
    assert env["GLOG_logtostderr"] == "1" and base == {"LD_LIBRARY_PATH": "/opt/cuda/lib64", "PATH": "/usr/bin"}
    ours = shlex.join(realcaffe.caffe_command("torch"))
    assert trainer_env("torch", base=base) == {**base, "CAFFE": ours}
    assert trainer_env("caffe", "/x/caffe -v", base=base) == {**base, "CAFFE": "/x/caffe -v"}

    # a job script exports Caffe's own variables, nothing of this environment's, its paths before the node's
    script = slurm.plan(make_tree(tmp_path / "tree", small_experiment()), slurm.SlurmOptions(engine="caffe"),
                        queued={}).jobs[0].script
    exports = "\n".join(line for line in script.splitlines() if line.startswith("export "))
    assert f"export CAFFE={real_caffe.caffe}" in exports
    shown = subprocess.run(["bash", "-c", exports + '\necho "$LD_LIBRARY_PATH|$GLOG_logtostderr"'],
                           env={"LD_LIBRARY_PATH": "/opt/cuda/lib64"}, capture_output=True, text=True).stdout
    assert shown == f"{libs[0]}:/opt/cuda/lib64|1\n"
    shown = subprocess.run(["bash", "-c", exports + '\necho "$LD_LIBRARY_PATH"'], env={}, capture_output=True,
                           text=True).stdout
    assert shown == f"{libs[0]}\n"

    monkeypatch.setenv("CAFFE_ROOT", str(tmp_path / "no-caffe"))
    with pytest.raises(tree.TreeError, match="real Caffe was asked for"):
        trainer_env("caffe")


def test_plan_skips_finished_and_queued_nets_and_brings_base_nets(tmp_path):
    root = make_tree(tmp_path / "tree", small_experiment())
    (root / "halfB" / "halfB_iter_20.caffemodel").write_text("trained")
    (root / "netbase" / "netbase_iter_20.caffemodel").write_text("trained")
    p = slurm.plan(root, slurm.SlurmOptions(caffe="x"), queued={"halfA": "77_0"})
    assert p.skipped == {"halfA": "already queued as job 77_0", "halfB": "already trained",
                         "netbase": "already trained"}
    jobs = {j.name: j for j in p.jobs}
    assert set(jobs) == {"ct-after-halfA", "ct-two"}
    assert jobs["ct-after-halfA"].after_ids == ["77_0"] and not jobs["ct-two"].after      # halfB is trained
    assert [n.name for n in jobs["ct-two"].nets] == ["transferBA_1_1", "transferBA_1_2"]

    p = slurm.plan(root, slurm.SlurmOptions(caffe="x"), nets=["transferAB_1_1"], queued={})
    assert [(j.name, [n.name for n in j.nets]) for j in p.jobs] == [("ct-one", ["halfA"]),
                                                                   ("ct-after-halfA", ["transferAB_1_1"])]
    text = slurm.dry_run_text(p)
    assert "JOB_after_halfA=$(sbatch --parsable --dependency=afterok:${JOB_one}_0" in text


def test_plan_errors_say_what_to_do(tmp_path):
    with pytest.raises(tree.TreeError, match="tools/gen_nets"):
        slurm.plan(tmp_path, queued={})
    root = make_tree(tmp_path / "tree", small_experiment())
    with pytest.raises(tree.TreeError, match="no net .* matches nope"):
        slurm.plan(root, slurm.SlurmOptions(caffe="x"), nets=["nope"], queued={})
    with pytest.raises(tree.TreeError, match="--signal KILL"):
        slurm.plan(root, slurm.SlurmOptions(caffe="x", signal="KILL"), queued={})
    listing = json.loads((root / "nets.json").read_text())
    listing[2]["depends_on"] = "halfZ"
    (root / "nets.json").write_text(json.dumps(listing))
    with pytest.raises(tree.TreeError, match="depends on halfZ, which is not in the tree"):
        tree.read_tree(root)


def test_status_from_net_directories_alone(tmp_path):
    """Without Slurm records: finished (accuracy), failed (the fatal line, old and new glog dates), stopped."""
    root = make_tree(tmp_path / "tree", small_experiment())
    (root / "halfA" / "halfA.20261124-100000.log").write_text(
        "I1124 10:00:01.000000 1 solver.cpp:218] Iteration 20, loss = 0.1\n"
        "I1124 10:00:01.000000 1 solver.cpp:347] Iteration 20, Testing net (#0)\n"
        "I1124 10:00:02.000000 1 solver.cpp:404]     Test net output #0: accuracy = 0.625\n"
        "I1124 10:00:02.000000 1 solver.cpp:404]     Test net output #1: loss = 1.5 (* 1 = 1.5 loss)\n")
    (root / "halfA" / "halfA_iter_20.caffemodel").write_text("w")
    (root / "halfB" / "halfB.20261124-100000.log").write_text(
        "I20261124 10:00:01.000000 1 solver.cpp:218] Iteration 7, loss = 0.1\n"
        "F20261124 10:00:01.500000 1 data_layer.cpp:40] Check failed: mdb_status == 0 (2 vs. 0) "
        "No such file or directory\n*** Check failure stack trace: ***\n")
    (root / "netbase" / "netbase.20261124-100000.log").write_text(
        "I1124 10:00:01.000000 1 solver.cpp:218] Iteration 15, loss = 0.1\n"
        "I1124 10:00:01.000000 1 solver.cpp:311] Optimization stopped early.\n")
    states = {s.name: s for s in slurm.tree_status(root)}
    assert (states["halfA"].state, states["halfA"].accuracy, states["halfA"].iteration) == ("finished", 0.625, 20)
    assert states["halfB"].state == "failed" and states["halfB"].iteration == 7
    assert states["halfB"].detail.startswith("F20261124") and "Check failed: mdb_status" in states["halfB"].detail
    assert (states["netbase"].state, states["netbase"].iteration) == ("stopped", 15)
    assert states["transferAB_1_1"].state == "not started"
    table = tree.format_status(list(states.values()))
    assert "1 finished, 1 failed, 4 not started, 1 stopped (of 7 nets)" in table
    # the final snapshot comes before Caffe's final test: while its trainer (the local runner's lock) is still
    # there, a net with its final snapshot is running, not finished with a not-yet-final accuracy
    lock = root / "local" / "locks" / "halfA.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert subprocess.run([sys.executable, "-c", "import sys; from convnet_transfer.training import slurm; "
                               "print({s.name: s.state for s in slurm.tree_status(sys.argv[1])}['halfA'])",
                               str(root)], capture_output=True, text=True).stdout.strip() == "running"
    assert {s.name: s.state for s in slurm.tree_status(root)}["halfA"] == "finished"


# ---------------------------------------------------------------------------------------------- the cluster

@pytest.mark.slurm
def test_localhost_cluster_is_idempotent(slurm_cluster):
    proc = subprocess.run([str(REPO / "tools" / "slurm_localhost"), "start"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "node localhost: idle" in proc.stdout or "node localhost: mixed" in proc.stdout \
        or "node localhost: allocated" in proc.stdout
    conf = (slurm_cluster / "slurm.conf").read_text()
    assert "SlurmctldHost=localhost" in conf and "JobRequeue=1" in conf
    # listens on localhost only
    ss = subprocess.run(["ss", "-ltn"], capture_output=True, text=True) if shutil.which("ss") else None
    if ss is not None and ss.returncode == 0:
        ports = [line.split()[3] for line in ss.stdout.splitlines()[1:] if re.search(r":681[78]\b", line)]
        assert ports and all(p.startswith("127.0.0.1:") for p in ports), ports


@pytest.mark.slurm
@pytest.mark.slow
def test_experiment_on_slurm(slurm_cluster, tmp_path):
    """The scaled-down experiment: dependencies held, a job at its time limit requeued and resumed from its
    snapshot to the same final iteration, failures reported, --status right. About 2-3 minutes."""
    nets = small_experiment(seconds_per_iter=0.25)          # base nets and transfer nets: 20 iterations, ~5 s
    # a net that needs ~75 s, more than its 1-minute time limit: it must snapshot, requeue and resume
    nets.append({"name": "netlong", "kind": "whole", "block": "whenever", "max_iter": 30, "snapshot": 5,
                 "seconds_per_iter": 2.5})
    nets.append({"name": "halfC", "kind": "base", "block": "one", "fail_at": 3, "seconds_per_iter": 0.1})
    nets.append({"name": "transferCA_1_1", "kind": "transfer", "block": "two", "depends_on": "halfC"})
    root = make_tree(tmp_path / "tree", nets)

    dry = submit_cli("--slurm", "--dry-run", "--caffe", FAKE_COMMAND, str(root))
    assert dry.returncode == 0, dry.stderr
    assert "--dependency=afterok:${JOB_one}_0" in dry.stdout and "#SBATCH --requeue" in dry.stdout
    assert not (root / "slurm").exists(), "--dry-run writes nothing"

    proc = submit_cli("--slurm", "--caffe", FAKE_COMMAND, "--time", "1", "--signal-lead", "10",
                      "--partition", "debug", str(root))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    jobs = json.loads((root / "slurm" / "jobs.json").read_text())
    by_job = {j["name"]: j for j in jobs}
    assert set(by_job) == {"ct-one", "ct-whenever", "ct-after-halfA", "ct-after-halfB", "ct-after-halfC"}
    one = by_job["ct-one"]
    for base in ("halfA", "halfB", "halfC"):
        job = by_job[f"ct-after-{base}"]
        assert job["dependency"] == f"--dependency=afterok:{one['job_id']}_{one['nets'].index(base)}"

    # submitting again while the jobs are queued submits nothing twice
    again = submit_cli("--slurm", "--caffe", FAKE_COMMAND, "--time", "1", str(root))
    assert again.returncode == 0 and "already queued" in again.stdout, again.stdout + again.stderr
    assert len(json.loads((root / "slurm" / "jobs.json").read_text())) == len(jobs)

    seen_running = {}
    deadline = time.monotonic() + 230
    while time.monotonic() < deadline:
        states = status_json(root)
        for name, s in states.items():
            if s["state"] == "running" and s["iteration"] is not None:
                seen_running[name] = s
        if all(s["state"] in ("finished", "failed", "not started") for s in states.values()) and \
                states["transferCA_1_1"]["detail"]:
            break
        time.sleep(3)
    else:
        pytest.fail("the experiment did not finish in time:\n" + submit_cli("--status", str(root)).stdout
                    + subprocess.run(["squeue"], capture_output=True, text=True).stdout)

    good = [n["name"] for n in nets if n["name"] not in ("halfC", "transferCA_1_1")]
    for name in good:
        s = states[name]
        assert s["state"] == "finished", s
        spec = next(n for n in nets if n["name"] == name)
        max_iter = spec.get("max_iter", 20)
        assert s["iteration"] == max_iter and s["accuracy"] == pytest.approx(0.5 + 0.001 * max_iter)
        assert (root / name / f"{name}_iter_{max_iter}.caffemodel").exists()
        assert s["log"] and Path(s["log"]).parent == root / name          # Caffe's logs stay in the net dir
        runs = timeline(root / name)
        assert runs[-1][0] == "end" and runs[-1][2] == max_iter

    # dependencies: a transfer net starts after its base net finished, from the base net's final snapshot
    for name in good:
        spec = next(n for n in nets if n["name"] == name)
        if spec.get("depends_on"):
            base_end = [t for e, t, _, _ in timeline(root / spec["depends_on"]) if e == "end"][-1]
            first = timeline(root / name)[0]
            assert first[0] == "start" and first[1] >= base_end, (name, first, base_end)
            assert first[3] == f"weights:{root / spec['depends_on'] / (spec['depends_on'] + '_iter_20.caffemodel')}"

    # the time limit: netlong was stopped by the signal, requeued and resumed where it stopped
    runs = timeline(root / "netlong")
    starts = [r for r in runs if r[0] == "start"]
    assert len(starts) >= 2, runs
    assert starts[0][2] == 0 and starts[0][3] == "scratch"
    done = 0
    for previous, current in zip(runs, runs[1:]):
        if current[0] == "start":
            assert previous[0] == "stop" and previous[3] == "SIGINT", runs            # snapshotted on the signal
            assert current[2] == previous[2] > 0, runs                               # resumed from that snapshot
            assert current[3] == f"resume:netlong_iter_{previous[2]}.solverstate"
        else:
            done += current[2] - previous[2]
    assert done == 30, f"iterations trained {done} != 30: work was lost or repeated: {runs}"
    out = "".join(p.read_text() for p in (root / "slurm").glob("ct-whenever_*.out"))
    assert "requeueing" in out and "run 2" in out and "trained" in out
    assert len(list((root / "netlong").glob("netlong.*.log"))) == len(starts)   # a new log per run

    # failures: the failing base net says why; its transfer net never started
    assert states["halfC"]["state"] == "failed"
    assert "Check failed: loss is NaN" in states["halfC"]["detail"]
    assert states["transferCA_1_1"]["state"] == "not started"
    assert "cancelled" in states["transferCA_1_1"]["detail"]
    assert not (root / "transferCA_1_1" / "timeline.txt").exists()

    # --status while running reported an iteration
    assert seen_running, "no status poll caught a net running"
    assert all(0 <= s["iteration"] <= s["max_iter"] for s in seen_running.values())
    table = submit_cli("--status", str(root)).stdout
    assert re.search(r"netlong\s+finished\s+30/30\s+0\.5300", table), table

    # a finished net is never trained again: resubmitting submits only what is left
    final = submit_cli("--slurm", "--caffe", FAKE_COMMAND, "--nets", "half[AB],netlong", str(root))
    assert final.returncode == 0 and "nothing to submit" in final.stdout, final.stdout + final.stderr


# ---------------------------------------------------------------------------------------------- real nets

def write_lmdb(path: Path, images, labels) -> None:
    import lmdb
    from convnet_transfer.formats import caffe_pb2 as pb
    path.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), map_size=32 << 20)
    with env.begin(write=True) as txn:
        for i, (image, label) in enumerate(zip(images, labels)):
            datum = pb.Datum(channels=image.shape[0], height=image.shape[1], width=image.shape[2],
                             data=image.tobytes(), label=int(label))
            txn.put(b"%08d" % i, datum.SerializeToString())
    env.close()


def real_tree(root: Path, max_iter: int = 60, snapshot: int = 5) -> Path:
    """Two base nets and one transfer net (transfer0A0B_1_3) of caffenet_small, rendered by tools/gen_nets'
    library over tiny random 28x28 databases (5 classes), trained by our engine on the CPU."""
    import numpy as np
    from convnet_transfer.nets import netgen
    from convnet_transfer.formats import protoio
    from convnet_transfer.nets.catalog import transfer_catalog
    rng = np.random.RandomState(0)
    data = root / "data"
    for split in ("half0A", "half0B"):
        for part, n in (("train", 40), ("valid", 16)):
            labels = np.arange(n) % 5
            images = rng.randint(0, 120, size=(n, 1, 28, 28)).astype(np.uint8)
            images[np.arange(n), 0, labels * 5, :] = 250          # something to learn
            write_lmdb(data / f"{split}_{part}" / "lmdb", images, labels)
            if part == "train":
                protoio.write_mean(data / f"{split}_train" / "mean.binaryproto",
                                   images.mean(axis=0).astype(np.float32))
    catalog = transfer_catalog(splits=("0",), pairs=("AB",), fine_tuned=False, natman=False, nolearn=False,
                               reduced=(), whole=False)
    netgen.render_experiment(catalog, root / "gen", data, arch="caffenet_small",
                             only=["half0A", "half0B", "transfer0A0B_1_3"], n_classes={"half0A": 5, "half0B": 5},
                             batch_size=4, val_batch_size=8,
                             solver=dict(max_iter=max_iter, snapshot=snapshot, test_interval=max_iter, test_iter=2,
                                         display=1, stepsize=1000))
    return root / "gen"


ENGINES = {"torch": (60, 5), "caffe": (600, 100)}     # max_iter, snapshot: real Caffe is faster on the CPU


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_generated_nets_trained_on_slurm(slurm_cluster, tmp_path, engine, request):
    """Real generated nets trained by our engine or by real Caffe: the signal Slurm sends before a time limit
    (delivered here with `scancel --signal=USR1 --batch`, as slurmctld does) makes the trainer snapshot; the
    job requeues itself and train.sh resumes from that snapshot; the transfer net starts from its base net's
    final weights."""
    pytest.importorskip("torch")
    if engine == "caffe":
        request.getfixturevalue("real_caffe")
    max_iter, every = ENGINES[engine]
    root = real_tree(tmp_path, max_iter, every)
    proc = submit_cli("--slurm", "--engine", engine, "--time", "10", "--partition", "debug",
                      "--sbatch-arg=--export=ALL,OMP_NUM_THREADS=1", str(root))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    script = (root / "slurm" / "ct-one.sh").read_text()
    caffe_line = next(line for line in script.splitlines() if line.startswith("export CAFFE="))
    assert ("caffe_torch" in caffe_line) == (engine == "torch") and "#SBATCH --export=ALL,OMP_NUM_THREADS=1" in script
    task = slurm.job_records(root)["half0A"]

    # as soon as half0A has written its first snapshot, send the time-limit signal to its job script
    deadline = time.monotonic() + 120
    while not (root / "half0A" / f"snapshot_iter_{every}.solverstate").exists():
        assert time.monotonic() < deadline, "half0A did not start training:\n" + submit_cli("--status", str(root)).stdout
        time.sleep(0.05)
    signal_proc = subprocess.run(["scancel", "--signal=USR1", "--batch", task], capture_output=True, text=True)
    assert signal_proc.returncode == 0, signal_proc.stderr

    deadline = time.monotonic() + 200
    while True:
        states = status_json(root)
        if all(s["state"] in ("finished", "failed") for s in states.values()):
            break
        assert time.monotonic() < deadline, "not finished in time:\n" + submit_cli("--status", str(root)).stdout
        time.sleep(3)
    assert all(s["state"] == "finished" for s in states.values()), states

    first, *rest = sorted((root / "half0A").glob("half0A.*.log"))
    assert rest, "half0A ran once: the signal did not stop it"
    first_text = first.read_text()
    assert "Optimization stopped early." in first_text
    stopped_at = max(int(m) for m in re.findall(r"Snapshotting to binary proto file snapshot_iter_(\d+)\.caffemodel",
                                                first_text))
    assert every <= stopped_at < max_iter
    assert f"Resuming from snapshot_iter_{stopped_at}.solverstate" in rest[0].read_text()
    resumed = [int(i) for i in re.findall(r"\] Iteration (\d+)", rest[0].read_text())]
    assert resumed[0] == stopped_at and resumed[-1] == max_iter          # no iteration lost, none repeated
    out = "".join(p.read_text() for p in (root / "slurm").glob("ct-one_*.out"))
    assert "requeueing" in out and "run 2" in out

    for name, s in states.items():
        last_log = Path(s["log"]).read_text()
        accuracy = float(re.findall(r"Test net output #0: accuracy = ([0-9.]+)", last_log)[-1])
        assert s["iteration"] == max_iter and s["accuracy"] == pytest.approx(accuracy)

    # the transfer net started after its base net's final snapshot, from it
    transfer_log = sorted((root / "transfer0A0B_1_3").glob("transfer0A0B_1_3.*.log"))[0]
    base_final = root / "half0A" / f"snapshot_iter_{max_iter}.caffemodel"
    started = calendar.timegm(time.strptime(transfer_log.name.split(".")[1], "%Y%m%d-%H%M%S"))   # UTC
    assert started >= int(base_final.stat().st_mtime)
    assert f"Finetuning from basenet/snapshot_iter_{max_iter}.caffemodel" in transfer_log.read_text()
