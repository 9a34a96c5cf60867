"""Codec BLOCK_PLANES (container version 4): block-quantized tensors coded field by field.

A ggml-quantized tensor (Q8_0, Q4_K, …; layouts in :mod:`repo.engine.ggml_blocks`) is a run of equal blocks,
each a few fields: fp16 scales, packed sub-block scales, int8 or 4-bit values. Re-quantizing after a fine-tune
changes most blocks a little, but each field differently: a scale by an ulp or two, a handful of quants by ±1.
Interleaved, generic coders see noise; split into one plane per field (and per byte of a multi-byte field), each
field is predicted from the same field of the aligned old block with the residual that suits it:

    target blocks (n × block bytes) + old blocks of the same layout (or none)
      → per field, its bytes of every block, as one array
      → residual against the old field: XOR, zigzag difference of ``width``-byte integers (fp16 → ulps,
        int8 → steps), or for packed 4-bit values the nibbles' differences mod 16 (both in one byte, or the low
        and high nibbles as two streams) or XOR — per field the kind whose streams come out smallest
      → each byte plane / nibble stream coded the smallest way: nothing (all zero), one zstd frame, its
        non-zero positions and values (re-quantization changes few values), or static rANS (skewed symbols,
        where Huffman's whole bits lose; with enough lanes that decoding takes at most 4096 numpy steps)

Payload (little-endian)::

    uint16 block bytes, uint8 field count
    per field: uint16 bytes per block, uint8 residual kind, uint8 element width
    per stream (width streams per XOR/DIFF field, 2 per NIBBLE_XOR/NIBBLE_DIFF field, 1 per NIBBLE_PAIR
    field): uint8 mode, uint32 stream length
    the streams, in that order: mode 0 a zstd frame; 1 rANS as in codecs' FLOAT_PLANES; 2 a uint32 length, a
    zstd frame of gap symbols (each gap between non-zero positions as gap // 255 symbols 255 and gap % 255)
    and a zstd frame of the non-zero values; 3 empty (all zeros)

The payload describes its own layout, so applying needs no format knowledge (numpy and zstandard only). The
decoder checks that the fields add up to the block, the blocks to the segment, every stream length to the
payload and every frame's content size to its plane before allocating, so a hostile payload raises
:class:`~repo.errors.PatchError`. Without a reference (a tensor with no old counterpart) the residual is taken
against zeros: XOR kinds then store the fields' planes as they are.
"""

from __future__ import annotations

import struct

import numpy as np

from lorien.repo.engine import codecs, rans
from lorien.repo.engine.container import Backend
from lorien.repo.engine.ggml_blocks import BITS, FLOAT, HALF, INT8, INT16, NIBBLES, Layout
from lorien.repo.errors import PatchError

BLOCK_HEADER = struct.Struct("<HB")
FIELD = struct.Struct("<HBB")
XOR, DIFF, NIBBLE_XOR, NIBBLE_DIFF, NIBBLE_PAIR = 0, 1, 2, 3, 4  # NIBBLE_PAIR: both nibbles' differences mod
# 16 in one byte, one stream (a changed byte is then one non-zero symbol, not two)
PLANE_SPARSE = 2  # stream mode beside codecs.PLANE_ZSTD / PLANE_RANS: uint32 gap-frame length, gap frame, values
PLANE_ZERO = 3  # stream mode: the plane is all zeros (an unchanged field); the stream is empty
SPARSE_HEADER = struct.Struct("<I")
RANS_ROWS = rans.LONG_MAX_ROWS  # a plane gets lanes enough to decode in at most this many numpy rows (4096); with
# rans.py decoding few-lane streams symbol by symbol, 1024 rows decoded the small corpus's block payloads only
# 1.5x faster (0.06 vs 0.09 s) for 0.6-4.4 % more bytes
NIBBLE_KINDS = (NIBBLE_XOR, NIBBLE_DIFF)
MAX_FIELDS = 16
# residual kinds tried per field kind (smallest streams kept); without a reference only XOR kinds make sense
WITH_REFERENCE = {
    HALF: ((DIFF, 2), (XOR, 2)),
    FLOAT: ((DIFF, 4), (XOR, 4)),
    INT16: ((DIFF, 2), (XOR, 2)),
    INT8: ((DIFF, 1),),  # XOR never won on re-quantized int8 or 4-bit values (small corpus): not tried, for speed
    NIBBLES: ((NIBBLE_PAIR, 1), (NIBBLE_DIFF, 1)),
    BITS: ((XOR, 1), (DIFF, 1)),
}
WITHOUT_REFERENCE = {
    HALF: ((XOR, 2),),
    FLOAT: ((XOR, 4),),
    INT16: ((XOR, 2),),
    INT8: ((XOR, 1),),
    NIBBLES: ((NIBBLE_XOR, 1), (XOR, 1)),
    BITS: ((XOR, 1),),
}


