#!/usr/bin/env python3
"""Training CaffeNet from an LMDB end to end (Data layer, forward, backward, SGD update): Caffe and our engine,
images per second while training, side by side.

    python bench/bench_train.py                        # CPU: batch 32, 12 iterations, Caffe then ours
    python bench/bench_train.py --gpu-only --batch 256 --iterations 120   # CUDA device 0: real Caffe and ours

bench_engine.py times forward+backward on data already in memory (`time`, Input layers); this one runs
`caffe train` and `caffe_torch train` on the paper's train net shape (Data layer with crop 227, mirror and a mean
file; momentum, weight decay), so the data pipeline and the solver are in the number: where it falls short of
bench_engine's, the feeding or the update is the limit. The rate is measured between the first and the last
"Iteration N (... iter/s ...)" line of each log (glog timestamps), so start-up and the first iterations (cuDNN
autotuning, page faults) are left out. No snapshots, no tests. With --gpu-only both train on CUDA device 0: real
Caffe when the build found answers `caffe device_query` (tools/install_caffe --cuda, or its bundle named by
$CAFFE_ROOT), and ours.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_data import DATA_NET, make_database  # noqa: E402  (bench/, the script's own folder)
from bench_engine import CAFFENET, GPU, gpu_caffe, real_caffe, run_ours  # noqa: E402

SOLVER = """net: "train.prototxt"
base_lr: 0.001
lr_policy: "fixed"
momentum: 0.9
weight_decay: 0.0005
display: %(display)d
max_iter: %(iterations)d
snapshot: 0
snapshot_after_train: false
solver_mode: %(mode)s
random_seed: 1
"""

DISPLAY = re.compile(r"^I(?:\d{4})?\d{4} (\d\d:\d\d:\d\d\.\d+) .*\] Iteration (\d+) \(", re.M)   # glog with or without the year


def train_net(batch: int) -> str:
    """The Data layer of bench_data followed by CaffeNet's layers (bench_engine's, without its Input layer)."""
    layers = CAFFENET.split("\n", 3)[3]   # drop the name line and the two lines of the Input layer
    return (DATA_NET % {"batch": batch}).replace('name: "DataOnly"', 'name: "CaffeNet"') + layers


def images_per_second(log: str, batch: int) -> float:
    points = [(datetime.strptime(t, "%H:%M:%S.%f"), int(i)) for t, i in DISPLAY.findall(log)]
    if len(points) < 3:
        raise RuntimeError(f"too few 'Iteration N (...)' lines to time ({len(points)}):\n{log[-2000:]}")
    (t0, i0), (t1, i1) = points[1], points[-1]   # from the second display line: start-up left out
    return (i1 - i0) * batch / (t1 - t0).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32; the paper's is 256)")
    parser.add_argument("--iterations", type=int, default=12, help="iterations per run (default 12)")
    parser.add_argument("--records", type=int, default=512, help="Datums in the database (default 512)")
    parser.add_argument("--encoded", action="store_true", help="JPEG-encoded Datums instead of raw ones")
    parser.add_argument("--gpu-only", action="store_true",
                        help="on CUDA device 0 only: ours, and real Caffe when its build runs there")
    args = parser.parse_args()
    display = max(1, args.iterations // 6)
    if args.gpu_only:
        import torch
        if not torch.cuda.is_available():
            print("(no CUDA device here: GPU training skipped)")
            return 0

    caffe = real_caffe()
    device, mode, extra = ("cuda", "GPU", list(GPU)) if args.gpu_only else ("cpu", "CPU", [])
    if args.gpu_only:
        caffe = gpu_caffe(caffe)
    runs = {}
    if caffe:
        runs[f"Caffe, {device}"] = lambda argv, cwd: caffe.run("caffe", *argv, *extra, cwd=str(cwd), check=False)
    runs[f"ours, {device}"] = lambda argv, cwd: run_ours(argv + extra, cwd)
    kind = "JPEG-encoded" if args.encoded else "raw"
    print(f"Training CaffeNet from an LMDB of {args.records} {kind} 3x256x256 Datums: batch {args.batch}, "
          f"{args.iterations} iterations, timed from the second display line (every {display}); "
          f"{os.cpu_count()} CPUs")
    print(f"real Caffe: {caffe.describe() if caffe else 'not found or not usable here (tools/install_caffe)'}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_database(folder, args.records, args.encoded)
        (folder / "train.prototxt").write_text(train_net(args.batch))
        rates = {}
        for name, run in runs.items():
            (folder / "solver.prototxt").write_text(SOLVER % {"display": display, "iterations": args.iterations,
                                                              "mode": mode})
            proc = run(["train", "-solver", "solver.prototxt"], folder)
            if proc.returncode != 0:
                raise RuntimeError(f"{name}: train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            rates[name] = images_per_second(proc.stderr, args.batch)
            print(f"{name:<12}{rates[name]:>10.1f} img/s while training", flush=True)
        if f"Caffe, {device}" in rates:
            print(f"ours/Caffe on the {mode}: {rates[f'ours, {device}'] / rates[f'Caffe, {device}']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
