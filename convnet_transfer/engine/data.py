"""The Data layer: batches from a Datum database, transformed as Caffe's DataTransformer does.

`DataLayerSource(layer, phase, device, seed=...)` reads the layer's `data_param.source` (LMDB, LevelDB, or a
key-list view that `convnet_transfer.databases.open_reader` understands) in key order, `batch_size` records a
batch, and rewinds at the end ("Restarting data prefetching from start.") like Caffe's DataLayer.

Transformation (data_transformer.cpp): `(x - mean) * scale`, mean from `mean_file` (a full-size mean, subtracted
before cropping) or `mean_value` (one per channel, or one for all); `crop_size`: a random crop in TRAIN, the
centre crop in TEST; `mirror`: a random horizontal flip (in either phase, as Caffe). The random draws come from
this source's own generator (numpy PCG64, seeded from the solver's random_seed and the layer), not Caffe's
Boost RNG: crops and flips are distributed as Caffe's, not the same ones.

Pipeline: a background thread reads raw records and decodes them into uint8 batches (worker processes do the
decoding when `workers` > 0, useful for JPEG-encoded Datums), `prefetch` batches ahead. The crop, mirror, mean
and scale run as tensor operations on the training device (the GPU under CUDA), on uint8 data copied there.
The random draws are made when a batch is consumed, so results do not depend on prefetching or workers, and
`state_dict()` / `load_state_dict()` save and restore the position and generator for an exact resume.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import numpy as np
import torch

from .. import caffe_pb2 as pb
from .. import protoio
from . import glog
from .errors import EngineError

__all__ = ["DataLayerSource", "DATA_LAYER_TYPES", "DataError", "decode_record"]

DATA_LAYER_TYPES = ("Data",)


class DataError(EngineError):
    """A data layer that cannot be served: names the layer and its source and what to do."""


# ---------------------------------------------------------------- records

_DECODE_DATUM = []   # convnet_transfer.databases.decode_datum, looked up once (None when that stage is absent)


def _databases_decoder():
    if not _DECODE_DATUM:
        try:
            from ..databases import decode_datum
        except ImportError:
            decode_datum = None
        _DECODE_DATUM.append(decode_datum)
    return _DECODE_DATUM[0]


def decode_record(value: bytes) -> tuple[np.ndarray, int]:
    """Raw Datum bytes -> (array C,H,W: uint8 for pixel data, float32 for float_data; label)."""
    decode_datum = _databases_decoder()
    datum = pb.Datum()
    datum.ParseFromString(value)
    if datum.float_data and not datum.data:
        array = np.asarray(datum.float_data, dtype=np.float32).reshape(datum.channels, datum.height, datum.width)
        return array, int(datum.label)
    if decode_datum is not None:
        array, label = decode_datum(value)
        return np.asarray(array), int(label)
    if datum.encoded:
        import io

        from PIL import Image
        image = Image.open(io.BytesIO(datum.data))
        image = image.convert("RGB" if datum.channels != 1 else "L")
        array = np.asarray(image)
        array = array[None] if array.ndim == 2 else array[:, :, ::-1].transpose(2, 0, 1)  # RGB -> BGR, HWC -> CHW
        return np.ascontiguousarray(array), int(datum.label)
    array = np.frombuffer(datum.data, dtype=np.uint8).reshape(datum.channels, datum.height, datum.width)
    return array, int(datum.label)


def _decode_chunk(values: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    arrays, labels = zip(*(decode_record(v) for v in values))
    return np.stack(arrays), np.asarray(labels, dtype=np.int64)


def _worker_init() -> None:
    """Workers leave signals to the trainer (it snapshots, then stops them) and die with it (Linux)."""
    import signal
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Cursor:
    """Key-ordered records of one database, with `seek(key)` where the backend allows it (LMDB, LevelDB)."""

    def __init__(self, path: Path, backend: str):
        self.path = path
        self.kind = _kind(path)
        from ..databases import open_reader, shared_handle

        # one handle per database and process, shared with every other reader of it in this process
        # (py-lmdb refuses to open an environment twice; LevelDB locks its directory)
        if self.kind == "lmdb":
            self._txn = shared_handle(path).begin(buffers=False)
            self.size = self._txn.stat()["entries"]
        elif self.kind == "leveldb":
            self._db = shared_handle(path)
            self.size = sum(1 for _ in self._db.iterator(include_value=False))
        else:
            self._reader = open_reader(path)
            self.size = len(self._reader)
        if self.size == 0:
            raise DataError(f"{path}: the database is empty; re-create it (tools/make_dbs).")
        self._iter = None
        self.seek(None)

    def seek(self, key: bytes | None, skip: int = 0) -> None:
        """Position at `key` (the first record when None), else at the first record plus `skip`."""
        if self.kind == "lmdb":
            cursor = self._txn.cursor()
            if key is None:
                cursor.first()
            elif not cursor.set_range(key):
                cursor.first()
            self._iter = cursor.iternext(keys=True, values=True)
        elif self.kind == "leveldb":
            self._iter = self._db.iterator(start=key) if key is not None else self._db.iterator()
        else:
            self._iter = iter(self._reader)
        self._lookahead = next(self._iter, None)
        if key is None:
            for _ in range(skip):
                self.next()

    def next(self) -> tuple[bytes, bytes]:
        """The next record; rewinds to the first (and says so, as Caffe does) after the last."""
        if self._lookahead is None:
            self.seek(None)
        record = self._lookahead
        self._lookahead = next(self._iter, None)
        if self._lookahead is None:
            glog.info("data_layer.cpp:73", "Restarting data prefetching from start.")
            self.seek(None)
        return bytes(record[0]), bytes(record[1])

    def peek_key(self) -> bytes:
        return bytes(self._lookahead[0])

    def close(self) -> None:
        """End this cursor's read transaction; the shared handle stays open for the process's other readers."""
        if self.kind == "lmdb" and self._txn is not None:
            self._txn.abort()
            self._txn = None


def _kind(path: Path) -> str:
    if (path / "data.mdb").exists():
        return "lmdb"
    if (path / "CURRENT").exists():
        return "leveldb"
    return "other"


# ---------------------------------------------------------------- the source

class DataLayerSource:
    """Batches {top: tensor} for one Data layer. tops[0]: float32 (N,C,H',W') on `device`; tops[1]: float32 labels."""

    def __init__(self, layer: pb.LayerParameter, phase: str, device: torch.device | str = "cpu", *,
                 seed: int = 0, workers: int | None = None, prefetch: int | None = None):
        if layer.type not in DATA_LAYER_TYPES:
            raise DataError(f"layer '{layer.name}': data layer type '{layer.type}' is not supported by the engine "
                            f"(supported: {', '.join(DATA_LAYER_TYPES)}); convert the data to a Datum LMDB.")
        self.name = layer.name
        self.tops = list(layer.top)
        self.phase = phase
        self.device = torch.device(device)
        dp = layer.data_param
        self.batch_size = int(dp.batch_size)
        if self.batch_size <= 0:
            raise DataError(f"layer '{layer.name}': data_param.batch_size must be set and positive.")
        tp = _transform_param(layer)
        self.crop = int(tp.crop_size)
        self.mirror = bool(tp.mirror)
        self.scale = float(tp.scale)

        source = Path(dp.source)
        if not source.exists():
            raise DataError(f"layer '{layer.name}': data source {source} not found (paths are relative to the "
                            f"directory caffe runs in: {Path.cwd()}); create the database or fix data_param.source.")
        backend = pb.DataParameter.DB.Name(dp.backend)
        kind = _kind(source)
        if kind in ("lmdb", "leveldb") and kind != backend.lower():
            raise DataError(f"layer '{layer.name}': data source {source} is a {kind.upper()} database but "
                            f"data_param.backend is {backend}; set `backend: {kind.upper()}`.")
        self._cursor = _Cursor(source, backend)
        self.size = self._cursor.size

        first, _ = decode_record(self._cursor._lookahead[1])
        self.datum_shape = tuple(first.shape)
        channels, height, width = self.datum_shape
        if self.crop and (self.crop > height or self.crop > width):
            raise DataError(f"layer '{layer.name}': crop_size {self.crop} is larger than the images "
                            f"({height}x{width}) in {source}.")
        out_h, out_w = (self.crop, self.crop) if self.crop else (height, width)
        self.shapes = {self.tops[0]: (self.batch_size, channels, out_h, out_w)}
        if len(self.tops) > 1:
            self.shapes[self.tops[1]] = (self.batch_size,)

        self.mean = None
        if tp.HasField("mean_file") and tp.mean_value:
            raise DataError(f"layer '{layer.name}': cannot specify mean_file and mean_value at the same time.")
        if tp.HasField("mean_file"):
            glog.info("data_transformer.cpp:25", f"Loading mean file from: {tp.mean_file}")
            mean = protoio.read_mean(tp.mean_file)
            if tuple(mean.shape) != self.datum_shape:
                raise DataError(f"layer '{layer.name}': mean file {tp.mean_file} has shape {tuple(mean.shape)}, "
                                f"the data in {source} {self.datum_shape}; recompute the mean of this database.")
            self.mean = torch.from_numpy(mean).to(self.device)
        elif tp.mean_value:
            values = list(tp.mean_value)
            if len(values) not in (1, channels):
                raise DataError(f"layer '{layer.name}': specify either 1 mean_value or as many as channels: "
                                f"{channels}.")
            values = values * channels if len(values) == 1 else values
            self.mean = torch.tensor(values, dtype=torch.float32, device=self.device).view(channels, 1, 1)

        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._position = 0            # records consumed so far (mod size)
        self._next_key = None         # key of the next record to be consumed
        if dp.rand_skip:
            skip = int(self.rng.integers(0, dp.rand_skip))
            glog.info("data_layer.cpp:50", f"Skipping first {skip} data points.")
            self._position = skip % self.size
        self.workers = _default_workers(self.device) if workers is None else int(workers)
        self.prefetch = max(1, int(prefetch if prefetch is not None else dp.prefetch or 4))
        self._thread = None
        self._pool = None
        self._start(None)

    # ------------------------------------------------------------ background reading

    def _start(self, key: bytes | None) -> None:
        self._stop_thread()
        self._cursor.seek(key, skip=self._position if key is None else 0)
        self._next_key = self._cursor.peek_key()
        self._queue: queue.Queue = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        if self.workers > 0 and self._pool is None:
            import multiprocessing
            # fork, as torch's DataLoader: the workers only parse and decode bytes (no CUDA, no torch ops), and
            # spawn would re-run the main script of a tool that has no `if __name__ == "__main__"` guard
            context = multiprocessing.get_context("fork")
            self._pool = context.Pool(self.workers, initializer=_worker_init)
        self._thread = threading.Thread(target=self._fill, name=f"data:{self.name}", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                values = [self._cursor.next()[1] for _ in range(self.batch_size)]
                next_key = self._cursor.peek_key()
                if self._pool is not None:
                    step = -(-len(values) // self.workers)
                    parts = self._pool.map(_decode_chunk, [values[i:i + step] for i in range(0, len(values), step)])
                    data, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
                else:
                    data, labels = _decode_chunk(values)
                if data.shape[1:] != self.datum_shape:
                    raise DataError(f"layer '{self.name}': records of shape {data.shape[1:]} among records of "
                                    f"shape {self.datum_shape} in {self._cursor.path}; all images of a database "
                                    f"must have one size (re-create it with a resize).")
                data = torch.from_numpy(data)
                if self.device.type == "cuda":
                    data = data.pin_memory()
                item = (data, torch.from_numpy(labels), next_key)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # hand the error to the consumer
            self._queue.put(err)

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._stop.set()
            deadline = time.monotonic() + 30   # a daemon thread stuck on dead workers is left behind, not waited on
            while self._thread.is_alive() and time.monotonic() < deadline:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    self._thread.join(0.05)
            self._thread = None

    # ------------------------------------------------------------ batches

    def next_batch(self) -> dict[str, torch.Tensor]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        data, labels, next_key = item
        self._position = (self._position + self.batch_size) % self.size
        self._next_key = next_key
        batch = {self.tops[0]: self._transform(data)}
        if len(self.tops) > 1:
            batch[self.tops[1]] = labels.to(self.device, non_blocking=True).to(torch.float32)
        return batch

    def _transform(self, data: torch.Tensor) -> torch.Tensor:
        """Caffe's DataTransformer on a uint8 batch (N,C,H,W): mean, crop, mirror, scale, on the device."""
        n, channels, height, width = data.shape
        mirror = self.rng.integers(0, 2, n).astype(bool) if self.mirror else None
        if self.crop and self.phase == "TRAIN":
            h_off = self.rng.integers(0, height - self.crop + 1, n)
            w_off = self.rng.integers(0, width - self.crop + 1, n)
        elif self.crop:
            h_off = np.full(n, (height - self.crop) // 2)
            w_off = np.full(n, (width - self.crop) // 2)
        x = data.to(self.device, non_blocking=True).to(torch.float32)
        if self.mean is not None:
            x = x - self.mean
        if self.crop or (mirror is not None and mirror.any()):
            out_h, out_w = (self.crop, self.crop) if self.crop else (height, width)
            dev = self.device
            rows = torch.arange(out_h, device=dev).expand(n, out_h)
            cols = torch.arange(out_w, device=dev).expand(n, out_w)
            if self.crop:
                rows = rows + torch.from_numpy(h_off).to(dev)[:, None]
                cols = cols + torch.from_numpy(w_off).to(dev)[:, None]
            if mirror is not None:
                cols = torch.where(torch.from_numpy(mirror).to(dev)[:, None], cols.flip(1), cols)
            index_n = torch.arange(n, device=dev)[:, None, None, None]
            index_c = torch.arange(channels, device=dev)[None, :, None, None]
            x = x[index_n, index_c, rows[:, None, :, None], cols[:, None, None, :]]
        if self.scale != 1:
            x = x * self.scale
        return x.contiguous()

    # ------------------------------------------------------------ state (resume)

    def state_dict(self) -> dict:
        """Where the next batch starts and the random generator's state: JSON-serialisable."""
        return {"position": self._position, "next_key": self._next_key.hex() if self._next_key else None,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self._position = int(state["position"]) % self.size
        self.rng.bit_generator.state = state["rng"]
        key = bytes.fromhex(state["next_key"]) if state.get("next_key") else None
        if self._cursor.kind == "other":
            key = None
        self._start(key)

    def close(self) -> None:
        self._stop_thread()
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
        self._cursor.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _transform_param(layer: pb.LayerParameter) -> pb.TransformationParameter:
    """transform_param, with the deprecated data_param fields (scale, mean_file, crop_size, mirror) folded in."""
    tp = pb.TransformationParameter()
    tp.CopyFrom(layer.transform_param)
    dp = layer.data_param
    for field in ("scale", "mean_file", "crop_size", "mirror"):
        if dp.HasField(field) and not tp.HasField(field):
            setattr(tp, field, getattr(dp, field))
    return tp


def _default_workers(device: torch.device) -> int:
    env = os.environ.get("CAFFE_TORCH_WORKERS")
    if env:
        return int(env)
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0
