"""Datum databases by kind: one backend per kind, a registry keyed by kind, and one way to open each side.

    kind_of(path) -> "lmdb" | "leveldb" | "view" | None     what a directory holds (KINDS: the backends)
    open_reader(path) -> Lmdb | LevelDb | KeyView           (key, value) in key order, len, keys, get, scan;
                                                             a database directory or a split directory holding one
    open_writer(path, backend) -> writer                     put_many, keys, items_after, last_key, close
    is_complete(path) -> bool                                finished and verified (its MARKER, the count)

The kinds: an LMDB and a LevelDB directory (as Caffe's db_lmdb and db_leveldb), and a key-list view: VIEW_KEYS
("<key>\\t<key in the shared database>\\t<label>" per record) and VIEW over a database of a bigger list. Readers of
LMDB and LevelDB share one read-only handle per database and process (py-lmdb refuses to open an environment twice,
LevelDB locks its directory), opened again after a fork. Used by `databases` (converting, means) and by the
engine's Data layer (`scan`: its cursor).
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Iterator

from convnet_transfer.formats import caffe_pb2 as pb
from convnet_transfer.formats import protoio
from .errors import DatabaseError
from .layout import VIEW_DIR

__all__ = ["BACKENDS", "KINDS", "Lmdb", "LevelDb", "KeyView", "kind_of", "resolve", "open_reader", "open_writer",
           "read_view", "write_view", "read_marker", "write_marker", "is_complete", "MARKER", "VIEW", "VIEW_KEYS"]

BACKENDS = ("lmdb", "leveldb")                  # the kinds a database is written as
MARKER = "convnet_transfer.complete.json"      # inside a finished database directory, written last
VIEW = "view.json"                              # a key-list view directory's description (written last)
VIEW_KEYS = "keys.tsv"                          # its records: "<key>\t<key in the shared database>\t<label>"
VIEW_FORMAT = "convnet_transfer.key-view/1"
LMDB_MAP_SIZE = 1 << 40                         # 1 TiB of address space, as Caffe's db_lmdb (the file grows as written)

_READ_HANDLES: dict[str, tuple[int, object]] = {}   # realpath -> (pid, lmdb.Environment or plyvel.DB)


def _shared_handle(path: Path, backend):
    """One open handle per database and process, shared by its readers; `backend.open_handle` opens it again
    after a fork, given the parent's (inherited) handle."""
    key = os.path.realpath(path)
    pid, handle = _READ_HANDLES.get(key, (None, None))
    if pid != os.getpid():
        handle = backend.open_handle(path, key, handle)
        _READ_HANDLES[key] = (os.getpid(), handle)
    return handle


def _drop_shared_handle(path: Path) -> None:
    pid, handle = _READ_HANDLES.pop(os.path.realpath(path), (None, None))
    if handle is not None and pid == os.getpid():
        handle.close()


# ---------------------------------------------------------------- writing (LMDB, LevelDB)

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


