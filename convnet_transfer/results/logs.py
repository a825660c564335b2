"""Caffe training logs -> tables: every era of Caffe's log lines, one file or a net's restarted runs stitched.

Lines read (glog lines `I0403 06:46:22.569109 23304 solver.cpp:217] <message>`; anything else is noise):

    2014 Caffe                              current Caffe (and tools/caffe_torch)
    Iteration N, lr = x                     Iteration N, lr = x
    Iteration N, loss = x                   Iteration N (x iter/s, ys/20 iters), loss = x
                                                Train net output #k: name = x (* w = y loss)
    Iteration N, Testing net                Iteration N, Testing net (#t)
    Test score #0: x   (accuracy)               Test net output #k: name = x
    Test score #1: x   (loss)

Tables have the columns of Caffe's tools/extra/parse_log.py, `NumIters, Seconds, LearningRate, <outputs>`:
train rows at each displayed iteration (`loss` is the loss on the Iteration line; a Train net output of the
same name replaces it), one test table per test net. The 2014 test scores are named `accuracy` and `loss`:
the 2014 accuracy layer's two outputs, in that order. LearningRate is the rate Caffe printed for that
iteration (or the last one before it). Seconds count from the first glog line of the (first) file.

    parse_log(path)               one file, plain or gzip                       -> ParsedLog
    parse_net_dir(dir)            a net directory: its runs stitched in order  -> NetLog
    summarize_tree(root)          every net directory under root               -> list[NetSummary]
    write_summary(rows, out_dir)  summary.csv and summary.json

Problems (unreadable lines, truncated or empty files) are reported as LogWarning naming the file and line.
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
import zlib
from itertools import compress
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = ["LogWarning", "Table", "ParsedLog", "NetLog", "NetSummary", "parse_log", "parse_logs", "parse_net_dir",
           "summarize_tree", "write_summary", "read_summary", "net_info", "find_logs", "find_net_dirs",
           "accuracy_column", "SCORE_NAMES_2014", "SummaryError"]

SCORE_NAMES_2014 = ("accuracy", "loss")   # `Test score #0`, `#1`: the 2014 accuracy layer's outputs
MAX_WARNINGS_PER_FILE = 5

# One regex pass per file: the glog prefix (severity, MMDD hh:mm:ss.micro, thread file:line]) then one of the
# messages above. Groups: 1 stamp, 2 iteration, 3 what follows it (", lr = ", "..., loss = ", ", Testing net"),
# 4 the kind of an output line, 5 the rest of the line (value, or "0: name = x", or " (#t)").
_LINE = re.compile(
    rb"\n[IWEF](\d{4} \d\d:\d\d:\d\d\.\d{6})[^\]\n]*\] "
    rb"(?:Iteration (\d+)(, lr = |(?: \([^)\n]*\))?, loss = |, Testing net)"
    rb"| *(T(?:est score #|rain net output #|est net output #)))([^\n]*)")
_GLOG = re.compile(rb"^[IWEF](\d{4} \d\d:\d\d:\d\d(?:\.\d+)?) ", re.M)
_GLOG_YEAR = re.compile(rb"^([IWEF])((?:19|20)\d\d)(?=\d{4} \d\d:\d\d:\d\d)", re.M)
_CANDIDATES = (b"] Iteration ", b"] Test score #", b" net output #")   # each line holding one must match _LINE
# caffe_torch's last line when the loss became NaN or infinite (exit 3): the iteration, not a record
_DIVERGED = re.compile(rb"\] Iteration (\d+): the loss is [^;\n]*; training diverged[^\n]*")
# .o<job id> (or the 2014 release's catlog.oMANUAL.gz), not a backup's .old, .orig
_LOG_NAME = re.compile(r"(\.log|\.o[\dA-Z]\w*|\.INFO)(\.gz)?$")
_STAMP_2014 = re.compile(r"^(\d{6})_(\d{6})_")                       # 140403_063910_half0A.o227963.gz
_STAMP_NOW = re.compile(r"\.(\d{8})-(\d{6})\.log(?:\.gz)?$")           # half0A.20261124-183000.log
_NL = b"\n"                      # (no backslash inside f-string braces before Python 3.12)
_JOB = re.compile(r"\.o(\d+)(?:\.gz)?$")


class LogWarning(UserWarning):
    """Something in a log could not be read; the message names the file and line."""


class SummaryError(ValueError):
    """A summary.json/.csv that cannot be read: the message names it and says what to do."""


# ---------------------------------------------------------------------------------------------- tables

@dataclass
class Table:
    """Rows under Caffe parse_log.py's column names, `NumIters` first, sorted by it. Missing values are NaN."""
    columns: list[str]
    data: np.ndarray   # float64, shape (rows, len(columns))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.data[:, self.columns.index(name)]

    def last(self, name: str) -> tuple[int, float]:
        """(NumIters, value) of the last row where the column has a value; (-1, NaN) when none."""
        if name not in self.columns:
            return -1, math.nan
        ok = np.flatnonzero(~np.isnan(self[name]))
        if not len(ok):
            return -1, math.nan
        return int(self.data[ok[-1], 0]), float(self[name][ok[-1]])

    def best(self, name: str) -> tuple[int, float]:
        """(NumIters, value) of the row with the highest value of the column; (-1, NaN) when none."""
        if name not in self.columns or np.isnan(self[name]).all():
            return -1, math.nan
        i = int(np.nanargmax(self[name]))
        return int(self.data[i, 0]), float(self[name][i])

    def write_csv(self, path: str | os.PathLike, delimiter: str = ",") -> None:
        """CSV like parse_log.py's `<log>.train` / `<log>.test`: header row, NumIters as an integer, empty = NaN."""
        from convnet_transfer.formats.protoio import atomic_write_bytes
        text = io.StringIO(newline="")
        writer = csv.writer(text, delimiter=delimiter)
        writer.writerow(self.columns)
        for row in self.data.tolist():
            writer.writerow([int(row[0])] + ["" if v != v else v for v in row[1:]])
        atomic_write_bytes(path, text.getvalue().encode(), durable=False)

    @classmethod
    def read_csv(cls, path: str | os.PathLike, delimiter: str = ",") -> "Table":
        with open(path, newline="") as f:
            rows = list(csv.reader(f, delimiter=delimiter))
        data = [[float(v) if v else math.nan for v in row] for row in rows[1:]]
        return cls(rows[0], np.array(data, dtype=float).reshape(len(data), len(rows[0])))

    @classmethod
    def concat(cls, parts: list[tuple["Table", float]]) -> "Table":
        """Stitch tables in order (each with a Seconds offset): where NumIters repeat the later row wins."""
        parts = [(t, off) for t, off in parts if len(t)]
        if not parts:
            return cls(["NumIters", "Seconds", "LearningRate"], np.zeros((0, 3)))
        columns = []
        for t, _ in parts:
            columns += [c for c in t.columns if c not in columns]
        blocks = []
        for t, off in parts:
            block = np.full((len(t), len(columns)), np.nan)
            block[:, [columns.index(c) for c in t.columns]] = t.data
            block[:, 1] = np.round(block[:, 1] + off, 6)
            blocks.append(block)
        data = np.concatenate(blocks)
        # keep the last occurrence of each iteration: unique over the reversed rows
        _, first_in_reversed = np.unique(data[::-1, 0], return_index=True)
        keep = len(data) - 1 - first_in_reversed
        return cls(columns, data[np.sort(keep)][np.argsort(data[np.sort(keep), 0], kind="stable")])


