"""Data layers whose tops the engine computes in the net itself, as Caffe's plain (non-prefetching) layers do:
DummyData, HDF5Data, MemoryData, and HDF5Output (which writes its bottoms); and the Python layer, refused.

Their tops come out of `Net.forward` without inputs: `Net(param).forward({})`. Caffe's prefetching data layers that
read images (Data, ImageData, WindowData) are fed by engine/data.py's sources instead.

Random draws (DummyData's random fillers, HDF5Data's `shuffle`) come from the net's filler generator, not Caffe's
Boost RNG: the same distributions and the same orders of rows and files as Caffe, not the same numbers.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from convnet_transfer.formats.protoio import pb
from .. import glog
from ..errors import EngineError
from ..fillers import FILLERS, fill
from .base import Layer, register


class _SourceLayer(Layer):
    """A layer without bottoms whose tops are made on the net's device (a buffer that moves with the net)."""
    n_bottoms = (0, 0)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    def on_device(self, array) -> torch.Tensor:
        """A float32 array or CPU tensor on the net's device."""
        tensor = torch.as_tensor(array, dtype=torch.float32)
        return tensor.to(self._anchor.device, non_blocking=True)


@register
class DummyDataLayer(_SourceLayer):
    """Tops filled by `data_filler` (none: constant 0; one: for every top; else one per top), shaped by `shape`
    (once or once per top) or the legacy num/channels/height/width. A top with a constant filler is filled once;
    the others are refilled at every forward, as Caffe's refill_ rule."""
    type_name = "DummyData"
    allowed = {"dummy_data_param": None}
    n_tops = (1, 1 << 30)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.dummy_data_param
        n_top = len(lp.top)
        if len(p.data_filler) not in (0, 1, n_top):
            raise EngineError(f"{self.where}: Number of data fillers must be 0, 1 or equal to the number of tops: "
                              f"{n_top}; you specified {len(p.data_filler)} data fillers.")
        self.top_shapes = [self._shape(p, i, n_top) for i in range(n_top)]
        if len(p.data_filler):
            self.fillers = [p.data_filler[i if len(p.data_filler) > 1 else 0] for i in range(n_top)]
        else:
            self.fillers = [pb.FillerParameter(type="constant", value=0)] * n_top
        for f in self.fillers:   # random fillers draw at each forward only: their type is checked now
            if f.type not in FILLERS:
                raise EngineError(f"{self.where}: filler type '{f.type}' is not supported (supported: "
                                  f"{', '.join(sorted(FILLERS))})")
        self.constants = [None if f.type != "constant" or ctx.meta else self._fill(shape, f)
                          for shape, f in zip(self.top_shapes, self.fillers)]

    def _shape(self, p, i: int, n_top: int) -> tuple[int, ...]:
        legacy = {name: list(getattr(p, name)) for name in ("num", "channels", "height", "width")}
        if any(legacy.values()):
            if len(p.shape):
                raise EngineError(f"{self.where}: Both shape and legacy fields were specified")
            dims = []
            for name, values in legacy.items():
                if len(values) not in (1, n_top):
                    raise EngineError(f"{self.where}: Must specify '{name}' once, or once per top blob ({n_top}); "
                                      f"specified {len(values)}.")
                dims.append(int(values[0 if len(values) == 1 else i]))
            return tuple(dims)
        if len(p.shape) not in (1, n_top):
            raise EngineError(f"{self.where}: Must specify 'shape' once, or once per top blob ({n_top}); "
                              f"specified {len(p.shape)}.")
        return tuple(int(d) for d in p.shape[0 if len(p.shape) == 1 else i].dim)

    def _fill(self, shape, filler) -> torch.Tensor:
        return fill(shape, filler, self.ctx.generator, self.where)

    def forward(self):
        return [self.on_device(constant if constant is not None else self._fill(shape, filler))
                for constant, shape, filler in zip(self.constants, self.top_shapes, self.fillers)]


