"""The compact container layout (version 5): what it costs, when it is written, and that its parser refuses every
damaged or hostile header with a PatchError before anything is decoded or kept."""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorien.repo.engine import apply_patch, create_patch, engine_for_patch, patch_info, varints
from lorien.repo.engine.container import (
    COMPACT_VERSION,
    Backend,
    Codec,
    Header,
    Segment,
    Transform,
    compact_entry,
    pack_head,
    read_header_and_table,
    recognises,
    smallest_head,
)
from lorien.repo.engine.lorien_engine import LorienEngine
from lorien.repo.errors import PatchError
from lorien.repo.hashing import sha256_file
from tests.support.processes import run_lorien

HEADER = Header(0, 5000, 3000, bytes(range(32)), bytes(range(32, 64)))
SEGMENTS = [
    Segment(Codec.COPY, 0, Transform.NONE, 1000, 200, 1000, 0, 0),
    Segment(Codec.ZSTD_REF, 0, Transform.NONE, 500, 0, 5000, 7, 0x1234),
    Segment(Codec.DIFF_PLANES, 2, Transform.F32_TO_F16, 400, 1200, 800, 5, 0xABCD, Backend.BZ2),
    Segment(Codec.XOR_PLANES, 4, Transform.NONE, 600, 0, 0, 9, 0x55),
    Segment(Codec.SPARSE_DIFF, 1, Transform.NONE, 500, 2400, 500, 3, 0x77, Backend.XZ),
]
PAYLOADS = 7 + 5 + 9 + 3


def _patch_bytes(segments: list[Segment] = SEGMENTS) -> bytes:
    return pack_head(HEADER, segments, COMPACT_VERSION) + bytes(sum(s.payload_length for s in segments))


def _read(data: bytes) -> tuple[Header, list[Segment]]:
    return read_header_and_table(io.BytesIO(data), len(data), "p")


def test_every_field_survives_the_compact_table() -> None:
    data = _patch_bytes()
    handle = io.BytesIO(data)
    header, segments = read_header_and_table(handle, len(data), "p")
    assert segments == SEGMENTS
    assert header.target_size == 3000 and header.source_size == 5000 and header.version == COMPACT_VERSION
    assert header.source_sha256 == HEADER.source_sha256[:8] and header.target_sha256 == HEADER.target_sha256[:8]
    assert handle.tell() == len(data) - PAYLOADS  # left at the first payload
    table = len(data) - PAYLOADS - (4 + 1 + 2 + 16) - 4
    assert table == sum(
        len(compact_entry(s, o)) for s, o in zip(SEGMENTS, (0, 1000, 1500, 1900, 2500), strict=True)
    )


def test_reference_offsets_are_relative_to_the_segments_own_place() -> None:
    aligned = Segment(Codec.COPY, 0, Transform.NONE, 1 << 30, 5 << 30, 1 << 30, 0, 0)
    assert len(compact_entry(aligned, 5 << 30)) == 1 + 5 + 1  # same place: a one-byte offset
    assert len(compact_entry(aligned, 0)) == 1 + 5 + 5  # 5 GiB away: zigzag 10 GiB, 34 bits


def test_the_magic_is_told_apart_from_the_classic_layout_and_the_zstd_engine() -> None:
    assert recognises(_patch_bytes()[:16]) and recognises(b"LRNPATCH\x04\x00")
    assert not recognises(b"LRNZSTD1") and not recognises(b"LRN") and not recognises(b"LRN\x04")
    assert recognises(b"LRN\x07")  # a future version: recognised, then refused with "upgrade lorien"
    with pytest.raises(PatchError, match=r"version 7 is not supported.*upgrade lorien"):
        _read(b"LRN\x07" + _patch_bytes()[4:])


