"""Caffe training logs -> a results summary: a net directory's runs stitched (NetLog), every net of a results tree
summarized (NetSummary), summary.csv/.json written and read back. The public surface of the results stage's
reading: one file's parsing (logfile) and the tables (tables) are re-exported here.

    parse_log(path)               one file, plain or gzip, any era (logfile)   -> ParsedLog
    parse_net_dir(dir)            a net directory: its runs stitched in order  -> NetLog
    summarize_tree(root)          every net directory under root               -> list[NetSummary]
    write_summary(rows, out_dir)  summary.csv and summary.json; read_summary(path) reads either back
    net_info(name, nets_json)     kind, split, n, fine_tuned, base of a net

Tables have the columns of Caffe's tools/extra/parse_log.py, `NumIters, Seconds, LearningRate, <outputs>`
(tables.Table); a net's Seconds count from the first glog line of its first run. Problems (unreadable lines,
truncated or empty files, gaps between runs) are reported as LogWarning naming the file and line.
"""
from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from convnet_transfer.nets.catalog import paper_catalog, parse_net_name
from convnet_transfer.nets.tree import NETS_JSON, TreeError, read_nets_json

from .logfile import SCORE_NAMES_2014, LogWarning, ParsedLog, parse_log, parse_logs, warn_problems
from .tables import Table, accuracy_column

__all__ = ["LogWarning", "Table", "ParsedLog", "NetLog", "NetSummary", "parse_log", "parse_logs", "parse_net_dir",
           "summarize_tree", "summarize_net", "write_summary", "read_summary", "net_info", "find_logs",
           "find_net_dirs", "accuracy_column", "SCORE_NAMES_2014", "SummaryError", "NO_NETS"]

# .o<job id> (or the 2014 release's catlog.oMANUAL.gz), not a backup's .old, .orig
_LOG_NAME = re.compile(r"(\.log|\.o[\dA-Z]\w*|\.INFO)(\.gz)?$")


class SummaryError(ValueError):
    """A summary.json/.csv that cannot be read: the message names it and says what to do."""


# ---------------------------------------------------------------------------------------------- a net directory

def find_logs(net_dir: str | os.PathLike) -> list[Path]:
    """The log files of a net directory: `*.log[.gz]` (ours), `*.o<job>[.gz]` (2014 cluster jobs), `*.INFO`."""
    net_dir = Path(net_dir)
    return sorted(p for p in net_dir.iterdir() if p.is_file() and _LOG_NAME.search(p.name))


@dataclass
class NetLog:
    """A net's logs stitched: runs in time order, where iterations repeat the later run's rows kept.
    `gaps`/`overlaps` say where a run did not start where the one before it stopped."""
    name: str
    dir: str
    logs: list[ParsedLog]                 # in stitch order (empty files included, at the end)
    train: Table
    tests: dict[int, Table]
    start: dt.datetime | None = None
    gaps: list[str] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def test(self) -> Table:
        return self.tests.get(0) or Table.concat([])

    @property
    def last_iter(self) -> int | None:
        its = [log.last_iter for log in self.logs if log.last_iter is not None]
        return max(its) if its else None


def _display_step(logs: list[ParsedLog]) -> int:
    diffs = [np.diff(log.train.data[:, 0]) for log in logs if len(log.train) > 1]
    diffs = np.concatenate(diffs) if diffs else np.zeros(0)
    diffs = diffs[diffs > 0]
    return int(np.median(diffs)) if len(diffs) else 0


def _stitch(name: str, net_dir: str, logs: list[ParsedLog]) -> NetLog:
    def order(log: ParsedLog):
        return (log.start is None, log.start or dt.datetime.min, log.job or 0, Path(log.path).name)

    logs = sorted(logs, key=order)
    used = [log for log in logs if log.first_iter is not None]
    net = NetLog(name, str(net_dir), logs, Table.concat([]), {})
    if not used:
        return net
    net.start = used[0].start
    offsets = [(log.start - net.start).total_seconds() for log in used]
    net.train = Table.concat([(log.train, off) for log, off in zip(used, offsets)])
    for k in sorted({k for log in used for k in log.tests}):
        net.tests[k] = Table.concat([(log.tests[k], off) for log, off in zip(used, offsets) if k in log.tests])
    step = _display_step(used)
    reached = None
    for log in used:
        where = Path(log.path).name
        for top, again in log.restarts:
            net.overlaps.append(f"{where} holds several runs: one restarts at iteration {again} after "
                                f"{top} was reached; the newer values kept")
        if reached is not None and log.first_iter > reached + step:
            net.gaps.append(f"iterations {reached}..{log.first_iter} missing: {where} starts at "
                            f"{log.first_iter}, the runs before it stop at {reached}")
        elif reached is not None and log.first_iter <= reached - step:
            net.overlaps.append(f"{where} restarts at iteration {log.first_iter} (an older snapshot); the runs "
                                f"before it reached {reached}: iterations {log.first_iter}..{reached} taken from it")
        reached = log.last_iter if reached is None else max(reached, log.last_iter)
    net.warnings = [f"{net_dir}: {g}" for g in net.gaps]
    return net