def accuracy_column(table: Table) -> str | None:
    """The top-1 accuracy column of a test table: `accuracy`, else the first name with "acc" but no top-5."""
    if "accuracy" in table.columns:
        return "accuracy"
    for name in table.columns[3:]:
        low = name.lower()
        if "acc" in low and not re.search(r"top.?5|_5$|@5", low):
            return name
    return None


# ---------------------------------------------------------------------------------------------- one file

@dataclass
class ParsedLog:
    """One log file. `start`/`end`: times of its first and last glog lines (the year as the lines write it
    (glog >= 0.6), else guessed from the file name's stamp, else from its modification time); Seconds in its tables count from `start`."""
    path: str
    train: Table
    tests: dict[int, Table]              # test net number -> table
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    first_iter: int | None = None
    last_iter: int | None = None
    warnings: list[str] = field(default_factory=list)
    restarts: list[tuple[int, int]] = field(default_factory=list)   # (reached, restarted at): runs in one file
    diverged: int | None = None          # the iteration where caffe_torch stopped it: the loss became NaN or inf

    @property
    def test(self) -> Table:
        """The table of test net #0 (what parse_log.py writes to `<log>.test`)."""
        return self.tests.get(0) or Table.concat([])

    @property
    def job(self) -> int | None:
        m = _JOB.search(Path(self.path).name)
        return int(m.group(1)) if m else None


