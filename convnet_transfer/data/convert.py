"""Stage 2's conversion: image lists (or in-memory images) -> a Datum database and its mean, as Caffe's
`convert_imageset` and `compute_image_mean`, in parallel and resumable.

    convert_list(files_txt, image_root, db_path, ...) -> DbInfo    one list -> one database (+ its mean)
    write_arrays(db_path, records, ...) -> DbInfo                   in-memory images (embedded datasets)
    compute_mean(path) -> float32 C x H x W

Worker processes decode and resize (convnet_transfer.data.images); this process writes the records in list order
and commits every COMMIT_EVERY records, keeping the state of the last commit (PROGRESS) beside them. A database
under construction lives in `<db>.partial/` (with JOB: what is being built); it is renamed to `<db>` and gets its
completion marker (stores.MARKER: count and md5 of the key list) only once verified.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from convnet_transfer.formats import protoio
from convnet_transfer import processes
from .errors import BadImageError, DatabaseError
from .images import ImageError, decode_image, encode_image, read_image, resize_linear
from .lists import file_md5, read_list
from .records import datum_bytes, decode_datum, encoded_datum_bytes, keys_md5, make_key, ordered
from .stores import BACKENDS, is_complete, open_reader, open_writer, read_marker, write_marker

__all__ = ["DbInfo", "convert_list", "write_arrays", "compute_mean", "info_from_marker", "COMMIT_EVERY",
           "SLOW_ENV", "JOB", "PROGRESS", "FORMAT"]

JOB = "convnet_transfer.job.json"              # inside a database under construction: what is being built
PROGRESS = "convnet_transfer.progress.npz"     # inside a database under construction: state at the last commit
FORMAT = "convnet_transfer.datum-db/1"
COMMIT_EVERY = 1000                             # records per transaction, as convert_imageset
COMMIT_BYTES = 64 << 20                         # ... or fewer when they are large
CHUNK = 32                                      # images per task sent to a worker
SLOW_ENV = "CONVNET_TRANSFER_TEST_SLOW_COMMIT"  # tests only: seconds to sleep after each commit


@dataclasses.dataclass
class DbInfo:
    """A finished database (or view): where, its kind, its records, and what was skipped."""
    path: Path
    backend: str
    count: int
    keys_md5: str
    shape: tuple[int, int, int] | None = None     # (C, H, W) when every record has the same size
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)   # (relative path, why)
    mean_path: Path | None = None


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise DatabaseError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")


def _bar(enabled: bool, iterable=None, **kwargs):
    """A tqdm progress bar, or None (`iterable` itself when one is given) when not `enabled`."""
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, **kwargs)


def compute_mean(db_path: str | os.PathLike, progress: bool = False) -> np.ndarray:
    """compute_image_mean: the float32 C x H x W mean of all records (encoded ones decoded natively).
    The sum is exact (int64), so for large databases it is more precise than Caffe's float32 running sum."""
    reader = open_reader(db_path)
    total, shape, count = None, None, 0
    records = iter(reader)
    if progress:
        records = _bar(True, records, total=len(reader), unit="img", desc=f"mean of {reader.path.name}")
    for key, value in records:
        array, _ = decode_datum(value)
        if total is None:
            shape, total = array.shape, np.zeros(array.shape, np.float64 if array.dtype != np.uint8 else np.int64)
        elif array.shape != shape:
            raise DatabaseError(f"{reader.path}: record {key.decode(errors='replace')} is {array.shape}, the first "
                                f"was {shape}: a mean needs images of one size (convert with --resize)")
        total += array
        count += 1
    if count == 0:
        raise DatabaseError(f"{reader.path}: the database is empty; there is no mean")
    return (total / count).astype(np.float32)


# ---------------------------------------------------------------- converting: workers

@dataclasses.dataclass(frozen=True)
class _Options:
    root: str
    resize: tuple[int, int] | None      # (height, width)
    encoded: bool
    gray: bool
    want_mean: bool