def parse_net_dir(net_dir: str | os.PathLike, jobs: int | None = None) -> NetLog:
    """A net directory's logs stitched in time order (first timestamp inside; job id / file name break ties)."""
    net_dir = Path(net_dir)
    net = _stitch(net_dir.name, str(net_dir), parse_logs(find_logs(net_dir), jobs=jobs))
    warn_problems(net.warnings)
    return net


# ---------------------------------------------------------------------------------------------- a results tree

@functools.lru_cache(maxsize=1)
def _paper_catalog():
    return paper_catalog()


def net_info(name: str, nets_json: dict | None = None) -> dict:
    """kind, split, n, fine_tuned, base of a net: from nets.json (tools/gen_nets) when given, else from the
    catalog of the paper's nets, else from its name (catalog.parse_net_name: the 2014 release's naming)."""
    if nets_json and name in nets_json:
        e = nets_json[name]
        return {"kind": e.get("kind"), "split": e.get("split"), "n": e.get("n"),
                "fine_tuned": bool(e.get("fine_tuned")), "base": e.get("depends_on")}
    catalog = _paper_catalog()
    if name in catalog:
        spec = catalog[name]
        return {"kind": spec.kind, "split": spec.split, "n": spec.n, "fine_tuned": spec.fine_tuned, "base": spec.base}
    return parse_net_name(name)


@dataclass
class NetSummary:
    """One row of the results summary. Accuracies are top-1 on test net #0; NaN where the log has none."""
    net: str
    kind: str | None
    split: str | None
    n: int | None
    fine_tuned: bool
    base: str | None
    status: str                  # complete | incomplete | diverged (its last run) | no logs | empty
    n_logs: int
    final_iter: int | None       # the last iteration any log reached
    max_iter: int | None         # from the solver, when there is one
    final_test_iter: int | None
    final_accuracy: float
    best_accuracy: float
    best_iter: int | None
    final_test_loss: float
    train_hours: float           # time spent in runs (sum over the log files)
    elapsed_hours: float         # first line of the first run to last line of the last
    gaps: int
    overlaps: int
    warnings: int


def _max_iter(net_dir: Path) -> int | None:
    from convnet_transfer.formats import protoio
    for path in sorted(net_dir.glob("*solver*.prototxt")):
        try:
            return int(protoio.read_solver(path).max_iter) or None
        except Exception as e:  # noqa: BLE001 - any unreadable solver only loses the "complete" status
            warnings.warn(f"{path}: cannot read max_iter ({e})", LogWarning, stacklevel=2)
    return None


def summarize_net(net: NetLog, info: dict | None = None) -> NetSummary:
    """The summary row of a stitched net; `info`: its net_info (default: from its name)."""
    info = info or net_info(net.name)
    net_dir = Path(net.dir)
    max_iter = _max_iter(net_dir) if net_dir.is_dir() else None
    test = net.test
    acc = accuracy_column(test)
    test_iter, final_acc = test.last(acc) if acc else (-1, math.nan)
    best_iter, best_acc = test.best(acc) if acc else (-1, math.nan)
    _, final_loss = test.last("loss")
    used = [log for log in net.logs if log.start is not None and log.first_iter is not None]
    train_hours = sum((log.end - log.start).total_seconds() for log in used) / 3600 if used else math.nan
    elapsed = (max(log.end for log in used) - min(log.start for log in used)).total_seconds() / 3600 \
        if used else math.nan
    final_iter = net.last_iter
    if not net.logs:
        status = "no logs"
    elif final_iter is None:
        status = "empty"
    elif next((log.diverged for log in reversed(net.logs) if log.start is not None), None) is not None:
        status = "diverged"
    elif max_iter is not None and final_iter < max_iter:
        status = "incomplete"
    else:
        status = "complete"
    return NetSummary(
        net=net.name, kind=info["kind"], split=info["split"], n=info["n"], fine_tuned=info["fine_tuned"],
        base=info["base"], status=status, n_logs=len(net.logs), final_iter=final_iter, max_iter=max_iter,
        final_test_iter=test_iter if test_iter >= 0 else None, final_accuracy=final_acc, best_accuracy=best_acc,
        best_iter=best_iter if best_iter >= 0 else None, final_test_loss=final_loss,
        train_hours=round(train_hours, 4), elapsed_hours=round(elapsed, 4), gaps=len(net.gaps),
        overlaps=len(net.overlaps), warnings=sum(len(log.warnings) for log in net.logs) + len(net.warnings))


