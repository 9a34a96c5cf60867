"""Codec 9 ``RANGES``: several typed byte ranges of one segment coded with one entropy model per element width.

Small tensors often sit at odd offsets (zip local headers, ``.npy`` headers, protobuf fields), so a run of them
cannot be read as one array of 2- or 4-byte elements — each would otherwise pay its own table, lane states and
segment entry, or fall back to generic bytes. This codec lists the ranges and gathers their elements::

    target, reference (same length, the aligned old bytes) + ranges (offset, length, width 2 or 4)
      → elements of every 2-byte range gathered (target and reference alike) → one stream, coded as
        DIFF_RANS, difference planes or XOR planes, whichever is smallest
      → elements of every 4-byte range gathered the same way → difference or XOR planes (zstd)
      → the bytes between ranges gathered → XOR against the reference's bytes there, or plain (zstd)

Payload (little-endian; LEB128 varints): ``count``; per range ``gap`` (bytes since the end of the previous
range) and ``elements << 1 | wide`` (wide: 4-byte elements, else 2); then for the 2-byte stream, the 4-byte
stream and the gap stream a mode byte and a varint length; then the three streams. Apply needs nothing but the
payload and the reference: every length is checked to add up before anything is decoded, range counts are
bounded, and each stream must decode to exactly the bytes its ranges need (:class:`~repo.errors.PatchError`
otherwise).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from lorien.repo.engine import codecs, rans, varints
from lorien.repo.engine.container import Backend
from lorien.repo.errors import PatchError

MAX_RANGES = 1 << 16  # a segment lists at most this many ranges (a hostile count cannot make apply loop long)
MODE_RANS, MODE_DIFF, MODE_XOR, MODE_PLAIN = 0, 1, 2, 3
MODE_CRC32 = 0  # the fixup stream's only mode: CRC-32 fields recomputed on apply
MAX_BACK, BACK_STEP = 1024, 16  # a checksummed span starts up to this far before its range, on this grid
NEAR = 4096  # a field this close to its span is placed relative to it, else relative to the previous field
LEVEL = 19  # ranges pieces are at most 1 MiB (planning.GROUP): the strongest zstd level costs little there
Range = tuple[int, int, int]  # offset inside the segment, length in bytes, element width (2 or 4)


def _read_number(payload: bytes, position: int, limit: int) -> tuple[int, int]:
    """(value, next position) of the varint at ``position``; PatchError past the payload, beyond 8 bytes or
    above ``limit``."""
    return varints.read(payload, position, limit, "ranges data")


# --------------------------------------------------------------------------- encode (create side)


def payload(target: bytes, reference: bytes | memoryview, ranges: Sequence[Range]) -> bytes:
    """The RANGES payload of ``target`` against ``reference`` (same length) with these sorted, disjoint ranges:
    the smaller of the ranges as given and the ranges joined across gaps of whole elements (the gap's bytes
    then coded as elements: one range entry instead of several)."""
    best = _payload(target, reference, ranges)
    joined = _joined(ranges)
    if len(joined) < len(ranges):
        best = min(best, _payload(target, reference, joined), key=len)
    return best


def _joined(ranges: Sequence[Range]) -> list[Range]:
    joined: list[Range] = []
    for offset, length, width in ranges:
        if joined and joined[-1][2] == width and (offset - joined[-1][0]) % width == 0:
            joined[-1] = (joined[-1][0], offset + length - joined[-1][0], width)
        else:
            joined.append((offset, length, width))
    return joined


def _payload(target: bytes, reference: bytes | memoryview, ranges: Sequence[Range]) -> bytes:
    new = np.frombuffer(target, dtype=np.uint8)
    old = np.frombuffer(reference, dtype=np.uint8)
    table = bytearray(varints.encode(len(ranges)))
    end = 0
    for offset, length, width in ranges:
        table += varints.encode(offset - end) + varints.encode((length // width) << 1 | (width == 4))
        end = offset + length
    streams = []
    for width in (2, 4):
        spans = [(o, n) for o, n, w in ranges if w == width]
        streams.append(_typed(_gather(new, spans), _gather(old, spans), width))
    gaps = _gaps(ranges, len(target))
    fixups = _crc_fixups(target, new, old, ranges, gaps)
    if fixups:
        new = new.copy()
        for position, _, _ in fixups:  # the checksum is recomputed on apply: code the old bytes there
            new[position : position + 4] = old[position : position + 4]
    streams.append(_gap_stream(_gather(new, gaps), _gather(old, gaps)))
    streams.append((MODE_CRC32, _fixup_stream(fixups, ranges) if fixups else b""))
    for mode, stream in streams:
        table += bytes([mode]) + varints.encode(len(stream))
    return bytes(table) + b"".join(stream for _, stream in streams)


def _crc_fixups(
    target: bytes, new: np.ndarray, old: np.ndarray, ranges: Sequence[Range], gaps: Sequence[tuple[int, int]]
) -> list[tuple[int, int, int]]:
    """(position, range index, back) of every changed 4-byte field between ranges that holds the CRC-32 of a
    range together with up to ``MAX_BACK`` bytes before it (a zip entry's checksum of its data: the tensor
    and, in ``.npz``, the ``.npy`` header in front of it) — fields no checksummed span covers."""
    view = memoryview(target)
    known: dict[int, tuple[int, int]] = {}
    for index, (offset, length, _) in enumerate(ranges):
        for back in range(0, min(offset, MAX_BACK) + 1, BACK_STEP):
            known.setdefault(zlib.crc32(view[offset - back : offset + length]), (index, back))
    spans = []
    fixups: list[tuple[int, int, int]] = []
    for start, length in gaps:
        changed = np.flatnonzero(new[start : start + length] != old[start : start + length]) + start
        taken = -1
        for first in changed.tolist():
            for position in range(max(first - 3, start, taken), min(first, start + length - 4) + 1):
                found = known.get(int.from_bytes(view[position : position + 4], "little"))
                if found is not None:
                    fixups.append((position, *found))
                    spans.append((ranges[found[0]][0] - found[1], ranges[found[0]][0] + ranges[found[0]][1]))
                    taken = position + 4
                    break
    covered = [(p, i, b) for p, i, b in fixups if not any(lo < p + 4 and p < hi for lo, hi in spans)]
    return covered


def _fixup_stream(fixups: Sequence[tuple[int, int, int]], ranges: Sequence[Range]) -> bytes:
    """zstd frame of varints: count; per field the range index (zigzag difference from the previous field's),
    ``back``, and its position: ``zigzag(position - span start) << 1`` when near its span, else
    ``zigzag(position - previous field's position) << 1 | 1``."""
    raw = bytearray(varints.encode(len(fixups)))
    last_index = last_position = 0
    for position, index, back in fixups:
        relative = position - (ranges[index][0] - back)
        code = (
            varints.zigzag(relative) << 1
            if abs(relative) < NEAR
            else varints.zigzag(position - last_position) << 1 | 1
        )
        raw += varints.encode(varints.zigzag(index - last_index)) + varints.encode(back) + varints.encode(code)
        last_index, last_position = index, position
    return codecs.zstd_compress(bytes(raw), LEVEL)


def _typed(new: bytes, old: bytes, width: int) -> tuple[int, bytes]:
    if not new:
        return MODE_DIFF, b""
    options = [
        (MODE_DIFF, codecs.zstd_compress(codecs.diff_residual(new, old, width), LEVEL)),
        (MODE_XOR, codecs.zstd_compress(codecs.xor_residual(new, old, width), LEVEL)),
    ]
    if width == 2:
        values = codecs.zigzag(np.frombuffer(new, np.uint16) - np.frombuffer(old, np.uint16), 2)
        options.append((MODE_RANS, _rans_stream(values)))
    return min(options, key=lambda option: len(option[1]))


def _rans_stream(values: np.ndarray) -> bytes:
    """Mode 0 of the 2-byte stream: zigzag differences under one static rANS table whose last symbol ``k`` is
    the escape (values from ``k`` up: the symbol plus ``value - k`` as a varint), ``k`` chosen to minimise the
    estimated size. Varints: lanes, ``k``, the ``k + 1`` frequencies, escape count, escaped values; then the
    lanes' final states (uint32) and the words (uint16) to the end."""
    k = _escape_symbol(values)
    symbols = np.minimum(values, k).astype(np.uint8)
    freqs = rans.frequencies(symbols)
    states, words = rans.encode(symbols, freqs, rans.lanes_for(freqs, len(symbols)))
    escaped = values[values >= k] - k
    head = bytearray(varints.encode(len(states)) + varints.encode(k))
    for frequency in freqs[: k + 1]:
        head += varints.encode(int(frequency))
    head += varints.encode(len(escaped))
    for value in escaped:
        head += varints.encode(int(value))
    return bytes(head) + states.tobytes() + words.tobytes()


def _escape_symbol(values: np.ndarray) -> int:
    """The escape symbol (1…255) with the smallest estimate of table + coded symbols + escaped values."""
    full = np.bincount(values, minlength=1 << 16).astype(np.float64)
    tail = np.append(np.cumsum(full[::-1])[::-1], 0.0)  # tail[v]: values ≥ v
    counts = full[:256]
    total = max(len(values), 1)
    best, best_bits = 255, np.inf
    for k in range(1, 256):
        used = np.append(counts[:k], tail[k])
        present = used[used > 0]
        bits = float(-(present * np.log2(present / total)).sum())
        bits += 8 * (k + 1) * (1 if k < 16 else 1.5)  # frequencies: one or two varint bytes each
        bits += 8 * float(tail[k] + tail[k + 128] + tail[k + 16384])  # varint bytes of the escaped values - k
        if bits < best_bits:
            best, best_bits = k, bits
    return best


def _gap_stream(new: bytes, old: bytes) -> tuple[int, bytes]:
    if not new:
        return MODE_XOR, b""
    xored = (np.frombuffer(new, np.uint8) ^ np.frombuffer(old, np.uint8)).tobytes()
    options = [(MODE_XOR, codecs.zstd_compress(xored, LEVEL)), (MODE_PLAIN, codecs.zstd_compress(new, LEVEL))]
    return min(options, key=lambda option: len(option[1]))


def _gather(data: np.ndarray, spans: Sequence[tuple[int, int]]) -> bytes:
    return b"".join(data[offset : offset + length].tobytes() for offset, length in spans)


def _gaps(ranges: Sequence[Range], total: int) -> list[tuple[int, int]]:
    gaps, end = [], 0
    for offset, length, _ in ranges:
        if offset > end:
            gaps.append((end, offset - end))
        end = offset + length
    if total > end:
        gaps.append((end, total - end))
    return gaps


# --------------------------------------------------------------------------- decode (apply side)


def decode(payload: bytes, reference: bytes | memoryview, length: int) -> bytes:
    """Exactly ``length`` bytes from a RANGES payload and its same-length reference, or PatchError."""
    if len(reference) != length:
        raise PatchError(f"ranges reference of {len(reference)} bytes for {length} target bytes")
    count, position = _read_number(payload, 0, min(MAX_RANGES, length // 2))
    ranges: list[Range] = []
    end = 0
    for _ in range(count):
        gap, position = _read_number(payload, position, length - end)
        packed, position = _read_number(payload, position, 2 * length)
        width = 4 if packed & 1 else 2
        size = (packed >> 1) * width
        if size == 0 or end + gap + size > length:
            raise PatchError(
                f"ranges data lists a range of {size} bytes at {end + gap} in a {length}-byte segment"
            )
        ranges.append((end + gap, size, width))
        end += gap + size
    modes, sizes = [], []
    for _ in range(4):
        if position >= len(payload):
            raise PatchError("ranges data ends before its stream entries")
        modes.append(payload[position])
        size, position = _read_number(payload, position + 1, len(payload))
        sizes.append(size)
    if position + sum(sizes) != len(payload):
        raise PatchError("ranges stream lengths do not add up to the payload")
    old = np.frombuffer(reference, dtype=np.uint8)
    output = old.copy()
    for (mode, size), width in zip(zip(modes[:2], sizes[:2], strict=True), (2, 4), strict=True):
        spans = [(o, n) for o, n, w in ranges if w == width]
        stream = payload[position : position + size]
        position += size
        _scatter(output, spans, _decode_typed(mode, stream, _gather(old, spans), width))
    gaps = _gaps(ranges, length)
    _scatter(output, gaps, _decode_gaps(modes[2], payload[position : position + sizes[2]], _gather(old, gaps)))
    position += sizes[2]
    if sizes[3]:
        _apply_fixups(output, _read_fixups(modes[3], payload[position:], ranges, length))
    return output.tobytes()


def _read_fixups(mode: int, stream: bytes, ranges: Sequence[Range], length: int) -> list[tuple[int, int, int]]:
    """(position, span start, span end) of every CRC-32 field, checked to lie inside the segment, with at most
    four segments' worth of bytes to checksum in all."""
    if mode != MODE_CRC32:
        raise PatchError(f"ranges fixup stream mode {mode} is unknown")
    raw = codecs.unpack(stream, Backend.ZSTD, None, 25 * MAX_RANGES)
    count, position = _read_number(raw, 0, MAX_RANGES)
    fixups, index, last, work = [], 0, 0, 0
    for _ in range(count):
        step, position = _read_number(raw, position, 2 * MAX_RANGES)
        back, position = _read_number(raw, position, MAX_BACK)
        code, position = _read_number(raw, position, 4 * length + 2)
        index += varints.unzigzag(step)
        if not 0 <= index < len(ranges) or back > ranges[index][0]:
            raise PatchError("ranges fixup names a range that is not there")
        start, end = ranges[index][0] - back, ranges[index][0] + ranges[index][1]
        field = last + varints.unzigzag(code >> 1) if code & 1 else start + varints.unzigzag(code >> 1)
        work += end - start
        if not 0 <= field <= length - 4 or work > 4 * length:
            raise PatchError("ranges fixup lies outside its segment or checksums too much")
        fixups.append((field, start, end))
        last = field
    if position != len(raw):
        raise PatchError("ranges fixup stream has bytes after its fields")
    return fixups


def _apply_fixups(output: np.ndarray, fixups: Sequence[tuple[int, int, int]]) -> None:
    for field, start, end in fixups:
        crc = zlib.crc32(output[start:end].data)
        output[field : field + 4] = np.frombuffer(crc.to_bytes(4, "little"), np.uint8)


def _decode_typed(mode: int, stream: bytes, old: bytes, width: int) -> bytes:
    if not old:
        if stream:
            raise PatchError(f"ranges data has a {width}-byte stream but no {width}-byte ranges")
        return b""
    if mode == MODE_RANS and width == 2:
        return _decode_rans_stream(stream, old)
    if mode == MODE_DIFF:
        planes = codecs.zstd_decompress(stream, len(old))
        deltas = codecs.unzigzag(codecs.from_planes(planes, width).view(codecs.UINT[width]), width)
        return (np.frombuffer(old, dtype=codecs.UINT[width]) + deltas).tobytes()
    if mode == MODE_XOR:
        residual = codecs.from_planes(codecs.zstd_decompress(stream, len(old)), width)
        return (residual ^ np.frombuffer(old, dtype=np.uint8)).tobytes()
    raise PatchError(f"ranges stream mode {mode} is unknown for {width}-byte elements")


def _decode_rans_stream(stream: bytes, old: bytes) -> bytes:
    count = len(old) // 2
    lanes, position = _read_number(stream, 0, count)
    k, position = _read_number(stream, position, rans.SYMBOLS - 1)
    if lanes == 0 or k == 0:
        raise PatchError("ranges rANS stream has no lanes or no symbols")
    freqs = np.zeros(rans.SYMBOLS, np.uint16)
    for symbol in range(k + 1):
        freqs[symbol], position = _read_number(stream, position, 1 << rans.PRECISION)
    escape_count, position = _read_number(stream, position, count)
    escaped = np.empty(escape_count, np.uint32)
    for index in range(escape_count):
        escaped[index], position = _read_number(stream, position, 0xFFFF - k)
    words_at = position + 4 * lanes
    if words_at > len(stream) or (len(stream) - words_at) % 2:
        raise PatchError("ranges rANS stream lengths do not add up")
    states = np.frombuffer(stream, np.uint32, lanes, position)
    words = np.frombuffer(stream, np.uint16, (len(stream) - words_at) // 2, words_at)
    values = rans.decode(states, words, freqs, count).astype(np.uint32)
    escapes = values == k
    if int(np.count_nonzero(escapes)) != escape_count:
        raise PatchError("ranges rANS escapes do not match their symbols")
    values[escapes] += escaped
    deltas = codecs.unzigzag(values.astype(np.uint16), 2)
    return (np.frombuffer(old, dtype=np.uint16) + deltas).tobytes()


def _decode_gaps(mode: int, stream: bytes, old: bytes) -> bytes:
    if not old:
        if stream:
            raise PatchError("ranges data has a gap stream but no bytes between ranges")
        return b""
    if mode == MODE_PLAIN:
        return codecs.zstd_decompress(stream, len(old))
    if mode == MODE_XOR:
        xored = np.frombuffer(codecs.zstd_decompress(stream, len(old)), dtype=np.uint8)
        return (xored ^ np.frombuffer(old, dtype=np.uint8)).tobytes()
    raise PatchError(f"ranges gap stream mode {mode} is unknown")


def _scatter(output: np.ndarray, spans: Sequence[tuple[int, int]], data: bytes) -> None:
    source = np.frombuffer(data, dtype=np.uint8)
    position = 0
    for offset, length in spans:
        output[offset : offset + length] = source[position : position + length]
        position += length
