"""Images per second of tools/make_dbs (convnet_transfer.data.databases) against Caffe's convert_imageset, side by side.

    .venv/bin/python bench/bench_make_dbs.py [--images 400] [--workers 1 2] [--keep DIR]

Generates ImageNet-like JPEGs (500x375 and 375x500, quality 90), converts them to a 256x256 raw LMDB with
convert_imageset (when a real Caffe build is found: convnet_transfer.training.realcaffe) and with our converter at each
worker count, and prints images/second and the ratio to convert_imageset. convert_imageset is single-threaded:
decoding, resizing and writing in one process. Ours: `workers` decoding processes plus the writer (the calling
process), so "1 worker" uses up to two cores; the line also says how much CPU time each run used.
Both write the same records (tests/test_caffe_db_compat.py checks byte equality).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from convnet_transfer.data import databases  # noqa: E402
from convnet_transfer.training import realcaffe


def make_images(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        h, w = (375, 500) if i % 3 else (500, 375)
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 // w, yy * 255 // h, (xx ^ yy) & 255], -1)
        noise = rng.integers(-40, 40, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
        rgb = np.clip(base + noise, 0, 255).astype(np.uint8)
        relpath = f"n{i % 10:08d}/img_{i:05d}.JPEG"
        (folder / relpath).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(folder / relpath, quality=90)
        lines.append(f"{relpath} {i % 10}\n")
    files = folder.parent / "files.txt"
    files.write_text("".join(lines))
    return files


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn) -> tuple[float, float]:
    cpu, start = cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - start, cpu_seconds() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_make_dbs."))
    try:
        folder = work / "images"
        files = make_images(folder, args.images)
        n = args.images
        print(f"{n} JPEG images (500x375 / 375x500) -> 256x256 raw Datum LMDB; {os.cpu_count()} cores here")
        caffe = realcaffe.find_caffe()
        reference = None
        if caffe is not None and caffe.ok:
            db = work / "caffe_lmdb"
            wall, cpu = timed(lambda: caffe.run("convert_imageset", "--resize_height=256", "--resize_width=256",
                                                f"{folder}/", files, db))
            reference = n / wall
            print(f"convert_imageset (1 process)    : {reference:7.1f} images/s   cpu {cpu / wall:4.2f} cores")
        else:
            print("convert_imageset: no real Caffe found (tools/install_caffe builds one); ours only")
        for workers in args.workers:
            db = work / f"ours_{workers}"
            wall, cpu = timed(lambda: databases.convert_list(files, folder, db, resize=(256, 256), workers=workers,
                                                             progress=False))
            rate = n / wall
            ratio = f"   {rate / reference:4.2f}x convert_imageset" if reference else ""
            label = "make_dbs --workers 0 (1 process)" if workers == 0 else f"make_dbs --workers {workers} (+writer) "
            print(f"{label}: {rate:7.1f} images/s   cpu {cpu / wall:4.2f} cores{ratio}")
            if reference is not None and workers == args.workers[0]:
                same = [(bytes(k), bytes(v)) for k, v in databases.open_reader(db)] == \
                       [(bytes(k), bytes(v)) for k, v in databases.open_reader(work / "caffe_lmdb")]
                print(f"    same records as convert_imageset: {same}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
