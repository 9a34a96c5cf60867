"""The ``lorien`` patch container: header, segment table, payloads — packing and defensive parsing.

Layout (all integers little-endian; full description in docs/patch-format.md)::

    header  100 bytes  magic "LRNPATCH", format version, flags, segment count, source/target size and
                       SHA-256, CRC-32 of header bytes 0..95 + segment table
    table   40 bytes per segment: codec, element width, transform, entropy backend, target length, reference
                       offset and length in the source, payload length, payload CRC-32
    payloads           concatenated in table order

Segments cover the target contiguously in table order, so target offsets are implied. Parsing checks every
number against :class:`Limits` and against the file and source sizes *before* anything is allocated; a
table that does not add up (lengths, references outside the source, payloads past the end of the file) is
refused as corrupt.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import BinaryIO

from lorien.repo.errors import BadInputError, PatchError
from lorien.repo.limits import DEFAULT_LIMITS, Limits

MAGIC = b"LRNPATCH"
FORMAT_VERSION = 4  # 2 added codec 6 (DIFF_RANS), 3 codec 7 (FLOAT_PLANES), 4 codecs 8 (BLOCK_PLANES), 9
# (RANGES) and 10 (SPARSE_DIFF); a patch is written at the lowest version it needs
READABLE_VERSIONS = (1, 2, 3, 4)
HEADER = struct.Struct("<8sHHIQQ32s32sI")
ENTRY = struct.Struct("<BBBBQQQQI")
HEADER_SIZE = HEADER.size
ENTRY_SIZE = ENTRY.size
MiB = 1 << 20


class Codec(IntEnum):
    COPY = 0  # target = source[ref]
    ZSTD = 1  # zstd frame, no dictionary
    ZSTD_REF = 2  # zstd frame with source[ref] as raw-content dictionary
    XOR_PLANES = 3  # zstd(byte planes of target XOR reference); no reference = plain byte planes
    DIFF_PLANES = 4  # zstd(byte planes of zigzag(target - reference)) as width-byte integers
    SPARSE = 5  # zstd(count, element index gaps, new values) over a copy of the reference
    DIFF_RANS = 6  # rANS of zigzag(target - reference) as 16-bit integers, small values as symbols (version 2)
    FLOAT_PLANES = (
        7  # no reference: sign bit rotated to the bottom, each byte plane its own zstd frame (version 3)
    )
    BLOCK_PLANES = 8  # quantized blocks split into fields, each against the old field (version 4, block_planes.py)
    RANGES = 9  # typed byte ranges of one segment, each width's elements coded as one stream (version 4)
    SPARSE_DIFF = 10  # changed elements: varint gaps + zigzag(target - reference) planes (version 4)


class Backend(IntEnum):
    """Entropy stage of a payload (ZSTD_REF is always zstd; COPY has no payload)."""

    ZSTD = 0
    XZ = 1  # raw LZMA2: beats zstd's Huffman literals on residuals under ~1 bit per byte
    BZ2 = 2  # bzip2 (BWT): best on very sparse byte differences (int8 re-quantization flips)


class Transform(IntEnum):
    NONE = 0
    F32_TO_F16 = 1  # the reference is float32 and is rounded to float16 before use


BUFFERED_CODECS = {Codec.XOR_PLANES, Codec.DIFF_PLANES, Codec.SPARSE, Codec.DIFF_RANS, Codec.SPARSE_DIFF}
SINCE_VERSION = {
    Codec.DIFF_RANS: 2,
    Codec.FLOAT_PLANES: 3,
    Codec.BLOCK_PLANES: 4,
    Codec.RANGES: 4,
    Codec.SPARSE_DIFF: 4,
}  # codecs newer than version 1: the lowest version a patch using them has
WIDTHS = {1, 2, 4, 8}


@dataclass(frozen=True)
class Header:
    segment_count: int
    source_size: int
    target_size: int
    source_sha256: bytes
    target_sha256: bytes
    version: int | None = None  # the format version a parsed patch declares (None: not read from a patch)


@dataclass(frozen=True)
class Segment:
    codec: Codec
    width: int
    transform: Transform
    target_length: int
    ref_offset: int
    ref_length: int
    payload_length: int
    payload_crc32: int
    backend: Backend = Backend.ZSTD

    def pack(self) -> bytes:
        return ENTRY.pack(
            self.codec,
            self.width,
            self.transform,
            self.backend,
            self.target_length,
            self.ref_offset,
            self.ref_length,
            self.payload_length,
            self.payload_crc32,
        )


def usable_up_to(codec: Codec, max_version: int) -> bool:
    """Whether a patch capped at container version ``max_version`` may use ``codec``."""
    return SINCE_VERSION.get(codec, 1) <= max_version


def checked_max_version(value: int, where: str = "the patch format cap") -> int:
    """``value`` as a container-version cap, or a clear refusal (BadInputError) naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= FORMAT_VERSION:
        raise BadInputError(
            f"{where}: {value!r} is not a patch format version this lorien writes (1 to {FORMAT_VERSION}); "
            f"devices read the versions of their lorien release, see docs/patch-format.md"
        )
    return value


def version_for(segments: list[Segment]) -> int:
    """The lowest format version that has every codec used: old appliers keep reading what they can."""
    return max((SINCE_VERSION.get(segment.codec, 1) for segment in segments), default=1)


def pack_header(header: Header, table: bytes, version: int = FORMAT_VERSION) -> bytes:
    fields = HEADER.pack(
        MAGIC,
        version,
        0,
        header.segment_count,
        header.source_size,
        header.target_size,
        header.source_sha256,
        header.target_sha256,
        0,
    )
    return fields[:-4] + struct.pack("<I", zlib.crc32(table, zlib.crc32(fields[:-4])))


