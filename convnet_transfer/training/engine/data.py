"""The Data layer: batches from a Datum database, transformed as Caffe's DataTransformer does; and
`open_data_source`, the source of any data layer read outside the net (Data here; ImageData, whose images go through
this same pipeline, and WindowData in imagedata.py; the other data layers compute their tops in the net).

`DataLayerSource(layer, phase, device, seed=...)` reads the layer's `data_param.source` (LMDB, LevelDB, or a
key-list view: `convnet_transfer.data.stores`, a backend per kind) in key order, `batch_size` records a
batch, and rewinds at the end ("Restarting data prefetching from start.") like Caffe's DataLayer.

Transformation (data_transformer.cpp): `(x - mean) * scale`, mean from `mean_file` (a full-size mean, subtracted
before cropping) or `mean_value` (one per channel, or one for all); `crop_size`: a random crop in TRAIN, the
centre crop in TEST; `mirror`: a random horizontal flip (in either phase, as Caffe). The random draws come from
this source's own generator (numpy PCG64, seeded from the solver's random_seed and the layer), not Caffe's
Boost RNG: crops and flips are distributed as Caffe's, not the same ones.

Pipeline: a background thread reads records and fills uint8 batches `prefetch` batches ahead. Raw Datums (the
paper's databases) are copied straight from LMDB's memory map into the batch (pinned memory under CUDA): their
wire format is read by hand (`raw_datum_layout`), without a protobuf parse of the pixels. Encoded Datums (JPEG,
PNG) are decoded by worker processes when `workers` > 0 (default under CUDA: all cores but 2, at most 16;
`-workers N` or $CAFFE_TORCH_WORKERS), straight into a batch in shared memory, else by the thread.
The thread also makes each batch's random draws, in batch order, and on the CPU applies the transform (numpy views,
channels-last output: it overlaps the net's work, as Caffe's prefetch thread does); under CUDA the crop, mirror,
mean and scale run on the GPU (one gather) on the uint8 batch, which the thread copies there on a CUDA stream of
its own (the copy overlaps the net's work). Both transforms give the same float32 bits. Each batch carries the
generator's state after its draws, so results do not depend on prefetching or workers, and `state_dict()` /
`load_state_dict()` save and restore the position and generator for an exact resume.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import numpy as np
import torch

from convnet_transfer.data import stores
from convnet_transfer.data.errors import DatabaseError
from convnet_transfer.formats import caffe_pb2 as pb
from convnet_transfer import processes
from convnet_transfer.formats import protoio
from convnet_transfer.formats.wire import FIXED32, FIXED64, LENGTH_DELIMITED, VARINT, read_varint
from . import glog
from .errors import EngineError
from .net import channels_last_on

__all__ = ["DataLayerSource", "ENGINE_DATA_LAYER_TYPES", "DataError", "decode_record", "open_data_source"]

# the data layer types read by a source here (imagedata.py: ImageData, WindowData); the other data layers of
# layers.CAFFE_DATA_LAYER_TYPES compute their tops in the net (layers/datalayers.py)
ENGINE_DATA_LAYER_TYPES = ("Data", "ImageData", "WindowData")


class DataError(EngineError):
    """A data layer that cannot be served: names the layer and its source and what to do."""


# ---------------------------------------------------------------- records

def decode_record(value) -> tuple[np.ndarray, int]:
    """Datum bytes -> (array C,H,W: uint8 for pixel data, BGR for colour; float32 for float_data; label); encoded
    images decoded as Caffe's DecodeDatumNative."""
    from convnet_transfer.data.records import decode_datum
    array, label = decode_datum(bytes(value))
    return np.asarray(array), int(label)


