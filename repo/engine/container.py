"""The ``lorien`` patch container: header, segment table, payloads — packing and defensive parsing.

Two layouts (all integers little-endian; full description in docs/patch-format.md)::

    classic (versions 1-4)
    header  100 bytes  magic "LRNPATCH", format version, flags, segment count, source/target size and
                       SHA-256, CRC-32 of header bytes 0..95 + segment table
    table   40 bytes per segment: codec, element width, transform, entropy backend, target length, reference
                       offset and length in the source, payload length, payload CRC-32

    compact (versions 5 and 6)
    header  "LRN", version byte, varint segment count, varint source size, the first 8 bytes of the source's
            and of the target's SHA-256
    table   per segment: codec byte; a copy: varint length, varint reference offset (zigzag, relative to the
            segment's own offset in the target); any other codec: a byte of width/transform/backend/has-reference,
            varint target length, [reference offset as for a copy, [varint reference length: ZSTD_REF and COVERS only]],
            varint payload length, payload CRC-32
    CRC-32 of everything before it

    payloads           concatenated in table order

Segments cover the target contiguously in table order, so target offsets are implied (and in the compact
layout the target size is their sum). Parsing checks every number against :class:`Limits` and against the file
and source sizes *before* anything is allocated; a table that does not add up (lengths, references outside the
source, payloads past the end of the file) is refused as corrupt. The compact layout is what a patch costs
when it is tiny (identical files: 33-35 bytes instead of 140); the digests it carries are checks against
accidents — what a device installs is checked against the full SHA-256 its signed manifest gives.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import BinaryIO

from lorien.repo.engine import varints
from lorien.repo.errors import BadInputError, PatchError
from lorien.repo.limits import DEFAULT_LIMITS, Limits

MAGIC = b"LRNPATCH"  # the classic layout (versions 1-4)
COMPACT_MAGIC = b"LRN"  # ... followed by the version byte (5 or more; ASCII letters follow it in other magics)
COMPACT_VERSION = 5  # the compact layout (smaller header and table) and codec 11 (COVERS), which only it carries
FORMAT_VERSION = 6  # 2 added codec 6 (DIFF_RANS), 3 codec 7 (FLOAT_PLANES), 4 codecs 8 (BLOCK_PLANES), 9
# (RANGES) and 10 (SPARSE_DIFF), 5 the compact layout and codec 11 (COVERS), 6 backend 3 (BROTLI) and codec 12
# (SPARSE_DIFF_CRC); a patch is written at the lowest version its codecs and backends need
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)
HEADER = struct.Struct("<8sHHIQQ32s32sI")
ENTRY = struct.Struct("<BBBBQQQQI")
HEADER_SIZE = HEADER.size
ENTRY_SIZE = ENTRY.size
SHORT_DIGEST = 8  # bytes of each SHA-256 the compact layout keeps
CRC_SIZE = 4
COMPACT_HEADER_MAX = len(COMPACT_MAGIC) + 1 + 2 * varints.MAX_BYTES + 2 * SHORT_DIGEST
COMPACT_ENTRY_MAX = 2 + 4 * varints.MAX_BYTES + CRC_SIZE
COMPACT_ENTRY_MIN = 3  # a copy: codec, one-byte length, one-byte offset
COMPACT_GAIN = 0.01  # the compact layout is written when it makes a patch at least this much smaller
HAS_REFERENCE = 0x80  # compact attribute byte: width (bits 0-3), transform (4), backend (5-6), reference (7)
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
    COVERS = (
        11  # approximate copies at shifting reference offsets + sparse byte differences (version 5, covers.py)
    )
    SPARSE_DIFF_CRC = 12  # SPARSE_DIFF whose listed CRC-32 fields are recomputed on apply (version 6)


class Backend(IntEnum):
    """Entropy stage of a payload (ZSTD_REF is always zstd; COPY has no payload)."""

    ZSTD = 0
    XZ = 1  # raw LZMA2: beats zstd's Huffman literals on residuals under ~1 bit per byte
    BZ2 = 2  # bzip2 (BWT): best on very sparse byte differences (int8 re-quantization flips)
    BROTLI = 3  # Brotli (version 6): context modelling, smallest on small residuals (sparse differences, covers)


class Transform(IntEnum):
    NONE = 0
    F32_TO_F16 = 1  # the reference is float32 and is rounded to float16 before use


BUFFERED_CODECS = {
    Codec.XOR_PLANES,
    Codec.DIFF_PLANES,
    Codec.SPARSE,
    Codec.DIFF_RANS,
    Codec.SPARSE_DIFF,
    Codec.SPARSE_DIFF_CRC,
}
SINCE_VERSION = {
    Codec.DIFF_RANS: 2,
    Codec.FLOAT_PLANES: 3,
    Codec.BLOCK_PLANES: 4,
    Codec.RANGES: 4,
    Codec.SPARSE_DIFF: 4,
    Codec.COVERS: 5,
    Codec.SPARSE_DIFF_CRC: 6,
}  # codecs newer than version 1: the lowest version a patch using them has
BACKEND_SINCE = {Backend.BROTLI: 6}  # the same for entropy backends
# the codecs whose payload is a raw stream under any entropy backend (the others: zstd or none; the parser refuses
# another backend on them)
BACKEND_CODECS = {
    Codec.ZSTD,
    Codec.XOR_PLANES,
    Codec.DIFF_PLANES,
    Codec.SPARSE,
    Codec.SPARSE_DIFF,
    Codec.COVERS,
    Codec.SPARSE_DIFF_CRC,
}
WIDTHS = {1, 2, 4, 8}
EXPLICIT_REFERENCE = (Codec.ZSTD_REF, Codec.COVERS)  # compact entries that store their reference length


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


def backend_usable_up_to(backend: Backend, max_version: int) -> bool:
    """Whether a patch capped at container version ``max_version`` may use ``backend``."""
    return BACKEND_SINCE.get(backend, 1) <= max_version


def checked_max_version(value: int, where: str = "the patch format cap") -> int:
    """``value`` as a container-version cap, or a clear refusal (BadInputError) naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= FORMAT_VERSION:
        raise BadInputError(
            f"{where}: {value!r} is not a patch format version this lorien writes (1 to {FORMAT_VERSION}); "
            f"devices read the versions of their lorien release, see docs/patch-format.md"
        )
    return value