def _load_record(options: _Options, relpath: str, label: int) -> tuple[bytes, np.ndarray | None]:
    """One image -> (serialized Datum, C x H x W array that compute_image_mean would see, or None)."""
    path = os.path.join(options.root, relpath)
    image = read_image(path, gray=options.gray)
    if options.resize is not None:
        image = resize_linear(image, *options.resize)
    if not options.encoded:
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        return datum_bytes(chw, label), chw
    ext = relpath.rpartition(".")[2].lower() if "." in relpath else "png"
    if options.resize is None:
        with open(path, "rb") as f:                      # ReadFileToDatum: the file's own bytes
            data = f.read()
    else:
        data = encode_image(image, ext)                  # cv::imencode("." + ext, resized)
    mean_view = None
    if options.want_mean:
        mean_view = np.ascontiguousarray(decode_image(data).transpose(2, 0, 1))
    return encoded_datum_bytes(data, label), mean_view


def _convert_chunk(options: _Options, chunk: list[tuple[int, str, int]]):
    """Worker: (index, relpath, label) items -> records, bad items, and the int64 sum of the good arrays."""
    records, bad, total, shape, mixed = [], [], None, None, False
    for index, relpath, label in chunk:
        try:
            value, array = _load_record(options, relpath, label)
        except (ImageError, OSError) as err:
            bad.append((index, relpath, str(err)))
            continue
        records.append((index, make_key(index, relpath), value))
        if array is not None and not mixed:
            if total is None:
                shape, total = array.shape, array.astype(np.uint32)    # a chunk's sum fits: 255 * CHUNK
            elif array.shape == shape:
                total += array
            else:
                mixed = True
    return records, bad, (None if mixed else total), shape, mixed


# ---------------------------------------------------------------- converting: the ordered writer

class _Progress:
    """State of a conversion at its last commit, kept beside the records (PROGRESS, replaced atomically)."""

    def __init__(self, upto=-1, count=0, skipped=None, total=None, shape=None, mixed=False, summed=True):
        self.summed = summed                               # were the records' sums kept (a mean was asked for)
        self.upto, self.count = upto, count               # last list position whose outcome is committed
        self.skipped = skipped or []                       # [(index, relpath, why)]
        self.total, self.shape, self.mixed = total, (tuple(shape) if shape else None), mixed

    def add(self, total, shape, mixed, n):
        if n == 0:
            return
        if mixed or self.mixed or (self.shape is not None and shape is not None and tuple(shape) != self.shape):
            self.mixed, self.total = True, None
        elif total is not None:
            self.total = total.astype(np.int64) if self.total is None else self.total + total
            self.shape = tuple(shape)

    def save(self, work: Path) -> None:
        meta = dict(upto=self.upto, count=self.count, skipped=self.skipped, shape=self.shape, mixed=self.mixed,
                    summed=self.summed)
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.array(json.dumps(meta)),
                 total=self.total if self.total is not None else np.zeros(0, np.int64))
        protoio.atomic_write_bytes(work / PROGRESS, buffer.getvalue())

    @classmethod
    def load(cls, work: Path, summed: bool) -> "_Progress":
        try:
            with np.load(work / PROGRESS) as data:
                meta = json.loads(str(data["meta"]))
                total = data["total"] if data["total"].size else None
        except FileNotFoundError:
            return cls(summed=summed)
        except Exception as err:  # noqa: BLE001 - a damaged state file: say which
            raise DatabaseError(f"{work / PROGRESS}: unreadable conversion state ({err}); delete {work} and "
                                f"convert again") from None
        return cls(meta["upto"], meta["count"], [tuple(s) for s in meta["skipped"]], total, meta["shape"],
                   meta["mixed"], meta["summed"])


def _index_of(key: bytes) -> int:
    return int(key.split(b"_", 1)[0])