def raw_datum_layout(value) -> tuple[int, tuple[int, int, int], int] | None:
    """(offset of the pixel bytes, (C, H, W), label) of a raw uint8 Datum, read from the protobuf wire format
    without copying the pixels; None for anything else (encoded, float_data, malformed): `decode_record` then."""
    fields = {1: 0, 2: 0, 3: 0, 5: 0}
    data = None
    pos, end = 0, len(value)
    try:
        while pos < end:
            tag, pos = read_varint(value, pos)
            number, wire = tag >> 3, tag & 7
            if wire == VARINT:
                field, pos = read_varint(value, pos)
                if number == 7 and field:             # encoded: true
                    return None
                fields[number] = field
            elif wire == LENGTH_DELIMITED:
                length, pos = read_varint(value, pos)
                if number == 4:
                    data = (pos, length)
                elif number == 6 and length:          # packed float_data
                    return None
                pos += length
            elif wire == FIXED32 and number != 6:
                pos += 4
            elif wire == FIXED64:
                pos += 8
            else:                                    # float_data, or not protobuf
                return None
    except IndexError:
        return None
    shape = (fields[1], fields[2], fields[3])
    if pos != end or data is None or data[1] == 0 or data[1] != shape[0] * shape[1] * shape[2]:
        return None
    label = fields[5] - (1 << 64) if fields[5] >= 1 << 63 else fields[5]   # int32 varints are sign-extended
    return data[0], shape, label


_TORCH_DTYPE = {np.dtype(np.uint8): torch.uint8, np.dtype(np.float32): torch.float32}


_WORKER_BATCH: list[np.ndarray] = []   # in a worker process: the batch in shared memory it decodes into


def _decode_into_batch(job: tuple[str, int, list[tuple[bytes, bytes]]]) -> list[int]:
    """In a worker process: decode (key, value) records of one database into rows start.. of the shared batch;
    only the labels go back through the pipe (a decoded image through it costs more than its decoding)."""
    path, start, records = job
    batch, labels = _WORKER_BATCH[0], []
    for row, (key, value) in enumerate(records, start):
        batch[row], label = _decode_named(Path(path), key, value, batch.shape[1:])
        labels.append(label)
    return labels


def _decode_named(path: Path, key: bytes, value, shape: tuple | None = None) -> tuple[np.ndarray, int]:
    """decode_record, with an error that names the record (and its database) when the bytes are not a Datum, or
    when the image is not of `shape` (that of the database's other records)."""
    try:
        array, label = decode_record(value)
    except Exception as err:   # protobuf's DecodeError, a size that does not match C*H*W, an undecodable image
        raise DataError(f"record {key.decode(errors='replace')} in {path} is not a readable Datum ({err}); the "
                        f"database is damaged: re-create it (tools/make_dbs).") from None
    if shape is not None and array.shape != tuple(shape):
        raise DataError(f"record {key.decode(errors='replace')} in {path} has shape {array.shape} among records "
                        f"of shape {tuple(shape)}; all images of a database must have one size (re-create it with "
                        f"a resize).")
    return array, label


class _DecodeWorkers:
    """`count` forked processes that decode encoded Datums into `batch` (shared memory). One pipe each and no lock
    shared between processes (multiprocessing.Pool's queues have one), so stopping them with SIGKILL cannot
    leave anything held; and no multiprocessing bookkeeping that would wait for them at exit."""

    def __init__(self, count: int, batch: np.ndarray):
        from multiprocessing import Pipe
        self.pids, self.conns = [], []
        trainer = os.getpid()
        for _ in range(count):
            ours, theirs = Pipe()
            pid = os.fork()   # as torch's DataLoader: the workers only parse and decode bytes (no CUDA, no torch)
            if pid == 0:
                status = 1
                try:
                    ours.close()
                    _worker_init(batch, trainer)
                    _serve(theirs)
                    status = 0
                finally:
                    os._exit(status)
            theirs.close()
            self.pids.append(pid)
            self.conns.append(ours)

    def map(self, jobs: list) -> list:
        """Run one job per worker (at most as many jobs as workers); their results in order."""
        for conn, job in zip(self.conns, jobs):
            conn.send(job)
        results, error = [], None
        for conn in self.conns[:len(jobs)]:
            try:
                ok, value = conn.recv()
            except (EOFError, OSError):
                raise DataError("a data worker process died (killed, or out of memory); train again: the run "
                                "resumes from its last snapshot.") from None
            if ok:
                results.append(value)
            elif error is None:
                error = value
        if error is not None:
            raise error
        return results

    def close(self) -> None:
        import signal
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        for conn in self.conns:
            conn.close()
        self.pids, self.conns = [], []


