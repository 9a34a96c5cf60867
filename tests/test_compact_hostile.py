"""Hostile and damaged version-5 (compact) patches through the whole apply path: a real multi-codec patch cut at
every byte, its header and table mutated with the CRC made right again, its payloads mutated with both CRCs made
right again, and random tables with valid checksums. Every one must end in a PatchError with no file left at
the output path, or apply to exactly the right bytes — never another exception, a hang or wrong output."""

from __future__ import annotations

import hashlib
import io
import random
import struct
import tempfile
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorien.repo.engine import codecs, varints
from lorien.repo.engine.container import (
    COMPACT_VERSION,
    HEADER,
    MAGIC,
    Backend,
    Codec,
    Header,
    Segment,
    Transform,
    _TableReader,
    pack_head,
    read_header_and_table,
)
from lorien.repo.engine.lorien_engine import LorienEngine
from lorien.repo.errors import PatchError
from lorien.repo.limits import Limits

UNLIMITED = Limits(
    max_segments=1 << 56, max_segment=1 << 56, max_reference=1 << 56, max_payload=1 << 56, max_target=1 << 62
)


def _multi_codec_patch() -> tuple[bytes, bytes, list[Segment], list[bytes]]:
    """(old, new, segments, payloads) of a compact patch with copies both ways, ZSTD, ZSTD_REF, XOR_PLANES (xz),
    DIFF_PLANES (bzip2), XOR_PLANES from float32 to float16 and FLOAT_PLANES."""
    rng = np.random.default_rng(0)
    old = rng.integers(0, 256, 60_000, dtype=np.uint8).tobytes()
    old += rng.standard_normal(4000).astype(np.float32).tobytes()
    segments: list[Segment] = []
    payloads: list[bytes] = []
    new = bytearray()

    def add(codec: Codec, width: int, ref: tuple[int, int], target: bytes, payload: bytes, **kw: Any) -> None:
        segments.append(_segment(codec, width, ref, target, payload, **kw))
        payloads.append(payload)
        new.extend(target)

    add(Codec.COPY, 0, (30000, 5000), old[30000:35000], b"")
    target = rng.integers(0, 4, 1000, dtype=np.uint8).tobytes()
    add(Codec.ZSTD, 0, (0, 0), target, codecs.zstd_compress(target, 3))
    target = old[:100] + b"x" * 10 + old[110:20000]
    add(Codec.ZSTD_REF, 0, (0, 20000), target, codecs.zstd_compress(target, 3, old[:20000]))
    add(Codec.COPY, 0, (1000, 3000), old[1000:4000], b"")
    reference = old[60000:64000]
    target = bytes(b ^ (i % 50 == 0) for i, b in enumerate(reference))
    payload = codecs.pack(codecs.xor_residual(target, reference, 4), 3, Backend.XZ)
    add(Codec.XOR_PLANES, 4, (60000, 4000), target, payload, backend=Backend.XZ)
    reference = old[64000:66000]
    target = (np.frombuffer(reference, dtype=np.uint16) + np.uint16(3)).tobytes()
    payload = codecs.pack(codecs.diff_residual(target, reference, 2), 3, Backend.BZ2)
    add(Codec.DIFF_PLANES, 2, (64000, 2000), target, payload, backend=Backend.BZ2)
    halves = np.frombuffer(old[60000:68000], dtype=np.float32).astype(np.float16)
    target = (halves + np.float16(0.001)).tobytes()
    payload = codecs.pack(codecs.xor_residual(target, halves.tobytes(), 2), 3, Backend.ZSTD)
    add(Codec.XOR_PLANES, 2, (60000, 8000), target, payload, transform=Transform.F32_TO_F16)
    target = rng.standard_normal(500).astype(np.float32).tobytes()
    add(Codec.FLOAT_PLANES, 4, (0, 0), target, codecs.float_planes_payload(target, 4))
    return old, bytes(new), segments, payloads


def _segment(
    codec: Codec,
    width: int,
    ref: tuple[int, int],
    target: bytes,
    payload: bytes,
    backend: Backend = Backend.ZSTD,
    transform: Transform = Transform.NONE,
) -> Segment:
    crc = zlib.crc32(payload) if codec != Codec.COPY else 0
    return Segment(codec, width, transform, len(target), ref[0], ref[1], len(payload), crc, backend)


