"""Protobuf's wire format by hand, for the two paths where the generated classes are too slow: reading a raw
Datum's pixels without a parse (engine/data.py) and writing large float blobs (engine/weights.py).

    read_varint(buf, pos) -> (value, position after it)
    varint(n) -> bytes
    length_delimited(field_number, data) -> bytes      tag, length and the bytes of one wire-type-2 field
"""
from __future__ import annotations

__all__ = ["VARINT", "FIXED64", "LENGTH_DELIMITED", "FIXED32", "read_varint", "varint", "length_delimited"]

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5   # the wire types (the low 3 bits of a tag)


def read_varint(buf, pos: int) -> tuple[int, int]:
    """The varint at `buf[pos]` and the position after it; IndexError when `buf` ends inside it."""
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def varint(n: int) -> bytes:
    """A non-negative integer as a varint."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(field_number: int, data: bytes) -> bytes:
    """Field `field_number` holding `data` (bytes, a string, a message or a packed repeated field)."""
    return varint(field_number << 3 | LENGTH_DELIMITED) + varint(len(data)) + data