def _serve(conn) -> None:
    """A worker's loop: decode the jobs the trainer sends until it closes its end of the pipe."""
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        try:
            conn.send((True, _decode_into_batch(job)))
        except Exception as err:   # a damaged record: the trainer raises it
            conn.send((False, err))


def _worker_init(batch: np.ndarray, trainer: int) -> None:
    """Workers leave signals to the trainer (it snapshots, then stops them: SIGKILL) and die with it (Linux)."""
    _WORKER_BATCH[:] = [batch]
    processes.as_worker_of(trainer)


class _Cursor:
    """Key-ordered records of one database, rewinding at the end as Caffe's DataLayer; `seek(key)` where the
    backend allows it (LMDB, LevelDB: `seekable`), else by position."""

    def __init__(self, path: Path):
        self.path = path
        try:
            # one handle per database and process, shared with every other reader of it in this process
            self._scan = stores.open_reader(path).scan()
        except DatabaseError as err:
            raise DataError(str(err)) from None
        self.size, self.seekable = self._scan.size, self._scan.seekable
        if self.size == 0:
            raise DataError(f"{path}: the database is empty; re-create it (tools/make_dbs).")
        self._iter = None
        self.seek(None)

    def seek(self, key: bytes | None, skip: int = 0) -> None:
        """Position at `key` (the first record when None), else at the first record plus `skip`."""
        self._iter = self._scan.seek(key)
        self._lookahead = next(self._iter, None)
        if key is None:
            for _ in range(skip):
                self.next()

    def next(self) -> tuple[bytes, bytes | memoryview]:
        """The next (key, value); rewinds to the first (and says so, as Caffe does) after the last. An LMDB
        value is a view of the memory map, valid while this cursor's read transaction lives."""
        if self._lookahead is None:
            self.seek(None)
        record = self._lookahead
        self._lookahead = next(self._iter, None)
        if self._lookahead is None:
            glog.info("data_layer.cpp:73", "Restarting data prefetching from start.")
            self.seek(None)
        return bytes(record[0]), record[1]

    def peek_key(self) -> bytes:
        return bytes(self._lookahead[0])

    def close(self) -> None:
        """End this cursor's read transaction; the shared handle stays open for the process's other readers."""
        self._scan.close()


# ---------------------------------------------------------------- the source

def open_data_source(layer: pb.LayerParameter, phase: str, device: torch.device | str = "cpu", *, seed: int = 0,
                     workers: int | None = None):
    """The source that feeds a data layer of ENGINE_DATA_LAYER_TYPES: next_batch(), shapes, state_dict()."""
    from . import imagedata
    sources = {"Data": DataLayerSource, "ImageData": imagedata.ImageDataSource,
               "WindowData": imagedata.WindowDataSource}
    if layer.type not in sources:
        raise DataError(f"layer '{layer.name}': data layer type '{layer.type}' is not read by a source (these "
                        f"are: {', '.join(ENGINE_DATA_LAYER_TYPES)}).")
    return sources[layer.type](layer, phase, device, seed=seed, workers=workers)


