"""LEB128 varints: 7 bits a byte, lowest group first, the high bit set on every byte but a number's last; at
most ``MAX_BYTES`` bytes (56 bits). The numbers of the compact container table (:mod:`container`, version 5)
and of the ``RANGES`` payload (:mod:`ranges`) are written with :func:`encode` and read back with :func:`read`,
which checks every number against a caller's limit before it is used."""

from __future__ import annotations

from lorien.repo.errors import PatchError

MAX_BYTES = 8
LARGEST = (1 << (7 * MAX_BYTES)) - 1


def encode(value: int) -> bytes:
    """``value`` as a varint; a negative or too large value is a bug of the writer (ValueError), not input."""
    if not 0 <= value <= LARGEST:
        raise ValueError(f"a varint holds 0 to {LARGEST}, not {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def size(value: int) -> int:
    """How many bytes :func:`encode` writes for ``value``."""
    return max(1, -(-value.bit_length() // 7))


def read(data: bytes | memoryview, position: int, limit: int, what: str) -> tuple[int, int]:
    """The varint at ``position`` and the position after it; PatchError (naming ``what``) when the data ends
    inside it, it is longer than ``MAX_BYTES`` or its value is above ``limit``."""
    value = shift = 0
    for index in range(position, min(position + MAX_BYTES, len(data))):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value > limit:
                raise PatchError(f"{what} holds {value} where at most {limit} fits")
            return value, index + 1
        shift += 7
    raise PatchError(f"{what} ends inside a number")


def zigzag(value: int) -> int:
    """A signed number as an unsigned one, small magnitudes small: 0, -1, 1, -2, … → 0, 1, 2, 3, …"""
    return value << 1 if value >= 0 else (-value << 1) - 1


def unzigzag(value: int) -> int:
    return value >> 1 if not value & 1 else -((value + 1) >> 1)