def _pack(old: bytes, new: bytes, segments: list[Segment], payloads: list[bytes]) -> bytes:
    """The compact patch of ``segments`` with ``payloads`` (each segment's payload length and CRC made right)."""
    segments = [
        s if s.codec == Codec.COPY else replace(s, payload_length=len(p), payload_crc32=zlib.crc32(p))
        for s, p in zip(segments, payloads, strict=True)
    ]
    header = Header(len(segments), len(old), len(new), hashlib.sha256(old).digest(), hashlib.sha256(new).digest())
    return pack_head(header, segments, COMPACT_VERSION) + b"".join(payloads)


OLD, NEW, SEGMENTS, PAYLOADS = _multi_codec_patch()
PATCH = _pack(OLD, NEW, SEGMENTS, PAYLOADS)


def _table_end(patch: bytes) -> int | None:
    """Where the table's CRC sits, walking the compact layout without limits (None: it cannot be walked)."""
    try:
        reader = _TableReader(patch, "walk")
        reader.raw(4, "magic")
        count = reader.number(varints.LARGEST, "count")
        reader.number(varints.LARGEST, "source size")
        reader.raw(16, "digests")
        if count > len(patch):
            return None
        offset = 0
        for _ in range(count):
            offset += reader.entry(offset, UNLIMITED, "entry")[4]
        return reader.position
    except PatchError:
        return None


def _fix_crc(patch: bytes) -> bytes | None:
    end = _table_end(patch)
    if end is None or end + 4 > len(patch):
        return None
    return patch[:end] + struct.pack("<I", zlib.crc32(patch[:end])) + patch[end + 4 :]


class _Applier:
    def __init__(self, root: Path, old: bytes) -> None:
        self.root, self.source = root, root / "old"
        self.source.write_bytes(old)

    def outcome(self, patch: bytes, new: bytes) -> str:
        """ "ok" (exactly ``new`` written) or "refused" (PatchError, nothing left beside the output); anything
        else fails the test."""
        (self.root / "p").write_bytes(patch)
        out_dir = self.root / "out"
        out_dir.mkdir(exist_ok=True)
        output = out_dir / "new"
        try:
            LorienEngine().apply(self.source, self.root / "p", output)
        except PatchError:
            assert not list(out_dir.iterdir()), "a failed apply left files behind"
            return "refused"
        assert output.read_bytes() == new, "a damaged patch applied to wrong output"
        output.unlink()
        return "ok"


def test_the_multi_codec_patch_is_compact_and_applies(tmp_path: Path) -> None:
    assert PATCH.startswith(b"LRN\x05") and _fix_crc(PATCH) == PATCH
    assert _Applier(tmp_path, OLD).outcome(PATCH, NEW) == "ok"


def test_every_truncation_is_refused_by_the_parser_and_by_apply(tmp_path: Path) -> None:
    applier = _Applier(tmp_path, OLD)
    for cut in range(len(PATCH)):
        with pytest.raises(PatchError):
            read_header_and_table(io.BytesIO(PATCH[:cut]), cut, "p")
        assert applier.outcome(PATCH[:cut], NEW) == "refused", cut


def test_head_mutations_with_the_checksum_made_right_are_refused_or_harmless(tmp_path: Path) -> None:
    applier = _Applier(tmp_path, OLD)
    end = _table_end(PATCH)
    assert end is not None
    rnd = random.Random(1)
    for position in range(end):
        byte = PATCH[position]
        for value in {0, 0x7F, 0x80, 0xFF, byte ^ 1, byte ^ 0x80, rnd.randrange(256)} - {byte}:
            mutated = _fix_crc(PATCH[:position] + bytes([value]) + PATCH[position + 1 :])
            if mutated is not None:
                applier.outcome(mutated, NEW)
        for inserted in (b"\x00", b"\x80"):
            mutated = _fix_crc(PATCH[:position] + inserted + PATCH[position:])
            if mutated is not None:
                applier.outcome(mutated, NEW)


