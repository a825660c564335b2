#!/usr/bin/env python3
"""How fast the Data layer feeds a net: Caffe's DataLayer against ours, images per second, side by side.

    python bench/bench_data.py                      # 512 raw 3x256x256 Datums, batch 256, crop 227, mirror, mean
    python bench/bench_data.py --records 1024 --iterations 20 --rounds 3
    python bench/bench_data.py --gpu                # also our Data layer feeding CUDA device 0, when there is one
    python bench/bench_data.py --encoded --workers 2   # JPEG Datums (convert_imageset --encoded), 2 decoding workers

The database is an LMDB of raw Datums as tools/make_dbs (and convert_imageset) writes them, with its mean file;
the net is that Data layer alone (TRAIN: random crop 227, mirror, mean file), as in the paper's train nets. Each
round runs `caffe time -model M -iterations K` (real Caffe, tools/install_caffe) and then `tools/caffe_torch time`
with the same arguments, one after the other. Both print "Average Forward pass": the time the net waits for a
transformed batch once the prefetch queues have filled, so batch / that time is the rate the Data layer sustains.
Caffe transforms in its prefetch thread; ours reads in a thread and transforms on the training device. A third
column gives the rate of our reading thread's reading alone (records into a raw uint8 batch, no transform: its whole
work under CUDA but for the copy), measured in this process.
The GPU goal of the engine (issue 5) is 10,000 images/s on CaffeNet, so the feeding rate must stay above that.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_engine import rates, real_caffe, run_ours, time_command  # noqa: E402  (bench/, the script's own folder)

DATA_NET = """name: "DataOnly"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mirror: true crop_size: 227 mean_file: "mean.binaryproto" }
  data_param { source: "train_lmdb" batch_size: %(batch)d backend: LMDB } }
