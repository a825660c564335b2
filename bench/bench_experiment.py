#!/usr/bin/env python3
"""The whole experiment's cost: wall time of a full run and the training throughput of every net, from its logs;
then, side by side in this run, the local runner with 1 job x all cores against N jobs x 1 core.

    .venv/bin/python bench/bench_experiment.py                       # read generated/fashion-mnist
    .venv/bin/python bench/bench_experiment.py --run                 # run tools/run_experiment first, timed
    .venv/bin/python bench/bench_experiment.py --side-iters 0        # skip the side-by-side part

Per net: iterations/s and images/s while training (from the engine's `Iteration N (x iter/s, ...)` lines, i.e.
without start-up and tests), and over the whole run of train.sh (start-up, data, tests and snapshots included).
Side by side: the two base nets of split 0 trained for --side-iters iterations with jobs=1 (one trainer using
every core) and jobs=N (N trainers, one core each), each on a fresh copy; the ratio is the speed-up of training
several nets at once.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from convnet_transfer.data import datasets  # noqa: E402
from convnet_transfer import experiment
from convnet_transfer.results import logs

REPO = Path(__file__).resolve().parents[1]
RATE = re.compile(r"Iteration \d+ \(([\d.]+) iter/s")


def net_rates(net_dir: Path) -> list[float]:
    rates = []
    for log in sorted(net_dir.glob("*.log")):
        rates += [float(m.group(1)) for m in RATE.finditer(log.read_text(errors="replace"))]
    return [r for r in rates if r > 0]


def kind_of(row) -> str:
    if row.kind == "base":
        return "base"
    how = "fine-tuned" if row.fine_tuned else "frozen"
    return f"{row.kind} {how}"


def report_tree(out: Path, batch: int) -> None:
    rows = logs.summarize_tree(out / "nets")
    nets = logs.find_net_dirs(out / "nets")
    starts, ends = [], []
    for d in nets:
        for parsed in logs.parse_net_dir(d).logs:
            if parsed.start and parsed.end:
                starts.append(parsed.start)
                ends.append(parsed.end)
    span = (max(ends) - min(starts)).total_seconds() if starts else float("nan")
    print(f"{out}: {len(rows)} nets, training span (first log line to last) {span:.0f} s")
    by_kind: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        rates = net_rates(out / "nets" / row.net)
        pure = statistics.median(rates) if rates else float("nan")
        whole = (row.final_iter or 0) / (row.train_hours * 3600) if row.train_hours else float("nan")
        by_kind.setdefault(kind_of(row), []).append((pure, whole))
    print(f"{'nets':22s} {'count':>5s} {'iter/s':>8s} {'img/s':>8s} {'iter/s incl. start-up+tests':>28s} "
          f"{'ratio':>6s}")
    for kind, values in sorted(by_kind.items()):
        pure = statistics.mean(v[0] for v in values)
        whole = statistics.mean(v[1] for v in values)
        print(f"{kind:22s} {len(values):5d} {pure:8.2f} {pure * batch:8.0f} {whole:28.2f} {whole / pure:6.2f}")


def side_by_side(iters: int, jobs: int) -> None:
    settings = experiment.Settings(seeds=(0,), pairs=(), fine_tuned=False, max_iter=iters, stepsize=iters,
                                   test_iter=10, test_interval=iters, snapshot=iters, display=max(1, iters // 5))
    data = datasets.FashionMNIST()
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n_jobs in (1, jobs):
            out = Path(tmp) / f"jobs{n_jobs}"
            experiment.make_lists(data, out / "data", settings, progress=False)
            nets = experiment.net_catalog(settings)
            experiment.make_databases(data, out / "data", experiment.database_splits(nets), settings,
                                      progress=False)
            experiment.make_nets(out / "nets", out / "data", settings,
                                 experiment.classes_per_split(out / "data", nets))
            start = time.monotonic()
            result = experiment.train_nets(out / "nets", jobs=n_jobs, progress=False, quiet=True)
            times[n_jobs] = time.monotonic() - start
            assert result.ok, result.describe()
            rates = [statistics.median(net_rates(out / "nets" / n)) for n in nets.names]
            threads = max(1, (os.cpu_count() or 1) // n_jobs)
            print(f"jobs={n_jobs} ({threads} thread(s) each): {len(nets)} nets x {iters} iterations in "
                  f"{times[n_jobs]:.1f} s; per net {statistics.mean(rates):.2f} iter/s while training; "
                  f"all together {len(nets) * iters / times[n_jobs]:.2f} iter/s incl. start-up")
    print(f"speed-up of jobs={jobs} over jobs=1 (wall time ratio): {times[1] / times[jobs]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "generated" / "fashion-mnist")
    parser.add_argument("--run", action="store_true", help="run tools/run_experiment --out OUT first, timed")
    parser.add_argument("--side-iters", type=int, default=100, help="iterations of the side-by-side nets (0: skip)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; load average at start {os.getloadavg()[0]:.2f} (other work running "
          f"on the machine slows every number here)")
    if args.run:
        start = time.monotonic()
        subprocess.run([sys.executable, str(REPO / "tools" / "run_experiment"), "--no-progress", "--out",
                        str(args.out)], check=True)
        print(f"full run: {time.monotonic() - start:.0f} s wall")
    if (args.out / "nets" / "nets.json").is_file():
        report_tree(args.out, experiment.PRESETS["default"].batch_size)
    else:
        print(f"{args.out}: no experiment there (run tools/run_experiment, or pass --run)")
    if args.side_iters > 0:
        side_by_side(args.side_iters, args.jobs)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