def read_header_and_table(
    handle: BinaryIO, patch_size: int, name: str, limits: Limits = DEFAULT_LIMITS
) -> tuple[Header, list[Segment]]:
    """Read and validate everything before the payloads; the handle is left at the first payload."""
    raw = handle.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE:
        raise PatchError(f"{name}: truncated patch ({len(raw)} bytes; the header alone is {HEADER_SIZE})")
    magic, version, _flags, count, source_size, target_size, source_sha, target_sha, crc = HEADER.unpack(raw)
    if magic != MAGIC:
        raise PatchError(f"{name}: not a lorien patch (bad magic)")
    if version not in READABLE_VERSIONS:
        raise PatchError(
            f"{name}: patch format version {version} is not supported (this lorien reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}); upgrade lorien or re-create the patch"
        )
    if count > limits.max_segments or HEADER_SIZE + count * ENTRY_SIZE > patch_size:
        raise PatchError(f"{name}: corrupt patch: {count} segments do not fit in {patch_size} bytes")
    if target_size > limits.max_target:
        raise PatchError(f"{name}: corrupt patch: target size {target_size} exceeds the limit {limits.max_target}")
    table = handle.read(count * ENTRY_SIZE)
    if len(table) != count * ENTRY_SIZE or zlib.crc32(table, zlib.crc32(raw[:-4])) != crc:
        raise PatchError(f"{name}: corrupt patch: header/segment table checksum mismatch")
    header = Header(count, source_size, target_size, source_sha, target_sha, version)
    segments = [_checked_segment(table, i, header, limits, name) for i in range(count)]
    if version_for(segments) > version:
        raise PatchError(
            f"{name}: corrupt patch: version {version} uses codecs of version {version_for(segments)}"
        )
    total_target = sum(segment.target_length for segment in segments)
    total_payload = sum(segment.payload_length for segment in segments)
    if total_target != target_size:
        raise PatchError(
            f"{name}: corrupt patch: segments produce {total_target} bytes, header says {target_size}"
        )
    if HEADER_SIZE + count * ENTRY_SIZE + total_payload != patch_size:
        raise PatchError(
            f"{name}: corrupt or truncated patch: payloads need "
            f"{HEADER_SIZE + count * ENTRY_SIZE + total_payload} bytes, file has {patch_size}"
        )
    return header, segments


def _checked_segment(table: bytes, index: int, header: Header, limits: Limits, name: str) -> Segment:
    codec_id, width, transform_id, backend_id, target_length, ref_offset, ref_length, payload_length, crc = (
        ENTRY.unpack_from(table, index * ENTRY_SIZE)
    )

    def bad(why: str) -> PatchError:
        return PatchError(f"{name}: corrupt patch: segment {index}: {why}")

    try:
        codec, transform, backend = Codec(codec_id), Transform(transform_id), Backend(backend_id)
    except ValueError:
        raise bad(f"unknown codec {codec_id}, transform {transform_id} or backend {backend_id}") from None
    if backend != Backend.ZSTD and codec in (Codec.COPY, Codec.ZSTD_REF):
        raise bad(f"codec {codec.name} has no {backend.name} form")
    if ref_offset + ref_length > header.source_size:
        raise bad(f"reference {ref_offset}+{ref_length} lies outside the {header.source_size}-byte source")
    if payload_length > limits.max_payload:
        raise bad(f"payload of {payload_length} bytes exceeds the limit {limits.max_payload}")
    if codec == Codec.COPY:
        if ref_length != target_length or payload_length or transform != Transform.NONE:
            raise bad("a copy must read exactly its target length and carry no payload")
    else:
        if target_length > limits.max_segment:
            raise bad(f"produces {target_length} bytes, more than the limit {limits.max_segment}")
        if ref_length > limits.max_reference:
            raise bad(f"reference of {ref_length} bytes exceeds the limit {limits.max_reference}")
    if codec == Codec.ZSTD and ref_length:
        raise bad("plain zstd takes no reference")
    if codec in BUFFERED_CODECS:
        # SPARSE_DIFF's entries may sit at any byte offset (its payload says whether they are aligned elements)
        if width not in WIDTHS or (target_length % width and codec != Codec.SPARSE_DIFF):
            raise bad(f"element width {width} does not divide {target_length} bytes")
        if codec == Codec.DIFF_RANS and (width != 2 or backend != Backend.ZSTD):
            raise bad("DIFF_RANS codes 2-byte elements and has no other backend")
        expected = target_length * (2 if transform == Transform.F32_TO_F16 else 1)
        if transform == Transform.F32_TO_F16 and width != 2:
            raise bad("a float32→float16 reference needs element width 2")
        if ref_length != expected and not (codec == Codec.XOR_PLANES and ref_length == 0):
            raise bad(f"reference of {ref_length} bytes does not match {target_length} target bytes")
    elif transform != Transform.NONE:
        raise bad(f"codec {codec.name} takes no transform")
    if codec == Codec.FLOAT_PLANES and (
        width not in (2, 4) or target_length % width or ref_length or backend != Backend.ZSTD
    ):
        raise bad("FLOAT_PLANES codes 2- or 4-byte elements, whole, with no reference and no other backend")
    if codec == Codec.BLOCK_PLANES and (
        width != 1 or ref_length not in (0, target_length) or backend != Backend.ZSTD
    ):
        raise bad(
            "BLOCK_PLANES takes element width 1, a reference of its own length or none, and no other backend"
        )
    if codec == Codec.RANGES and (
        width or ref_length != target_length or transform != Transform.NONE or backend != Backend.ZSTD
    ):
        raise bad("RANGES needs width 0, a reference of its target length, no transform and no other backend")
    return Segment(codec, width, transform, target_length, ref_offset, ref_length, payload_length, crc, backend)