def _read_bytes(path: Path, problems: list[str]) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    out, rest = [], raw
    while rest:
        d = zlib.decompressobj(31)
        try:
            out.append(d.decompress(rest))
        except zlib.error as e:
            problems.append(f"{path}: corrupt gzip data ({e}); reading the {sum(map(len, out))} bytes before it")
            break
        if not d.eof:
            problems.append(f"{path}: the gzip stream ends early (file truncated); reading what is there")
            break
        rest = d.unused_data
    return b"".join(out)


def _time_hint(path: Path) -> tuple[dt.datetime, bool]:
    """(a time, is it the file's start?): the stamp in its name (start of run), else its mtime (end of file)."""
    name = path.name
    m = _STAMP_NOW.search(name)
    if m:
        return dt.datetime.strptime(m.group(1) + m.group(2), "%Y%m%d%H%M%S"), True
    m = _STAMP_2014.match(name)
    if m:
        try:
            return dt.datetime.strptime(m.group(1) + m.group(2), "%y%m%d%H%M%S"), True
        except ValueError:
            pass
    return dt.datetime.fromtimestamp(path.stat().st_mtime), False


def _date(year: int, mmdd: bytes) -> dt.date:
    """The date of a glog `MMDD` in `year` (ValueError for no such day)."""
    month, day = int(mmdd[:2]), int(mmdd[2:])
    if (month, day) == (2, 29) and year % 4:
        year -= year % 4          # 29 February in a guessed year that has none: the leap year before it
    return dt.date(year, month, day)


def _drop_years(data: bytes) -> tuple[bytes, int | None]:
    """Newer glog writes the year (`I20261124 18:51:57.1 ...`, Caffe built against glog >= 0.6): return the
    lines in the classic `I1124 18:51:57.1` form and the year of the first line (None when no line has one)."""
    m = _GLOG_YEAR.search(data)
    if m is None:
        return data, None
    return _GLOG_YEAR.sub(rb"\1", data), int(m.group(2))


def _valid_stamp(stamp: bytes) -> bool:
    try:
        _date(2000, stamp[:4])
    except ValueError:
        return False
    return int(stamp[5:7]) < 24 and int(stamp[8:10]) < 60 and int(stamp[11:13]) < 61


def _stamp_datetime(year: int, stamp: bytes) -> dt.datetime:
    d = _date(year, stamp[:4])
    return dt.datetime(d.year, d.month, d.day) + dt.timedelta(
        hours=int(stamp[5:7]), minutes=int(stamp[8:10]), seconds=float(stamp[11:]))


def _first_year(first_stamp: bytes, hint: dt.datetime, hint_is_start: bool) -> int:
    """The year of a file's first line: the hint's year, or the next (previous) one if that puts the
    line more than a day before the run's start (after the file's last write)."""
    year = hint.year
    when = _stamp_datetime(year, first_stamp)
    if hint_is_start and when < hint - dt.timedelta(days=1):
        return year + 1
    if not hint_is_start and when > hint + dt.timedelta(days=1):
        return year - 1
    return year


