#!/usr/bin/env python3
"""Time convnet_transfer.results.logs against Caffe's own tools/extra/parse_log.py, side by side, on the same logs.

Caffe's parse_log.py reads only current-era logs (`Train net output` / `Test net output` lines after a
`Solving` line), so the 2014 release's logs are first rewritten line for line into that format (in a temp dir:
`Iteration N, loss = x` -> `Iteration N (...), loss = x` + `Train net output #0: loss = x`, `Test score #0/#1`
-> `Test net output #0: accuracy` / `#1: loss`). Caffe's script is copied into a temp dir at bench time (never into
the repo), with its one Python 2 line (`print '...'`) fixed, and run once per log as a script, as people use it.
Both parsers' tables are compared (NumIters and outputs must agree), then the ratio is printed. Also times our
parser on the whole 2014 results tree, as it is.

    .venv/bin/python bench/bench_parse_log.py [--reference DIR] [--caffe-src DIR] [--limit-mb 40]
"""
from __future__ import annotations

import argparse
import csv
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from convnet_transfer.results import logs  # noqa: E402

_REWRITE = [
    (re.compile(r"\] Iteration (\d+), loss = (\S+)"),
     r"] Iteration \1 (1 iter/s, 20s/20 iters), loss = \2\n{stamp}    Train net output #0: loss = \2 (* 1 = \2 loss)"),
    (re.compile(r"\] Iteration (\d+), Testing net$"), r"] Iteration \1, Testing net (#0)"),
    (re.compile(r"\] Test score #0: (\S+)"), r"]     Test net output #0: accuracy = \1"),
    (re.compile(r"\] Test score #1: (\S+)"), r"]     Test net output #1: loss = \1 (* 1 = \1 loss)"),
]
_PREFIX = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+)\]")


def to_current_format(src: Path, dst: Path) -> int:
    """Rewrite a 2014 log into current Caffe's lines; returns the bytes written (0: nothing Caffe-like)."""
    text = gzip.open(src, "rt", errors="replace").read() if src.suffix == ".gz" else src.read_text(errors="replace")
    out = []
    for line in text.splitlines():
        m = _PREFIX.match(line)
        if not m:
            continue
        if not out:
            out.append(f"{m.group(1)}] Solving CaffeNet")
        for rx, repl in _REWRITE:
            if rx.search(line):
                line = rx.sub(repl.replace("{stamp}", m.group(1).replace("\\", r"\\") + "]"), line)
                break
        out.append(line)
    if len(out) < 10:
        return 0
    dst.write_text("\n".join(out) + "\n")
    return dst.stat().st_size


def prepare_caffe_script(caffe_src: Path, tmp: Path) -> Path:
    """Caffe's parse_log.py + extract_seconds.py copied into tmp, the Python 2 print fixed."""
    extra = caffe_src / "tools" / "extra"
    for name in ("parse_log.py", "extract_seconds.py"):
        shutil.copy(extra / name, tmp / name)
    script = tmp / "parse_log.py"
    text = script.read_text()
    fixed = re.sub(r"print '(.*)' % (\w+)", r"print('\1' % \2)", text)
    assert fixed != text, "the Python 2 print line of parse_log.py was not found"
    script.write_text(fixed)
    return script


def read_caffe_csv(path: Path) -> tuple[dict[float, dict], set[float]]:
    """parse_log.py's rows by NumIters, and the iterations it has several rows for (a log holding two runs)."""
    if not path.exists():
        return {}, set()
    rows, repeated = {}, set()
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            it = float(r["NumIters"])
            if it in rows:
                repeated.add(it)
            rows[it] = r
    return rows, repeated