class DataLayerSource:
    """Batches {top: tensor} for one Data layer. tops[0]: float32 (N,C,H',W') on `device`; tops[1]: float32 labels.
    Subclasses read other records through the same pipeline (imagedata.ImageDataSource: `layer_type`, `params_name`,
    `_open_cursor`)."""
    layer_type, params_name = "Data", "data_param"

    def __init__(self, layer: pb.LayerParameter, phase: str, device: torch.device | str = "cpu", *,
                 seed: int = 0, workers: int | None = None, prefetch: int | None = None,
                 channels_last: bool | None = None):
        if layer.type != self.layer_type:
            raise DataError(f"layer '{layer.name}': a {type(self).__name__} reads {self.layer_type} layers, not "
                            f"'{layer.type}' (open_data_source chooses the source of a layer type).")
        self.name = layer.name
        self.tops = list(layer.top)
        self.phase = phase
        self.device = torch.device(device)
        # CPU batches come in the memory layout Net.place gives the net there: no copy per batch
        self.channels_last = channels_last_on(self.device) if channels_last is None else bool(channels_last)
        dp = self.params(layer)
        self.batch_size = int(dp.batch_size)
        if self.batch_size <= 0:
            raise DataError(f"layer '{layer.name}': {self.params_name}.batch_size must be set and positive.")
        tp = _transform_param(layer, dp)
        self.crop = int(tp.crop_size)
        self.mirror = bool(tp.mirror)
        self.scale = float(tp.scale)

        source = Path(dp.source)
        self._cursor = self._open_cursor(layer, source)
        self.size = self._cursor.size
        self._read_first(layer.name, source)

        self._mean_numpy = self._load_mean(tp, layer.name, source)
        self.mean = None if self._mean_numpy is None else torch.from_numpy(self._mean_numpy).to(self.device)
        self._mean_per_pixel = tp.HasField("mean_file")   # else one value per channel (mean_value)

        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._position = 0            # records consumed so far (mod size)
        self._next_key = None         # key of the next record to be consumed
        if dp.rand_skip:
            skip = int(self.rng.integers(0, dp.rand_skip))
            glog.info("data_layer.cpp:50", f"Skipping first {skip} data points.")
            self._position = skip % self.size
        # worker processes decode encoded images; raw pixels are faster copied by the reading thread itself
        self.workers = (_default_workers(self.device) if workers is None else int(workers)) if self.encoded else 0
        self.prefetch = max(1, int(prefetch if prefetch is not None else getattr(dp, "prefetch", 0) or 4))
        self._thread = None
        self._pool = None
        self._buffer = None
        self._copy_stream = None
        self._rng_state = self.rng.bit_generator.state   # after the draws of the last batch consumed
        self._start(None)

    def params(self, layer: pb.LayerParameter):
        """The layer's *_param (`params_name`): source, batch_size, rand_skip, the deprecated transformations."""
        return getattr(layer, self.params_name)

    def _open_cursor(self, layer: pb.LayerParameter, source: Path) -> "_Cursor":
        """The records in order, as a _Cursor: next(), seek(), peek_key(), close(), size, seekable, path."""
        return _open_source(layer.name, source, pb.DataParameter.DB.Name(layer.data_param.backend))

    def _read_first(self, name: str, source: Path) -> None:
        """The record shape, dtype and encoding, from the first record; the tops' shapes."""
        first_key, first_value = self._cursor._lookahead
        first, _ = self._decode(bytes(first_key), first_value)
        self.datum_shape, self.dtype = tuple(first.shape), first.dtype
        self.encoded = pb.Datum.FromString(bytes(first_value)).encoded
        channels, height, width = self.datum_shape
        if self.crop and (self.crop > height or self.crop > width):
            raise DataError(f"layer '{name}': crop_size {self.crop} is larger than the images "
                            f"({height}x{width}) in {source}.")
        out_h, out_w = (self.crop, self.crop) if self.crop else (height, width)
        self.shapes = {self.tops[0]: (self.batch_size, channels, out_h, out_w)}
        if len(self.tops) > 1:
            self.shapes[self.tops[1]] = (self.batch_size,)

    def _load_mean(self, tp: pb.TransformationParameter, name: str, source: Path) -> np.ndarray | None:
        """The mean to subtract (float32): the mean file's (C,H,W) image, or mean_value per channel (C,1,1)."""
        channels = self.datum_shape[0]
        if tp.HasField("mean_file") and tp.mean_value:
            raise DataError(f"layer '{name}': cannot specify mean_file and mean_value at the same time.")
        if tp.HasField("mean_file"):
            glog.info("data_transformer.cpp:25", f"Loading mean file from: {tp.mean_file}")
            mean = protoio.read_mean(tp.mean_file)
            if tuple(mean.shape) != self.datum_shape:
                raise DataError(f"layer '{name}': mean file {tp.mean_file} has shape {tuple(mean.shape)}, "
                                f"the data in {source} {self.datum_shape}; recompute the mean of this database.")
            return np.asarray(mean, np.float32)
        if tp.mean_value:
            values = list(tp.mean_value)
            if len(values) not in (1, channels):
                raise DataError(f"layer '{name}': specify either 1 mean_value or as many as channels: {channels}.")
            values = values * channels if len(values) == 1 else values
            return np.array(values, np.float32).reshape(channels, 1, 1)
        return None

    # ------------------------------------------------------------ background reading

    def _start(self, key: bytes | None) -> None:
        self._stop_thread()
        self._cursor.seek(key, skip=self._position if key is None else 0)
        self._next_key = self._cursor.peek_key()
        self._queue: queue.Queue = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        if self.workers > 0 and self._pool is None:
            import mmap
            # the batch the workers decode into: anonymous shared memory, mapped before the fork
            shape = (self.batch_size,) + self.datum_shape
            self._shared = np.frombuffer(mmap.mmap(-1, int(np.prod(shape)) * self.dtype.itemsize),
                                         self.dtype).reshape(shape)
            self._pool = _DecodeWorkers(self.workers, self._shared)
        self._thread = threading.Thread(target=self._fill, name=f"data:{self.name}", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                data, labels, next_key = self._read_batch()
                draws = self._draw(data.shape)
                copied = None
                if self.device.type == "cpu":   # here, overlapping the net's work, as Caffe's prefetch thread
                    data = torch.from_numpy(self._transform_numpy(data.numpy(), draws))
                elif self.device.type == "cuda":
                    data, labels, copied = self._copy_to_gpu(data, labels)
                item = (data, labels, next_key, draws, self.rng.bit_generator.state, copied)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # hand the error to the consumer
            self._queue.put(err)

    def _read_batch(self) -> tuple[torch.Tensor, torch.Tensor, bytes]:
        """The next batch_size records as (data N,C,H,W uint8 or float32, labels, key of the record after)."""
        try:
            records = [self._cursor.next() for _ in range(self.batch_size)]
            next_key = self._cursor.peek_key()
        except Exception as err:   # lmdb.CorruptedError, plyvel.CorruptionError, ...
            raise DataError(f"layer '{self.name}': reading {self._cursor.path} failed ({type(err).__name__}: "
                            f"{err}); the database is damaged: re-create it (tools/make_dbs).") from None
        if self._pool is not None:   # encoded images: decoded by the workers, straight into shared memory
            step = -(-len(records) // self.workers)
            path = str(self._cursor.path)
            jobs = [(path, i, [(key, bytes(value)) for key, value in records[i:i + step]])
                    for i in range(0, len(records), step)]
            labels = np.asarray([label for part in self._pool.map(jobs) for label in part], np.int64)
            if self.device.type == "cpu":   # transformed by this thread before the workers decode the next batch
                return torch.from_numpy(self._shared), torch.from_numpy(labels), next_key
            data = self._next_buffer()
            data.numpy()[:] = self._shared
            return data, torch.from_numpy(labels), next_key
        labels = np.empty(self.batch_size, np.int64)
        data = self._next_buffer()
        out = data.numpy()
        for i, (key, value) in enumerate(records):
            layout = raw_datum_layout(value)
            if layout is not None and layout[1] == self.datum_shape and self.dtype == np.uint8:
                offset, shape, labels[i] = layout
                out[i] = np.frombuffer(value, np.uint8, out[i].size, offset).reshape(shape)
                continue
            out[i], labels[i] = self._decode(key, value, self.datum_shape)
        return data, torch.from_numpy(labels), next_key

    def _copy_to_gpu(self, data: torch.Tensor, labels: torch.Tensor):
        """Start copying a pinned uint8 batch and its labels to the GPU on this source's own CUDA stream, so that
        the copy overlaps the net's work on the default stream; returns the GPU tensors and the event next_batch
        waits for."""
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            data = data.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._copy_stream)
        return data, labels, copied

    def _next_buffer(self) -> torch.Tensor:
        """Memory for the next raw batch. CPU: one buffer, allocated once (the thread transforms it before it
        reads the next batch; a fresh 50 MB batch costs more in page faults than reading the records). Other
        devices: a new one, pinned under CUDA (torch's caching host allocator reuses a pinned block only once its
        copy to the GPU is done)."""
        shape, dtype = (self.batch_size,) + self.datum_shape, _TORCH_DTYPE[self.dtype]
        if self.device.type != "cpu":
            return torch.empty(shape, dtype=dtype, pin_memory=self.device.type == "cuda")
        if self._buffer is None:
            self._buffer = torch.empty(shape, dtype=dtype)
        return self._buffer

    def _decode(self, key: bytes, value, shape: tuple | None = None) -> tuple[np.ndarray, int]:
        return _decode_named(self._cursor.path, key, value, shape)

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
        data, labels, next_key, draws, self._rng_state, copied = item
        self._position = (self._position + self.batch_size) % self.size
        self._next_key = next_key
        if copied is not None:   # on the GPU already, copied on our stream: the net's stream waits for it
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(copied)
            data.record_stream(stream)     # memory the copy stream allocated, now in use on this one
            labels.record_stream(stream)
        if self.device.type != "cpu":
            data = self._transform_on_device(data, draws)
        batch = {self.tops[0]: data}
        if len(self.tops) > 1:
            batch[self.tops[1]] = labels.to(self.device, non_blocking=True).to(torch.float32)
        return batch

    def _draw(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Caffe's per-image draws: crop offsets (random in TRAIN, the centre in TEST, 0 without crop_size) and
        mirror flags (random in either phase when `mirror`, else None)."""
        n, _, height, width = shape
        mirror = self.rng.integers(0, 2, n).astype(bool) if self.mirror else None
        if self.crop and self.phase == "TRAIN":
            h_off = self.rng.integers(0, height - self.crop + 1, n)
            w_off = self.rng.integers(0, width - self.crop + 1, n)
        else:
            h_off = np.full(n, (height - self.crop) // 2 if self.crop else 0)
            w_off = np.full(n, (width - self.crop) // 2 if self.crop else 0)
        return h_off, w_off, mirror

    def _transform_numpy(self, data: np.ndarray, draws) -> np.ndarray:
        """Caffe's DataTransformer on a batch (N,C,H,W), image by image on views (the crop and the mirror cost no
        copy): (x - mean) * scale, the mean taken at the source pixel, into a new float32 array (N,C,H',W'), laid
        out channels-last in memory when `self.channels_last`."""
        n, channels, height, width = data.shape
        h_off, w_off, mirror = draws
        out_h, out_w = (self.crop, self.crop) if self.crop else (height, width)
        if self.channels_last:
            out = np.empty((n, out_h, out_w, channels), np.float32).transpose(0, 3, 1, 2)
        else:
            out = np.empty((n, channels, out_h, out_w), np.float32)
        mean = self._mean_numpy
        for i in range(n):
            rows, cols = slice(h_off[i], h_off[i] + out_h), slice(w_off[i], w_off[i] + out_w)
            x = data[i, :, rows, cols]
            mu = mean[:, rows, cols] if self._mean_per_pixel else mean
            if mirror is not None and mirror[i]:
                x = x[:, :, ::-1]
                mu = mu[:, :, ::-1] if self._mean_per_pixel else mu
            if mu is None:
                out[i] = x
            else:
                np.subtract(x, mu, out=out[i], dtype=np.float32)
        if self.scale != 1:
            out *= np.float32(self.scale)
        return out

    def _transform_on_device(self, data: torch.Tensor, draws) -> torch.Tensor:
        """The same transform as `_transform_numpy`, as tensor operations on the training device (one gather for
        the whole batch): under CUDA, uint8 pixels cross the bus and the GPU does the rest. The gather's row and
        column indices are made here and sent in one asynchronous copy: a blocking copy to the GPU would wait for
        the previous iteration's work and leave the GPU idle while this one is queued."""
        n, channels, height, width = data.shape
        h_off, w_off, mirror = draws
        x = data.to(self.device, non_blocking=True).to(torch.float32, copy=True)   # never the caller's memory
        if self.mean is not None:
            x = x - self.mean
        if self.crop or (mirror is not None and mirror.any()):
            out_h, out_w = (self.crop, self.crop) if self.crop else (height, width)
            rows = np.arange(out_h) + h_off[:, None]
            cols = np.arange(out_w) + w_off[:, None]
            if mirror is not None:
                cols[mirror] = cols[mirror, ::-1]
            index = torch.from_numpy(np.concatenate([rows, cols], axis=1)).to(self.device, non_blocking=True)
            rows, cols = index[:, :out_h], index[:, out_h:]
            index_n = torch.arange(n, device=self.device)[:, None, None, None]
            index_c = torch.arange(channels, device=self.device)[None, :, None, None]
            x = x[index_n, index_c, rows[:, None, :, None], cols[:, None, None, :]]
        if self.scale != 1:
            x = x * self.scale
        return x.contiguous()

    # ------------------------------------------------------------ state (resume)

    def state_dict(self) -> dict:
        """Where the next batch starts and the random generator's state: JSON-serialisable."""
        return {"position": self._position, "next_key": self._next_key.hex() if self._next_key else None,
                "rng": self._rng_state}

    def load_state_dict(self, state: dict) -> None:
        self._position = int(state["position"]) % self.size
        self._stop_thread()   # it has drawn ahead for the batches it prefetched
        self.rng.bit_generator.state = self._rng_state = state["rng"]
        key = bytes.fromhex(state["next_key"]) if state.get("next_key") else None
        if not self._cursor.seekable:
            key = None
        self._start(key)

    def close(self) -> None:
        self._stop_thread()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._cursor.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _open_source(name: str, source: Path, backend: str) -> _Cursor:
    """A cursor on the layer's data source, which must exist and be of the kind data_param.backend names."""
    if not source.exists():
        raise DataError(f"layer '{name}': data source {source} not found (paths are relative to the "
                        f"directory caffe runs in: {Path.cwd()}); create the database or fix data_param.source.")
    kind = stores.kind_of(source)
    if kind in stores.BACKENDS and kind != backend.lower():
        raise DataError(f"layer '{name}': data source {source} is a {kind.upper()} database but "
                        f"data_param.backend is {backend}; set `backend: {kind.upper()}`.")
    return _Cursor(source)


def _transform_param(layer: pb.LayerParameter, dp) -> pb.TransformationParameter:
    """transform_param, with the deprecated fields (scale, mean_file, crop_size, mirror) of the layer's *_param
    `dp` (data_param, image_data_param) folded in."""
    tp = pb.TransformationParameter()
    tp.CopyFrom(layer.transform_param)
    for field in ("scale", "mean_file", "crop_size", "mirror"):
        if dp.HasField(field) and not tp.HasField(field):
            setattr(tp, field, getattr(dp, field))
    return tp


def _default_workers(device: torch.device) -> int:
    env = os.environ.get("CAFFE_TORCH_WORKERS")
    if env:
        return int(env)
    # JPEG decoding takes about 1 ms per 256x256 image and core: a GPU at 10,000 images/s needs ~12 cores
    return max(1, min(16, (os.cpu_count() or 1) - 2)) if device.type == "cuda" else 0
