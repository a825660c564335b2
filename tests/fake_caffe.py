"""A test fixture: a resumable trainer with `caffe train`'s command line, files and signal behaviour, fast.

    fake_caffe.py train -solver S [-snapshot X.solverstate] [-weights W.caffemodel]
    fake_caffe.py device_query -gpu N      (answers for any N, as Caffe does for a GPU it has)

Reads max_iter, snapshot and snapshot_prefix from the solver, and `fake.json` beside it
({"seconds_per_iter": 0.2, "fail_at": null}). Sleeps per iteration, writes glog-style lines to stderr,
snapshots <prefix>_iter_N.solverstate then .caffemodel every `snapshot` iterations and at the end; on
SIGINT/SIGTERM/SIGUSR1 it snapshots the current iteration and exits 75 (as caffe_torch does). Every run appends
to timeline.txt:  start <unix time> <iteration> <how> [gpu=<-gpu>] / stop|end|fail <unix time> <iteration>.
"""
import json
import os
import re
import signal
import sys
import time
from pathlib import Path


def log(level: str, where: str, message: str) -> None:
    now = time.time()
    stamp = time.strftime("%m%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"
    print(f"{level}{stamp} {os.getpid()} {where}] {message}", file=sys.stderr, flush=True)


def timeline(event: str, iteration: int, extra: str = "") -> None:
    with open("timeline.txt", "a") as f:
        f.write(f"{event} {time.time():.3f} {iteration} {extra}".rstrip() + "\n")


def write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if argv[:1] == ["device_query"]:          # the trainers' GPUs are checked before a run (check_gpus)
        log("I", "common.cpp:168", "Device id:                     " + argv[-1])
        log("I", "common.cpp:172", "Name:                          Fake GPU")
        return 0
    if not argv or argv[0] != "train":
        print("fake_caffe: only `train` and `device_query` are simulated", file=sys.stderr)
        return 1
    flags = dict(zip(argv[1::2], argv[2::2]))
    solver_text = Path(flags["-solver"]).read_text()
    field = lambda name: re.search(rf"^{name}:\s*\"?([^\"\n]+)\"?", solver_text, re.M).group(1)
    max_iter, every, prefix = int(field("max_iter")), int(field("snapshot")), field("snapshot_prefix")
    fake = json.loads(Path("fake.json").read_text()) if Path("fake.json").exists() else {}
    seconds, fail_at = float(fake.get("seconds_per_iter", 0.1)), fake.get("fail_at")

    iteration, how = 0, "scratch"
    if "-snapshot" in flags:
        state = Path(flags["-snapshot"])
        iteration = int(state.read_text().split()[1])         # "iter N"
        how = f"resume:{state.name}"
        log("I", "solver.cpp:737", f"Resuming from {state}")
    elif "-weights" in flags:
        weights = Path(flags["-weights"])
        if not weights.exists():
            log("F", "net.cpp:780", f"Check failed: weights file {weights} not found")
            return 134
        how = f"weights:{weights.resolve()}"
        log("I", "caffe.cpp:251", f"Finetuning from {weights}")
    timeline("start", iteration, how + (f" gpu={flags['-gpu']}" if "-gpu" in flags else ""))

    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda signum, frame: stop.append(signum))

    def snapshot(i: int) -> None:
        write_atomic(f"{prefix}_iter_{i}.solverstate", f"iter {i}\n")
        write_atomic(f"{prefix}_iter_{i}.caffemodel", f"weights at {i}\n")
        log("I", "sgd_solver.cpp:273", f"Snapshotting solver state to binary proto file {prefix}_iter_{i}.solverstate")

    log("I", "solver.cpp:289", "Solving FakeNet")
    while iteration < max_iter:
        if stop:
            snapshot(iteration)
            log("I", "solver.cpp:311", "Optimization stopped early.")
            timeline("stop", iteration, signal.Signals(stop[0]).name)
            return 75
        time.sleep(seconds)
        iteration += 1
        log("I", "solver.cpp:218", f"Iteration {iteration}, loss = {1.0 / iteration:.4f}")
        if fail_at is not None and iteration >= fail_at:
            log("F", "solver.cpp:229", f"Check failed: loss is NaN at iteration {iteration} (a fake failure)")
            timeline("fail", iteration)
            return 134
        if every and iteration % every == 0 and iteration < max_iter:
            snapshot(iteration)
    log("I", "solver.cpp:347", f"Iteration {max_iter}, Testing net (#0)")
    log("I", "solver.cpp:404", f"Test net output #0: accuracy = {0.5 + 0.001 * max_iter:.4f}")
    snapshot(max_iter)
    log("I", "solver.cpp:332", "Optimization Done.")
    timeline("end", iteration)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