def version_for(segments: list[Segment]) -> int:
    """The lowest format version that has every codec and backend used: old appliers keep reading what they can."""
    return max(
        (max(SINCE_VERSION.get(segment.codec, 1), BACKEND_SINCE.get(segment.backend, 1)) for segment in segments),
        default=1,
    )


def pack_header(header: Header, table: bytes, version: int = 4) -> bytes:
    """The classic layout's 100-byte header for ``table`` (the segments' 40-byte entries)."""
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


def smallest_head(header: Header, segments: list[Segment], max_version: int) -> bytes:
    """Everything before the payloads of a patch of ``segments``, under the cap ``max_version``: the classic
    layout at the lowest version its codecs need (so devices of older releases keep applying it), unless the
    compact layout is allowed and makes the whole patch at least ``COMPACT_GAIN`` smaller — tiny patches
    (identical files: 33-35 bytes instead of 140; a layer removed), where the classic head is most of it. A
    patch using a codec or backend of version 5 or later (COVERS, BROTLI) has no classic form: both heads are then
    compact, at the lowest version they need."""
    needed = version_for(segments)
    classic = pack_head(header, segments, needed)
    if max_version < COMPACT_VERSION or any(not segment.target_length for segment in segments):
        return classic  # (an empty segment, which the compact layout refuses: never made by the engine)
    compact = pack_head(header, segments, max(COMPACT_VERSION, needed))
    patch_size = len(classic) + sum(segment.payload_length for segment in segments)
    return compact if len(classic) - len(compact) >= COMPACT_GAIN * patch_size else classic


def pack_head(header: Header, segments: list[Segment], version: int) -> bytes:
    """Everything before the payloads, in the layout of ``version``."""
    if version < COMPACT_VERSION:
        table = b"".join(segment.pack() for segment in segments)
        return pack_header(replace(header, segment_count=len(segments)), table, version) + table
    head = bytearray(COMPACT_MAGIC + bytes([version]))
    head += varints.encode(len(segments)) + varints.encode(header.source_size)
    head += header.source_sha256[:SHORT_DIGEST] + header.target_sha256[:SHORT_DIGEST]
    offset = 0
    for segment in segments:
        head += compact_entry(segment, offset)
        offset += segment.target_length
    return bytes(head) + struct.pack("<I", zlib.crc32(head))