class _Writer:
    """Write access to one database directory, with Caffe's options; every write is durable when it returns."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        _drop_shared_handle(path)
        self.errors = self._errors()
        try:
            self._open(path)
        except self.errors as err:
            raise _disk_error(path, err) from None

    def put_many(self, records: list[tuple[bytes, bytes]], ordered: bool = True) -> None:
        """Write `records` in one transaction, durable when this returns."""
        if not records:
            return
        try:
            self._put(records, ordered)
        except self.errors as err:
            raise _disk_error(self.path, err, need=sum(len(k) + len(v) for k, v in records)) from None


class LmdbWriter(_Writer):
    @staticmethod
    def _errors():
        import lmdb
        return lmdb.Error

    def _open(self, path: Path) -> None:
        import lmdb
        self.env = lmdb.open(str(path), map_size=LMDB_MAP_SIZE, subdir=True, meminit=False, max_dbs=0)

    def _put(self, records, ordered: bool) -> None:
        with self.env.begin(write=True) as txn:
            txn.cursor().putmulti(records, append=ordered)

    def keys(self) -> Iterator[bytes]:
        with self.env.begin() as txn:
            yield from txn.cursor().iternext(keys=True, values=False)

    def items_after(self, key: bytes | None) -> Iterator[tuple[bytes, bytes]]:
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

    def last_key(self) -> bytes | None:
        with self.env.begin() as txn:
            cursor = txn.cursor()
            return bytes(cursor.key()) if cursor.last() else None

    def close(self) -> None:
        self.env.close()


class LevelDbWriter(_Writer):
    @staticmethod
    def _errors():
        import plyvel
        return plyvel.Error

    def _open(self, path: Path) -> None:
        import plyvel
        self.db = plyvel.DB(str(path), create_if_missing=True, write_buffer_size=256 << 20, block_size=65536,
                            max_open_files=100)

    def _put(self, records, ordered: bool) -> None:
        with self.db.write_batch(sync=True) as batch:
            for key, value in records:
                batch.put(key, value)

    def keys(self) -> Iterator[bytes]:
        yield from self.db.iterator(include_value=False)

    def items_after(self, key: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        yield from self.db.iterator() if key is None else self.db.iterator(start=key, include_start=False)

    def last_key(self) -> bytes | None:
        for key in self.db.iterator(reverse=True, include_value=False):
            return key
        return None

    def close(self) -> None:
        self.db.close()


# ---------------------------------------------------------------- reading

class _Shared:
    """A reader of an LMDB or LevelDB directory through the process's shared handle: nothing to carry across a
    fork or a pickle but the path."""

    kind = marker = ""

    def __init__(self, path: Path):
        self.path = path

    def handle(self):
        return _shared_handle(self.path, type(self))

    def keys(self) -> Iterator[bytes]:
        return (key for key, _ in self.records(values=False))

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return self.records(values=True)

    def close(self) -> None:
        """Close the database in this process (every reader of it in this process: they reopen on next use)."""
        _drop_shared_handle(self.path)


class Lmdb(_Shared):
    """An LMDB directory (data.mdb), opened read-only without a lock file, as Caffe's db_lmdb reads."""

    kind, marker, writer = "lmdb", "data.mdb", LmdbWriter

    @staticmethod
    def open_handle(path: Path, key: str, inherited):
        import lmdb
        if inherited is not None:   # the parent's, inherited through fork: unusable here, and py-lmdb
            inherited.close()       # refuses a second open while it exists (lock=False: closing is local)
        try:
            env = lmdb.open(key, readonly=True, lock=False, subdir=True, max_readers=512)
        except lmdb.Error as err:
            raise DatabaseError(f"{path}: cannot open it as an LMDB database ({err}); it is damaged or was "
                                f"not written completely: delete it and re-create it (tools/make_dbs)") from None
        _check_lmdb_size(path, env)
        return env

    def __len__(self) -> int:
        return self.handle().stat()["entries"]

    def records(self, values: bool = True) -> Iterator[tuple[bytes, bytes | None]]:
        with self.handle().begin() as txn:
            if values:
                yield from txn.cursor().iternext(keys=True, values=True)
            else:
                yield from ((key, None) for key in txn.cursor().iternext(keys=True, values=False))

    def get(self, key: bytes) -> bytes | None:
        with self.handle().begin() as txn:
            return txn.get(key)

    def scan(self) -> "_LmdbScan":
        return _LmdbScan(self.handle())


class _LmdbScan:
    """Records from a key on, in one read transaction whose values are views of the memory map (no copy); valid
    until `close`."""

    seekable = True

    def __init__(self, env):
        self._txn = env.begin(buffers=True)
        self.size = self._txn.stat()["entries"]

    def seek(self, key: bytes | None) -> Iterator[tuple[bytes, memoryview]]:
        """The records from `key` on (the first record when None or when no key is at or after it)."""
        cursor = self._txn.cursor()
        if key is None or not cursor.set_range(key):
            cursor.first()
        return cursor.iternext(keys=True, values=True)

    def close(self) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = None


