"""Filling an answer's long repeated float fields (scores, probabilities, contributions) without a
Python float per value."""

from __future__ import annotations

import numpy as np


def extend_floats(message, field: str, values: np.ndarray) -> None:
    """`message.<field>.extend(values)` for a repeated float field, as one parse of the field's packed
    wire form (the values' little-endian float32 bytes) instead of a Python float per value: the
    same values (both round to float32 to nearest), at a small part of the cost for hundreds."""
    number = message.DESCRIPTOR.fields_by_name[field].number
    payload = np.ascontiguousarray(values, dtype="<f4").tobytes()
    message.MergeFromString(_varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload)


_LENGTH_DELIMITED = 2  # the wire type of a packed repeated field


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
