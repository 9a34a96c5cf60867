"""Segment codecs of the ``lorien`` engine: encode (create side) and bounded decode (apply side).

Every encoder takes the segment's target bytes and its reference bytes from the source model and returns a
payload; every decoder takes the payload and the same reference and returns exactly ``target_length`` bytes or
raises :class:`~repo.errors.PatchError`. Decoders check zstd frame content sizes against the segment before
decompressing, so a hostile payload cannot make them allocate more than the container's limits allow.

The tensor codecs work on *byte planes*: for elements ``width`` bytes wide, plane k holds byte k of every
element. Sign/exponent bytes of float weights that changed a little are then long runs of equal values that
zstd's entropy coder squeezes to almost nothing, while byte-interleaved data hides them from it.
"""

from __future__ import annotations

import bz2
import lzma
import math
import struct

import numpy as np
import zstandard

from lorien.repo.engine import rans
from lorien.repo.engine.container import Backend, Codec, Segment, Transform
from lorien.repo.errors import PatchError

MAX_WINDOW_LOG = 26
MAX_DICT_HASH_LOG = 25  # 128 MiB of hash table on the create side at most; the applier never needs one
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_INT = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
ESCAPE = 255  # DIFF_RANS: zigzag differences from here up are this symbol plus the value in a side stream
RANS_HEADER = struct.Struct("<IIII")  # lanes, table, escapes and word-stream lengths
FLOAT_PLANES_LEVEL = 19  # its optimal parser codes a plane of float exponents ~2-4 % smaller than level 12
NOISE_BITS = 7.9  # a plane above this many bits per byte (order 0: mantissa bytes) is stored at level 1
PLANE_ENTRY = struct.Struct("<BI")  # FLOAT_PLANES: per plane, its mode and stream length
PLANE_ZSTD, PLANE_RANS = 0, 1
RANS_BYTES_HEADER = struct.Struct("<III")  # lanes, table and word-stream lengths
RANS_PLANE_GAIN = 0.995  # rANS decodes a plane slower than zstd (~135 M symbols/s, a numpy step per row of
# lanes): it must save 0.5 % of the plane to be used (was 3 % before the faster decoder: exponent planes of
# 8 MiB pieces, 1-2 % smaller with rANS, stayed zstd and full downloads fell behind zipnn's at 100 MB to 1 GiB)


# --------------------------------------------------------------------------- transforms shared by both sides


def to_planes(data: bytes | memoryview | np.ndarray, width: int) -> bytes:
    array = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8)
    if width == 1:
        return array.tobytes()
    return np.ascontiguousarray(array.reshape(-1, width).T).tobytes()


def from_planes(data: bytes, width: int) -> np.ndarray:
    array = np.frombuffer(data, dtype=np.uint8)
    if width == 1:
        return array
    return np.ascontiguousarray(array.reshape(width, -1).T).reshape(-1)


def predicted_reference(reference: bytes | memoryview, transform: Transform) -> bytes | memoryview:
    if transform == Transform.F32_TO_F16:
        with np.errstate(all="ignore"):
            return np.frombuffer(reference, dtype=np.float32).astype(np.float16).tobytes()
    return reference


def _zigzag(values: np.ndarray, width: int) -> np.ndarray:
    signed = values.view(_INT[width])
    return ((signed << 1) ^ (signed >> (8 * width - 1))).view(_UINT[width])


def _unzigzag(values: np.ndarray, width: int) -> np.ndarray:
    one = _UINT[width](1)
    return ((values >> one).view(_INT[width]) ^ -(values & one).view(_INT[width])).view(_UINT[width])


_SYMBOL_DELTA = _unzigzag(np.arange(256, dtype=np.uint16), 2)  # DIFF_RANS: symbol → uint16 change in ulps


# --------------------------------------------------------------------------- zstd frames


def _window_log(total: int) -> int:
    return max(zstandard.WINDOWLOG_MIN, min(MAX_WINDOW_LOG, math.ceil(math.log2(max(total, 2)))))