def _check_lmdb_size(path: Path, env) -> None:
    """An LMDB whose data.mdb is shorter than its header says (truncated by a copy or a full disk) is refused:
    reading a page past the end of the mapped file kills the process with SIGBUS, without a word."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = os.path.getsize(os.path.join(env.path(), "data.mdb"))
    if size < needed:
        env.close()
        raise DatabaseError(f"{path}: its data.mdb is truncated ({size} bytes, its header needs {needed}); it "
                            f"was not copied or written completely: delete it and re-create it (tools/make_dbs)")


class LevelDb(_Shared):
    """A LevelDB directory (CURRENT), as Caffe's db_leveldb."""

    kind, marker, writer = "leveldb", "CURRENT", LevelDbWriter

    @staticmethod
    def open_handle(path: Path, key: str, inherited):
        if inherited is not None:
            # LevelDB remembers its lock in process memory, so a forked child cannot open the directory again;
            # it reads through the inherited handle (safe once the parent is done writing). Open readers
            # after forking where you can.
            return inherited
        import plyvel
        try:
            return plyvel.DB(key, create_if_missing=False, max_open_files=100)
        except (plyvel.Error, OSError) as err:
            raise DatabaseError(f"{path}: cannot open it as a LevelDB database ({err}); if another process "
                                f"holds it, wait for that one; else delete it and re-create it "
                                f"(tools/make_dbs)") from None

    def __len__(self) -> int:
        return sum(1 for _ in self.handle().iterator(include_value=False))

    def records(self, values: bool = True) -> Iterator[tuple[bytes, bytes | None]]:
        if values:
            yield from self.handle().iterator()
        else:
            yield from ((key, None) for key in self.handle().iterator(include_value=False))

    def get(self, key: bytes) -> bytes | None:
        return self.handle().get(key)

    def scan(self) -> "_LevelDbScan":
        return _LevelDbScan(self)