def implied_reference(target_length: int, transform: int) -> int:
    """The reference length the compact layout implies for a segment with a reference (all but EXPLICIT_REFERENCE)."""
    return target_length * (2 if transform == Transform.F32_TO_F16 else 1)


def compact_entry(segment: Segment, target_offset: int) -> bytes:
    """``segment``'s compact table entry, the segment starting at ``target_offset`` in the target."""
    relative = varints.encode(varints.zigzag(segment.ref_offset - target_offset))
    if segment.codec == Codec.COPY:
        return bytes([segment.codec]) + varints.encode(segment.target_length) + relative
    has_reference = segment.ref_length > 0
    attributes = segment.width | segment.transform << 4 | segment.backend << 5 | HAS_REFERENCE * has_reference
    entry = bytearray([segment.codec, attributes]) + varints.encode(segment.target_length)
    if has_reference:
        entry += relative
        if segment.codec in EXPLICIT_REFERENCE:
            entry += varints.encode(segment.ref_length)
        elif segment.ref_length != implied_reference(segment.target_length, segment.transform):
            raise ValueError(f"{segment}: the compact layout implies another reference length")  # an engine bug
    entry += varints.encode(segment.payload_length) + struct.pack("<I", segment.payload_crc32)
    return bytes(entry)


def short_digest_matches(stored: bytes, hexdigest: str) -> bool:
    """Whether a digest kept in a patch (a whole SHA-256, or its first ``SHORT_DIGEST`` bytes in the compact
    layout) is that of ``hexdigest``."""
    return bytes.fromhex(hexdigest)[: len(stored)] == stored


