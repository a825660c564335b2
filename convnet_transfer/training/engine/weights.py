"""Weight files: .caffemodel (a binary NetParameter with blobs), in every format Caffe has written.

    read_caffemodel(path) -> NetParameter in the current format (V0/V1 files, and the 2014 snapshots whose names
                             carry no extension, upgraded as Caffe's ReadNetParamsFromBinaryFileOrDie does)
    write_caffemodel(path, net_param)   atomic write
    blob_shape_equals(shape, blob)      Caffe's Blob::ShapeEquals (legacy 4-D num/channels/height/width accepted)
    blob_values(blob)                   the blob's values as a flat float32 array (double_data read too)
"""
from __future__ import annotations

import os

import numpy as np

from convnet_transfer.formats import protoio, wire
from convnet_transfer.formats.protoio import pb
from .errors import EngineError
from .upgrade import upgrade_net

__all__ = ["read_caffemodel", "write_caffemodel", "blob_shape_equals", "blob_values", "proto_shape_string",
           "array_to_blob_fast"]


def read_caffemodel(path: str | os.PathLike) -> pb.NetParameter:
    net = protoio.read_binary(path, pb.NetParameter)
    try:
        return upgrade_net(net)
    except EngineError as err:
        raise EngineError(f"{path}: {err}") from None


def write_caffemodel(path: str | os.PathLike, net: pb.NetParameter) -> None:
    protoio.write_binary(path, net)


def _legacy_shape(shape: tuple[int, ...], index: int) -> int:
    """Blob::LegacyShape(index) for index in -4..-1: 1 beyond the blob's axes."""
    if index >= len(shape) or index < -len(shape):
        return 1
    return shape[index]


def blob_shape_equals(shape: tuple[int, ...], blob: pb.BlobProto) -> bool:
    """Blob::ShapeEquals: a BlobProto with num/channels/height/width set matches a blob of at most 4 axes whose
    legacy 4-D shape is equal (so an InnerProduct weight (out, in) matches (1, 1, out, in))."""
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return (len(shape) <= 4 and _legacy_shape(shape, -4) == blob.num and _legacy_shape(shape, -3) == blob.channels
                and _legacy_shape(shape, -2) == blob.height and _legacy_shape(shape, -1) == blob.width)
    return tuple(shape) == tuple(int(d) for d in blob.shape.dim)


def proto_shape_string(blob: pb.BlobProto) -> str:
    shape = protoio.blob_shape(blob)
    return " ".join(str(d) for d in shape) + f" ({int(np.prod(shape))})"


def blob_values(blob: pb.BlobProto) -> np.ndarray:
    values = blob.double_data if len(blob.double_data) else blob.data
    return np.asarray(values, dtype=np.float32)


def _packed_floats(field_number: int, array: np.ndarray) -> bytes:
    return wire.length_delimited(field_number, np.ascontiguousarray(array, dtype="<f4").tobytes())


def array_to_blob_fast(array: np.ndarray, diff: np.ndarray | None = None) -> pb.BlobProto:
    """A BlobProto with `shape` and float `data` (and `diff`), as Blob::ToProto writes; built from the packed
    bytes directly (building repeated fields value by value takes seconds for CaffeNet's fc6)."""
    blob = pb.BlobProto()
    blob.shape.dim.extend(int(d) for d in array.shape)
    payload = _packed_floats(5, array)
    if diff is not None:
        payload += _packed_floats(6, diff)
    blob.MergeFromString(payload)
    return blob