def test_identical_files_cost_a_few_dozen_bytes_and_a_large_patch_stays_classic(tmp_path: Path) -> None:
    model = tmp_path / "m.bin"
    model.write_bytes(np.random.default_rng(1).bytes(300_000))
    create_patch(model, model, tmp_path / "same")
    assert (tmp_path / "same").stat().st_size == 4 + 1 + 3 + 16 + (1 + 3 + 1) + 4  # 33 bytes
    assert patch_info(tmp_path / "same").format_version == COMPACT_VERSION
    changed = bytearray(model.read_bytes())
    changed[1000:200_000] = np.random.default_rng(2).bytes(199_000)  # a large patch: the head is < 1 % of it
    (tmp_path / "new.bin").write_bytes(bytes(changed))
    stats = create_patch(model, tmp_path / "new.bin", tmp_path / "big")
    assert stats.format_version == 1  # readable by every release: the compact head would save < 1 %
    apply_patch(model, tmp_path / "big", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == bytes(changed)


def test_smallest_head_respects_the_cap() -> None:
    small = [SEGMENTS[0]]
    assert smallest_head(HEADER, small, COMPACT_VERSION).startswith(b"LRN\x05")
    assert smallest_head(HEADER, small, 4).startswith(b"LRNPATCH")


def test_a_compact_patch_applies_and_names_the_wrong_source(tmp_path: Path) -> None:
    old, new, other = tmp_path / "old", tmp_path / "new", tmp_path / "other"
    base = np.random.default_rng(3).bytes(50_000)
    old.write_bytes(base)
    new.write_bytes(base[:20_000] + base[30_000:])  # a block removed
    other.write_bytes(base[::-1])
    create_patch(old, new, tmp_path / "p")
    assert patch_info(tmp_path / "p").format_version == COMPACT_VERSION
    result = apply_patch(old, tmp_path / "p", tmp_path / "out")
    assert result.target_sha256 == sha256_file(new) and (tmp_path / "out").read_bytes() == new.read_bytes()
    with pytest.raises(PatchError, match="made for another source model"):
        apply_patch(other, tmp_path / "p", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def _with_crc(head_and_table: bytes) -> bytes:
    return head_and_table + struct.pack("<I", zlib.crc32(head_and_table))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (bytes([Codec.COPY]) + varints.encode(100) + varints.encode(varints.zigzag(-1)), "outside"),
        (bytes([Codec.COPY]) + varints.encode(100) + varints.encode(varints.zigzag(4950)), "outside"),
        (
            bytes([Codec.ZSTD, 0x80]) + varints.encode(10) + varints.encode(0) + varints.encode(0) + bytes(4),
            "no ref",
        ),
        (bytes([Codec.DIFF_PLANES, 0x03]) + varints.encode(10) + varints.encode(0) + bytes(4), "width"),
        (bytes([42, 0]) + varints.encode(10) + varints.encode(0) + bytes(4), "unknown codec"),
        (
            bytes([Codec.ZSTD, 0x60]) + varints.encode(10) + varints.encode(0) + bytes(4),
            "codecs or backends of version 6",
        ),
        (bytes([Codec.COPY]) + b"\xff" * 9, "ends inside a number"),
        (bytes([Codec.COPY]) + varints.encode(0) + varints.encode(0), "produces no bytes"),
        (bytes([Codec.ZSTD_REF, 0x80]) + b"\x00\x00" + varints.encode(4096) + b"\x00" + bytes(4), "no bytes"),
    ],
)
def test_a_hostile_table_is_refused(table: bytes, message: str) -> None:
    head = b"LRN\x05" + varints.encode(1) + varints.encode(5000) + bytes(16)
    data = _with_crc(head + table)
    with pytest.raises(PatchError, match=message):
        _read(data + bytes(64))


def test_a_flipped_table_byte_fails_the_checksum() -> None:
    data = bytearray(_patch_bytes())
    data[30] ^= 0x01
    with pytest.raises(PatchError):
        _read(bytes(data))


def test_counts_and_sizes_beyond_the_file_are_refused_before_reading_on() -> None:
    head = b"LRN\x05" + varints.encode(1 << 20) + varints.encode(5000) + bytes(16)
    with pytest.raises(PatchError, match="do not fit"):
        _read(_with_crc(head))
    payload_too_long = _patch_bytes()[:-1]
    with pytest.raises(PatchError, match="payloads need"):
        _read(payload_too_long)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(_patch_bytes()) - 1))
def test_every_truncation_is_a_patch_error(cut: int) -> None:
    with pytest.raises(PatchError):
        _read(_patch_bytes()[:cut])


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=80))
def test_random_bytes_after_the_magic_never_crash_the_parser(tail: bytes) -> None:
    with contextlib.suppress(PatchError):  # anything else (an IndexError, a huge allocation) fails the test
        _read(b"LRN\x05" + tail)


def test_the_dispatcher_finds_the_lorien_engine_for_a_compact_patch(tmp_path: Path) -> None:
    (tmp_path / "p").write_bytes(_patch_bytes())
    assert engine_for_patch(tmp_path / "p").name == LorienEngine.name


def test_patch_info_says_a_compact_digest_is_a_prefix(tmp_path: Path) -> None:
    model = tmp_path / "m.bin"
    model.write_bytes(np.random.default_rng(4).bytes(10_000))
    create_patch(model, model, tmp_path / "p")
    shown = run_lorien("patch-info", tmp_path / "p")
    assert shown.returncode == 0, shown.stderr
    prefix = sha256_file(model)[:16]
    assert f"target_sha256  {prefix}… (first 8 bytes)" in shown.stdout and "format_version 5" in shown.stdout