def _reconcile(store, progress: _Progress, items, options: _Options) -> _Progress:
    """After a kill between a commit and the state file that follows it: account for the records the database
    holds beyond the saved state (their sum re-read from the database), and re-check the images skipped there."""
    last = store.last_key()
    if last is None or _index_of(last) <= progress.upto:
        return progress
    after = make_key(progress.upto, items[progress.upto][1]) if progress.upto >= 0 else None
    seen = set()
    for key, value in store.items_after(after):
        index = _index_of(key)
        seen.add(index)
        if progress.summed:
            array, _ = decode_datum(value)
            progress.add(array.astype(np.int64), array.shape, False, 1)
        progress.count += 1
    upto = _index_of(last)
    missing = [items[i] for i in range(progress.upto + 1, upto + 1) if i not in seen]
    if missing:
        _, bad, _, _, _ = _convert_chunk(dataclasses.replace(options, want_mean=False), missing)
        why = dict((index, reason) for index, _, reason in bad)
        progress.skipped.extend((index, relpath, why.get(index, "unreadable in an interrupted earlier run, readable "
                                 "now: delete the database and convert again to include it"))
                                for index, relpath, _ in missing)
    progress.upto = upto
    return progress


def _job_description(files_txt, backend, resize, encoded, shuffle_seed, gray) -> dict:
    return {"format": FORMAT, "list": str(Path(files_txt).resolve()), "list_md5": file_md5(files_txt),
            "backend": backend, "resize": list(resize) if resize else None, "encoded": bool(encoded),
            "shuffle_seed": shuffle_seed, "gray": bool(gray)}


_MATCHED = ("list_md5", "backend", "resize", "encoded", "shuffle_seed", "gray")


def _same_job(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in _MATCHED)


def _differences(old: dict, new: dict) -> str:
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in _MATCHED if old.get(k) != new.get(k))


def info_from_marker(path: Path, marker: dict) -> DbInfo:
    """The DbInfo of a finished database, from its completion marker (and its skipped-images report)."""
    skipped = []
    if marker.get("skipped_report") and Path(marker["skipped_report"]).exists():
        skipped = [tuple(line.split("\t", 1)) for line in Path(marker["skipped_report"]).read_text().splitlines()]
    return DbInfo(path, marker["backend"], marker["count"], marker["keys_md5"],
                  tuple(marker["shape"]) if marker.get("shape") else None, skipped,
                  Path(marker["mean"]) if marker.get("mean") else None)


def _start_pool(workers: int):
    """Decoding processes, started now (before the database is opened, so none inherits it). A worker that
    dies makes the conversion fail (BrokenProcessPool) instead of waiting forever; the workers leave Ctrl-C and
    kill to this process (it stops them; what it committed stays) and die with it, even when it is SIGKILLed."""
    if workers <= 0:
        return None
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                                  initializer=processes.as_worker_of, initargs=(os.getpid(),))
    for future in [pool.submit(int) for _ in range(workers)]:
        future.result()
    return pool


class _Immediate:
    def __init__(self, fn, *args):
        self.value = fn(*args)

    def result(self):
        return self.value




class _OrderedWriter:
    """Records decoded by the workers, written in list order: buffered, and committed with the conversion's
    state every `commit_every` records (or COMMIT_BYTES)."""

    def __init__(self, store, work: Path, state: _Progress, commit_every: int):
        self.store, self.work, self.state, self.commit_every = store, work, state, commit_every
        self.slow = float(os.environ.get(SLOW_ENV, "0") or 0)
        self.buffered, self.size, self.batch = [], 0, _Progress()   # batch: what the uncommitted records add

    def add(self, records, bad, total, shape, mixed) -> None:
        """One chunk's outcome (as _convert_chunk returns it)."""
        self.buffered.extend(records)
        self.size += sum(len(value) for _, _, value in records)
        self.batch.skipped.extend(bad)
        self.batch.upto = max([r[0] for r in records] + [b[0] for b in bad])
        self.batch.add(total, shape, mixed, len(records))
        self.batch.count += len(records)

    def full(self) -> bool:
        return len(self.buffered) >= self.commit_every or self.size >= COMMIT_BYTES

    def commit(self) -> None:
        """Write the buffered records in one transaction, then the state they leave (PROGRESS)."""
        state, batch = self.state, self.batch
        self.store.put_many([(key, value) for _, key, value in self.buffered])
        state.count += len(self.buffered)
        state.skipped.extend(batch.skipped)
        state.upto = batch.upto if batch.upto >= 0 else state.upto
        if batch.count:
            state.add(batch.total, batch.shape, batch.mixed, batch.count)
        state.save(self.work)
        self.buffered, self.size, self.batch = [], 0, _Progress()
        if self.slow:
            time.sleep(self.slow)