NO_NETS = "holds no Caffe log (*.log, *.log.gz, *.o<job>, *.INFO) and no net directory (one with logs or a solver)"


def find_net_dirs(root: str | os.PathLike) -> list[Path]:
    """Net directories under a results tree: `root/<net>/` holding logs or a solver (or root itself)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such results directory")
    if find_logs(root):
        return [root]
    return sorted(d for d in root.iterdir() if d.is_dir() and (find_logs(d) or any(d.glob("*solver*.prototxt"))))

def _read_nets_json(root: Path) -> dict | None:
    """{name: entry} of the nets.json in `root` or its parent (tools/gen_nets), None when there is none or it
    cannot be read (a LogWarning says why: net kinds then come from their names)."""
    for path in (root / NETS_JSON, root.parent / NETS_JSON):
        if path.is_file():
            try:
                return {e["name"]: e for e in read_nets_json(path)}
            except TreeError as e:
                warnings.warn(f"{e}; net kinds from their names", LogWarning)
    return None


def summarize_tree(root: str | os.PathLike, jobs: int | None = None, progress: bool = False,
                   keep_tables: bool = False) -> list[NetSummary] | tuple[list[NetSummary], dict[str, NetLog]]:
    """One NetSummary per net directory under `root`, all log files parsed in one process pool.
    With keep_tables, also {net: NetLog} (the stitched tables)."""
    root = Path(root)
    dirs = find_net_dirs(root)
    nets_json = _read_nets_json(root)
    files = {d: find_logs(d) for d in dirs}
    parsed = iter(parse_logs([f for d in dirs for f in files[d]], jobs=jobs, progress=progress))
    rows, nets = [], {}
    for d in dirs:
        net = _stitch(d.name, str(d), [next(parsed) for _ in files[d]])
        warn_problems(net.warnings)
        rows.append(summarize_net(net, net_info(d.name, nets_json)))
        if keep_tables:
            nets[d.name] = net
    return (rows, nets) if keep_tables else rows


def _jsonable(value):
    return None if isinstance(value, float) and value != value else value


def write_summary(rows: list[NetSummary], out_dir: str | os.PathLike, stem: str = "summary") -> tuple[Path, Path]:
    """`<out_dir>/summary.csv` and `summary.json` (NaN -> empty / null)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in fields(NetSummary)]
    from convnet_transfer.formats.protoio import atomic_write_bytes
    csv_path, json_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.json"
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(names)
    for row in rows:
        writer.writerow(["" if v is None or (isinstance(v, float) and v != v) else v
                         for v in asdict(row).values()])
    atomic_write_bytes(csv_path, text.getvalue().encode())
    records = [{k: _jsonable(v) for k, v in asdict(r).items()} for r in rows]
    atomic_write_bytes(json_path, (json.dumps(records, indent=1) + "\n").encode())
    return csv_path, json_path


def read_summary(path: str | os.PathLike) -> list[NetSummary]:
    """A summary.json (or .csv) written by write_summary; SummaryError, naming it, when it is not one."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            records = json.loads(path.read_text())
        else:
            with open(path, newline="") as f:
                records = list(csv.DictReader(f))
        if not isinstance(records, list) or not all(isinstance(rec, dict) for rec in records):
            raise ValueError("expected a list of nets, an object each")
        return [_summary_row(rec) for rec in records]
    except (ValueError, TypeError, csv.Error) as err:
        raise SummaryError(f"{path}: not a summary that tools/parse_log wrote ({err}); "
                           f"delete it and write it again from the logs (tools/parse_log RESULTS --out "
                           f"{path.parent}), or pass the results tree itself") from None


def _summary_row(rec: dict) -> NetSummary:
    values = {}
    for name, kind in ((f.name, f.type) for f in fields(NetSummary)):
        v = rec.get(name)
        if v in (None, ""):
            v = math.nan if kind == "float" else False if kind == "bool" else None
        elif kind == "float":
            v = float(v)
        elif "int" in kind:
            v = int(v)
        elif kind == "bool":
            v = v if isinstance(v, bool) else v == "True"
        values[name] = v
    return NetSummary(**values)