def zstd_compress(data: bytes, level: int, dictionary: bytes | memoryview | None = None) -> bytes:
    """One zstd frame (content size recorded). With a dictionary, the match finder's hash table is sized to
    cover the whole dictionary: at fast levels the defaults index only its last few hundred KiB, so matches
    further back would be missed (measured: 8 MiB copied from a 16 MiB dictionary stays 8 MiB at level 3
    with default tables, 5 KB with these)."""
    dict_size = len(dictionary) if dictionary is not None else 0
    window_log = _window_log(len(data) + dict_size)
    extra = {}
    if dict_size:
        base = zstandard.ZstdCompressionParameters.from_level(level, source_size=len(data), dict_size=dict_size)
        extra["hash_log"] = max(base.hash_log, min(MAX_DICT_HASH_LOG, window_log))
    params = zstandard.ZstdCompressionParameters.from_level(
        level,
        source_size=len(data),
        dict_size=dict_size,
        window_log=window_log,
        enable_ldm=dict_size + len(data) > (8 << 20),
        threads=0,
        **extra,
    )
    zdict = None
    if dictionary is not None and dict_size:
        zdict = zstandard.ZstdCompressionDict(bytes(dictionary), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(dict_data=zdict, compression_params=params).compress(data)


def zstd_decompress(payload: bytes, expected: int, dictionary: bytes | memoryview | None = None) -> bytes:
    """Decompress one frame that must declare exactly ``expected`` bytes of content."""
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError:
        raise PatchError("corrupt zstd frame header") from None
    if declared != expected:
        raise PatchError(f"zstd frame declares {declared} bytes where the segment needs {expected}")
    zdict = None
    if dictionary is not None and len(dictionary):
        zdict = zstandard.ZstdCompressionDict(bytes(dictionary), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    try:
        output = zstandard.ZstdDecompressor(dict_data=zdict, max_window_size=1 << MAX_WINDOW_LOG).decompress(
            payload
        )
    except zstandard.ZstdError as error:
        raise PatchError(f"corrupt zstd data: {error}") from None
    if len(output) != expected:
        raise PatchError(f"zstd data decodes to {len(output)} bytes where the segment needs {expected}")
    return output


# --------------------------------------------------------------------------- xz backend

# Raw LZMA2 (no xz container: its ~60 bytes of framing would eat the gain on small segments) with one fixed
# filter chain, part of the format: the decoder allocates this dictionary and nothing more.
LZMA2_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 8 << 20}]


def xz_compress(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=LZMA2_FILTERS)


def xz_decompress(payload: bytes, limit: int) -> bytes:
    """Decompress one raw LZMA2 stream of at most ``limit`` bytes (the caller checks the exact length)."""
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=LZMA2_FILTERS)
    try:
        output = decompressor.decompress(payload, max_length=limit + 1)
    except lzma.LZMAError as error:
        raise PatchError(f"corrupt LZMA2 data: {error}") from None
    if len(output) > limit or not decompressor.eof or decompressor.unused_data:
        raise PatchError(f"LZMA2 data does not decode to one stream of at most {limit} bytes")
    return output


def bz2_decompress(payload: bytes, limit: int) -> bytes:
    """Decompress one bzip2 stream of at most ``limit`` bytes."""
    decompressor = bz2.BZ2Decompressor()
    try:
        output = decompressor.decompress(payload, max_length=limit + 1)
    except (OSError, ValueError) as error:
        raise PatchError(f"corrupt bzip2 data: {error}") from None
    if len(output) > limit or not decompressor.eof or decompressor.unused_data:
        raise PatchError(f"bzip2 data does not decode to one stream of at most {limit} bytes")
    return output


# --------------------------------------------------------------------------- brotli backend (version 6)

BROTLI_WINDOW_LOG = (10, 24)  # the encoder's window: the stream's size rounded up to a power of two, in this range
BROTLI_STEP = 1 << 20  # the decoder's output is drained this much at a time (a bomb stops near its limit)