def _write_items(store, work, files_txt, items, state: _Progress, options, pool, skip_bad, progress,
                 commit_every, in_flight):
    """Decode in `workers` processes, write in list order here; commit every `commit_every` records."""
    todo = items[state.upto + 1:]
    chunks = (todo[i:i + CHUNK] for i in range(0, len(todo), CHUNK))
    writer = _OrderedWriter(store, work, state, commit_every)
    bar = _bar(progress, total=len(items), initial=state.upto + 1, unit="img",
               desc=store.path.name.removesuffix(".partial"), smoothing=0.05)
    pending = collections.deque()

    def submit():
        chunk = next(chunks, None)
        if chunk is not None:
            pending.append(pool.submit(_convert_chunk, options, chunk) if pool else
                           _Immediate(_convert_chunk, options, chunk))

    try:
        for _ in range(in_flight):  # bounded: at most this many chunks decoded and not yet written
            submit()
        while pending:
            try:
                outcome = pending.popleft().result()
            except concurrent.futures.process.BrokenProcessPool:
                writer.commit()
                raise DatabaseError(f"a decoding process died (killed, or out of memory) while converting "
                                    f"{files_txt}; run again to resume, with fewer --workers if memory is short"
                                    ) from None
            submit()
            records, bad = outcome[0], outcome[1]
            if bad and not skip_bad:
                writer.commit()  # what came before this chunk; a rerun resumes at this chunk
                index, relpath, why = bad[0]
                raise BadImageError(f"{why}: listed as {relpath!r} in {files_txt}. Put a readable image there and "
                                    f"run the same command again (the conversion resumes where it stopped), or run "
                                    f"it with --skip-bad to skip unreadable images and list them in a report")
            writer.add(*outcome)
            if bar is not None:
                bar.update(len(records) + len(bad))
            if writer.full():
                writer.commit()
        writer.commit()
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------- one list

def convert_list(files_txt, image_root, db_path, *, backend="lmdb", resize=(256, 256), encoded=False,
                 shuffle_seed=None, gray=False, mean_path=None, workers=None, skip_bad=False, progress=True,
                 commit_every=COMMIT_EVERY) -> DbInfo:
    """Convert the images of a Caffe list (files.txt) under `image_root` into a Datum database at `db_path`.

    resize: (height, width) as cv::resize INTER_LINEAR (Caffe's resize_height/width), or None to keep sizes.
    encoded: store the encoded file (its own bytes without resize; re-encoded after a resize) instead of pixels.
    shuffle_seed: shuffle the list with numpy's default_rng(seed) before numbering the keys.
    mean_path: also write the mean .binaryproto, summed while writing (needs one image size).
    workers: decoding processes (default: every core); 0 decodes in this process.
    skip_bad: skip unreadable images, listing them in `<db_path>.skipped.txt`; otherwise stop naming the image.
    A killed conversion resumes when run again with the same list and options; a finished one is not redone.
    """
    files_txt, db_path = Path(files_txt), Path(db_path)
    _check_backend(backend)
    resize = tuple(int(v) for v in resize) if resize else None
    job = _job_description(files_txt, backend, resize, encoded, shuffle_seed, gray)
    items = [(i, relpath, label) for i, (relpath, label) in enumerate(ordered(read_list(files_txt, progress=False),
                                                                              shuffle_seed))]
    options = _Options(str(image_root), resize, bool(encoded), bool(gray), mean_path is not None)
    finished = _finished(db_path, job, mean_path, progress)
    if finished is not None:
        return finished
    work = _work_dir(db_path, job)
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    state, count, digest = _convert_into(work, backend, files_txt, items, options, workers, skip_bad, progress,
                                         commit_every)
    skipped_at = {s[0] for s in state.skipped}
    expected = keys_md5(make_key(i, p) for i, p, _ in items if i not in skipped_at)
    if (count, digest) != expected or count != state.count:
        raise DatabaseError(f"{work}: holds {count} records (key md5 {digest}), expected {expected[0]} "
                            f"({expected[1]}); it was changed during the conversion: delete it and convert again")
    skipped = [(relpath, why) for _, relpath, why in sorted(state.skipped)]
    report_path = db_path.with_name(db_path.name + ".skipped.txt")
    if skipped:
        protoio.atomic_write_bytes(report_path, "".join(f"{p}\t{why}\n" for p, why in skipped).encode())
    elif report_path.exists():
        report_path.unlink()
    if mean_path is not None:
        _write_list_mean(mean_path, state, files_txt, work, progress)
    if work != db_path:
        os.replace(work, db_path)
    (db_path / PROGRESS).unlink(missing_ok=True)
    write_marker(db_path, dict(job, count=count, keys_md5=digest, shape=state.shape, skipped=len(skipped),
                               skipped_report=str(report_path) if skipped else None,
                               mean=str(mean_path) if mean_path else None, image_root=str(image_root),
                               finished=time.strftime("%Y-%m-%dT%H:%M:%S%z")))
    (db_path / JOB).unlink(missing_ok=True)
    return DbInfo(db_path, backend, count, digest, state.shape, skipped, Path(mean_path) if mean_path else None)