# --------------------------------------------------------------------------- create side


def payload(target: bytes, reference: bytes | memoryview | None, layout: Layout, level: int) -> bytes:
    """BLOCK_PLANES payload of ``target`` (whole blocks of ``layout``) against ``reference`` (same length) or
    against nothing; per field the residual kind whose streams come out smallest."""
    size = layout.block_bytes
    new = np.frombuffer(target, dtype=np.uint8).reshape(-1, size)
    old = None if reference is None else np.frombuffer(reference, dtype=np.uint8).reshape(-1, size)
    choices = WITH_REFERENCE if old is not None else WITHOUT_REFERENCE
    header = [BLOCK_HEADER.pack(size, len(layout.fields))]
    entries, streams = [], []
    offset = 0
    for field in layout.fields:
        new_field = new[:, offset : offset + field.length]
        old_field = None if old is None else old[:, offset : offset + field.length]
        offset += field.length
        best: tuple[int, int, list[tuple[int, bytes]]] | None = None
        for kind, width in choices[field.kind]:
            coded = [_stream(plane, level) for plane in _residual_planes(new_field, old_field, kind, width)]
            if best is None or sum(len(s) for _, s in coded) < sum(len(s) for _, s in best[2]):
                best = (kind, width, coded)
        assert best is not None
        kind, width, coded = best
        header.append(FIELD.pack(field.length, kind, width))
        entries.extend(codecs.PLANE_ENTRY.pack(mode, len(stream)) for mode, stream in coded)
        streams.extend(stream for _, stream in coded)
    return b"".join(header) + b"".join(entries) + b"".join(streams)


def _residual_planes(new: np.ndarray, old: np.ndarray | None, kind: int, width: int) -> list[np.ndarray]:
    """The planes of one field's residual: ``width`` byte planes, or the low and high nibble streams."""
    if kind == NIBBLE_PAIR:
        assert old is not None  # against nothing it is plain bytes: XOR
        low = (new - old) & 0x0F
        high = ((new >> 4) - (old >> 4)) & 0x0F
        return [np.ascontiguousarray(low | (high << 4)).reshape(-1)]
    if kind in NIBBLE_KINDS:
        planes = []
        for shift in (0, 4):
            values = (new >> shift) & 0x0F
            if old is not None:
                reference = (old >> shift) & 0x0F
                values = values ^ reference if kind == NIBBLE_XOR else (values - reference) & 0x0F
            planes.append(np.ascontiguousarray(values).reshape(-1))
        return planes
    elements = np.ascontiguousarray(new).view(codecs._UINT[width]).reshape(-1)
    if old is not None:
        reference = np.ascontiguousarray(old).view(codecs._UINT[width]).reshape(-1)
        elements = elements ^ reference if kind == XOR else codecs._zigzag(elements - reference, width)
    return list(np.frombuffer(codecs.to_planes(elements, width), dtype=np.uint8).reshape(width, -1))


