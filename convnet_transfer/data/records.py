"""A Datum database's records, as Caffe's convert_imageset writes them: key b"%08d_<relative path>" (the line's
position in the, optionally shuffled, list), value a serialized Datum (raw BGR uint8 in C,H,W order, or the
encoded file). Decoding follows OpenCV exactly (convnet_transfer.data.images).
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Sequence, TypeVar

import numpy as np

from convnet_transfer.formats import caffe_pb2 as pb
from .images import decode_image

__all__ = ["make_key", "datum_bytes", "encoded_datum_bytes", "decode_datum", "keys_md5", "ordered"]

T = TypeVar("T")


def make_key(index: int, relpath: str) -> bytes:
    """convert_imageset's key: the position in the list, zero-padded to 8 digits, '_', the path as listed."""
    return b"%08d_" % index + relpath.encode()


def ordered(items: Sequence[T], shuffle_seed: int | None) -> Sequence[T]:
    """A list's records in database order: as listed, or shuffled by numpy's default_rng(shuffle_seed) (the
    order make_key numbers; every database and view of one list with one seed agrees on it)."""
    if shuffle_seed is None:
        return items
    order = np.random.default_rng(shuffle_seed).permutation(len(items))
    return [items[i] for i in order]


def datum_bytes(array: np.ndarray, label: int) -> bytes:
    """A raw Datum from a C x H x W uint8 array, serialized as Caffe's CVMatToDatum + set_label writes it."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim != 3:
        raise ValueError(f"expected a C x H x W array, got shape {array.shape}")
    c, h, w = array.shape
    return pb.Datum(channels=c, height=h, width=w, data=array.tobytes(), label=int(label),
                    encoded=False).SerializeToString()


def encoded_datum_bytes(data: bytes, label: int) -> bytes:
    """An encoded Datum: the image file's bytes (JPEG, PNG), as Caffe's ReadFileToDatum / EncodeCVMatToDatum."""
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


def keys_md5(keys: Iterable[bytes]) -> tuple[int, str]:
    """(count, md5 of the keys, each followed by a newline): what a finished database's marker records."""
    digest, count = hashlib.md5(), 0
    for key in keys:
        digest.update(key + b"\n")
        count += 1
    return count, digest.hexdigest()
