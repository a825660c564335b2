"""Stage 2: image lists -> Caffe Datum databases (LMDB or LevelDB) and mean .binaryproto files.

What Caffe's `convert_imageset` and `compute_image_mean` do, with the same records, in parallel and resumable:

    convert_list(files_txt, image_root, db_path, ...) -> DbInfo    one list -> one database (+ its mean)
    convert_data_root(data_root, image_root, val_root=None, ...)    every split of a data root
    write_arrays(db_path, records, ...) -> DbInfo                   in-memory images (embedded datasets)
    open_reader(path) -> DatumReader                                (key, value) in key order; LMDB, LevelDB,
                                                                    or a key-list view over a shared database
    decode_datum(value) -> (uint8 C x H x W BGR array, label)
    compute_mean(path) -> float32 C x H x W;  is_complete(path) -> bool

Records are Caffe's: key b"%08d_<relative path>" (the line's position in the, optionally shuffled, list), value a
serialized Datum (raw BGR uint8 in C,H,W order, or the encoded file). Decoding and resizing follow OpenCV exactly
(convnet_transfer.data.images). A database under construction lives in `<db>.partial/`; it is renamed to `<db>` and
gets the completion marker `convnet_transfer.complete.json` (count and md5 of the key list) only once verified.
See docs/databases.md.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import errno
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from convnet_transfer.formats import caffe_pb2 as pb
from convnet_transfer.training import processes
from convnet_transfer.formats import protoio
from .images import ImageError, decode_image, encode_image, read_image, resize_linear
from .splits import SplitError, file_md5, read_list

__all__ = [
    "DatabaseError", "BadImageError", "DbInfo", "DatumReader", "read_image_list", "make_key",
    "convert_list", "convert_data_root", "write_arrays", "make_view", "open_reader", "decode_datum",
    "datum_bytes", "compute_mean", "is_complete", "split_dirs", "shared_handle", "BACKENDS",
]

BACKENDS = ("lmdb", "leveldb")
MARKER = "convnet_transfer.complete.json"      # inside a finished database directory, written last
JOB = "convnet_transfer.job.json"              # inside a database under construction: what is being built
PROGRESS = "convnet_transfer.progress.npz"     # inside a database under construction: state at the last commit
VIEW = "view.json"                              # a key-list view directory's description (written last)
VIEW_KEYS = "keys.tsv"                          # its records: "<key>\t<key in the shared database>\t<label>"
FORMAT = "convnet_transfer.datum-db/1"
VIEW_FORMAT = "convnet_transfer.key-view/1"
LMDB_MAP_SIZE = 1 << 40                         # 1 TiB of address space, as Caffe's db_lmdb (the file grows as written)
COMMIT_EVERY = 1000                             # records per transaction, as convert_imageset
COMMIT_BYTES = 64 << 20                         # ... or fewer when they are large
CHUNK = 32                                      # images per task sent to a worker
SLOW_ENV = "CONVNET_TRANSFER_TEST_SLOW_COMMIT"  # tests only: seconds to sleep after each commit


class DatabaseError(RuntimeError):
    """A database that cannot be made or read: the message names the file and says what to do."""


class BadImageError(DatabaseError):
    """An image in the list is missing or cannot be decoded."""


@dataclasses.dataclass
class DbInfo:
    path: Path
    backend: str
    count: int
    keys_md5: str
    shape: tuple[int, int, int] | None = None     # (C, H, W) when every record has the same size
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)   # (relative path, why)
    mean_path: Path | None = None


# ---------------------------------------------------------------- lists, keys, Datum records

def read_image_list(path: str | os.PathLike) -> list[tuple[str, int]]:
    """Caffe's list format, "<relative path> <label>" per line, read by splits.read_list (one reader, one set of
    rules: labels 0..2^31-1, no image twice, at least one image); its errors, naming file:line, as DatabaseError."""
    try:
        return read_list(path, progress=False)
    except SplitError as err:
        raise DatabaseError(str(err)) from None


def make_key(index: int, relpath: str) -> bytes:
    """convert_imageset's key: the position in the list, zero-padded to 8 digits, '_', the path as listed."""
    return b"%08d_" % index + relpath.encode()