def brotli_compress(data: bytes) -> bytes:
    import brotli  # here: a C extension only patches of version 6 need (apply start-up stays short)

    window = min(max((len(data) - 1).bit_length(), BROTLI_WINDOW_LOG[0]), BROTLI_WINDOW_LOG[1])
    return brotli.compress(data, quality=11, lgwin=window)


def brotli_decompress(payload: bytes, limit: int) -> bytes:
    """Decompress one Brotli stream of at most ``limit`` bytes. The decoder's window is at most 16 MiB (the
    stream's own; large windows are off), and its output is drained ``BROTLI_STEP`` bytes at a time, so a
    stream that inflates past ``limit`` costs at most ``limit`` plus a step before it is refused."""
    import brotli

    decompressor = brotli.Decompressor()
    output = bytearray()
    try:
        output += decompressor.process(payload, output_buffer_limit=min(BROTLI_STEP, limit + 1))
        while len(output) <= limit and not decompressor.is_finished():
            more = decompressor.process(b"", output_buffer_limit=min(BROTLI_STEP, limit + 1 - len(output)))
            if not more:
                break  # the stream ends early: it wants input there is no more of
            output += more
    except brotli.error as error:
        raise PatchError(f"corrupt Brotli data: {error}") from None
    if len(output) > limit or not decompressor.is_finished():
        raise PatchError(f"Brotli data does not decode to one stream of at most {limit} bytes")
    return bytes(output)


def other_backends(slow: bool) -> tuple[Backend, ...]:
    """The entropy backends besides zstd the encoder tries on a very compressible stream; ``slow`` adds LZMA2
    (~5 MB/s at its strongest), for small streams. Brotli (version 6) is tried on the finished patch instead
    (``LorienEngine._version_6_pass``)."""
    return (Backend.BZ2, Backend.XZ) if slow else (Backend.BZ2,)


def smallest_pack(raw: bytes, level: int, backends: tuple[Backend, ...]) -> tuple[Backend, bytes]:
    """The smallest of ``raw`` packed with each of ``backends`` (the first on a tie) and its backend."""
    packed = [(backend, pack(raw, level, backend)) for backend in backends]
    return min(packed, key=lambda made: len(made[1]))


def pack(raw: bytes, level: int, backend: Backend) -> bytes:
    if backend == Backend.XZ:
        return xz_compress(raw)
    if backend == Backend.BZ2:
        return bz2.compress(raw, 9)
    if backend == Backend.BROTLI:
        return brotli_compress(raw)
    return zstd_compress(raw, level)


_DECOMPRESS = {Backend.XZ: xz_decompress, Backend.BZ2: bz2_decompress, Backend.BROTLI: brotli_decompress}


def unpack(payload: bytes, backend: Backend, exact: int | None, limit: int) -> bytes:
    """The raw stream of a payload: exactly ``exact`` bytes when given, else at most ``limit``."""
    if backend != Backend.ZSTD:
        output = _DECOMPRESS[backend](payload, exact if exact is not None else limit)
        if exact is not None and len(output) != exact:
            raise PatchError(f"{backend.name} data decodes to {len(output)} bytes where the segment needs {exact}")
        return output
    if exact is not None:
        return zstd_decompress(payload, exact)
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError:
        raise PatchError("corrupt zstd frame header") from None
    if not 0 <= declared <= limit:
        raise PatchError(f"zstd frame declares {declared} bytes, more than the segment allows ({limit})")
    return zstd_decompress(payload, declared)


# --------------------------------------------------------------------------- residuals (create side)


def xor_residual(target: bytes, reference: bytes | memoryview | None, width: int) -> bytes:
    new = np.frombuffer(target, dtype=np.uint8)
    residual = new if reference is None else new ^ np.frombuffer(reference, dtype=np.uint8)
    return to_planes(residual, width)


def diff_residual(target: bytes, reference: bytes | memoryview, width: int) -> bytes:
    new = np.frombuffer(target, dtype=_UINT[width])
    old = np.frombuffer(reference, dtype=_UINT[width])
    return to_planes(_zigzag(new - old, width), width)


