"""Caffe's file formats through the project's own schema (convnet_transfer/formats/proto/caffe.proto).

Text (.prototxt) and binary (.binaryproto, .caffemodel, .solverstate, Datum records) read and write,
and BlobProto <-> numpy. Errors name the file, and for text the line and column, and say what to do.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError, Message

from . import caffe_pb2 as pb

__all__ = [
    "pb", "ProtoFileError", "CAFFE_LAYER_TYPES", "parse_text", "read_text", "write_text", "to_text",
    "read_binary", "write_binary", "atomic_write_bytes", "file_mode", "os_error_naming",
    "read_net", "read_solver", "upgrade_solver", "blob_to_array", "array_to_blob", "read_mean", "write_mean",
]


# The layer types of BVLC Caffe (its layer registry: REGISTER_LAYER_CLASS / REGISTER_LAYER_CREATOR in src/caffe/layers
# and layer_factory.cpp, master). Caffe refuses any other type ("Unknown layer type").
CAFFE_LAYER_TYPES = frozenset("""
    AbsVal Accuracy ArgMax BNLL BatchNorm BatchReindex Bias Clip Concat ContrastiveLoss Convolution Crop Data
    Deconvolution Dropout DummyData ELU Eltwise Embed EuclideanLoss Exp Filter Flatten HDF5Data HDF5Output HingeLoss
    Im2col ImageData InfogainLoss InnerProduct Input LRN LSTM LSTMUnit Log MVN MemoryData MultinomialLogisticLoss
    PReLU Parameter Pooling Power Python RNN ReLU Reduction Reshape SPP Scale Sigmoid SigmoidCrossEntropyLoss Silence
    Slice Softmax SoftmaxWithLoss Split Swish TanH Threshold Tile WindowData""".split())


class ProtoFileError(ValueError):
    """A Caffe file that cannot be read: the message names the file (and line) and what to do."""


def parse_text(text: str, message: Message, source: str = "<string>") -> Message:
    """Merge prototxt `text` into `message`; a syntax error or unknown field names `source`:line:column."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        line, col = getattr(err, "GetLine", lambda: None)(), getattr(err, "GetColumn", lambda: None)()
        where = f"{source}:{line}:{col}" if line else source
        detail = str(err)
        # protobuf prefixes "line:col : "; keep only the explanation
        if ":" in detail and detail.split(":", 1)[0].strip().isdigit():
            detail = detail.split(" : ", 1)[-1]
        detail = detail.rstrip(".")
        raise ProtoFileError(f"{where}: malformed {message.DESCRIPTOR.name} prototxt: {detail}. "
                             f"Fix the file (Caffe's text format) and run again.") from None
    return message