def _stream(plane: np.ndarray, level: int) -> tuple[int, bytes]:
    """One plane as nothing when it is all zeros (mode 3); else a zstd frame (mode 0); its non-zero positions
    and values (mode 2) when smaller; a static rANS stream (mode 1) of at most ``RANS_ROWS`` decode steps when
    ≥ 3 % smaller than either."""
    if not plane.any():
        return PLANE_ZERO, b""
    bits = codecs._order0_bits(plane)
    noise = bits >= codecs.NOISE_BITS
    best = (codecs.PLANE_ZSTD, codecs.zstd_compress(plane.tobytes(), 1 if noise else level))
    if noise or not len(plane):
        return best
    nonzero = plane != 0
    if np.count_nonzero(nonzero) <= len(plane) // 4:
        gaps = codecs.zstd_compress(_gap_symbols(np.flatnonzero(nonzero)).tobytes(), level)
        sparse = SPARSE_HEADER.pack(len(gaps)) + gaps + codecs.zstd_compress(plane[nonzero].tobytes(), level)
        if len(sparse) < len(best[1]):
            best = (PLANE_SPARSE, sparse)
    # rANS lands within a few bytes of the order-0 bound plus its lanes' states: encode only if that could win
    estimate = bits * len(plane) / 8 + 4 * -(-len(plane) // RANS_ROWS)
    if estimate < codecs.RANS_PLANE_GAIN * len(best[1]):
        coded = _rans_stream(plane)
        if len(coded) < codecs.RANS_PLANE_GAIN * len(best[1]):
            best = (codecs.PLANE_RANS, coded)
    return best


def _rans_stream(plane: np.ndarray) -> bytes:
    """Mode 1 (:func:`codecs._rans_bytes`' layout) with enough lanes that decoding takes at most ``RANS_ROWS``
    numpy steps: a very skewed plane would otherwise get one lane and a step per symbol."""
    freqs = rans.frequencies(plane)
    lanes = min(len(plane), max(rans.lanes_for(freqs, len(plane)), -(-len(plane) // RANS_ROWS)))
    states, words = rans.encode(plane, freqs, lanes)
    table = codecs.zstd_compress(freqs[: int(np.flatnonzero(freqs)[-1]) + 1].tobytes(), 19)
    header = codecs.RANS_BYTES_HEADER.pack(len(states), len(table), len(words))
    return header + table + states.tobytes() + words.tobytes()


def _gap_symbols(positions: np.ndarray) -> np.ndarray:
    """Mode 2's gap stream: each gap (position − previous position, the first from −1; ≥ 1) as
    ``gap // 255`` symbols 255 then the symbol ``gap % 255``."""
    gaps = np.diff(positions, prepend=-1)
    repeats = gaps // 255
    symbols = np.full(int(repeats.sum()) + len(gaps), 255, dtype=np.uint8)
    symbols[np.cumsum(repeats + 1) - 1] = (gaps % 255).astype(np.uint8)
    return symbols


# --------------------------------------------------------------------------- apply side


def decode(payload: bytes, reference: bytes | memoryview, length: int) -> bytes:
    """Exactly ``length`` bytes from a BLOCK_PLANES payload and its reference (``length`` bytes, or none)."""
    if len(payload) < BLOCK_HEADER.size:
        raise PatchError("block planes data shorter than its header")
    size, count = BLOCK_HEADER.unpack_from(payload)
    if not 0 < count <= MAX_FIELDS or size == 0:
        raise PatchError(f"block planes header lists {count} fields in {size}-byte blocks")
    if length % size:
        raise PatchError(f"{length} bytes are not whole {size}-byte blocks")
    if len(reference) not in (0, length):
        raise PatchError(f"block planes reference of {len(reference)} bytes for {length} target bytes")
    position = BLOCK_HEADER.size + FIELD.size * count
    if len(payload) < position:
        raise PatchError("block planes data shorter than its field table")
    fields = [FIELD.unpack_from(payload, BLOCK_HEADER.size + FIELD.size * k) for k in range(count)]
    blocks = length // size
    planned = []  # (field bytes, kind, width, expected size of each of its streams, stream count)
    for field_length, kind, width in fields:
        if kind not in (XOR, DIFF, NIBBLE_PAIR, *NIBBLE_KINDS) or width not in (1, 2, 4, 8) or field_length == 0:
            raise PatchError(f"block field of kind {kind}, width {width}, {field_length} bytes is not valid")
        if field_length % width or (kind in (NIBBLE_PAIR, *NIBBLE_KINDS) and width != 1):
            raise PatchError(f"block field of {field_length} bytes is not whole {width}-byte elements")
        nibbles = kind in NIBBLE_KINDS
        streams, stream_size = (2, blocks * field_length) if nibbles else (width, blocks * field_length // width)
        planned.append((field_length, kind, width, stream_size, streams))
    if sum(item[0] for item in planned) != size:
        raise PatchError(f"block fields add up to {sum(item[0] for item in planned)} bytes, not {size}")
    total_streams = sum(item[4] for item in planned)
    entries_at = position
    position += codecs.PLANE_ENTRY.size * total_streams
    if len(payload) < position:
        raise PatchError("block planes data shorter than its stream table")
    entries = [
        codecs.PLANE_ENTRY.unpack_from(payload, entries_at + codecs.PLANE_ENTRY.size * k)
        for k in range(total_streams)
    ]
    if position + sum(stream_length for _, stream_length in entries) != len(payload):
        raise PatchError("block planes stream lengths do not add up to its payload")
    old = np.frombuffer(reference, dtype=np.uint8).reshape(blocks, size) if len(reference) else None
    output = np.empty((blocks, size), dtype=np.uint8)
    offset = entry = 0
    for field_length, kind, width, expected, streams in planned:
        planes = []
        for mode, stream_length in entries[entry : entry + streams]:
            planes.append(_plane(payload[position : position + stream_length], mode, expected))
            position += stream_length
        entry += streams
        old_field = None if old is None else old[:, offset : offset + field_length]
        output[:, offset : offset + field_length] = _field(planes, old_field, kind, width, blocks, field_length)
        offset += field_length
    return output.tobytes()


def _plane(stream: bytes, mode: int, expected: int) -> np.ndarray:
    if mode == codecs.PLANE_ZSTD:
        return np.frombuffer(codecs.zstd_decompress(stream, expected), dtype=np.uint8)
    if mode == codecs.PLANE_RANS:
        return codecs._decode_rans_bytes(stream, expected)
    if mode == PLANE_SPARSE:
        return _decode_sparse(stream, expected)
    if mode == PLANE_ZERO and not stream:
        return np.zeros(expected, dtype=np.uint8)
    raise PatchError(f"block plane mode {mode} is unknown or its {len(stream)}-byte stream does not fit it")


def _decode_sparse(stream: bytes, expected: int) -> np.ndarray:
    """Mode 2: ``expected`` bytes, zero except at the positions the gap symbols spell out."""
    if len(stream) < SPARSE_HEADER.size:
        raise PatchError("sparse block plane shorter than its header")
    (gaps_length,) = SPARSE_HEADER.unpack_from(stream)
    values_at = SPARSE_HEADER.size + gaps_length
    if values_at > len(stream):
        raise PatchError("sparse block plane's gap stream runs past its end")
    limit = expected + expected // 255 + 1  # the longest gap stream positions below ``expected`` can need
    symbols = np.frombuffer(
        codecs.unpack(stream[SPARSE_HEADER.size : values_at], Backend.ZSTD, None, limit), np.uint8
    )
    ends = np.flatnonzero(symbols != 255)
    if len(symbols) and (not len(ends) or ends[-1] != len(symbols) - 1):
        raise PatchError("sparse block plane's gap stream ends inside a gap")
    positions = np.cumsum(symbols, dtype=np.int64)[ends] - 1
    if len(positions) and (positions[0] < 0 or positions[-1] >= expected or np.any(np.diff(positions) < 1)):
        raise PatchError("sparse block plane's positions are not increasing inside the plane")
    values = codecs.zstd_decompress(stream[values_at:], len(positions))
    output = np.zeros(expected, dtype=np.uint8)
    output[positions] = np.frombuffer(values, np.uint8)
    return output


def _field(
    planes: list[np.ndarray], old: np.ndarray | None, kind: int, width: int, blocks: int, length: int
) -> np.ndarray:
    """One field of every block (blocks × length bytes) from its residual planes and the old field."""
    if kind == NIBBLE_PAIR:
        residual = planes[0].reshape(blocks, length)
        if old is None:
            return residual
        low = (residual + old) & 0x0F
        high = ((residual >> 4) + (old >> 4)) & 0x0F
        return (low | (high << 4)).astype(np.uint8)
    if kind in NIBBLE_KINDS:
        halves = []
        for shift, plane in zip((0, 4), planes, strict=True):
            values = plane.reshape(blocks, length) & np.uint8(0x0F)
            if old is not None:
                reference = (old >> shift) & 0x0F
                values = values ^ reference if kind == NIBBLE_XOR else (values + reference) & 0x0F
            halves.append(values.astype(np.uint8))
        return halves[0] | (halves[1] << 4)
    residual = codecs.from_planes(b"".join(plane.tobytes() for plane in planes), width).view(codecs._UINT[width])
    if old is not None:
        reference = np.ascontiguousarray(old).view(codecs._UINT[width]).reshape(-1)
        residual = residual ^ reference if kind == XOR else reference + codecs._unzigzag(residual, width)
    elif kind == DIFF:
        residual = codecs._unzigzag(residual, width)
    return residual.view(np.uint8).reshape(blocks, length)