def sparse_residual(target: bytes, reference: bytes | memoryview, width: int) -> bytes | None:
    """Positions and values of changed elements; None when more than a quarter of the elements changed."""
    new = np.frombuffer(target, dtype=_UINT[width])
    old = np.frombuffer(reference, dtype=_UINT[width])
    changed = np.flatnonzero(new != old)
    if len(changed) > len(new) // 4:
        return None
    gaps = np.diff(changed, prepend=-1).astype(np.uint32)  # first gap is index + 1, every gap >= 1
    return np.uint32(len(changed)).tobytes() + to_planes(gaps, 4) + to_planes(new[changed], width)


def diff_rans_payload(target: bytes, reference: bytes | memoryview) -> bytes:
    """DIFF_RANS payload: header, zstd frame of the symbol frequencies (uint16, up to the last used symbol),
    zstd frame of the byte planes of escaped values (absent when there are none), the lanes' final states
    (uint32), the rANS words (uint16)."""
    values = _zigzag(np.frombuffer(target, dtype=np.uint16) - np.frombuffer(reference, dtype=np.uint16), 2)
    symbols = np.minimum(values, ESCAPE).astype(np.uint8)
    freqs = rans.frequencies(symbols)
    states, words = rans.encode(symbols, freqs, rans.lanes_for(freqs, len(symbols)))
    table = zstd_compress(freqs[: int(np.flatnonzero(freqs)[-1]) + 1].tobytes(), 19)
    escaped = values[values >= ESCAPE]
    escapes = zstd_compress(to_planes(escaped, 2), 19) if len(escaped) else b""
    header = RANS_HEADER.pack(len(states), len(table), len(escapes), len(words))
    return header + table + escapes + states.tobytes() + words.tobytes()


def _rotated(values: np.ndarray, width: int, left: bool) -> np.ndarray:
    """Elements rotated by one bit: left moves a float's sign bit to the bottom, so its top byte holds the whole
    exponent (float32, bfloat16) and the exponent's lowest bit is coded with the rest of it."""
    unsigned = values.view(_UINT[width])
    one, other = _UINT[width](1), _UINT[width](8 * width - 1)
    if left:
        return (unsigned << one) | (unsigned >> other)
    return (unsigned >> one) | (unsigned << other)


def float_planes_payload(target: bytes, width: int, level: int = FLOAT_PLANES_LEVEL) -> bytes:
    """FLOAT_PLANES payload: per byte plane of the rotated elements (zipnn's byte grouping: each plane gets its
    own entropy model) a mode byte and a uint32 length, then the planes' streams: one zstd frame (mode 0), or a
    static rANS stream (mode 1: a plane at its order-0 entropy, where Huffman rounds to whole bits) when that is
    at least 0.5 % smaller (``RANS_PLANE_GAIN``: it decodes slower)."""
    planes = np.frombuffer(
        to_planes(_rotated(np.frombuffer(target, dtype=_UINT[width]), width, True), width), dtype=np.uint8
    ).reshape(width, -1)
    streams = []
    for plane in planes:
        noise = _order0_bits(plane) >= NOISE_BITS
        best = (PLANE_ZSTD, zstd_compress(plane.tobytes(), 1 if noise else level))
        if not noise and len(plane):
            coded = _rans_bytes(plane)
            if len(coded) < RANS_PLANE_GAIN * len(best[1]):
                best = (PLANE_RANS, coded)
        streams.append(best)
    header = b"".join(PLANE_ENTRY.pack(mode, len(stream)) for mode, stream in streams)
    return header + b"".join(stream for _, stream in streams)


def _rans_bytes(symbols: np.ndarray) -> bytes:
    """Mode 1 of a float plane: uint32 lanes, table and word-stream lengths; zstd frame of the uint16 symbol
    frequencies (up to the last used symbol); the lanes' final states (uint32); the rANS words (uint16)."""
    freqs = rans.frequencies(symbols)
    states, words = rans.encode(symbols, freqs, rans.lanes_for(freqs, len(symbols)))
    table = zstd_compress(freqs[: int(np.flatnonzero(freqs)[-1]) + 1].tobytes(), 19)
    return RANS_BYTES_HEADER.pack(len(states), len(table), len(words)) + table + states.tobytes() + words.tobytes()


