"""One Caffe training log, of any era, -> tables (ParsedLog): the glog lines of 2014 Caffe, current Caffe
and tools/caffe_torch, plain or gzip, read in one regex pass and numpy.

Lines read (glog lines `I0403 06:46:22.569109 23304 solver.cpp:217] <message>`; anything else is noise):

    2014 Caffe                              current Caffe (and tools/caffe_torch)
    Iteration N, lr = x                     Iteration N, lr = x
    Iteration N, loss = x                   Iteration N (x iter/s, ys/20 iters), loss = x
                                                Train net output #k: name = x (* w = y loss)
    Iteration N, Testing net                Iteration N, Testing net (#t)
    Test score #0: x   (accuracy)               Test net output #k: name = x
    Test score #1: x   (loss)

Tables (convnet_transfer.results.tables.Table): train rows at each displayed iteration (`loss` is the loss on
the Iteration line; a Train net output of the same name replaces it), one test table per test net. The 2014
test scores are named `accuracy` and `loss`: the 2014 accuracy layer's two outputs, in that order. LearningRate
is the rate Caffe printed for that iteration (or the last one before it). Seconds count from the first glog
line of the file.

    parse_log(path)      one file                                     -> ParsedLog
    parse_logs(paths)    many files in a process pool                 -> list[ParsedLog]

Problems (unreadable lines, truncated or empty files) are reported as LogWarning naming the file and line.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import compress
from pathlib import Path
from typing import Iterable

import numpy as np

from .tables import Table

__all__ = ["LogWarning", "ParsedLog", "parse_log", "parse_logs", "warn_problems", "SCORE_NAMES_2014",
           "MAX_WARNINGS_PER_FILE"]

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
_STAMP_2014 = re.compile(r"^(\d{6})_(\d{6})_")                       # 140403_063910_half0A.o227963.gz
_STAMP_NOW = re.compile(r"\.(\d{8})-(\d{6})\.log(?:\.gz)?$")           # half0A.20261124-183000.log
_NL = b"\n"                      # (no backslash inside f-string braces before Python 3.12)
_JOB = re.compile(r"\.o(\d+)(?:\.gz)?$")


class LogWarning(UserWarning):
    """Something in a log could not be read; the message names the file and line."""


@dataclass
class ParsedLog:
    """One log file. `start`/`end`: times of its first and last glog lines (the year as the lines write it
    (glog >= 0.6), else guessed from the file name's stamp, else from its modification time); Seconds in its
    tables count from `start`."""
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
    """One findall over the file, then numpy: -> (train Table, {test net: Table}, iterations, seconds, kinds of
    the output lines dropped). Raises _Unreadable where a line that should be a record does not read."""
    recs = _LINE.findall(data)
    if check_count and len(recs) != sum(data.count(k) for k in _CANDIDATES):
        raise _Unreadable
    if not recs:
        return Table.concat([]), {}, np.zeros(0, np.int64), np.zeros(0), []
    r = _records(recs, year, start)
    loss_at, testing_at = np.flatnonzero(r.is_loss), np.flatnonzero(r.is_testing)
    train = {"loss": (r.it[loss_at].tolist(), r.secs[loss_at].tolist(), r.value[loss_at].tolist())}
    tests: dict[int, dict] = {}
    orphans = _add_outputs(r, loss_at, testing_at, train, tests)
    lr_its, lr_values = r.it[r.is_lr], r.value[r.is_lr]
    train_table = _table(train if len(loss_at) else {}, lr_its, lr_values)
    tests = {k: _table(v, lr_its, lr_values) for k, v in sorted(tests.items())}
    return train_table, tests, r.it[r.has_it], r.secs, orphans


@dataclass
class _Records:
    """The record lines of a file (_LINE's matches) as arrays, one entry per line."""
    it: np.ndarray              # the iteration of an Iteration line; -1 on an output line
    secs: np.ndarray            # seconds since the file's start
    value: np.ndarray           # the rate or loss of an `lr =` / `loss =` line; NaN on the others
    test_net: np.ndarray        # t of a `Testing net (#t)` line
    is_lr: np.ndarray
    is_loss: np.ndarray
    is_testing: np.ndarray
    has_it: np.ndarray          # an Iteration line (else an output line)
    kind2: tuple                # an output line's kind: b"Test score #", b"Train net output #", ...
    rest: tuple                 # what follows the kind on the line


def _records(recs: list[tuple], year: int, start: dt.datetime) -> _Records:
    """_LINE's matches -> _Records; _Unreadable where a number or a stamp does not read."""
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
    return _Records(it, secs, value, test_net, is_lr, is_loss, is_testing, has_it, kind2, rest)


def _add_outputs(r: _Records, loss_at: np.ndarray, testing_at: np.ndarray, train: dict, tests: dict) -> list[bytes]:
    """Each output line into a column of its table, as (iterations, seconds, values): a Train net output under
    the Iteration line before it (`train`), a test output under the Testing net line before it (`tests[t]`).
    Returns the kinds of the output lines before any such line (dropped)."""
    outputs = np.flatnonzero(~r.has_it)
    if not len(outputs):
        return []
    k2 = np.array(r.kind2)[outputs]
    is_train = k2 == b"Train net output #"
    owner = np.where(is_train, np.searchsorted(loss_at, outputs) - 1, np.searchsorted(testing_at, outputs) - 1)
    orphan = owner < 0                 # outputs before any Iteration / Testing line: dropped
    orphans = [bytes(k) for k in k2[orphan].tolist()]
    outputs, is_train, owner, k2 = outputs[~orphan], is_train[~orphan], owner[~orphan], k2[~orphan]
    owner_row = np.where(is_train, loss_at[np.minimum(owner, len(loss_at) - 1)] if len(loss_at) else 0,
                         testing_at[np.minimum(owner, len(testing_at) - 1)] if len(testing_at) else 0)
    names, values = _output_values(r.rest, outputs, k2)
    if not len(values):
        return orphans
    table_of = np.where(is_train, -1, r.test_net[owner_row])
    for key in np.unique(table_of).tolist():
        table = train if key == -1 else tests.setdefault(key, {})
        in_table = table_of == key
        for name in dict.fromkeys(names[in_table].tolist()):
            sel = in_table & (names == name)
            col = table.setdefault(name.decode("utf-8", "replace"), ([], [], []))
            col[0].extend(r.it[owner_row[sel]].tolist())
            col[1].extend(r.secs[outputs[sel]].tolist())
            col[2].extend(values[sel].tolist())
    return orphans


def _output_values(rest: tuple, outputs: np.ndarray, k2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(names, values) of the output lines at `outputs`: `k: name = x`, or for a 2014 `Test score #k: x` the
    k-th of SCORE_NAMES_2014. _Unreadable when one does not read."""
    parts = _OUTPUT.findall(b"\n".join([rest[i] for i in outputs.tolist()]))
    if len(parts) != len(outputs):
        raise _Unreadable
    if not parts:
        return np.zeros(0, dtype=object), np.zeros(0)
    numbers, names, values = zip(*parts)
    try:
        values = np.array(values).astype(float)
    except ValueError:
        raise _Unreadable from None
    names = np.array(names, dtype=object)
    for j in np.flatnonzero(k2 == b"Test score #").tolist():   # 2014: named by position
        k = int(numbers[j])
        names[j] = (SCORE_NAMES_2014[k] if k < len(SCORE_NAMES_2014) else f"score{k}").encode()
    return names, values


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


def warn_problems(messages: Iterable[str]) -> None:
    """Each message as a LogWarning, attributed to the caller of the public function that calls this."""
    for message in messages:
        warnings.warn(message, LogWarning, stacklevel=3)


def parse_log(path: str | os.PathLike) -> ParsedLog:
    """One Caffe log file (plain or .gz, any era). Problems become LogWarnings naming file:line."""
    log = _parse_file(str(path))
    warn_problems(log.warnings)
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
        warn_problems(log.warnings)
    return logs