@register
class MemoryDataLayer(_SourceLayer):
    """Tops `data` (batch_size, channels, height, width) and `label` (batch_size, 1, 1, 1: the shape Caffe's
    Forward gives it) from arrays the caller hands over with `set_input_arrays(data, labels)` (pycaffe's
    net.set_input_arrays: no transformation), batch_size rows per forward, cycling through them."""
    type_name = "MemoryData"
    allowed = {"memory_data_param": None, "transform_param": None}
    n_tops = (2, 2)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.memory_data_param
        self.batch_size, self.dims = int(p.batch_size), (int(p.channels), int(p.height), int(p.width))
        if self.batch_size * math.prod(self.dims) <= 0:
            raise EngineError(f"{self.where}: batch_size, channels, height, and width must be specified and "
                              f"positive in memory_data_param")
        self.top_shapes = [(self.batch_size,) + self.dims, (self.batch_size, 1, 1, 1)]
        self.data = self.labels = None
        self.position = 0

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """pycaffe's Net.set_input_arrays: float32 C-contiguous `data` (N, channels, height, width) and `labels`
        (N,) or (N, 1, 1, 1), N a multiple of batch_size; kept by reference, as Caffe's Reset."""
        if labels.ndim == 1:
            labels = labels.reshape(-1, 1, 1, 1)
        for what, array, dims in (("data", data, self.dims), ("labels", labels, (1, 1, 1))):
            if array.dtype != np.float32 or not array.flags.c_contiguous:
                raise EngineError(f"{self.where}: {what} array must be C-contiguous float32")
            if array.ndim != 4 or tuple(array.shape[1:]) != dims:
                raise EngineError(f"{self.where}: {what} array has shape {array.shape}, needs (N, "
                                  f"{', '.join(map(str, dims))})")
        if data.shape[0] != labels.shape[0]:
            raise EngineError(f"{self.where}: data and labels must have the same first dimension")
        if data.shape[0] % self.batch_size:
            raise EngineError(f"{self.where}: first dimensions of input arrays must be a multiple of batch size")
        if self.lp.HasField("transform_param"):
            glog.warning("memory_data_layer.cpp:93", "MemoryData does not transform array data on Reset()")
        self.data, self.labels, self.position = data, labels, 0

    def forward(self):
        if self.data is None:
            raise EngineError(f"{self.where}: MemoryDataLayer needs to be initialized by calling Reset: its data "
                              f"come from the caller (net.layer('{self.name}').set_input_arrays(data, labels), as "
                              f"pycaffe's), which `caffe train`, `test` and `time` cannot give; read the data with "
                              f"a Data, ImageData or HDF5Data layer there.")
        rows = slice(self.position, self.position + self.batch_size)
        self.position = (self.position + self.batch_size) % len(self.data)
        return [self.on_device(torch.from_numpy(self.data[rows])), self.on_device(torch.from_numpy(self.labels[rows]))]


@register
class HDF5DataLayer(_SourceLayer):
    """Tops named after datasets of the .h5 files listed in hdf5_data_param.source (one name per whitespace
    token, paths relative to the working directory), read whole, one file at a time, as float32; batch_size rows
    per forward in Caffe's order (file by file, row by row, wrapping around at the end of the last file; with
    `shuffle`, the files and each file's rows in a random order, drawn again at every pass)."""
    type_name = "HDF5Data"
    allowed = {"hdf5_data_param": None, "transform_param": None}
    n_tops = (1, 1 << 30)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        if lp.HasField("transform_param"):
            raise EngineError(f"{self.where}: HDF5Data does not transform data (remove transform_param).")
        p = lp.hdf5_data_param
        self.batch_size, self.shuffle = int(p.batch_size), bool(p.shuffle)
        if self.batch_size <= 0:
            raise EngineError(f"{self.where}: hdf5_data_param.batch_size must be set and positive.")
        try:
            self.files = Path(p.source).read_text().split()
        except OSError:
            raise EngineError(f"{self.where}: Failed to open source file: {p.source}") from None
        glog.info("hdf5_data_layer.cpp:94", f"Number of HDF5 files: {len(self.files)}")
        if not self.files:
            raise EngineError(f"{self.where}: Must have at least 1 HDF5 filename listed in {p.source}")
        seed = None   # the net's filler generator draws only for shuffle: the fillers of other layers stay as they were
        if self.shuffle and ctx.generator is not None:
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=ctx.generator))
        self.rng = np.random.default_rng(seed)
        self.file_order = self._order(len(self.files))
        self.current_file, self.trailing = 0, None
        self._load()
        self.trailing = [a.shape[1:] for a in self.arrays]
        self.top_shapes = [(self.batch_size,) + shape for shape in self.trailing]

    def _order(self, n: int) -> np.ndarray:
        return self.rng.permutation(n) if self.shuffle else np.arange(n)

    def _load(self) -> None:
        """LoadHDF5FileData: every top's dataset of the current file, as float32; the row order; row 0."""
        import h5py
        name = self.files[self.file_order[self.current_file]]
        try:
            with h5py.File(name, "r") as f:
                self.arrays = [self._dataset(f, top, name) for top in self.lp.top]
        except OSError as err:
            raise EngineError(f"{self.where}: Failed opening HDF5 file: {name} ({err})") from None
        rows = self.arrays[0].shape[0]
        if any(a.shape[0] != rows for a in self.arrays):
            raise EngineError(f"{self.where}: the datasets {', '.join(self.lp.top)} of {name} have different "
                              f"numbers of rows ({', '.join(str(a.shape[0]) for a in self.arrays)})")
        if rows == 0:
            raise EngineError(f"{self.where}: {name} has no rows")
        if self.trailing is not None and [a.shape[1:] for a in self.arrays] != self.trailing:
            raise EngineError(f"{self.where}: the datasets of {name} are shaped unlike those of the first file")
        self.permutation = self._order(rows)
        self.row = 0

    def _dataset(self, f, top: str, name: str) -> np.ndarray:
        if top not in f:
            raise EngineError(f"{self.where}: Failed to find HDF5 dataset {top} in {name}")
        dataset = f[top]
        if dataset.ndim < 1 or dataset.dtype.kind not in "fiu":
            raise EngineError(f"{self.where}: dataset {top} of {name} must be a float or integer array of at "
                              f"least 1 axis (Caffe: Unsupported datatype class), got {dataset.dtype} "
                              f"{dataset.shape}")
        return np.asarray(dataset[()], dtype=np.float32)

    def _next(self) -> None:
        """Past the last row of a file: the next file (a new file order after the last one, with shuffle)."""
        if len(self.files) > 1:
            self.current_file += 1
            if self.current_file == len(self.files):
                self.current_file = 0
                if self.shuffle:
                    self.file_order = self._order(len(self.files))
            self._load()
        elif self.shuffle:
            self.permutation = self._order(len(self.permutation))
        self.row = 0

    def forward(self):
        out = [np.empty(shape, np.float32) for shape in self.top_shapes]
        done = 0
        while done < self.batch_size:
            take = min(self.batch_size - done, len(self.permutation) - self.row)
            index = self.permutation[self.row:self.row + take]
            for top, array in zip(out, self.arrays):
                top[done:done + take] = array[index]
            done, self.row = done + take, self.row + take
            if self.row == len(self.permutation):
                self._next()
        return [self.on_device(torch.from_numpy(top)) for top in out]