def _order0_bits(plane: np.ndarray) -> float:
    counts = np.bincount(plane, minlength=256)
    p = counts[counts > 0] / max(len(plane), 1)
    return float(-(p * np.log2(p)).sum())


# --------------------------------------------------------------------------- decoder (apply side)


def decode(segment: Segment, payload: bytes, reference: bytes | memoryview) -> bytes:
    """Exactly ``segment.target_length`` bytes, or PatchError."""
    length, width, backend = segment.target_length, segment.width, segment.backend
    if segment.codec == Codec.ZSTD:
        return unpack(payload, backend, length, length)
    if segment.codec == Codec.ZSTD_REF:
        return zstd_decompress(payload, length, reference)
    reference = predicted_reference(reference, segment.transform)
    if segment.codec == Codec.XOR_PLANES:
        residual = from_planes(unpack(payload, backend, length, length), width)
        if not len(reference):
            return residual.tobytes()
        return (residual ^ np.frombuffer(reference, dtype=np.uint8)).tobytes()
    if segment.codec == Codec.DIFF_PLANES:
        deltas = _unzigzag(from_planes(unpack(payload, backend, length, length), width).view(_UINT[width]), width)
        return (np.frombuffer(reference, dtype=_UINT[width]) + deltas).tobytes()
    if segment.codec == Codec.SPARSE:
        return _decode_sparse(payload, backend, reference, length, width)
    if segment.codec == Codec.DIFF_RANS:
        return _decode_diff_rans(payload, reference, length)
    if segment.codec == Codec.FLOAT_PLANES:
        return _decode_float_planes(payload, length, width)
    if segment.codec == Codec.BLOCK_PLANES:
        from lorien.repo.engine import block_planes  # it builds on this module's planes and frames

        return block_planes.decode(payload, reference, length)
    if segment.codec == Codec.RANGES:
        from lorien.repo.engine import ranges  # it builds on this module's codecs

        return ranges.decode(payload, reference, length)
    if segment.codec == Codec.SPARSE_DIFF:
        from lorien.repo.engine.sparse_diff import decode_sparse_diff  # it builds on this module

        return decode_sparse_diff(payload, backend, reference, length, width)
    if segment.codec == Codec.SPARSE_DIFF_CRC:
        from lorien.repo.engine.sparse_diff import decode_sparse_diff_crc  # it builds on this module

        return decode_sparse_diff_crc(payload, backend, reference, length, width)
    if segment.codec == Codec.COVERS:
        from lorien.repo.engine import covers  # it builds on this module

        return covers.decode(payload, backend, reference, length)
    raise PatchError(f"codec {segment.codec.name} has no decoder")  # pragma: no cover - table checks codecs


# shared with the RANGES codec (repo/engine/ranges.py), which codes its gathered elements with these
UINT = _UINT


def zigzag(values: np.ndarray, width: int) -> np.ndarray:
    return _zigzag(values, width)


def unzigzag(values: np.ndarray, width: int) -> np.ndarray:
    return _unzigzag(values, width)


def _decode_sparse(
    payload: bytes, backend: Backend, reference: bytes | memoryview, length: int, width: int
) -> bytes:
    elements = length // width
    raw = unpack(payload, backend, None, 4 + elements * (4 + width))
    if len(raw) < 4:
        raise PatchError("sparse data shorter than its count")
    count = int(np.frombuffer(raw[:4], dtype=np.uint32)[0])
    if count > elements or len(raw) != 4 + count * (4 + width):
        raise PatchError(f"sparse data lists {count} changes in {len(raw)} bytes for {elements} elements")
    gaps = from_planes(raw[4 : 4 + 4 * count], 4).view(np.uint32).astype(np.int64)
    positions = np.cumsum(gaps) - 1
    if count and (gaps.min() < 1 or positions[-1] >= elements):
        raise PatchError("sparse data points outside its segment")
    output = np.frombuffer(reference, dtype=_UINT[width]).copy()
    output[positions] = from_planes(raw[4 + 4 * count :], width).view(_UINT[width])
    return output.tobytes()