def _finished(db_path: Path, job: dict, mean_path, progress: bool) -> DbInfo | None:
    """The finished database of this job at `db_path` (its mean written when missing), or None when there is
    none; a finished one of other inputs, or one damaged since, is an error."""
    marker = read_marker(db_path)
    if marker is None:
        return None
    if not _same_job(marker, job):
        raise DatabaseError(f"{db_path} already exists, made with other inputs ({_differences(marker, job)}); "
                            f"delete it or choose another output to convert again")
    if not is_complete(db_path):
        raise DatabaseError(f"{db_path}: finished once with {marker['count']} records, but it no longer opens "
                            f"as that database (truncated or damaged since); delete it and run the same command "
                            f"again")
    info = info_from_marker(db_path, marker)
    if mean_path is not None and not Path(mean_path).exists():
        protoio.write_mean(mean_path, compute_mean(db_path, progress=progress))
        info.mean_path = Path(mean_path)
    return info


def _work_dir(db_path: Path, job: dict) -> Path:
    """Where the conversion writes: an unfinished conversion of this job (to resume), or a new `<db>.partial`."""
    work = db_path if db_path.exists() else db_path.with_name(db_path.name + ".partial")
    if work.exists():
        try:
            old = json.loads((work / JOB).read_text())
        except (OSError, ValueError):
            raise DatabaseError(f"{work} exists but is not a conversion this tool started (no {JOB}); "
                                f"move or delete it, then run again") from None
        if not _same_job(old, job):
            raise DatabaseError(f"{work} is an unfinished conversion of other inputs ({_differences(old, job)}); "
                                f"delete it to start over, or run with the original list and options")
    else:
        work.mkdir(parents=True)
        protoio.atomic_write_bytes(work / JOB, json.dumps(job, indent=1).encode())
    return work


def _convert_into(work: Path, backend: str, files_txt: Path, items, options: _Options, workers: int,
                  skip_bad: bool, progress: bool, commit_every: int) -> tuple[_Progress, int, str]:
    """Write the items not yet committed in `work`; returns the final state and the database's key count and md5."""
    pool = _start_pool(workers)      # before the database is opened: the workers never inherit it
    store = None
    try:
        store = open_writer(work, backend)
        state = _reconcile(store, _Progress.load(work, summed=options.want_mean), items, options)
        if options.encoded and not options.want_mean:
            state.summed = False   # encoded records are only decoded for a mean: the sums stop being complete
        _write_items(store, work, files_txt, items, state, options, pool, skip_bad, progress, commit_every,
                     in_flight=2 * workers + 1)
        count, digest = keys_md5(store.keys())
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if store is not None:
            store.close()
    return state, count, digest


