"""Issue 18, process ownership: a killed command takes its children with it, and a rerun never races them.

Real processes and real signals: tools/submit --local on the fake resumable trainer (tests/fake_tree.py),
tools/run_experiment --quick on the real engine, tools/make_dbs with decoding workers, each killed with
SIGKILL, SIGTERM, SIGHUP (and SIGINT) in the middle of its work. After each kill no process of the test's
directory may be left (scanned in /proc: a process whose working directory or command line is in tmp_path),
the exit status is 128 + the signal, and the same command again finishes with the same results.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_tree import FAKE_COMMAND, make_tree, small_experiment, timeline  # noqa: E402
from test_databases import make_images, records, write_list  # noqa: E402

from convnet_transfer.data import databases, datasets  # noqa: E402
from convnet_transfer.results import logs
from convnet_transfer.training.local_runner import wait_for  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SUBMIT = [sys.executable, str(REPO / "tools" / "submit")]
RUN_EXPERIMENT = [sys.executable, str(REPO / "tools" / "run_experiment")]
MAKE_DBS = [sys.executable, str(REPO / "tools" / "make_dbs")]

pytestmark = pytest.mark.skipif(subprocess.run(["which", "make", "flock"], capture_output=True).returncode != 0,
                                reason="GNU make and flock (util-linux) are needed for the local runner")


def survivors(folder: Path) -> dict[int, str]:
    """pid -> command line of every process (but this one) working in `folder` or naming it on its command line."""
    folder, found = str(folder.resolve()), {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(Path(entry.path, "cwd"))
        except OSError:
            continue   # gone, or a zombie (cwd unreadable): nothing that runs
        if cwd == folder or cwd.startswith(folder + "/") or folder in cmdline:
            found[int(entry.name)] = cmdline
    return found


def assert_none_left(folder: Path, timeout: float) -> None:
    """Every process of `folder` ends within `timeout` seconds (the trainers snapshot first); none is left."""
    if not wait_for(lambda: not survivors(folder), timeout=timeout, interval=0.2):
        left = survivors(folder)
        for pid in left:                      # leave no stray behind a failed test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise AssertionError(f"still running {timeout:.0f} s after the kill: {left}")


def expected_status(sig: signal.Signals) -> int:
    return -signal.SIGKILL if sig == signal.SIGKILL else 128 + sig


# ---------------------------------------------------------------- tools/submit --local: make and the trainers

@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_killed_local_run_stops_its_trainers_and_resumes(tmp_path, sig):
    nets = small_experiment(seconds_per_iter=0.15)
    for spec in nets:
        spec["max_iter"] = 40
    root = make_tree(tmp_path / "tree", nets)
    cmd = SUBMIT + ["--local", "-j", "2", "--caffe", FAKE_COMMAND, str(root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)

    def training() -> bool:   # some net is training and has written its first snapshot
        return any(timeline(root / n["name"])[-1:] and timeline(root / n["name"])[-1][0] == "start"
                   and list((root / n["name"]).glob("*_iter_5.solverstate")) for n in nets)

    assert wait_for(training, timeout=60), "no net reached its first snapshot"
    proc.send_signal(sig)                      # `kill -<sig> PID` of the runner alone
    out, _ = proc.communicate(timeout=60)
    assert_none_left(tmp_path, timeout=60)
    assert proc.returncode == expected_status(sig), out
    assert "Traceback" not in out, out
    if sig != signal.SIGKILL:
        assert f"interrupted by {sig.name}" in out, out

    # the trainers got Ctrl-C's stop (SIGINT): a snapshot at the stop; nothing started after the kill
    stopped = {n["name"]: timeline(root / n["name"]) for n in nets}
    stopped = {name: rows for name, rows in stopped.items() if rows and rows[-1][0] == "stop"}
    assert stopped, f"no net was stopped by the {sig.name}: {[timeline(root / n['name']) for n in nets]}"
    for name, rows in stopped.items():
        assert rows[-1][3] == "SIGINT", rows
        assert (root / name / f"{name}_iter_{rows[-1][2]}.solverstate").exists()
    for spec in nets:
        if spec.get("depends_on") in stopped:
            assert not timeline(root / spec["name"]), spec

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    for spec in nets:                          # every net trained to the end, no iteration lost or repeated
        rows = timeline(root / spec["name"])
        assert rows[-1][0] == "end" and rows[-1][2] == 40, rows
        assert sum(end[2] - start[2] for start, end in zip(rows[::2], rows[1::2])) == 40, rows


@pytest.mark.slow
def test_nohup_run_goes_on_when_its_terminal_closes(tmp_path):
    """SIGHUP ignored when the runner starts (`nohup tools/submit --local ... &`): the hang-up stops nothing."""
    root = make_tree(tmp_path / "tree", small_experiment(seconds_per_iter=0.05))
    proc = subprocess.Popen(SUBMIT + ["--local", "-j", "2", "--caffe", FAKE_COMMAND, str(root)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    assert wait_for(lambda: timeline(root / "halfA"), timeout=60), "no net started"
    proc.send_signal(signal.SIGHUP)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert all(timeline(root / n)[-1][0] == "end" for n in ("halfA", "halfB", "netbase")), out


STUBBORN = """#!/usr/bin/env bash
# a trainer that ignores every stop signal
trap '' INT TERM HUP
echo $$ >> started
exec sleep 600
"""


@pytest.mark.slow
def test_trainer_that_ignores_the_stop_is_killed_and_a_rerun_says_so(tmp_path):
    """SIGKILL of the runner: the trainer that ignores SIGINT is SIGKILLed after the grace period; a rerun in
    that time says which nets are still in training, by which processes, and starts nothing."""
    root = make_tree(tmp_path / "tree", [{"name": "halfA"}, {"name": "halfB"}])
    trainer = tmp_path / "stubborn.sh"
    trainer.write_text(STUBBORN)
    trainer.chmod(0o755)
    grace = 20
    runner = subprocess.Popen([sys.executable, "-c", "import sys; from convnet_transfer.training.local_runner import "
                               "run_local; run_local(sys.argv[1], jobs=2, caffe=sys.argv[2], progress=False, "
                               f"stop_grace={grace})", str(root), str(trainer)], cwd=REPO, start_new_session=True)
    started = [root / name / "started" for name in ("halfA", "halfB")]
    assert wait_for(lambda: all(p.exists() and p.read_text() for p in started), timeout=60), "no trainer started"
    pids = [int(p.read_text()) for p in started]
    runner.kill()
    runner.wait()
    killed_at = time.monotonic()

    rerun = subprocess.run(SUBMIT + ["--local", "-j", "2", "--caffe", str(trainer), str(root)], capture_output=True,
                           text=True, timeout=60)
    assert time.monotonic() - killed_at < grace, "the rerun came too late to find the trainers alive"
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr
    line = rerun.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    assert "still being trained by another run" in line and "halfA" in line and "halfB" in line, line
    assert all(str(pid) in line for pid in pids), (pids, line)
    assert all(p.read_text().split() == [str(pid)] for p, pid in zip(started, pids)), "the rerun started a trainer"

    assert_none_left(tmp_path, timeout=grace + 30)      # SIGINT ignored: SIGKILL after the grace period


# ---------------------------------------------------------------- tools/run_experiment on the real engine

def _experiment_env() -> dict:
    env = dict(os.environ, CONVNET_TRANSFER_NO_VENV="1")
    env.pop("CAFFE", None)
    return env


def _accuracies(out: Path) -> dict[str, float]:
    return {r.net: r.final_accuracy for r in logs.summarize_tree(out / "nets")}


@pytest.mark.slow
@pytest.mark.skipif(not (datasets.FASHION_MNIST_ROOT / "train-labels-idx1-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_run_experiment_killed_at_every_stage_ends_with_the_same_results(tmp_path):
    """SIGTERM while the databases are made, SIGHUP and SIGKILL during training: each leaves no process behind
    and exits 128 + the signal; the same command then ends with the accuracies of an uninterrupted run.
    One net at a time, killed half way through it: a stop in a net's last iteration or final test would leave it
    with its final snapshot and no final test (real Caffe and our engine alike), a different accuracy."""
    cmd = RUN_EXPERIMENT + ["--quick", "--no-progress", "--jobs", "1", "--out"]
    straight = subprocess.run(cmd + [str(tmp_path / "straight")], capture_output=True, text=True, timeout=900,
                              env=_experiment_env())
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "killed"
    nets = out / "nets"

    def run_until(sig: signal.Signals, ready) -> str:
        log = tmp_path / f"{sig.name}.log"
        with open(log, "w") as stderr:
            proc = subprocess.Popen(cmd + [str(out)], stdout=subprocess.DEVNULL, stderr=stderr, env=_experiment_env(),
                                    start_new_session=True)
            assert wait_for(lambda: proc.poll() is not None or ready(log.read_text()), timeout=600, interval=0.05)
            assert proc.poll() is None, f"the run ended before the {sig.name}: {log.read_text()[-3000:]}"
            proc.send_signal(sig)
            proc.wait(timeout=120)
        assert_none_left(out, timeout=120)
        text = log.read_text()
        assert proc.returncode == expected_status(sig), text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        return text

    def trained(count: int):        # `count` nets trained, and the one in training half way (its first snapshot)
        return lambda _: (len(list(nets.glob("*/snapshot_iter_30.caffemodel"))) >= count
                          and any(not (d / "snapshot_iter_30.caffemodel").exists()
                                  for d in {p.parent for p in nets.glob("*/snapshot_iter_15.solverstate")}))

    text = run_until(signal.SIGTERM, lambda text: "[2/5]" in text)          # while the databases are made
    assert text.rstrip().endswith("stopped by SIGTERM; run the same command again to resume"), text[-3000:]
    text = run_until(signal.SIGHUP, trained(2))
    assert "Interrupted by SIGHUP" in text, text[-3000:]
    run_until(signal.SIGKILL, trained(6))
    stopped = [p for p in nets.glob("*/*.log") if "Optimization stopped by SIGINT" in p.read_text()]
    assert stopped, "no trainer was stopped at a snapshot after the SIGKILL"

    final = subprocess.run(cmd + [str(out)], capture_output=True, text=True, timeout=900, env=_experiment_env())
    assert final.returncode == 0, final.stderr[-3000:]
    assert _accuracies(out) == _accuracies(tmp_path / "straight")


# ---------------------------------------------------------------- tools/make_dbs and its decoding workers

@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=lambda s: s.name)
def test_killed_make_dbs_leaves_no_worker_and_resumes(tmp_path, sig):
    folder = tmp_path / "images"
    items = make_images(folder, 30, seed=3)
    files = write_list(tmp_path / "files.txt", items)
    db = tmp_path / "killed"
    args = MAKE_DBS + ["--list", str(files), "--root", str(folder), "--out", str(db), "--size", "24x24",
                       "--commit-every", "3", "--workers", "2", "--no-progress"]
    env = dict(os.environ, **{databases.SLOW_ENV: "0.3"})
    # SIGINT's default action restored: a test run in the background of a script has it ignored
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    state = db.with_name("killed.partial") / databases.PROGRESS

    def committed() -> int:
        try:
            with np.load(state) as data:
                return json.loads(str(data["meta"]))["count"]
        except (OSError, ValueError, KeyError):
            return 0

    assert wait_for(lambda: proc.poll() is not None or committed() >= 6, timeout=60, interval=0.05)
    assert proc.poll() is None, "the slowed-down conversion finished before it could be killed"
    proc.send_signal(sig)                      # the command alone, not its workers
    out, err = proc.communicate(timeout=60)
    assert_none_left(tmp_path, timeout=30)
    assert proc.returncode == expected_status(sig), err
    assert "Traceback" not in err, err
    if sig != signal.SIGKILL:
        assert err.strip().splitlines()[-1] == (f"stopped by {sig.name}; run the same command again: the "
                                                f"conversion resumes where it stopped"), err
    assert not db.exists() and committed() >= 6, "the records committed before the kill were lost"

    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    databases.convert_list(files, folder, tmp_path / "straight", resize=(24, 24), workers=0, progress=False)
    assert databases.is_complete(db) and records(db) == records(tmp_path / "straight")