def datum_bytes(array: np.ndarray, label: int) -> bytes:
    """A raw Datum from a C x H x W uint8 array, serialized as Caffe's CVMatToDatum + set_label writes it."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim != 3:
        raise ValueError(f"expected a C x H x W array, got shape {array.shape}")
    c, h, w = array.shape
    return pb.Datum(channels=c, height=h, width=w, data=array.tobytes(), label=int(label),
                    encoded=False).SerializeToString()


def _encoded_datum_bytes(data: bytes, label: int) -> bytes:
    return pb.Datum(data=data, label=int(label), encoded=True).SerializeToString()


def decode_datum(value: bytes) -> tuple[np.ndarray, int]:
    """A serialized Datum -> (uint8 C x H x W array, BGR for colour, label). Encoded Datums are decoded with
    their native channels, as Caffe's DecodeDatumNative; float_data Datums come back as float32."""
    datum = pb.Datum.FromString(value)
    if datum.encoded:
        image = decode_image(datum.data)
        return np.ascontiguousarray(image.transpose(2, 0, 1)), datum.label
    shape = (datum.channels, datum.height, datum.width)
    if datum.data:
        return np.frombuffer(datum.data, np.uint8).reshape(shape), datum.label
    return np.asarray(datum.float_data, np.float32).reshape(shape), datum.label


def _keys_md5(keys: Iterable[bytes]) -> tuple[int, str]:
    digest, count = hashlib.md5(), 0
    for key in keys:
        digest.update(key + b"\n")
        count += 1
    return count, digest.hexdigest()


# ---------------------------------------------------------------- backends

def _backend_of(path: Path) -> str | None:
    if (path / "data.mdb").is_file():
        return "lmdb"
    if (path / "CURRENT").is_file():
        return "leveldb"
    if (path / VIEW).is_file():
        return "view"
    return None


_READ_ENVS: dict[str, tuple[int, object]] = {}   # realpath -> (pid, lmdb.Environment or plyvel.DB)


def _reader_handle(path: Path, kind: str):
    """One open handle per database and process, shared by its readers (py-lmdb refuses to open an environment
    twice in a process, LevelDB locks its directory); opened again after a fork."""
    key = os.path.realpath(path)
    pid, handle = _READ_ENVS.get(key, (None, None))
    if pid != os.getpid():
        if kind == "lmdb":
            import lmdb
            if handle is not None:    # the parent's, inherited through fork: unusable here, and py-lmdb
                handle.close()        # refuses a second open while it exists (lock=False: closing is local)
            try:
                handle = lmdb.open(key, readonly=True, lock=False, subdir=True, max_readers=512)
            except lmdb.Error as err:
                raise DatabaseError(f"{path}: cannot open it as an LMDB database ({err}); it is damaged or was "
                                    f"not written completely: delete it and re-create it (tools/make_dbs)") from None
            _check_lmdb_size(path, handle)
        elif handle is not None:
            # LevelDB remembers its lock in process memory, so a forked child cannot open the directory again;
            # it reads through the inherited handle (safe once the parent is done writing). Open readers
            # after forking where you can.
            pass
        else:
            import plyvel
            try:
                handle = plyvel.DB(key, create_if_missing=False, max_open_files=100)
            except (plyvel.Error, OSError) as err:
                raise DatabaseError(f"{path}: cannot open it as a LevelDB database ({err}); if another process "
                                    f"holds it, wait for that one; else delete it and re-create it "
                                    f"(tools/make_dbs)") from None
        _READ_ENVS[key] = (os.getpid(), handle)
    return handle