def _write_list_mean(mean_path, state: _Progress, files_txt: Path, work: Path, progress: bool) -> None:
    """The mean from the sums kept while converting, or read back from the database when they were not kept."""
    if not state.summed:   # resumed a conversion that kept no sums: read them back
        protoio.write_mean(mean_path, compute_mean(work, progress=progress))
        return
    if state.count == 0:
        raise DatabaseError(f"{files_txt}: no image was converted, so there is no mean")
    if state.mixed or state.total is None:
        raise DatabaseError(f"{files_txt}: images of different sizes cannot have one mean; the database "
                            f"{work} is kept; convert with --resize to get a mean")
    protoio.write_mean(mean_path, (state.total / state.count).astype(np.float32))


# ---------------------------------------------------------------- in-memory images

def write_arrays(db_path, records: Iterable[tuple], *, backend="lmdb", mean_path=None, total=None,
                 progress=True, overwrite=False, commit_every=COMMIT_EVERY) -> DbInfo:
    """Write (key, uint8 C x H x W array, label) records, e.g. an embedded dataset's images, as raw Datums.

    key: bytes/str (use make_key(i, name) for Caffe's scheme). Written into `<db>.partial` and renamed, with the
    completion marker, when done; an interrupted call starts over. An existing finished database is returned
    as it is unless `overwrite`. The mean (mean_path) is summed exactly while writing.
    """
    db_path = Path(db_path)
    _check_backend(backend)
    marker = read_marker(db_path)
    if marker is not None and not overwrite and is_complete(db_path):
        return info_from_marker(db_path, marker)
    work = db_path.with_name(db_path.name + ".partial")
    for old in (work, db_path if overwrite else None):
        if old is not None and old.exists():
            shutil.rmtree(old)
    if db_path.exists():
        raise DatabaseError(f"{db_path} exists but is not a finished database; delete it or pass overwrite=True")
    work.mkdir(parents=True)
    state, digest = _write_array_records(open_writer(work, backend), db_path, records, mean_path is not None,
                                         _bar(progress, total=total, unit="img", desc=db_path.name), commit_every)
    if mean_path is not None:
        if state.count == 0 or state.total is None:
            raise DatabaseError(f"{db_path}: " + ("no records: no mean" if state.count == 0 else
                                                  "records of different sizes cannot have one mean"))
        protoio.write_mean(mean_path, (state.total / state.count).astype(np.float32))
    os.replace(work, db_path)
    write_marker(db_path, {"format": FORMAT, "source": "arrays", "backend": backend, "count": state.count,
                           "keys_md5": digest, "shape": state.shape, "skipped": 0,
                           "mean": str(mean_path) if mean_path else None,
                           "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return DbInfo(db_path, backend, state.count, digest, state.shape, [], Path(mean_path) if mean_path else None)


def _write_array_records(store, db_path: Path, records, summed: bool, bar, commit_every: int) -> tuple[_Progress, str]:
    """Write the records in key order, `commit_every` a transaction; returns their count (and sum, when
    `summed`) and the md5 of their keys. Closes `store` and `bar`."""
    state, buffered, digest = _Progress(), [], hashlib.md5()
    try:
        previous = None
        for key, array, label in records:
            key = key.encode() if isinstance(key, str) else bytes(key)
            if previous is not None and key <= previous:
                raise DatabaseError(f"{db_path}: keys must increase (got {key!r} after {previous!r}); number them "
                                    f"with make_key(index, name)")
            previous = key
            array = np.asarray(array)
            if array.dtype != np.uint8 or array.ndim != 3:
                raise DatabaseError(f"{db_path}: record {key!r} is {array.dtype} {array.shape}, expected uint8 "
                                    f"C x H x W")
            buffered.append((key, datum_bytes(array, label)))
            digest.update(key + b"\n")
            if summed:
                state.add(array.astype(np.int64), array.shape, False, 1)
            state.count += 1
            if len(buffered) >= commit_every:
                store.put_many(buffered)
                buffered = []
            if bar is not None:
                bar.update(1)
        store.put_many(buffered)
    finally:
        store.close()
        if bar is not None:
            bar.close()
    return state, digest.hexdigest()