@register
class HDF5OutputLayer(Layer):
    """Writes its two bottoms to hdf5_output_param.file_name (created, or emptied, when the net is built) as the
    float datasets `data` and `label`, in Caffe's 4-D legacy shapes (num, channels, height, width). As Caffe's,
    it writes once: a second forward finds the datasets there and fails."""
    type_name = "HDF5Output"
    allowed = {"hdf5_output_param": None}
    n_bottoms = (2, 2)
    n_tops = (0, 0)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        if bottom_shapes[0][:1] != bottom_shapes[1][:1]:
            raise EngineError(f"{self.where}: data blob and label blob must have the same batch size")
        self.file_name = lp.hdf5_output_param.file_name
        if not ctx.meta:
            import h5py
            try:
                h5py.File(self.file_name, "w").close()
            except OSError as err:
                raise EngineError(f"{self.where}: Failed to open HDF5 file {self.file_name} ({err})") from None

    def forward(self, data, label):
        import h5py
        glog.info("hdf5_output_layer.cpp:31", f"Saving HDF5 file {self.file_name}")
        with h5py.File(self.file_name, "a") as f:
            for name, blob in (("data", data), ("label", label)):
                if name in f:
                    raise EngineError(f"{self.where}: Failed to make float dataset {name}: {self.file_name} "
                                      f"has it from an earlier forward (Caffe's HDF5Output writes once).")
                values = blob.detach().float().cpu().numpy()
                f.create_dataset(name, data=values.reshape(_legacy_shape(values.shape)))
        glog.info("hdf5_output_layer.cpp:36", f"Successfully saved {data.shape[0]} rows")
        return []


def _legacy_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Blob::num(), channels(), height(), width() of a blob of up to 4 axes (missing axes are 1)."""
    if len(shape) > 4:
        raise EngineError(f"HDF5Output: a blob of shape {shape} has more than 4 axes (Caffe's legacy shape)")
    return tuple(shape) + (1,) * (4 - len(shape))


@register
class PythonLayer(Layer):
    """Refused: a Python layer is user code written against pycaffe's Layer class and Blob objects."""
    type_name = "Python"

    def __init__(self, lp, bottom_shapes, ctx):
        p = lp.python_param
        raise EngineError(f"layer '{lp.name}' (type Python): python_param module '{p.module}' layer '{p.layer}' "
                          f"is Python code written for pycaffe (a caffe.Layer subclass with setup/reshape/forward/"
                          f"backward on caffe Blobs), which the engine cannot run; write it as a Caffe layer type "
                          f"the engine has, or give its tops as inputs (an Input layer) and compute them outside.")