def _check_lmdb_size(path: Path, env) -> None:
    """An LMDB whose data.mdb is shorter than its header says (truncated by a copy or a full disk) is refused:
    reading a page past the end of the mapped file kills the process with SIGBUS, without a word."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = os.path.getsize(os.path.join(env.path(), "data.mdb"))
    if size < needed:
        env.close()
        raise DatabaseError(f"{path}: its data.mdb is truncated ({size} bytes, its header needs {needed}); it "
                            f"was not copied or written completely: delete it and re-create it (tools/make_dbs)")


def shared_handle(path: str | os.PathLike):
    """The read-only handle (lmdb.Environment or plyvel.DB) of a database, shared by everything in this process
    that reads it: use it rather than opening the database yourself (py-lmdb refuses a second open)."""
    path = Path(path)
    kind = _backend_of(path)
    if kind not in ("lmdb", "leveldb"):
        raise DatabaseError(f"{path}: not an LMDB or LevelDB directory")
    return _reader_handle(path, kind)


def _drop_reader_env(path: Path) -> None:
    pid, env = _READ_ENVS.pop(os.path.realpath(path), (None, None))
    if env is not None and pid == os.getpid():
        env.close()


def _disk_error(path: Path, err: Exception, need: int = 0) -> OSError:
    """A database's write error as an OSError naming the database. LMDB reports a full disk as "Input/output
    error" (mdb_txn_commit) and names no file, so ask the file system whether it is read-only or has less room
    than the transaction needed (`need` bytes of records, twice over for the pages, and 1 MiB)."""
    disk = os.statvfs(path)
    if disk.f_flag & os.ST_RDONLY:
        code = errno.EROFS
    elif disk.f_bavail * disk.f_frsize < 2 * need + (1 << 20):
        code = errno.ENOSPC
    else:
        return OSError(errno.EIO, str(err).removeprefix(f"{path}: "), str(path))
    return OSError(code, os.strerror(code), str(path))


class _Store:
    """Write access to one LMDB or LevelDB directory, with Caffe's options."""

    def __init__(self, path: Path, backend: str):
        self.path, self.backend = path, backend
        path.mkdir(parents=True, exist_ok=True)
        _drop_reader_env(path)
        if backend == "lmdb":
            import lmdb
            self.errors = lmdb.Error
            try:
                self.env = lmdb.open(str(path), map_size=LMDB_MAP_SIZE, subdir=True, meminit=False, max_dbs=0)
            except lmdb.Error as err:
                raise _disk_error(path, err) from None
        elif backend == "leveldb":
            import plyvel
            self.errors = plyvel.Error
            try:
                self.db = plyvel.DB(str(path), create_if_missing=True, write_buffer_size=256 << 20,
                                    block_size=65536, max_open_files=100)
            except plyvel.Error as err:
                raise _disk_error(path, err) from None
        else:
            raise ValueError(f"unknown backend {backend!r}: use one of {BACKENDS}")

    def put_many(self, records: list[tuple[bytes, bytes]], ordered: bool = True) -> None:
        """Write `records` in one transaction, durable when this returns."""
        if not records:
            return
        try:
            if self.backend == "lmdb":
                with self.env.begin(write=True) as txn:
                    txn.cursor().putmulti(records, append=ordered)
            else:
                with self.db.write_batch(sync=True) as batch:
                    for key, value in records:
                        batch.put(key, value)
        except self.errors as err:
            raise _disk_error(self.path, err, need=sum(len(k) + len(v) for k, v in records)) from None

    def keys(self) -> Iterator[bytes]:
        if self.backend == "lmdb":
            with self.env.begin() as txn:
                yield from txn.cursor().iternext(keys=True, values=False)
        else:
            yield from self.db.iterator(include_value=False)

    def items_after(self, key: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        if self.backend == "lmdb":
            with self.env.begin() as txn:
                cursor = txn.cursor()
                if key is None:
                    found = cursor.first()
                elif cursor.set_range(key) and cursor.key() == key:
                    found = cursor.next()
                else:
                    found = cursor.key() != b""
                while found:
                    yield cursor.key(), cursor.value()
                    found = cursor.next()
        else:
            it = self.db.iterator() if key is None else self.db.iterator(start=key, include_start=False)
            yield from it

    def last_key(self) -> bytes | None:
        if self.backend == "lmdb":
            with self.env.begin() as txn:
                cursor = txn.cursor()
                return bytes(cursor.key()) if cursor.last() else None
        for key in self.db.iterator(reverse=True, include_value=False):
            return key
        return None

    def close(self) -> None:
        if self.backend == "lmdb":
            self.env.close()
        else:
            self.db.close()


# ---------------------------------------------------------------- reading

class DatumReader:
    """(key, value) records of a database in key order. Opens lazily and again in each process (fork-safe)."""

    def __init__(self, path: str | os.PathLike):
        self.path = _resolve(Path(path))
        self.kind = _backend_of(self.path)
        if self.kind is None:
            raise DatabaseError(f"{self.path}: not a Datum database (no data.mdb, LevelDB CURRENT or {VIEW}); "
                                f"make it with tools/make_dbs")
        self._pid, self._handle, self._view = None, None, None
        if self.kind == "view":
            self._view = _read_view(self.path)

    def _open(self):
        if self.kind != "view":
            return _reader_handle(self.path, self.kind)
        if self._pid != os.getpid():
            self._handle, self._pid = DatumReader(self._view["database"]), os.getpid()
        return self._handle

    def __len__(self) -> int:
        if self.kind == "view":
            return len(self._view["keys"])
        if self.kind == "lmdb":
            return self._open().stat()["entries"]
        return sum(1 for _ in self._open().iterator(include_value=False))

    def keys(self) -> Iterator[bytes]:
        if self.kind == "view":
            return iter(self._view["keys"])
        return (key for key, _ in self._iterate(values=False))

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return self._iterate(values=True)

    def _iterate(self, values: bool):
        handle = self._open()
        if self.kind == "lmdb":
            with handle.begin() as txn:
                if values:
                    yield from txn.cursor().iternext(keys=True, values=True)
                else:
                    yield from ((key, None) for key in txn.cursor().iternext(keys=True, values=False))
        elif self.kind == "leveldb":
            if values:
                yield from handle.iterator()
            else:
                yield from ((key, None) for key in handle.iterator(include_value=False))
        else:
            rows = zip(self._view["keys"], self._view["targets"], self._view["labels"])
            if not values:
                yield from ((key, None) for key, _, _ in rows)
            elif handle.kind == "lmdb":   # one read transaction for the whole pass
                with handle._open().begin() as txn:
                    for key, target, label in rows:
                        yield key, self._relabel(self._found(txn.get(target), target), label)
            else:
                for key, target, label in rows:
                    yield key, self._relabel(self._found(handle.get(target), target), label)

    def _found(self, value: bytes | None, target: bytes) -> bytes:
        if value is None:
            raise DatabaseError(f"{self.path}: record {target.decode(errors='replace')} is missing from the shared "
                                f"database {self._view['database']}; make the view again (tools/make_dbs --shared)")
        return value

    def get(self, key: bytes) -> bytes | None:
        handle = self._open()
        if self.kind == "lmdb":
            with handle.begin() as txn:
                return txn.get(key)
        if self.kind == "leveldb":
            return handle.get(key)
        index = self._view_index().get(key)
        if index is None:
            return None
        target = self._view["targets"][index]
        return self._relabel(self._found(handle.get(target), target), self._view["labels"][index])

    def _view_index(self) -> dict:
        if "index" not in self._view:
            self._view["index"] = {key: i for i, key in enumerate(self._view["keys"])}
        return self._view["index"]

    @staticmethod
    def _relabel(value: bytes, label: int) -> bytes:
        datum = pb.Datum.FromString(value)
        if datum.label == label:
            return value
        datum.label = label
        return datum.SerializeToString()

    def close(self) -> None:
        """Close the database in this process (every reader of it in this process: they reopen on next use)."""
        if self.kind != "view":
            _drop_reader_env(self.path)
        elif self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle, self._pid = None, None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, None
        return state


def _resolve(path: Path) -> Path:
    """A database directory, or a split directory holding one (lmdb/, leveldb/ or keys/)."""
    if _backend_of(path) is None and path.is_dir():
        for name in ("lmdb", "leveldb", "keys"):
            if _backend_of(path / name) is not None:
                return path / name
    return path


def open_reader(db_path: str | os.PathLike) -> DatumReader:
    """Read a Datum database: an LMDB, a LevelDB, a key-list view (labels remapped), or a split directory."""
    return DatumReader(db_path)


def is_complete(db_path: str | os.PathLike) -> bool:
    """True when the database (or view) was finished and verified: its marker exists and the count matches."""
    path = _resolve(Path(db_path))
    kind = _backend_of(path)
    if kind == "view":   # view.json is written last and checked against keys.tsv; the shared database too
        try:
            return is_complete(_read_view(path)["database"])
        except (OSError, ValueError, KeyError, DatabaseError):
            return False
    marker = _read_marker(path)
    if marker is None or kind is None:
        return False
    if kind == "lmdb":
        try:
            return len(DatumReader(path)) == marker["count"]
        except Exception:
            return False
    return True


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def compute_mean(db_path: str | os.PathLike, progress: bool = False) -> np.ndarray:
    """compute_image_mean: the float32 C x H x W mean of all records (encoded ones decoded natively).
    The sum is exact (int64), so for large databases it is more precise than Caffe's float32 running sum."""
    reader = open_reader(db_path)
    total, shape, count = None, None, 0
    records = iter(reader)
    if progress:
        from tqdm import tqdm
        records = tqdm(records, total=len(reader), unit="img", desc=f"mean of {reader.path.name}")
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
    return _encoded_datum_bytes(data, label), mean_view


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


def _reconcile(store: _Store, progress: _Progress, items, options: _Options) -> _Progress:
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
    if backend not in BACKENDS:
        raise DatabaseError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    resize = tuple(int(v) for v in resize) if resize else None
    job = _job_description(files_txt, backend, resize, encoded, shuffle_seed, gray)
    items = [(i, relpath, label) for i, (relpath, label) in enumerate(_ordered(read_image_list(files_txt),
                                                                              shuffle_seed))]
    options = _Options(str(image_root), resize, bool(encoded), bool(gray), mean_path is not None)
    report_path = db_path.with_name(db_path.name + ".skipped.txt")

    marker = _read_marker(db_path)
    if marker is not None:
        if not _same_job(marker, job):
            raise DatabaseError(f"{db_path} already exists, made with other inputs ({_differences(marker, job)}); "
                                f"delete it or choose another output to convert again")
        if not is_complete(db_path):
            raise DatabaseError(f"{db_path}: finished once with {marker['count']} records, but it no longer opens "
                                f"as that database (truncated or damaged since); delete it and run the same command "
                                f"again")
        info = _info_from_marker(db_path, marker)
        if mean_path is not None and not Path(mean_path).exists():
            protoio.write_mean(mean_path, compute_mean(db_path, progress=progress))
            info.mean_path = Path(mean_path)
        return info

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

    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    pool = _start_pool(workers)      # before the database is opened: the workers never inherit it
    store = None
    try:
        store = _Store(work, backend)
        state = _reconcile(store, _Progress.load(work, summed=options.want_mean), items, options)
        if options.encoded and not options.want_mean:
            state.summed = False   # encoded records are only decoded for a mean: the sums stop being complete
        _write_items(store, work, files_txt, items, state, options, pool, skip_bad, progress, commit_every,
                     in_flight=2 * workers + 1)
        count, keys_md5 = _keys_md5(store.keys())
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if store is not None:
            store.close()

    skipped_at = {s[0] for s in state.skipped}
    expected = _keys_md5(make_key(i, p) for i, p, _ in items if i not in skipped_at)
    if (count, keys_md5) != expected or count != state.count:
        raise DatabaseError(f"{work}: holds {count} records (key md5 {keys_md5}), expected {expected[0]} "
                            f"({expected[1]}); it was changed during the conversion: delete it and convert again")
    skipped = [(relpath, why) for _, relpath, why in sorted(state.skipped)]
    if skipped:
        protoio.atomic_write_bytes(report_path, "".join(f"{p}\t{why}\n" for p, why in skipped).encode())
    elif report_path.exists():
        report_path.unlink()
    if mean_path is not None and not state.summed:   # resumed a conversion that kept no sums: read them back
        protoio.write_mean(mean_path, compute_mean(work, progress=progress))
    elif mean_path is not None:
        if state.count == 0:
            raise DatabaseError(f"{files_txt}: no image was converted, so there is no mean")
        if state.mixed or state.total is None:
            raise DatabaseError(f"{files_txt}: images of different sizes cannot have one mean; the database "
                                f"{work} is kept; convert with --resize to get a mean")
        protoio.write_mean(mean_path, (state.total / state.count).astype(np.float32))
    if work != db_path:
        os.replace(work, db_path)
    (db_path / PROGRESS).unlink(missing_ok=True)
    marker = dict(job, count=count, keys_md5=keys_md5, shape=state.shape, skipped=len(skipped),
                  skipped_report=str(report_path) if skipped else None,
                  mean=str(mean_path) if mean_path else None, image_root=str(image_root),
                  finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    protoio.atomic_write_bytes(db_path / MARKER, json.dumps(marker, indent=1).encode())
    (db_path / JOB).unlink(missing_ok=True)
    return DbInfo(db_path, backend, count, keys_md5, state.shape, skipped,
                  Path(mean_path) if mean_path else None)


def _ordered(items, shuffle_seed):
    if shuffle_seed is None:
        return items
    order = np.random.default_rng(shuffle_seed).permutation(len(items))
    return [items[i] for i in order]


def _info_from_marker(path: Path, marker: dict) -> DbInfo:
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


def _write_items(store, work, files_txt, items, state: _Progress, options, pool, skip_bad, progress,
                 commit_every, in_flight):
    """Decode in `workers` processes, write in list order here; commit every `commit_every` records."""
    todo = items[state.upto + 1:]
    chunks = (todo[i:i + CHUNK] for i in range(0, len(todo), CHUNK))
    slow = float(os.environ.get(SLOW_ENV, "0") or 0)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(items), initial=state.upto + 1, unit="img", desc=store.path.name.removesuffix(".partial"),
                   smoothing=0.05)
    pending, buffered, size = collections.deque(), [], 0
    batch = _Progress()  # what the uncommitted records add

    def submit():
        chunk = next(chunks, None)
        if chunk is not None:
            pending.append(pool.submit(_convert_chunk, options, chunk) if pool else
                           _Immediate(_convert_chunk, options, chunk))

    def commit():
        nonlocal buffered, size, batch
        store.put_many([(key, value) for _, key, value in buffered])
        state.count += len(buffered)
        state.skipped.extend(batch.skipped)
        state.upto = batch.upto if batch.upto >= 0 else state.upto
        if batch.count:
            state.add(batch.total, batch.shape, batch.mixed, batch.count)
        state.save(work)
        buffered, size, batch = [], 0, _Progress()
        if slow:
            time.sleep(slow)

    try:
        for _ in range(in_flight):  # bounded: at most this many chunks decoded and not yet written
            submit()
        while pending:
            try:
                records, bad, total, shape, mixed = pending.popleft().result()
            except concurrent.futures.process.BrokenProcessPool:
                commit()
                raise DatabaseError(f"a decoding process died (killed, or out of memory) while converting "
                                    f"{files_txt}; run again to resume, with fewer --workers if memory is short"
                                    ) from None
            submit()
            if bad and not skip_bad:
                commit()  # what came before this chunk; a rerun resumes at this chunk
                index, relpath, why = bad[0]
                raise BadImageError(f"{why}: listed as {relpath!r} in {files_txt}. Put a readable image there and "
                                    f"run the same command again (the conversion resumes where it stopped), or run "
                                    f"it with --skip-bad to skip unreadable images and list them in a report")
            buffered.extend(records)
            size += sum(len(value) for _, _, value in records)
            batch.skipped.extend(bad)
            batch.upto = max([r[0] for r in records] + [b[0] for b in bad])
            batch.add(total, shape, mixed, len(records))
            batch.count += len(records)
            if bar is not None:
                bar.update(len(records) + len(bad))
            if len(buffered) >= commit_every or size >= COMMIT_BYTES:
                commit()
        commit()
    finally:
        if bar is not None:
            bar.close()


class _Immediate:
    def __init__(self, fn, *args):
        self.value = fn(*args)

    def result(self):
        return self.value


# ---------------------------------------------------------------- in-memory images

def write_arrays(db_path, records: Iterable[tuple], *, backend="lmdb", mean_path=None, total=None,
                 progress=True, overwrite=False, commit_every=COMMIT_EVERY) -> DbInfo:
    """Write (key, uint8 C x H x W array, label) records, e.g. an embedded dataset's images, as raw Datums.

    key: bytes/str (use make_key(i, name) for Caffe's scheme). Written into `<db>.partial` and renamed, with the
    completion marker, when done; an interrupted call starts over. An existing finished database is returned
    as it is unless `overwrite`. The mean (mean_path) is summed exactly while writing.
    """
    db_path = Path(db_path)
    if backend not in BACKENDS:
        raise DatabaseError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    marker = _read_marker(db_path)
    if marker is not None and not overwrite and is_complete(db_path):
        return _info_from_marker(db_path, marker)
    work = db_path.with_name(db_path.name + ".partial")
    for old in (work, db_path if overwrite else None):
        if old is not None and old.exists():
            shutil.rmtree(old)
    if db_path.exists():
        raise DatabaseError(f"{db_path} exists but is not a finished database; delete it or pass overwrite=True")
    work.mkdir(parents=True)
    store = _Store(work, backend)
    state, buffered, digest = _Progress(), [], hashlib.md5()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="img", desc=db_path.name)
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
            if mean_path is not None:
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
    if mean_path is not None:
        if state.count == 0 or state.total is None:
            raise DatabaseError(f"{db_path}: " + ("no records: no mean" if state.count == 0 else
                                                  "records of different sizes cannot have one mean"))
        protoio.write_mean(mean_path, (state.total / state.count).astype(np.float32))
    os.replace(work, db_path)
    marker = {"format": FORMAT, "source": "arrays", "backend": backend, "count": state.count,
              "keys_md5": digest.hexdigest(), "shape": state.shape, "skipped": 0,
              "mean": str(mean_path) if mean_path else None, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    protoio.atomic_write_bytes(db_path / MARKER, json.dumps(marker, indent=1).encode())
    return DbInfo(db_path, backend, state.count, digest.hexdigest(), state.shape, [],
                  Path(mean_path) if mean_path else None)


# ---------------------------------------------------------------- key-list views over one shared database

def make_view(view_dir, shared_db, files_txt, shared_files_txt, *, shuffle_seed=None) -> DbInfo:
    """A split as a key list over the database of a bigger list that contains all its images (e.g. whole_train).

    `view_dir` gets keys.tsv ("<key>\\t<key in shared_db>\\t<label>" per record; the key is the one a database
    of this split alone would have, the label the split's own) and, last, view.json (count, md5 of the keys,
    the shared database as a relative path). open_reader(view_dir) then yields exactly the records that
    convert_list(files_txt, ...) with the same options would have written.
    """
    view_dir, shared_db = Path(view_dir), Path(shared_db)
    marker = _read_marker(shared_db)
    if marker is None:
        raise DatabaseError(f"{shared_db}: not a finished database; convert {shared_files_txt} first")
    shared_items = _ordered(read_image_list(shared_files_txt), marker.get("shuffle_seed"))
    skipped = {relpath for relpath, _ in _info_from_marker(shared_db, marker).skipped}
    where = {relpath: make_key(i, relpath) for i, (relpath, _) in enumerate(shared_items) if relpath not in skipped}
    lines, keys, missing = [], [], []
    for i, (relpath, label) in enumerate(_ordered(read_image_list(files_txt), shuffle_seed)):
        if "\t" in relpath or "\n" in relpath:
            raise DatabaseError(f"{files_txt}: image path {relpath!r} holds a tab or newline; a view cannot list it")
        if relpath in skipped:
            missing.append((relpath, "skipped in the shared database"))
            continue
        target = where.get(relpath)
        if target is None:
            raise DatabaseError(f"{files_txt}: {relpath!r} is not in {shared_files_txt}, so the shared database "
                                f"{shared_db} cannot serve this split; convert it on its own (without --shared)")
        key = make_key(i, relpath)
        keys.append(key)
        lines.append(b"%s\t%s\t%d\n" % (key, target, label))
    view_dir.mkdir(parents=True, exist_ok=True)
    (view_dir / VIEW).unlink(missing_ok=True)
    protoio.atomic_write_bytes(view_dir / VIEW_KEYS, b"".join(lines))
    count, keys_md5 = _keys_md5(keys)
    report = view_dir.with_name(view_dir.name + ".skipped.txt")
    if missing:
        protoio.atomic_write_bytes(report, "".join(f"{p}\t{why}\n" for p, why in missing).encode())
    description = {"format": VIEW_FORMAT, "database": os.path.relpath(shared_db, view_dir), "count": count,
                   "keys_md5": keys_md5, "list": str(Path(files_txt).resolve()),
                   "list_md5": file_md5(files_txt), "shuffle_seed": shuffle_seed,
                   "backend": marker["backend"], "shape": marker.get("shape"), "skipped": len(missing)}
    protoio.atomic_write_bytes(view_dir / VIEW, json.dumps(description, indent=1).encode())
    return DbInfo(view_dir, "view", count, keys_md5, tuple(marker["shape"]) if marker.get("shape") else None,
                  missing)


def _read_view(view_dir: Path) -> dict:
    try:
        description = json.loads((view_dir / VIEW).read_text())
        text = (view_dir / VIEW_KEYS).read_bytes()
    except (OSError, ValueError) as err:
        raise DatabaseError(f"{view_dir}: unreadable key-list view ({err}); make it again with tools/make_dbs "
                            f"--shared") from None
    keys, targets, labels = [], [], []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            key, target, label = line.split(b"\t")
            labels.append(int(label))
        except ValueError:
            raise DatabaseError(f"{view_dir / VIEW_KEYS}:{number}: expected '<key>\\t<shared key>\\t<label>'; "
                                f"make the view again with tools/make_dbs --shared") from None
        keys.append(key)
        targets.append(target)
    if len(keys) != description.get("count"):
        raise DatabaseError(f"{view_dir}: {len(keys)} keys but view.json says {description.get('count')}; "
                            f"make the view again")
    return {"database": (view_dir / description["database"]).resolve(), "keys": keys, "targets": targets,
            "labels": labels, "description": description}


# ---------------------------------------------------------------- a whole data root

def split_dirs(data_root) -> list[Path]:
    """The split directories of a data root (<split>_train, <split>_valid, each with files.txt), sorted."""
    return sorted(p.parent for p in Path(data_root).glob("*/files.txt"))


def convert_data_root(data_root, image_root, *, val_root=None, shared=False, backend="lmdb", splits=None,
                      progress=True, **options) -> dict[str, DbInfo]:
    """Every split of a data root -> <split>/<backend>/ (+ <split>/mean.binaryproto for *_train splits).

    image_root: where the listed paths start; val_root: the same for the *_valid lists when they lie elsewhere
    (ILSVRC-2012: train/n01440764/... and val/ILSVRC2012_val_00000001.JPEG, as Caffe's create_imagenet.sh has it).

    shared: only whole_train and whole_valid become databases; every other split becomes a key-list view
    <split>/keys/ over the whole database of its kind (for our engine; real Caffe needs per-split databases).
    options: those of convert_list (resize, encoded, shuffle_seed, gray, workers, skip_bad, commit_every).
    """
    data_root = Path(data_root)
    dirs = split_dirs(data_root)
    if not dirs:
        raise DatabaseError(f"{data_root}: no <split>/files.txt here; make the split lists with tools/make_splits")
    if splits:
        wanted = set(splits)
        unknown = wanted - {d.name for d in dirs}
        if unknown:
            raise DatabaseError(f"{data_root}: no split(s) {', '.join(sorted(unknown))}")
        dirs = [d for d in dirs if d.name in wanted]
    results = {}
    whole = {kind: data_root / f"whole_{kind}" for kind in ("train", "valid")}
    if shared:
        for kind, path in whole.items():
            if not (path / "files.txt").is_file():
                raise DatabaseError(f"{path}/files.txt is missing: --shared serves every split from whole_{kind}")
        order = [whole["train"], whole["valid"]] + [d for d in dirs if d not in whole.values()]
    else:
        order = dirs
    for split in order:
        is_train = split.name.endswith("_train")
        mean_path = split / "mean.binaryproto" if is_train else None
        if shared and split not in whole.values():
            base = whole["train" if is_train else "valid"]
            info = make_view(split / "keys", base / backend, split / "files.txt", base / "files.txt",
                             shuffle_seed=options.get("shuffle_seed"))
            if mean_path is not None and not mean_path.exists():
                protoio.write_mean(mean_path, compute_mean(split / "keys", progress=progress))
                info.mean_path = mean_path
        else:
            root = val_root if val_root is not None and split.name.endswith("_valid") else image_root
            info = convert_list(split / "files.txt", root, split / backend, backend=backend,
                                mean_path=mean_path, progress=progress, **options)
        results[split.name] = info
    return results