def test_payload_mutations_with_both_checksums_made_right_never_apply_to_wrong_output(tmp_path: Path) -> None:
    applier = _Applier(tmp_path, OLD)
    rnd = random.Random(2)
    coded = [index for index, payload in enumerate(PAYLOADS) if payload]
    for _ in range(300):
        index = rnd.choice(coded)
        payload = bytearray(PAYLOADS[index])
        where = rnd.randrange(len(payload))
        operation = rnd.randrange(4)
        if operation == 0:
            payload[where] ^= 1 << rnd.randrange(8)
        elif operation == 1:
            del payload[where:]
        elif operation == 2:
            payload[where : where + 4] = rnd.choice(
                [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x80\x80\x80\x80"]
            )
        else:
            del payload[where : where + rnd.randrange(1, 5)]
        mutated = _pack(OLD, NEW, SEGMENTS, [*PAYLOADS[:index], bytes(payload), *PAYLOADS[index + 1 :]])
        applier.outcome(mutated, NEW)


SOURCE = bytes(range(256)) * 16
_EDGES = [0, 1, 2, 7, 8, len(SOURCE) - 1, len(SOURCE), len(SOURCE) + 1, 1 << 24, (1 << 24) + 1, 1 << 32, 1 << 40]
_EDGES += [varints.LARGEST]
_numbers = st.one_of(st.sampled_from(_EDGES), st.integers(0, 2 * len(SOURCE)))
_attributes = st.one_of(
    st.integers(0, 255),
    st.builds(
        lambda width, transform, backend, reference: width | transform << 4 | backend << 5 | reference << 7,
        st.sampled_from([0, 1, 2, 4, 8]),
        st.integers(0, 1),
        st.integers(0, 2),
        st.integers(0, 1),
    ),
)


def _varint(value: int) -> bytes:
    """LEB128 of any size (a hostile table may hold numbers longer than the 8 bytes the format allows)."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


@st.composite
def _hostile_patches(draw: st.DrawFn) -> bytes:
    """A compact header and table of arbitrary numbers with a right CRC, each payload's CRC right."""
    count = draw(st.integers(0, 4))
    table, payloads = b"", b""
    for _ in range(count):
        codec = draw(st.one_of(st.integers(0, 11), st.just(255)))
        length = draw(_numbers)
        relative = _varint(varints.zigzag(draw(st.one_of(_numbers, _numbers.map(lambda n: -n)))))
        if codec == Codec.COPY:
            table += b"\x00" + _varint(length) + relative
            continue
        attributes = draw(_attributes)
        payload = draw(st.sampled_from([b"", b"\x00" * 5, PAYLOADS[1], PAYLOADS[2], PAYLOADS[6], PAYLOADS[7]]))
        if draw(st.booleans()) and length <= 1 << 20:
            payload = codecs.zstd_compress(bytes(length), 1)
        table += bytes([codec, attributes]) + _varint(length)
        if attributes & 0x80:
            table += relative + (_varint(draw(_numbers)) if codec == Codec.ZSTD_REF else b"")
        payload_length = draw(st.one_of(st.just(len(payload)), st.sampled_from(_EDGES)))
        table += _varint(payload_length) + struct.pack("<I", zlib.crc32(payload))
        payloads += payload
    declared = draw(st.one_of(st.just(count), st.sampled_from(_EDGES)))
    source_size = draw(st.one_of(st.just(len(SOURCE)), st.sampled_from(_EDGES)))
    head = b"LRN\x05" + _varint(declared) + _varint(source_size)
    head += hashlib.sha256(SOURCE).digest()[:8] + hashlib.sha256(b"").digest()[:8] + table
    return head + struct.pack("<I", zlib.crc32(head)) + payloads


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(_hostile_patches())
def test_random_tables_with_right_checksums_are_refused(patch: bytes) -> None:
    with tempfile.TemporaryDirectory() as root:
        assert _Applier(Path(root), SOURCE).outcome(patch, b"") in ("ok", "refused")


def _classic_header(version: int) -> bytes:
    fields = HEADER.pack(MAGIC, version, 0, 0, len(SOURCE), 0, bytes(32), bytes(32), 0)
    return fields[:-4] + struct.pack("<I", zlib.crc32(fields[:-4]))


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (_classic_header(5), "version 5 has no classic layout"),
        (b"LRNZSTD1" + bytes(100), "bad magic"),
        (b"LRN\x04" + bytes(40), "bad magic"),
        (b"LRN\x07" + bytes(40), "version 7 is not supported"),
        (b"LRN\x1f" + bytes(40), "version 31 is not supported"),
        (b"LRN\x05" + b"\x80" * 8 + b"\x01" + bytes(30), "ends inside a number"),
        (b"LRN", "truncated"),
    ],
)
def test_magics_and_versions_next_to_the_compact_one_are_refused(patch: bytes, message: str) -> None:
    with pytest.raises(PatchError, match=message):
        read_header_and_table(io.BytesIO(patch), len(patch), "p")