def compare(ours: logs.ParsedLog, train_csv: Path, test_csv: Path) -> tuple[int, int, int, int]:
    """(rows compared, rows that differ in NumIters/outputs, rows whose LearningRate differs, iterations logged
    twice: parse_log.py writes both rows, we keep the newer one; not compared)."""
    rows = differ = lr_differ = twice = 0
    for table, (caffe, repeated) in ((ours.train, read_caffe_csv(train_csv)), (ours.test, read_caffe_csv(test_csv))):
        ours_rows = {float(r[0]): r for r in table.data}
        if set(ours_rows) != set(caffe):
            differ += len(set(ours_rows) ^ set(caffe))
        twice += len(repeated)
        for it in (set(ours_rows) & set(caffe)) - repeated:
            rows += 1
            mine, theirs = ours_rows[it], caffe[it]
            for j, name in enumerate(table.columns[3:], 3):
                if name in theirs and float(theirs[name]) != mine[j]:
                    differ += 1
                    break
            if float(theirs["LearningRate"]) != mine[2]:
                lr_differ += 1
    return rows, differ, lr_differ, twice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, default=Path(os.environ.get(
        "CONVNET_TRANSFER_REFERENCE", Path(__file__).resolve().parents[2] / "shared/reference/convnet_transfer")))
    parser.add_argument("--caffe-src", type=Path, default=Path(os.environ.get("CAFFE_SRC", "/work/caffe-src")),
                        help="a Caffe source tree (for tools/extra/parse_log.py)")
    parser.add_argument("--limit-mb", type=float, default=40,
                        help="MB of rewritten logs both parsers read (Caffe's script is slow)")
    args = parser.parse_args()
    results = args.reference / "results"
    if not results.is_dir():
        sys.exit(f"no 2014 results tree at {results}: pass --reference or set CONVNET_TRANSFER_REFERENCE")
    if not (args.caffe_src / "tools" / "extra" / "parse_log.py").exists():
        sys.exit(f"no tools/extra/parse_log.py under {args.caffe_src}: pass --caffe-src (a BVLC Caffe checkout)")
    warnings.simplefilter("ignore", logs.LogWarning)

    all_logs = [f for d in logs.find_net_dirs(results) for f in logs.find_logs(d)]
    total_mb = sum(f.stat().st_size for f in all_logs) / 1e6
    t = time.perf_counter()
    rows = logs.summarize_tree(results)
    whole_tree = time.perf_counter() - t
    print(f"convnet_transfer.results.logs, whole 2014 tree: {len(all_logs)} logs ({total_mb:.0f} MB gzip), "
          f"{len(rows)} nets: {whole_tree:.1f} s with {os.cpu_count()} processes")

    with tempfile.TemporaryDirectory(prefix="bench_parse_log_") as tmp:
        tmp = Path(tmp)
        script = prepare_caffe_script(args.caffe_src, tmp)
        current = tmp / "current"
        current.mkdir()
        chosen, size = [], 0
        for i, f in enumerate(sorted(all_logs, key=lambda p: p.stat().st_size)[::-1][::7]):
            written = to_current_format(f, current / f"{i:03d}_{f.name.replace('.gz', '')}.log")
            if written:
                chosen.append(current / f"{i:03d}_{f.name.replace('.gz', '')}.log")
                size += written
            if size > args.limit_mb * 1e6:
                break
        print(f"{len(chosen)} logs rewritten into current Caffe lines, {size / 1e6:.0f} MB")
        csv_dir = tmp / "caffe_csv"
        csv_dir.mkdir()
        t = time.perf_counter()
        for path in chosen:
            subprocess.run([sys.executable, "-W", "ignore", str(script), str(path), str(csv_dir)], check=True,
                           cwd=tmp)
        caffe_s = time.perf_counter() - t
        t = time.perf_counter()
        ours_1 = logs.parse_logs(chosen, jobs=1)
        ours_1_s = time.perf_counter() - t
        t = time.perf_counter()
        logs.parse_logs(chosen)
        ours_n_s = time.perf_counter() - t
        compared = differ = lr_differ = twice = 0
        for path, parsed in zip(chosen, ours_1):
            r, d, lr, tw = compare(parsed, csv_dir / (path.name + ".train"), csv_dir / (path.name + ".test"))
            compared, differ, lr_differ, twice = compared + r, differ + d, lr_differ + lr, twice + tw
    print(f"tables compared: {compared} rows, {differ} differ in NumIters or outputs, {lr_differ} in LearningRate "
          f"(parse_log.py gives a row the rate printed before it; ours the rate printed for its iteration); "
          f"{twice} iterations logged twice in one file not compared (parse_log.py keeps both rows, we the newer)")
    print(f"Caffe tools/extra/parse_log.py (one run per log): {caffe_s:7.2f} s")
    print(f"convnet_transfer.results.logs, 1 process:                 {ours_1_s:7.2f} s   ratio {caffe_s / ours_1_s:5.1f}x")
    print(f"convnet_transfer.results.logs, {os.cpu_count()} processes:                {ours_n_s:7.2f} s   "
          f"ratio {caffe_s / ours_n_s:5.1f}x")
    if differ:
        sys.exit("the two parsers disagree")


if __name__ == "__main__":
    main()