"""

FORWARD = re.compile(r"Average Forward pass: ([\d.eE+-]+) ms")


def make_database(folder: Path, records: int, encoded: bool = False) -> None:
    """`records` 3x256x256 Datums (16 distinct images, repeated) and their mean file: raw, or JPEG-encoded as
    `convert_imageset --encoded` stores them (photo-like gradients with noise: about 40 KB each)."""
    from convnet_transfer.formats import caffe_pb2 as pb
    from convnet_transfer.data import databases
    from convnet_transfer.formats import protoio
    from convnet_transfer.data.images import encode_image
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:256, 0:256]
    images = [(np.stack([xx, yy, (xx + yy + 16 * k) % 256]) ^ rng.randint(0, 48, (3, 256, 256))).astype(np.uint8)
              for k in range(16)]
    keys = [databases.make_key(i, f"n{i:08d}.JPEG") for i in range(records)]
    if not encoded:
        databases.write_arrays(folder / "train_lmdb", ((key, images[i % 16], i % 500) for i, key in enumerate(keys)),
                               mean_path=folder / "mean.binaryproto", total=records, progress=False)
        return
    import lmdb
    jpegs = [encode_image(image.transpose(1, 2, 0), "jpg") for image in images]
    env = lmdb.open(str(folder / "train_lmdb"), map_size=1 << 32)
    with env.begin(write=True) as txn:
        for i, key in enumerate(keys):
            txn.put(key, pb.Datum(data=jpegs[i % 16], label=i % 500, encoded=True).SerializeToString())
    env.close()
    protoio.write_mean(folder / "mean.binaryproto", databases.compute_mean(folder / "train_lmdb"))


def forward_seconds(run, model: Path, iterations: int, cwd: Path, extra: tuple[str, ...] = ()) -> float:
    """Seconds per forward pass (the Data layer's work) that `time` prints; run(args, cwd) runs an engine."""
    return time_command(lambda argv: run(argv, cwd), model, iterations, extra, average=FORWARD)


def reader_rate(folder: Path, batch: int, batches: int) -> float:
    """Raw batches per second our reading thread assembles alone: records into a uint8 batch, no transform (what
    the thread does under CUDA before the copy; on the CPU it also transforms). Timed here, the thread stopped."""
    from convnet_transfer.formats import caffe_pb2 as pb
    from convnet_transfer.formats import protoio
    from convnet_transfer.training.engine.data import DataLayerSource
    layer = protoio.parse_text(DATA_NET % {"batch": batch}, pb.NetParameter()).layer[0]
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        source = DataLayerSource(layer, "TRAIN", "cpu", workers=int(os.environ.get("CAFFE_TORCH_WORKERS", "0")))
        source._stop_thread()
        source._read_batch()   # warm: the buffer's pages, the database's
        start = time.perf_counter()
        for _ in range(batches):
            source._read_batch()
        seconds = time.perf_counter() - start
        source.close()
    finally:
        os.chdir(cwd)
    return batch * batches / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=512, help="Datums in the database (default 512)")
    parser.add_argument("--batch", type=int, default=256, help="batch size (default 256, the paper's)")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations per `time` run (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per engine (default 2)")
    parser.add_argument("--gpu", action="store_true", help="also our Data layer feeding CUDA device 0")
    parser.add_argument("--encoded", action="store_true", help="JPEG-encoded Datums instead of raw ones")
    parser.add_argument("--workers", type=int, default=None,
                        help="our decoding worker processes for encoded Datums (default: the engine's)")
    args = parser.parse_args()
    if args.workers is not None:
        os.environ["CAFFE_TORCH_WORKERS"] = str(args.workers)
    kind = "JPEG-encoded" if args.encoded else "raw"

    caffe = real_caffe()
    engines = {"ours": run_ours}
    if caffe:
        engines["caffe"] = lambda argv, cwd: caffe.run("caffe", *argv, cwd=str(cwd), check=False)
    print(f"Data layer alone: LMDB of {args.records} {kind} 3x256x256 Datums, batch {args.batch}, TRAIN (crop 227, "
          f"mirror, mean file); `time`, {args.iterations} iterations, {args.rounds} alternating rounds, one engine "
          f"at a time; {os.cpu_count()} CPUs; our decoding workers: "
          f"{os.environ.get('CAFFE_TORCH_WORKERS', 'the default') if args.encoded else 'none (raw)'}")
    print(f"real Caffe: {caffe.describe() if caffe else 'not found (tools/install_caffe)'}")
    print("img/s from the mean time per round (in brackets: from the fastest round)")
    print(f"{'device':<10}{'Caffe img/s':>20}{'ours img/s':>20}{'ours/Caffe':>12}{'our reader alone':>18}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_database(folder, args.records, args.encoded)
        model = folder / "data.prototxt"
        model.write_text(DATA_NET % {"batch": args.batch})
        seconds = {name: [] for name in engines}
        for _ in range(args.rounds):
            for name, run in engines.items():
                seconds[name].append(forward_seconds(run, model, args.iterations, folder))
        mine = rates(seconds["ours"], args.batch)
        theirs = rates(seconds["caffe"], args.batch) if caffe else None
        reader = reader_rate(folder, args.batch, args.iterations)
        print(f"{'cpu':<10}{f'{theirs[0]:.0f} ({theirs[1]:.0f})' if theirs else '-':>20}"
              f"{f'{mine[0]:.0f} ({mine[1]:.0f})':>20}{f'{mine[0] / theirs[0]:.2f}x' if theirs else '-':>12}"
              f"{reader:>18.0f}", flush=True)
        if args.gpu:
            import torch
            if not torch.cuda.is_available():
                print("(no CUDA device here: GPU feeding skipped)")
                return 0
            gpu = rates([forward_seconds(run_ours, model, max(args.iterations, 20), folder, ("-gpu", "0"))
                         for _ in range(args.rounds)], args.batch)
            rate = f"{gpu[0]:.0f} ({gpu[1]:.0f})"
            print(f"{'cuda':<10}{'-':>20}{rate:>20}{'-':>12}{'-':>18}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