def _seconds(stamps: tuple[bytes, ...], year: int, start: dt.datetime) -> np.ndarray:
    """Seconds since `start` of glog stamps `MMDD hh:mm:ss.uuuuuu` (20 bytes each), with year rollover."""
    st = np.frombuffer(b"".join(stamps), np.uint8).reshape(-1, 20).astype(np.int64) - 48
    month, day = st[:, 0] * 10 + st[:, 1], st[:, 2] * 10 + st[:, 3]
    tod = ((st[:, 5] * 10 + st[:, 6]) * 3600 + (st[:, 8] * 10 + st[:, 9]) * 60 + st[:, 11] * 10 + st[:, 12]
           + st[:, 14:20] @ np.array([100000, 10000, 1000, 100, 10, 1]) / 1e6)
    newyear = np.concatenate([[0], np.cumsum((month[1:] == 1) & (month[:-1] == 12))])
    codes, inverse = np.unique((newyear * 100 + month) * 100 + day, return_inverse=True)
    try:
        days = np.array([(_date(year + c // 10000, b"%02d%02d" % (c // 100 % 100, c % 100)) - start.date()).days
                         for c in codes.tolist()], dtype=np.int64)
    except ValueError:            # a month or day that does not exist: a corrupt line
        raise _Unreadable from None
    if (tod >= 86400 + 1).any():
        raise _Unreadable
    start_tod = start.hour * 3600 + start.minute * 60 + start.second + start.microsecond / 1e6
    return days[inverse.ravel()] * 86400.0 + tod - start_tod


class _Unreadable(Exception):
    pass


_TESTING_REST = re.compile(rb"(?: \(#(\d+)\))?\s*$")
_OUTPUT = re.compile(rb"^(\d+): (?:([^\n]+?) = )?(\S+)", re.M)   # "0: 0.5" (2014) or "0: name = 0.5 (* 1 ...)"


def _output(rest: bytes) -> None:
    """Check `0: x` (2014 Test score) or `0: name = x (* w = y loss)` as the fast path reads it."""
    m = _OUTPUT.match(rest)
    if m is None:
        raise ValueError(f"not an output: {rest[:60]!r}")
    float(m.group(3))


def _last_per_iter(its, secs, values):
    """The newest row of each iteration: latest time, then last in the file (a concatenated log, like the 2014
    netbase's catlog, can hold an older run after a newer one)."""
    its, secs, values = np.asarray(its, np.int64), np.asarray(secs, float), np.asarray(values, float)
    order = np.lexsort((np.arange(len(its)), secs, its))
    its, secs, values = its[order], secs[order], values[order]
    last = np.flatnonzero(np.append(its[1:] != its[:-1], True)) if len(its) else np.zeros(0, np.int64)
    return its[last], secs[last], values[last]


def _table(series: dict[str, tuple[list, list, list]], lr_its: np.ndarray, lr_values: np.ndarray) -> Table:
    """{column: (iterations, seconds, values)} -> Table; Seconds of a row from its first column."""
    names = list(series)
    parts = {name: _last_per_iter(*series[name]) for name in names}
    its = np.unique(np.concatenate([parts[n][0] for n in names])) if names else np.zeros(0, np.int64)
    data = np.full((len(its), 3 + len(names)), np.nan)
    data[:, 0] = its
    for j, name in enumerate(names):
        p_its, p_secs, p_values = parts[name]
        idx = np.searchsorted(its, p_its)
        data[idx, 3 + j] = p_values
        data[idx, 1] = np.where(np.isnan(data[idx, 1]), p_secs, data[idx, 1])
    data[:, 1] = np.round(data[:, 1], 6)                        # glog stamps have microseconds
    if len(its) and len(lr_its):
        order = np.argsort(lr_its, kind="stable")
        lr_its, lr_values = lr_its[order], lr_values[order]
        at = np.searchsorted(lr_its, its, side="right") - 1
        data[:, 2] = lr_values[np.maximum(at, 0)]     # before the first printed rate: that first rate
    return Table(["NumIters", "Seconds", "LearningRate", *names], data)


def _parse_records(data: bytes, year: int, start: dt.datetime, check_count: bool):
    """One findall over the file, then numpy: -> (train Table, {test net: Table}, iterations, seconds).
    Raises _Unreadable where a line that should be a record does not read."""
    recs = _LINE.findall(data)
    if check_count and len(recs) != sum(data.count(k) for k in _CANDIDATES):
        raise _Unreadable
    if not recs:
        return Table.concat([]), {}, np.zeros(0, np.int64), np.zeros(0), []
    stamps, its, kind1, kind2, rest = zip(*recs)
    k1 = np.array(kind1)
    is_lr, is_testing = k1 == b", lr = ", k1 == b", Testing net"
    is_loss = (k1 != b"") & ~is_lr & ~is_testing
    has_it = k1 != b""
    secs = _seconds(stamps, year, start)
    it = np.full(len(recs), -1, np.int64)
    try:
        it[has_it] = np.array(its)[has_it].astype(np.int64)
        value = np.full(len(recs), np.nan)
        number = is_lr | is_loss
        value[number] = np.fromiter(map(float, compress(rest, number)), float)
        test_net = np.zeros(len(recs), np.int64)
        for i in np.flatnonzero(is_testing).tolist():
            m = _TESTING_REST.match(rest[i])
            if m is None:
                raise ValueError
            test_net[i] = int(m.group(1) or 0)
    except ValueError:
        raise _Unreadable from None
    lr_its, lr_values = it[is_lr], value[is_lr]
    loss_at, testing_at = np.flatnonzero(is_loss), np.flatnonzero(is_testing)
    train = {"loss": (it[loss_at].tolist(), secs[loss_at].tolist(), value[loss_at].tolist())}
    tests: dict[int, dict] = {}
    outputs, orphans = np.flatnonzero(~has_it), []
    if len(outputs):
        k2 = np.array(kind2)[outputs]
        is_train = k2 == b"Train net output #"
        owner = np.where(is_train, np.searchsorted(loss_at, outputs) - 1, np.searchsorted(testing_at, outputs) - 1)
        orphan = owner < 0                 # outputs before any Iteration / Testing line: dropped
        orphans = [bytes(k) for k in k2[orphan].tolist()]
        outputs, is_train, owner, k2 = outputs[~orphan], is_train[~orphan], owner[~orphan], k2[~orphan]
        owner_row = np.where(is_train, loss_at[np.minimum(owner, len(loss_at) - 1)] if len(loss_at) else 0,
                             testing_at[np.minimum(owner, len(testing_at) - 1)] if len(testing_at) else 0)
        parts = _OUTPUT.findall(b"\n".join([rest[i] for i in outputs.tolist()]))
        if len(parts) != len(outputs):
            raise _Unreadable
        if len(parts):
            numbers, names, values = zip(*parts)
            try:
                values = np.array(values).astype(float)
            except ValueError:
                raise _Unreadable from None
            names = np.array(names, dtype=object)
            for j in np.flatnonzero(k2 == b"Test score #").tolist():   # 2014: named by position
                k = int(numbers[j])
                names[j] = (SCORE_NAMES_2014[k] if k < len(SCORE_NAMES_2014) else f"score{k}").encode()
            table_of = np.where(is_train, -1, test_net[owner_row])
            for key in np.unique(table_of).tolist():
                table = train if key == -1 else tests.setdefault(key, {})
                in_table = table_of == key
                for name in dict.fromkeys(names[in_table].tolist()):
                    sel = in_table & (names == name)
                    col = table.setdefault(name.decode("utf-8", "replace"), ([], [], []))
                    col[0].extend(it[owner_row[sel]].tolist())
                    col[1].extend(secs[outputs[sel]].tolist())
                    col[2].extend(values[sel].tolist())
    train_table = _table(train, lr_its, lr_values) if len(loss_at) else _table({}, lr_its, lr_values)
    tests = {k: _table(v, lr_its, lr_values) for k, v in sorted(tests.items())}
    return train_table, tests, it[has_it], secs, orphans


def _check_line(line: bytes) -> str | None:
    """Why a line holding a record's keyword does not read (None when it reads)."""
    m = _LINE.match(b"\n" + line)
    if m is None:
        return "unreadable log line"
    stamp, _, kind1, kind2, rest = m.groups()
    if not _valid_stamp(stamp):
        return "no such date or time"
    try:
        if kind1 == b", Testing net":
            if _TESTING_REST.match(rest) is None:
                return "unreadable 'Testing net' line"
        elif kind1:
            float(rest)
        else:
            _output(rest)
    except (ValueError, IndexError):
        return "not a number where one should be"
    return None


def _drop_bad_lines(data: bytes, source: str, problems: list[str]) -> bytes:
    """`data` without the lines that should be records and do not read, each one reported as file:line."""
    lines = data[1:].split(b"\n")
    bad = 0
    for lineno, line in enumerate(lines, 1):
        if any(k in line for k in _CANDIDATES):
            why = _check_line(line)
            if why:
                bad += 1
                if bad <= MAX_WARNINGS_PER_FILE:
                    problems.append(f"{source}:{lineno}: {why}, skipped: {line[:120].decode('utf-8', 'replace')!r}")
                lines[lineno - 1] = b""
    if bad > MAX_WARNINGS_PER_FILE:
        problems.append(f"{source}: {bad - MAX_WARNINGS_PER_FILE} more unreadable lines skipped")
    return b"\n" + b"\n".join(lines)


def _parse_file(path: str) -> ParsedLog:
    p = Path(path)
    problems: list[str] = []
    log = ParsedLog(str(p), Table.concat([]), {}, warnings=problems)
    try:
        data = _read_bytes(p, problems)
    except OSError as e:
        problems.append(f"{p}: cannot read ({e.strerror or e})")
        return log
    if not data.strip():
        problems.append(f"{p}: empty log (no lines)")
        return log
    if not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        problems.append(f"{p}:{data.count(_NL) + 1}: the last line is incomplete (the file ends mid-line: "
                        f"truncated?), ignored: {data[cut:cut + 80].decode('utf-8', 'replace')!r}")
        data = data[:cut]
    data, stated_year = _drop_years(data)
    diverged = _DIVERGED.search(data)
    if diverged:
        log.diverged = int(diverged.group(1))
        data = _DIVERGED.sub(b"]", data)
    first = next((m.group(1) for m in _GLOG.finditer(data) if _valid_stamp(m.group(1))), None)
    if first is None:
        problems.append(f"{p}: no Caffe (glog) lines in this file")
        return log
    hint, hint_is_start = _time_hint(p)
    year = stated_year if stated_year is not None else _first_year(first, hint, hint_is_start)
    start = _stamp_datetime(year, first)
    data = b"\n" + data
    try:
        train, tests, its, secs, orphans = _parse_records(data, year, start, check_count=True)
    except _Unreadable:   # a line did not read: find and report it (line by line, slower), read the rest
        data = _drop_bad_lines(data, str(p), problems)
        try:
            train, tests, its, secs, orphans = _parse_records(data, year, start, check_count=False)
        except _Unreadable:  # pragma: no cover - _drop_bad_lines removes what _parse_records cannot read
            problems.append(f"{p}: could not be read")
            return log
    for kind in dict.fromkeys(orphans):
        lineno = data.count(b"\n", 0, data.find(kind))
        owner = "'Iteration N, loss'" if kind.startswith(b"Train") else "'Testing net'"
        problems.append(f"{p}:{lineno}: {orphans.count(kind)} '{kind.decode()}' line(s) before any {owner} "
                        f"line (the log starts mid-test?), skipped")
    log.train, log.tests = train, tests
    if len(its):
        log.first_iter, log.last_iter = int(its.min()), int(its.max())
        back = np.flatnonzero(np.diff(its) < 0)          # a second run in the same file (e.g. a catlog)
        log.restarts = [(int(its[: i + 1].max()), int(its[i + 1])) for i in back.tolist()]
        shift = min(0.0, float(secs.min()))        # a concatenated log (catlog) may not start with its earliest
        log.start = start + dt.timedelta(seconds=shift)
        log.end = start + dt.timedelta(seconds=float(secs.max()))
        if shift:
            for t in (log.train, *log.tests.values()):
                t.data[:, 1] -= shift
    else:
        log.start = log.end = start
        problems.append(f"{p}: no training or test lines (the run stopped before its first iteration?)")
    return log


def _warn(messages: Iterable[str]) -> None:
    for message in messages:
        warnings.warn(message, LogWarning, stacklevel=3)


def parse_log(path: str | os.PathLike) -> ParsedLog:
    """One Caffe log file (plain or .gz, any era). Problems become LogWarnings naming file:line."""
    log = _parse_file(str(path))
    _warn(log.warnings)
    return log


def parse_logs(paths: Iterable[str | os.PathLike], jobs: int | None = None, progress: bool = False) -> list[ParsedLog]:
    """Many log files, in a process pool (`jobs` processes; default: the CPUs), results in the given order."""
    paths = [str(p) for p in paths]
    jobs = min(jobs or os.cpu_count() or 1, len(paths))
    if jobs <= 1 or len(paths) < 4:
        logs = [_parse_file(p) for p in paths]
    else:
        # biggest first so that the pool ends together
        order = sorted(range(len(paths)), key=lambda i: -os.path.getsize(paths[i]))
        with ProcessPoolExecutor(jobs) as pool:
            results = pool.map(_parse_file, [paths[i] for i in order], chunksize=1)
            if progress:
                from tqdm import tqdm
                results = tqdm(results, total=len(paths), desc="parsing logs", unit="log")
            by_index = dict(zip(order, results))
        logs = [by_index[i] for i in range(len(paths))]
    for log in logs:
        _warn(log.warnings)
    return logs


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
    _warn(net.warnings)
    return net


# ---------------------------------------------------------------------------------------------- a results tree

_NAME = re.compile(r"^(?:half(?P<half>\w+?)(?P<hx>[AB])|transfer(?P<ft>-ft)?(?P<s>\w+?)(?P<x>[AB])(?P=s)(?P<y>[AB])_1_(?P<n>\d+)"
                   r"|nolearn_1_(?P<nl>\d+)|reduced-(?P<red>\d+)|(?P<whole>netbase))$")


@functools.lru_cache(maxsize=1)
def _paper_catalog():
    try:
        from convnet_transfer.nets.catalog import paper_catalog
    except ImportError:  # pragma: no cover - the catalog ships with the package
        return None
    return paper_catalog()


def net_info(name: str, nets_json: dict | None = None) -> dict:
    """kind, split, n, fine_tuned, base of a net: from nets.json (tools/gen_nets) when given, else from the
    catalog of the paper's nets, else from the 2014 naming scheme (README of the 2014 release)."""
    if nets_json and name in nets_json:
        e = nets_json[name]
        return {"kind": e.get("kind"), "split": e.get("split"), "n": e.get("n"),
                "fine_tuned": bool(e.get("fine_tuned")), "base": e.get("depends_on")}
    catalog = _paper_catalog()
    if catalog is not None and name in catalog:
        spec = catalog[name]
        return {"kind": spec.kind, "split": spec.split, "n": spec.n, "fine_tuned": spec.fine_tuned, "base": spec.base}
    m = _NAME.match(name)
    if m is None:
        return {"kind": None, "split": None, "n": None, "fine_tuned": False, "base": None}
    g = m.groupdict()
    if g["hx"]:
        return {"kind": "base", "split": f"half{g['half']}{g['hx']}", "n": None, "fine_tuned": False, "base": None}
    if g["n"]:
        return {"kind": "selffer" if g["x"] == g["y"] else "transfer", "split": f"half{g['s']}{g['y']}",
                "n": int(g["n"]), "fine_tuned": bool(g["ft"]), "base": f"half{g['s']}{g['x']}"}
    if g["nl"]:
        return {"kind": "nolearn", "split": "whole", "n": int(g["nl"]), "fine_tuned": False, "base": None}
    if g["red"]:
        return {"kind": "reduced", "split": f"reduced{g['red']}", "n": int(g["red"]), "fine_tuned": False,
                "base": None}
    return {"kind": "whole", "split": "whole", "n": None, "fine_tuned": False, "base": None}


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
    for path in (root / "nets.json", root.parent / "nets.json"):
        if path.is_file():
            try:
                return {e["name"]: e for e in json.loads(path.read_text())}
            except (ValueError, KeyError, TypeError) as e:
                warnings.warn(f"{path}: not a nets.json list ({e}); net kinds from their names", LogWarning)
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
        _warn(net.warnings)
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