def read_text(path: str | os.PathLike, message_type: type[Message]) -> Message:
    """Read a .prototxt file into a new `message_type`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ProtoFileError(f"{path}: cannot read ({err.strerror}).") from None
    except UnicodeDecodeError as err:
        raise ProtoFileError(f"{path}: not a text {message_type.DESCRIPTOR.name} prototxt (byte "
                             f"{err.object[err.start]:#04x} at offset {err.start} is not UTF-8 text): is it a binary "
                             f"file (.caffemodel, .binaryproto, .solverstate)? Pass the text .prototxt.") from None
    return parse_text(text, message_type(), str(path))


def to_text(message: Message) -> str:
    # protobuf 7 dropped float_format; its default prints floats as the shortest text that reads back exactly
    return text_format.MessageToString(message)


def file_mode(mode: int = 0o666) -> int:
    """`mode` less the process's umask: the permissions open() (Caffe's fopen, ofstream) gives a new file, and
    that a file made through a temporary file (mkstemp: always 0600) must be given to be readable alike."""
    umask = os.umask(0o022)
    os.umask(umask)
    return mode & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int = 0o666, durable: bool = True) -> None:
    """Write `data` to `path` through a temporary file and a rename: never a half-written file under `path`;
    `durable`: on the disk (fsync) before the rename. The file gets `mode` less the umask, as open() would give
    it. An OSError names `path` (a full disk's ENOSPC from write() names no file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode(mode))
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno is not None:
            raise os_error_naming(err, path) from None
        raise


def os_error_naming(err: OSError, path: str | os.PathLike) -> OSError:
    """`err` (same type, errno and text) naming `path` instead of the file it named, or none (write() on a
    full disk): `raise os_error_naming(err, out_dir) from None` tells the user which of their paths failed."""
    return type(err)(err.errno, err.strerror, str(path))


def write_text(path: str | os.PathLike, message: Message) -> None:
    atomic_write_bytes(path, to_text(message).encode())


def read_binary(path: str | os.PathLike, message_type: type[Message]) -> Message:
    """Read a binary protobuf file (.binaryproto, .caffemodel, .solverstate, or a 2014 snapshot without extension)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ProtoFileError(f"{path}: cannot read ({err.strerror}).") from None
    message = message_type()
    try:
        message.ParseFromString(data)
    except DecodeError as err:
        raise ProtoFileError(f"{path}: not a binary {message_type.DESCRIPTOR.name} ({err}); "
                             f"the file is truncated or of another kind: re-create it.") from None
    return message


def write_binary(path: str | os.PathLike, message: Message) -> None:
    atomic_write_bytes(path, message.SerializeToString())


def read_net(path: str | os.PathLike) -> pb.NetParameter:
    return read_text(path, pb.NetParameter)


def read_solver(path: str | os.PathLike) -> pb.SolverParameter:
    """Read a solver prototxt (either spelling of its type) and upgrade it: Caffe's
    ReadSolverParamsFromTextFileOrDie (upgrade_solver, with snapshot_prefix defaulted or expanded from `path`)."""
    return upgrade_solver(read_text(path, pb.SolverParameter), path)


_SOLVER_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                 "ADADELTA": "AdaDelta", "ADAM": "Adam"}


def upgrade_solver(solver: pb.SolverParameter, path: str | os.PathLike | None = None) -> pb.SolverParameter:
    """A copy of `solver` with `solver_type` (enum) turned into `type` (string) (UpgradeSolverAsNeeded) and,
    when `path` is given, snapshot_prefix defaulted/expanded as UpgradeSnapshotPrefixProperty does."""
    out = pb.SolverParameter()
    out.CopyFrom(solver)
    if out.HasField("solver_type"):
        if out.HasField("type"):
            raise ProtoFileError(f"{path or 'solver'}: both `solver_type` (old enum) and `type` (string) are set; "
                                 f"keep only `type`")
        out.type = _SOLVER_TYPES[pb.SolverParameter.SolverType.Name(out.solver_type)]
        out.ClearField("solver_type")
    if path is not None:
        path = Path(path)
        if not out.HasField("snapshot_prefix"):
            out.snapshot_prefix = str(path.with_suffix(""))
        elif os.path.isdir(out.snapshot_prefix):
            out.snapshot_prefix = str(Path(out.snapshot_prefix) / path.stem)
    return out


# ---------------------------------------------------------------- blobs

def blob_shape(blob: pb.BlobProto) -> tuple[int, ...]:
    """The blob's shape: `shape.dim` when set, else the legacy (num, channels, height, width)."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    return (blob.num, blob.channels, blob.height, blob.width)


def blob_to_array(blob: pb.BlobProto, diff: bool = False) -> np.ndarray:
    """BlobProto -> float32 array of the blob's shape (double_data is read too)."""
    shape = blob_shape(blob)
    values = (blob.double_diff or blob.diff) if diff else (blob.double_data or blob.data)
    array = np.asarray(values, dtype=np.float32)
    if array.size != int(np.prod(shape)):
        raise ProtoFileError(f"blob of shape {shape} holds {array.size} values, not {int(np.prod(shape))}")
    return array.reshape(shape)


def array_to_blob(array: np.ndarray, legacy_4d: bool = False) -> pb.BlobProto:
    """Array -> BlobProto. Current Caffe writes `shape`; `legacy_4d` writes num/channels/height/width instead
    (what compute_image_mean and 2014 Caffe wrote for 4-D blobs)."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    blob = pb.BlobProto()
    if legacy_4d:
        dims = (1,) * (4 - array.ndim) + array.shape
        blob.num, blob.channels, blob.height, blob.width = (int(d) for d in dims)
    else:
        blob.shape.dim.extend(int(d) for d in array.shape)
    blob.data.extend(array.ravel().tolist())
    return blob


def read_mean(path: str | os.PathLike) -> np.ndarray:
    """A mean .binaryproto -> float32 array (channels, height, width)."""
    array = blob_to_array(read_binary(path, pb.BlobProto))
    return array.reshape(array.shape[-3:]) if array.ndim >= 3 else array


def write_mean(path: str | os.PathLike, mean: np.ndarray) -> None:
    """Write a (C, H, W) mean as compute_image_mean does: a 1xCxHxW BlobProto with num/channels/height/width."""
    write_binary(path, array_to_blob(mean.reshape((1,) + mean.shape[-3:]), legacy_4d=True))
