"""Codec 10 (``SPARSE_DIFF``, container version 4): the few elements that changed, as gaps and differences.

Create side: target and reference of equal length, read as ``width``-byte little-endian integers (float bits
taken as they are), in one of two modes::

    ELEMENTS: changed element indices → gaps (index − previous index − 1; the first gap is the first index)
    BYTES:    entries of ``width`` bytes at any byte offset, greedily covering every changed byte from the
              first one on → gaps in bytes (start − previous entry's end; the first gap is the first start) —
              for tensors at odd offsets (ONNX ``raw_data``, zip entries) inside a run of generic bytes; each
              gap is stored as gap // width (a varint) and gap % width (one byte, in a stream of its own:
              nearly all zero where the changes are aligned elements, so it costs almost nothing)
      → raw stream: uint8 mode, uint32 count, the gaps as LEB128 varints (a gap under 128 is one byte), in mode
        BYTES then the ``count`` remainder bytes, then zigzag(target − reference) of the changed elements or
        entries as byte planes (lowest byte first)
      → one entropy stage (zstd, LZMA2, bzip2 or Brotli: the segment's backend, see :func:`codecs.pack`)

Apply side: the raw stream is checked before use — at most about ``length / width * (1 + width)`` bytes decoded, a
known mode, ``count`` within the segment, exactly ``count`` varints of at most 5 bytes each, every entry inside
the segment — then the differences are added to a copy of the reference.

Codec 12 (``SPARSE_DIFF_CRC``, version 6) puts a list of CRC-32 fields in front of the same stream: after the
differences are added, each field becomes the checksum of its span of the output (a zip entry's CRC-32 in its
local header and in the central directory, which otherwise change by 8 random bytes per touched entry).

Unlike codec 5 (``SPARSE``, which stores the new values and their gaps as uint32 planes), a small change of a
float costs only its low bytes (a 1 % change of a float32 leaves the top plane zero), and a gap costs one byte.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from collections.abc import Sequence

import numpy as np

from lorien.repo.engine import varints as variable
from lorien.repo.engine.codecs import _UINT, _unzigzag, _zigzag, from_planes, to_planes, unpack
from lorien.repo.engine.container import Backend
from lorien.repo.errors import PatchError

MAX_SHARE = 4  # more than 1/MAX_SHARE of the elements changed: a dense residual codes it better
VARINT_BYTES = 5  # a gap is below 2**35: at most five 7-bit groups
ELEMENTS, BYTES = 0, 1  # modes: positions count aligned elements, or bytes (entries at any offset)
HEAD = struct.Struct("<BI")  # mode, count


def sparse_diff_residual(
    target: bytes, reference: bytes | memoryview, width: int, mode: int = ELEMENTS
) -> bytes | None:
    """The raw stream (before the entropy stage); None when more than a quarter of the elements changed (or, in
    mode BYTES, of the bytes)."""
    if mode == BYTES:
        return _bytes_residual(target, reference, width)
    new = np.frombuffer(target, dtype=_UINT[width])
    old = np.frombuffer(reference, dtype=_UINT[width])
    changed = np.flatnonzero(new != old)
    if len(changed) > len(new) // MAX_SHARE:
        return None
    gaps = np.diff(changed, prepend=-1) - 1
    differences = _zigzag((new[changed] - old[changed]).astype(_UINT[width]), width)
    return HEAD.pack(ELEMENTS, len(changed)) + varints(gaps) + to_planes(differences, width)


def _bytes_residual(target: bytes, reference: bytes | memoryview, width: int) -> bytes | None:
    new = np.frombuffer(target, dtype=np.uint8)
    old = np.frombuffer(reference, dtype=np.uint8)
    changed = np.flatnonzero(new != old)
    if len(changed) > len(new) // MAX_SHARE or len(new) < width:  # (then no entry fits)
        return None
    starts: list[int] = []
    end = 0
    for index in changed.tolist():  # greedy: an entry starts at the first changed byte it does not cover
        if index >= end:
            start = min(index, len(new) - width)  # the last entry may start earlier to end with the data ...
            if start < end:
                return None  # ... unless that overlaps the one before: this mode cannot say it
            starts.append(start)
            end = start + width
    positions = np.array(starts, dtype=np.int64)
    gaps = np.diff(positions, prepend=-width) - width
    wrapped = (_gather(new, positions, width) - _gather(old, positions, width)) & _mask(width)
    differences = _zigzag(wrapped.astype(_UINT[width]), width)
    whole, rest = np.divmod(gaps, width)
    return (
        HEAD.pack(BYTES, len(starts))
        + varints(whole)
        + rest.astype(np.uint8).tobytes()
        + to_planes(differences, width)
    )


def _shifts(width: int) -> np.ndarray:
    return np.arange(width, dtype=np.uint64) * np.uint64(8)


def _mask(width: int) -> np.uint64:
    return np.uint64((1 << (8 * width)) - 1)


def _gather(data: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
    """The little-endian ``width``-byte integers at byte ``positions`` (any alignment), as uint64."""
    index = positions[:, None] + np.arange(width)
    return (data[index].astype(np.uint64) << _shifts(width)).sum(axis=1, dtype=np.uint64)


def varints(values: np.ndarray) -> bytes:
    """Non-negative integers (< 2**35) as LEB128: 7 bits per byte, lowest first, high bit set on all but the
    last byte of each value."""
    values = values.astype(np.int64)
    sizes = np.ones(len(values), dtype=np.int64)
    for step in range(1, VARINT_BYTES):
        sizes += values >= (1 << (7 * step))
    starts = np.cumsum(sizes) - sizes
    out = np.zeros(int(sizes.sum()), dtype=np.uint8)
    for step in range(VARINT_BYTES):
        has = sizes > step
        more = (sizes[has] > step + 1).astype(np.uint8) << 7
        out[starts[has] + step] = ((values[has] >> (7 * step)) & 0x7F).astype(np.uint8) | more
    return out.tobytes()


def read_varints(data: bytes | memoryview, count: int) -> np.ndarray:
    """Exactly ``count`` LEB128 values filling ``data``, each at most five bytes; else PatchError."""
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw < 0x80)
    if len(ends) != count or (count and ends[-1] != len(raw) - 1) or (not count and len(raw)):
        raise PatchError(f"sparse gaps hold {len(ends)} values where the count says {count}")
    if not count:
        return np.zeros(0, dtype=np.int64)
    starts = np.concatenate(([0], ends[:-1] + 1))
    if int((ends - starts).max()) >= VARINT_BYTES:
        raise PatchError(f"a sparse gap is longer than {VARINT_BYTES} bytes")
    group = np.repeat(np.arange(count), ends - starts + 1)
    shift = 7 * (np.arange(len(raw)) - starts[group])
    parts = (raw & 0x7F).astype(np.int64) << shift
    return np.add.reduceat(parts, starts)


def decode_sparse_diff(
    payload: bytes, backend: Backend, reference: bytes | memoryview, length: int, width: int
) -> bytes:
    """Exactly ``length`` bytes: the reference with the listed differences added; PatchError otherwise."""
    return _decode_raw(unpack(payload, backend, None, raw_bound(length, width)), reference, length, width)


def raw_bound(length: int, width: int) -> int:
    """The largest raw stream a segment of ``length`` bytes may have: at most length // width entries (they do
    not overlap) of one varint byte each, plus 4 more bytes for each gap of 128 bytes or more (gaps add up to
    at most the length)."""
    return HEAD.size + length // width * (2 + width) + (VARINT_BYTES - 1) * (length // 128 + 1)


def _decode_raw(raw: bytes, reference: bytes | memoryview, length: int, width: int) -> bytes:
    if len(raw) < HEAD.size:
        raise PatchError("sparse data shorter than its mode and count")
    mode, count = HEAD.unpack_from(raw)
    slots = length // width
    if mode not in (ELEMENTS, BYTES):
        raise PatchError(f"sparse data mode {mode} is unknown")
    rests_at = len(raw) - count * width - (count if mode == BYTES else 0)
    values_at = len(raw) - count * width
    if count > slots or rests_at < HEAD.size:
        raise PatchError(f"sparse data lists {count} changes in {len(raw)} bytes for {length} bytes")
    gaps = read_varints(raw[HEAD.size : rests_at], count)
    differences = _unzigzag(from_planes(raw[values_at:], width).view(_UINT[width]), width)
    if mode == ELEMENTS:
        if length % width:
            raise PatchError(f"sparse elements of {width} bytes do not fill {length} bytes")
        positions = np.cumsum(gaps + 1) - 1
        if count and positions[-1] >= slots:
            raise PatchError("sparse data points outside its segment")
        output = np.frombuffer(reference, dtype=_UINT[width]).copy()
        output[positions] += differences
        return output.tobytes()
    rests = np.frombuffer(raw, np.uint8, count, rests_at).astype(np.int64)
    if count and int(rests.max()) >= width:
        raise PatchError(f"a sparse gap remainder is not below {width}")
    starts = np.cumsum(gaps * width + rests + width) - width  # entries follow each other without overlapping
    if count and starts[-1] + width > length:
        raise PatchError("sparse data points outside its segment")
    data = np.frombuffer(reference, dtype=np.uint8).copy()
    values = (_gather(data, starts, width) + differences.astype(np.uint64)) & _mask(width)
    data[starts[:, None] + np.arange(width)] = ((values[:, None] >> _shifts(width)) & np.uint64(0xFF)).astype(
        np.uint8
    )
    return data.tobytes()


# --------------------------------------------------------------------------- codec 12: CRC-32 fields recomputed

MAX_CRC_WORK = 4  # the checksummed spans of one segment add up to at most this many times its length
CRC_FIELD_SPACING = 30  # a zip's CRC-32 fields sit in 30-byte local headers or 46-byte central records


def max_crc_fields(length: int) -> int:
    """The most CRC-32 fields a segment of ``length`` bytes may list (bounded parsing work and memory)."""
    return length // CRC_FIELD_SPACING + 1


Fixup = tuple[int, int, int]  # field offset in the segment, checksummed span's start and length


def crc_fixups_raw(fixups: Sequence[Fixup]) -> bytes:
    """The fixup list of codec 12 (``SPARSE_DIFF_CRC``), in front of a SPARSE_DIFF raw stream: ``varint F``;
    per field, sorted and not overlapping, ``varint gap`` (offset − the previous field's end) and ``varint
    back``: 0 then ``varint zigzag(span start − field)``, ``varint span length``; or k ≥ 1: the span of the
    field k places earlier (a zip entry's checksum in the central directory, after its local header's)."""
    out = bytearray(variable.encode(len(fixups)))
    end = 0
    latest: dict[tuple[int, int], int] = {}  # span → index of the last field that had it
    for index, (field, start, size) in enumerate(fixups):
        out += variable.encode(field - end)
        end = field + 4
        back = index - latest[(start, size)] if (start, size) in latest else 0
        out += variable.encode(back)
        if not back:
            out += variable.encode(variable.zigzag(start - field)) + variable.encode(size)
        latest[(start, size)] = index
    return bytes(out)


def decode_sparse_diff_crc(
    payload: bytes, backend: Backend, reference: bytes | memoryview, length: int, width: int
) -> bytes:
    """Codec 12: the fixup list, then SPARSE_DIFF's stream; after the differences are added, each listed field's
    4 bytes become the CRC-32 (little-endian) of its span of the output, in the listed order."""
    most = max_crc_fields(length)
    raw = unpack(payload, backend, None, raw_bound(length, width) + (1 + 4 * most) * variable.MAX_BYTES)
    count, position = variable.read(raw, 0, most, "CRC-32 fixups (count)")
    fields, starts, sizes = (
        array("q", bytes(8 * count)),
        array("q", bytes(8 * count)),
        array("q", bytes(8 * count)),
    )
    end = work = 0
    for index in range(count):
        gap, position = variable.read(raw, position, length, "CRC-32 fixups (gap)")
        field = end + gap
        back, position = variable.read(raw, position, index, "CRC-32 fixups (span)")
        if back:
            start, size = starts[index - back], sizes[index - back]
        else:
            moved, position = variable.read(raw, position, variable.LARGEST, "CRC-32 fixups (span start)")
            size, position = variable.read(raw, position, length, "CRC-32 fixups (span length)")
            start = field + variable.unzigzag(moved)
        work += size
        if field + 4 > length or start < 0 or not 0 < size <= length - start or work > MAX_CRC_WORK * length:
            raise PatchError("a CRC-32 fixup lies outside its segment, checksums nothing or checksums too much")
        fields[index], starts[index], sizes[index] = field, start, size
        end = field + 4
    output = bytearray(_decode_raw(raw[position:], reference, length, width))
    view = memoryview(output)
    for field, start, size in zip(fields, starts, sizes, strict=True):
        view[field : field + 4] = struct.pack("<I", zlib.crc32(view[start : start + size]))
    view.release()
    return bytes(output)
