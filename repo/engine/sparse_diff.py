"""Codec 10 (``SPARSE_DIFF``, container version 4): the few elements that changed, as gaps and differences.

Create side: target and reference of equal length, both ``width``-byte integers (float bits taken as they are)::

    changed element indices → gaps (index − previous index − 1; the first gap is the first index)
      → raw stream: uint32 count, the gaps as LEB128 varints (a gap under 128 is one byte), then
        zigzag(target − reference) of the changed elements as byte planes (lowest byte first)
      → one entropy stage (zstd, LZMA2 or bzip2: the segment's backend, see :func:`codecs.pack`)

Apply side: the raw stream is checked before use — at most ``4 + elements * (5 + width)`` bytes decoded,
``count`` within the segment, exactly ``count`` varints of at most 5 bytes each, every position inside the
segment — then the differences are added to a copy of the reference.

Unlike codec 5 (``SPARSE``, which stores the new values and their gaps as uint32 planes), a small change of a
float costs only its low bytes (a 1 % change of a float32 leaves the top plane zero), and a gap costs one byte.
"""

from __future__ import annotations

import numpy as np

from lorien.repo.engine.codecs import _UINT, _unzigzag, _zigzag, from_planes, to_planes, unpack
from lorien.repo.engine.container import Backend
from lorien.repo.errors import PatchError

MAX_SHARE = 4  # more than 1/MAX_SHARE of the elements changed: a dense residual codes it better
VARINT_BYTES = 5  # a gap is below 2**35: at most five 7-bit groups


def sparse_diff_residual(target: bytes, reference: bytes | memoryview, width: int) -> bytes | None:
    """The raw stream (before the entropy stage); None when more than a quarter of the elements changed."""
    new = np.frombuffer(target, dtype=_UINT[width])
    old = np.frombuffer(reference, dtype=_UINT[width])
    changed = np.flatnonzero(new != old)
    if len(changed) > len(new) // MAX_SHARE:
        return None
    gaps = np.diff(changed, prepend=-1) - 1
    differences = _zigzag((new[changed] - old[changed]).astype(_UINT[width]), width)
    return np.uint32(len(changed)).tobytes() + varints(gaps) + to_planes(differences, width)


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
    elements = length // width
    raw = unpack(payload, backend, None, 4 + elements * (VARINT_BYTES + width))
    if len(raw) < 4:
        raise PatchError("sparse data shorter than its count")
    count = int(np.frombuffer(raw[:4], dtype=np.uint32)[0])
    values_at = len(raw) - count * width
    if count > elements or values_at < 4:
        raise PatchError(f"sparse data lists {count} changes in {len(raw)} bytes for {elements} elements")
    gaps = read_varints(raw[4:values_at], count)
    positions = np.cumsum(gaps + 1) - 1
    if count and positions[-1] >= elements:
        raise PatchError("sparse data points outside its segment")
    output = np.frombuffer(reference, dtype=_UINT[width]).copy()
    differences = _unzigzag(from_planes(raw[values_at:], width).view(_UINT[width]), width)
    output[positions] += differences
    return output.tobytes()