def _decode_diff_rans(payload: bytes, reference: bytes | memoryview, length: int) -> bytes:
    if len(payload) < RANS_HEADER.size:
        raise PatchError("rANS data shorter than its header")
    lanes, table_length, escapes_length, word_count = RANS_HEADER.unpack_from(payload)
    escapes_at = RANS_HEADER.size + table_length
    states_at = escapes_at + escapes_length
    if states_at + 4 * lanes + 2 * word_count != len(payload):
        raise PatchError("rANS data lengths do not add up to its payload")
    freqs = _rans_table(payload[RANS_HEADER.size : escapes_at])
    escapes = unpack(payload[escapes_at:states_at], Backend.ZSTD, None, length) if escapes_length else b""
    states = np.frombuffer(payload, np.uint32, lanes, states_at)
    words = np.frombuffer(payload, np.uint16, word_count, states_at + 4 * lanes)
    symbols = rans.decode(states, words, freqs, length // 2)
    deltas = _SYMBOL_DELTA.take(symbols)  # the change in ulps of every element whose symbol is not the escape
    escaped = (symbols == ESCAPE).nonzero()[0]
    if 2 * len(escaped) != len(escapes):
        raise PatchError("rANS escapes do not match their symbols")
    deltas[escaped] = _unzigzag(from_planes(escapes, 2).view(np.uint16), 2)
    deltas += np.frombuffer(reference, dtype=np.uint16)
    return deltas.tobytes()


def _decode_float_planes(payload: bytes, length: int, width: int) -> bytes:
    header_size = PLANE_ENTRY.size * width
    if len(payload) < header_size:
        raise PatchError("float planes data shorter than its plane entries")
    entries = [PLANE_ENTRY.unpack_from(payload, PLANE_ENTRY.size * k) for k in range(width)]
    if header_size + sum(size for _, size in entries) != len(payload):
        raise PatchError("float planes stream lengths do not add up to its payload")
    planes, position, count = [], header_size, length // width
    for mode, size in entries:
        stream = payload[position : position + size]
        position += size
        if mode == PLANE_ZSTD:
            planes.append(zstd_decompress(stream, count))
        elif mode == PLANE_RANS:
            planes.append(_decode_rans_bytes(stream, count).tobytes())
        else:
            raise PatchError(f"float plane mode {mode} is unknown")
    elements = from_planes(b"".join(planes), width).view(_UINT[width])
    return _rotated(elements, width, False).tobytes()


def _decode_rans_bytes(stream: bytes, count: int) -> np.ndarray:
    if len(stream) < RANS_BYTES_HEADER.size:
        raise PatchError("rANS plane shorter than its header")
    lanes, table_length, word_count = RANS_BYTES_HEADER.unpack_from(stream)
    states_at = RANS_BYTES_HEADER.size + table_length
    if states_at + 4 * lanes + 2 * word_count != len(stream):
        raise PatchError("rANS plane lengths do not add up to its stream")
    freqs = _rans_table(stream[RANS_BYTES_HEADER.size : states_at])
    states = np.frombuffer(stream, np.uint32, lanes, states_at)
    words = np.frombuffer(stream, np.uint16, word_count, states_at + 4 * lanes)
    return rans.decode(states, words, freqs, count)


def _rans_table(frame: bytes) -> np.ndarray:
    """The 256 symbol frequencies from their zstd frame (uint16, up to the last used symbol)."""
    table = unpack(frame, Backend.ZSTD, None, 2 * rans.SYMBOLS)
    if len(table) % 2:
        raise PatchError("rANS frequency table has an odd length")
    freqs = np.zeros(rans.SYMBOLS, np.uint16)
    freqs[: len(table) // 2] = np.frombuffer(table, np.uint16)
    return freqs