def recognises(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) starts a lorien patch of either layout, of any version."""
    return head.startswith(MAGIC) or (
        len(head) > len(COMPACT_MAGIC)
        and head.startswith(COMPACT_MAGIC)
        and COMPACT_VERSION <= head[len(COMPACT_MAGIC)] < 0x20
    )


def read_header_and_table(
    handle: BinaryIO, patch_size: int, name: str, limits: Limits = DEFAULT_LIMITS
) -> tuple[Header, list[Segment]]:
    """Read and validate everything before the payloads; the handle is left at the first payload."""
    start = handle.read(len(MAGIC))
    if start == MAGIC:
        return _read_classic(handle, patch_size, name, limits)
    if not recognises(start):
        if len(start) < len(MAGIC) and start == MAGIC[: len(start)]:
            raise PatchError(f"{name}: truncated patch ({len(start)} bytes)")
        raise PatchError(f"{name}: not a lorien patch (bad magic)")
    _check_version(start[len(COMPACT_MAGIC)], name)
    return _read_compact(start + handle.read(COMPACT_HEADER_MAX), handle, patch_size, name, limits)


def _check_version(version: int, name: str) -> None:
    if version not in READABLE_VERSIONS:
        raise PatchError(
            f"{name}: patch format version {version} is not supported (this lorien reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}); upgrade lorien or re-create the patch"
        )


def _read_classic(handle: BinaryIO, patch_size: int, name: str, limits: Limits) -> tuple[Header, list[Segment]]:
    raw = MAGIC + handle.read(HEADER_SIZE - len(MAGIC))
    if len(raw) < HEADER_SIZE:
        raise PatchError(f"{name}: truncated patch ({len(raw)} bytes; the header alone is {HEADER_SIZE})")
    _magic, version, _flags, count, source_size, target_size, source_sha, target_sha, crc = HEADER.unpack(raw)
    _check_version(version, name)
    if version >= COMPACT_VERSION:
        raise PatchError(f"{name}: corrupt patch: version {version} has no classic layout")
    if count > limits.max_segments or HEADER_SIZE + count * ENTRY_SIZE > patch_size:
        raise PatchError(f"{name}: corrupt patch: {count} segments do not fit in {patch_size} bytes")
    if target_size > limits.max_target:
        raise PatchError(f"{name}: corrupt patch: target size {target_size} exceeds the limit {limits.max_target}")
    table = handle.read(count * ENTRY_SIZE)
    if len(table) != count * ENTRY_SIZE or zlib.crc32(table, zlib.crc32(raw[:-4])) != crc:
        raise PatchError(f"{name}: corrupt patch: header/segment table checksum mismatch")
    header = Header(count, source_size, target_size, source_sha, target_sha, version)
    segments = [
        _checked_segment(ENTRY.unpack_from(table, i * ENTRY_SIZE), i, header, limits, name) for i in range(count)
    ]
    _check_totals(header, segments, HEADER_SIZE + count * ENTRY_SIZE, patch_size, name)
    return header, segments


class _TableReader:
    """Reads the compact header and table from ``data`` (the file's first bytes), refusing what is cut short
    or out of bounds with a PatchError that names the patch."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.name, self.position = data, name, 0

    def fail(self, why: str) -> PatchError:
        return PatchError(f"{self.name}: corrupt or truncated patch: {why}")

    def number(self, limit: int, what: str) -> int:
        try:
            value, self.position = varints.read(self.data, self.position, limit, what)
        except PatchError as error:
            raise self.fail(str(error)) from None
        return value

    def raw(self, size: int, what: str) -> bytes:
        chunk = self.data[self.position : self.position + size]
        if len(chunk) < size:
            raise self.fail(f"the file ends inside {what}")
        self.position += size
        return chunk

    def entry(self, target_offset: int, limits: Limits, where: str) -> tuple[int, ...]:
        """One compact entry as the classic entry's fields: codec, width, transform, backend, target length,
        reference offset and length, payload length and CRC."""
        codec = self.raw(1, f"{where}'s entry")[0]
        attributes = 0 if codec == Codec.COPY else self.raw(1, f"{where}'s entry")[0]
        length = self.number(limits.max_target, f"{where}'s length")
        ref_offset = ref_length = payload_length = crc = 0
        transform = attributes >> 4 & 1
        if codec == Codec.COPY or attributes & HAS_REFERENCE:
            ref_offset = target_offset + varints.unzigzag(self.number(varints.LARGEST, f"{where}'s reference"))
            if codec == Codec.COPY:
                ref_length = length
            elif codec in EXPLICIT_REFERENCE:
                ref_length = self.number(limits.max_reference, f"{where}'s reference length")
            else:
                ref_length = implied_reference(length, transform)
        if codec != Codec.COPY:
            payload_length = self.number(limits.max_payload, f"{where}'s payload length")
            crc = struct.unpack("<I", self.raw(CRC_SIZE, f"{where}'s checksum"))[0]
        width, backend = attributes & 0x0F, attributes >> 5 & 3
        return codec, width, transform, backend, length, ref_offset, ref_length, payload_length, crc


def _read_compact(
    start: bytes, handle: BinaryIO, patch_size: int, name: str, limits: Limits
) -> tuple[Header, list[Segment]]:
    """The compact layout; ``start`` holds the file's first bytes (the whole header, when the file is that
    long), ``handle`` is just past them."""
    reader = _TableReader(start, name)
    version = reader.raw(len(COMPACT_MAGIC) + 1, "the magic")[-1]
    count = reader.number(limits.max_segments, "the segment count")
    source_size = reader.number(varints.LARGEST, "the source size")
    source_sha, target_sha = reader.raw(SHORT_DIGEST, "the digests"), reader.raw(SHORT_DIGEST, "the digests")
    if reader.position + count * COMPACT_ENTRY_MIN + CRC_SIZE > patch_size:
        raise PatchError(f"{name}: corrupt patch: {count} segments do not fit in {patch_size} bytes")
    # the table is at most count × COMPACT_ENTRY_MAX bytes: read that much (bounded by the file) at once
    wanted = min(patch_size, reader.position + count * COMPACT_ENTRY_MAX + CRC_SIZE)
    reader.data += handle.read(max(0, wanted - len(reader.data)))
    fields = []
    target_size = 0
    for index in range(count):
        fields.append(reader.entry(target_size, limits, f"segment {index}"))
        length = fields[-1][4]
        if not length:  # the encoder never writes one; each would cost parsing (and a reference) for nothing
            raise PatchError(f"{name}: corrupt patch: segment {index} produces no bytes")
        target_size += length
        if target_size > limits.max_target:
            raise PatchError(f"{name}: corrupt patch: target size exceeds the limit {limits.max_target}")
    table_end = reader.position
    (crc,) = struct.unpack("<I", reader.raw(CRC_SIZE, "the table checksum"))
    if zlib.crc32(reader.data[:table_end]) != crc:
        raise PatchError(f"{name}: corrupt patch: header/segment table checksum mismatch")
    handle.seek(reader.position)
    header = Header(count, source_size, target_size, source_sha, target_sha, version)
    segments = [_checked_segment(entry, i, header, limits, name) for i, entry in enumerate(fields)]
    _check_totals(header, segments, reader.position, patch_size, name)
    return header, segments


def _check_totals(header: Header, segments: list[Segment], head_size: int, patch_size: int, name: str) -> None:
    if version_for(segments) > (header.version or FORMAT_VERSION):
        raise PatchError(
            f"{name}: corrupt patch: version {header.version} uses codecs or backends of version {version_for(segments)}"
        )
    total_target = sum(segment.target_length for segment in segments)
    total_payload = sum(segment.payload_length for segment in segments)
    if total_target != header.target_size:
        raise PatchError(
            f"{name}: corrupt patch: segments produce {total_target} bytes, header says {header.target_size}"
        )
    if head_size + total_payload != patch_size:
        raise PatchError(
            f"{name}: corrupt or truncated patch: payloads need {head_size + total_payload} bytes, "
            f"file has {patch_size}"
        )


def _checked_segment(fields: tuple[int, ...], index: int, header: Header, limits: Limits, name: str) -> Segment:
    codec_id, width, transform_id, backend_id, target_length, ref_offset, ref_length, payload_length, crc = fields

    def bad(why: str) -> PatchError:
        return PatchError(f"{name}: corrupt patch: segment {index}: {why}")

    try:
        codec, transform, backend = Codec(codec_id), Transform(transform_id), Backend(backend_id)
    except ValueError:
        raise bad(f"unknown codec {codec_id}, transform {transform_id} or backend {backend_id}") from None
    if backend != Backend.ZSTD and codec not in BACKEND_CODECS:
        raise bad(f"codec {codec.name} has no {backend.name} form")
    if ref_offset < 0 or ref_offset + ref_length > header.source_size:
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
        if width not in WIDTHS or (
            target_length % width and codec not in (Codec.SPARSE_DIFF, Codec.SPARSE_DIFF_CRC)
        ):
            raise bad(f"element width {width} does not divide {target_length} bytes")
        if codec == Codec.DIFF_RANS and width != 2:
            raise bad("DIFF_RANS codes 2-byte elements")
        expected = implied_reference(target_length, transform)
        if transform == Transform.F32_TO_F16 and width != 2:
            raise bad("a float32→float16 reference needs element width 2")
        if ref_length != expected and not (codec == Codec.XOR_PLANES and ref_length == 0):
            raise bad(f"reference of {ref_length} bytes does not match {target_length} target bytes")
    elif transform != Transform.NONE:
        raise bad(f"codec {codec.name} takes no transform")
    if codec == Codec.FLOAT_PLANES and (width not in (2, 4) or target_length % width or ref_length):
        raise bad("FLOAT_PLANES codes 2- or 4-byte elements, whole, with no reference")
    if codec == Codec.BLOCK_PLANES and (width != 1 or ref_length not in (0, target_length)):
        raise bad("BLOCK_PLANES takes element width 1 and a reference of its own length or none")
    if codec == Codec.SPARSE_DIFF_CRC and transform != Transform.NONE:
        raise bad("SPARSE_DIFF_CRC takes no transform")
    if codec == Codec.COVERS and (width or transform != Transform.NONE or not ref_length):
        raise bad("COVERS needs width 0, no transform and a reference")
    if codec == Codec.RANGES and (width or ref_length != target_length or transform != Transform.NONE):
        raise bad("RANGES needs width 0, a reference of its target length and no transform")
    return Segment(codec, width, transform, target_length, ref_offset, ref_length, payload_length, crc, backend)