class _LevelDbScan:
    seekable = True

    def __init__(self, db: LevelDb):
        self._db = db.handle()
        self.size = len(db)

    def seek(self, key: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """The records from `key` on (the first record when None)."""
        return self._db.iterator(start=key) if key is not None else self._db.iterator()

    def close(self) -> None:
        """The shared handle stays open for the process's other readers."""


class KeyView:
    """A key-list view: a split's records served from the database of a bigger list (labels remapped). Opens
    that database lazily and again in each process (fork-safe)."""

    kind, marker = "view", VIEW

    def __init__(self, path: Path):
        self.path = path
        self._view = read_view(path)
        self._pid, self._handle = None, None

    def _shared(self):
        if self._pid != os.getpid():
            self._handle, self._pid = open_reader(self._view["database"]), os.getpid()
        return self._handle

    def __len__(self) -> int:
        return len(self._view["keys"])

    def keys(self) -> Iterator[bytes]:
        return iter(self._view["keys"])

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return self.records(values=True)

    def records(self, values: bool = True) -> Iterator[tuple[bytes, bytes | None]]:
        rows = zip(self._view["keys"], self._view["targets"], self._view["labels"])
        if not values:
            yield from ((key, None) for key, _, _ in rows)
            return
        shared = self._shared()
        if shared.kind == "lmdb":   # one read transaction for the whole pass
            with shared.handle().begin() as txn:
                for key, target, label in rows:
                    yield key, self._relabel(self._found(txn.get(target), target), label)
        else:
            for key, target, label in rows:
                yield key, self._relabel(self._found(shared.get(target), target), label)

    def _found(self, value: bytes | None, target: bytes) -> bytes:
        if value is None:
            raise DatabaseError(f"{self.path}: record {target.decode(errors='replace')} is missing from the shared "
                                f"database {self._view['database']}; make the view again (tools/make_dbs --shared)")
        return value

    def get(self, key: bytes) -> bytes | None:
        index = self._view_index().get(key)
        if index is None:
            return None
        target = self._view["targets"][index]
        return self._relabel(self._found(self._shared().get(target), target), self._view["labels"][index])

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

    def scan(self) -> "_ViewScan":
        return _ViewScan(self)

    def close(self) -> None:
        """Close the shared database in this process."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle, self._pid = None, None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, None
        return state


class _ViewScan:
    """A view's records, from the first only (`seek` ignores the key: resume by position)."""

    seekable = False

    def __init__(self, view: KeyView):
        self._view = view
        self.size = len(view)

    def seek(self, key: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._view)

    def close(self) -> None:
        """Nothing to end: each pass reads in a transaction of its own."""


KINDS = {backend.kind: backend for backend in (Lmdb, LevelDb, KeyView)}


def kind_of(path: Path) -> str | None:
    """The kind of database directory `path` is (by the file each kind has), or None."""
    for kind, backend in KINDS.items():
        if (path / backend.marker).is_file():
            return kind
    return None


def resolve(path: Path) -> Path:
    """A database directory, or a split directory holding one (lmdb/, leveldb/ or keys/)."""
    if kind_of(path) is None and path.is_dir():
        for name in (*BACKENDS, VIEW_DIR):
            if kind_of(path / name) is not None:
                return path / name
    return path


def open_reader(db_path: str | os.PathLike) -> Lmdb | LevelDb | KeyView:
    """Read a Datum database: an LMDB, a LevelDB, a key-list view (labels remapped), or a split directory.
    Opens lazily and again in each process (fork-safe)."""
    path = resolve(Path(db_path))
    kind = kind_of(path)
    if kind is None:
        raise DatabaseError(f"{path}: not a Datum database (no data.mdb, LevelDB CURRENT or {VIEW}); "
                            f"make it with tools/make_dbs")
    return KINDS[kind](path)


def write_view(view_dir: Path, rows: list[tuple[bytes, bytes, int]], description: dict) -> None:
    """A key-list view: VIEW_KEYS, one (key, key in the shared database, label) row a line, then, last, VIEW
    (`description`: count, md5 of the keys, the shared database as a path relative to `view_dir`, ...)."""
    view_dir.mkdir(parents=True, exist_ok=True)
    (view_dir / VIEW).unlink(missing_ok=True)
    protoio.atomic_write_bytes(view_dir / VIEW_KEYS, b"".join(b"%s\t%s\t%d\n" % row for row in rows))
    protoio.atomic_write_bytes(view_dir / VIEW, json.dumps(dict(format=VIEW_FORMAT, **description),
                                                           indent=1).encode())


def read_view(view_dir: Path) -> dict:
    """A key-list view's description and records: {"database": the shared database (absolute), "keys",
    "targets" (their keys in it), "labels", "description" (view.json)}."""
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


def read_marker(path: Path) -> dict | None:
    """A finished database's completion marker (MARKER), or None."""
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def write_marker(path: Path, marker: dict) -> None:
    """Mark the database at `path` finished (written last, atomically): `marker` as JSON in MARKER."""
    protoio.atomic_write_bytes(path / MARKER, json.dumps(marker, indent=1).encode())


def is_complete(db_path: str | os.PathLike) -> bool:
    """True when the database (or view) was finished and verified: its marker exists and the count matches."""
    path = resolve(Path(db_path))
    kind = kind_of(path)
    if kind == "view":   # view.json is written last and checked against keys.tsv; the shared database too
        try:
            return is_complete(read_view(path)["database"])
        except (OSError, ValueError, KeyError, DatabaseError):
            return False
    marker = read_marker(path)
    if marker is None or kind is None:
        return False
    if kind == "lmdb":
        try:
            return len(Lmdb(path)) == marker["count"]
        except Exception:
            return False
    return True


def open_writer(path: Path, backend: str) -> LmdbWriter | LevelDbWriter:
    """Write access to the database directory `path` of kind `backend` (one of BACKENDS), created if missing."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {BACKENDS}")
    return KINDS[backend].writer(path)
