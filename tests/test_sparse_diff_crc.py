"""Codec 12 ``SPARSE_DIFF_CRC`` (container version 6): a sparse edit of a zip of stored tensors (PyTorch, npz)
changes each touched entry's CRC-32 twice (local header, central directory); the engine lists those fields to be
recomputed on apply instead of carrying 8 random bytes per entry. Round trips, the cap, the field finder, and a
decoder that refuses every inconsistent fixup list."""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lorien.repo.engine import apply_patch, codecs, create_patch, varints
from lorien.repo.engine.container import Backend, Codec, Segment, Transform, version_for
from lorien.repo.engine.lorien_engine import LorienEngine
from lorien.repo.engine.sparse_diff import crc_fixups_raw, decode_sparse_diff_crc, sparse_diff_residual
from lorien.repo.engine.zip_tensors import crc_fields
from lorien.repo.errors import PatchError


def _archive(arrays: dict[str, np.ndarray], deflated: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, values in arrays.items():
            method = zipfile.ZIP_DEFLATED if name in deflated else zipfile.ZIP_STORED
            archive.writestr(zipfile.ZipInfo(f"archive/data/{name}"), values.tobytes(), compress_type=method)
    return buffer.getvalue()


def _sparse_pair(entries: int = 40) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(3)
    old = {str(i): rng.standard_normal(int(rng.integers(24, 600))).astype(np.float32) for i in range(entries)}
    new = {}
    for name, values in old.items():  # every tensor: one weight changed a little (a sparse update)
        changed = values.copy()
        changed[int(rng.integers(changed.size))] *= np.float32(1.01)
        new[name] = changed
    return _archive(old), _archive(new)


def test_the_field_finder_lists_both_checksums_of_every_stored_entry_and_nothing_else() -> None:
    rng = np.random.default_rng(0)
    arrays = {name: rng.standard_normal(100).astype(np.float32) for name in ("a", "b", "c")}
    data = _archive(arrays, deflated=("b",))
    fields = crc_fields(memoryview(data))
    assert len(fields) == 4  # a and c: local header and central directory; b is deflated
    for field, start, size in fields:
        assert data[field : field + 4] == zlib.crc32(data[start : start + size]).to_bytes(4, "little")
    assert crc_fields(memoryview(b"not a zip" * 10)) == []


def test_a_sparse_edit_of_a_zip_uses_codec_12_and_is_smaller_than_under_a_cap_of_5(tmp_path: Path) -> None:
    old_bytes, new_bytes = _sparse_pair()
    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    old.write_bytes(old_bytes)
    new.write_bytes(new_bytes)
    made = create_patch(old, new, tmp_path / "p")
    capped = create_patch(old, new, tmp_path / "p5", max_format=5)
    codecs_used = {segment.codec for segment in LorienEngine().segments(tmp_path / "p")}
    assert Codec.SPARSE_DIFF_CRC in codecs_used and made.format_version == 6
    assert Codec.SPARSE_DIFF_CRC not in {segment.codec for segment in LorienEngine().segments(tmp_path / "p5")}
    assert made.patch_size < 0.9 * capped.patch_size  # 80 checksums of 4 random bytes each, not sent
    for patch in ("p", "p5"):
        apply_patch(old, tmp_path / patch, tmp_path / f"{patch}.out")
        assert (tmp_path / f"{patch}.out").read_bytes() == new_bytes


def _payload(fixups: bytes, target: bytes, reference: bytes) -> bytes:
    residual = sparse_diff_residual(target, reference, 1)
    assert residual is not None
    return codecs.pack(fixups + residual, 3, Backend.ZSTD)


def test_fixups_are_applied_in_order_after_the_differences() -> None:
    reference = bytes(64)
    target = bytearray(reference)
    target[40:44] = b"data"
    target[0:4] = zlib.crc32(b"data").to_bytes(4, "little")  # the field, checksumming bytes 40..44
    target[20:24] = target[0:4]  # the same span again (back reference)
    neutral = bytearray(target)
    neutral[0:4] = neutral[20:24] = bytes(4)
    fixups = crc_fixups_raw([(0, 40, 4), (20, 40, 4)])
    assert fixups == varints.encode(2) + b"\x00\x00" + varints.encode(80) + b"\x04" + bytes([16, 1])
    payload = _payload(fixups, bytes(neutral), reference)
    assert decode_sparse_diff_crc(payload, Backend.ZSTD, reference, 64, 1) == bytes(target)


SPAN_ALL = b"\x00\x00" + varints.encode(varints.zigzag(-4)) + varints.encode(240)  # field 4..8 sums 0..240


@pytest.mark.parametrize(
    ("fixups", "message"),
    [
        (varints.encode(1) + varints.encode(253) + b"\x00\x00\x04", "outside its segment"),  # field 253..257
        (varints.encode(1) + b"\x00\x00" + varints.encode(varints.zigzag(-1)) + b"\x04", "outside"),
        (varints.encode(1) + b"\x00\x00" + varints.encode(80) + varints.encode(250), "outside"),  # 40 + 250
        (varints.encode(1) + b"\x00\x00" + varints.encode(80) + b"\x00", "checksums nothing"),
        (varints.encode(1) + b"\x00\x01", "span"),  # refers back past the first field
        (varints.encode(10), "count"),  # a 256-byte segment holds at most 256 // 30 + 1 fields
        (varints.encode(5) + SPAN_ALL + b"\x00\x01" * 4, "checksums too much"),  # 5 × 240 > 4 × 256
    ],
)
def test_inconsistent_fixup_lists_are_refused(fixups: bytes, message: str) -> None:
    reference = bytes(256)
    payload = _payload(fixups, reference, reference)
    with pytest.raises(PatchError, match=message):
        decode_sparse_diff_crc(payload, Backend.ZSTD, reference, 256, 1)
    with pytest.raises(PatchError, match="CRC-32 fixup"):  # the list alone, cut short
        decode_sparse_diff_crc(codecs.pack(fixups[:-1], 3, Backend.ZSTD), Backend.ZSTD, reference, 256, 1)


def test_a_hostile_list_of_many_tiny_fixups_is_refused_before_it_costs_anything() -> None:
    """A 16 MiB segment, a payload of a few hundred bytes asking for a fixup every 4 bytes (each reusing the
    last span): before the count was capped by a zip's layout it cost ~370 MB and 6.5 s (review finding)."""
    length = 16 << 20
    raw = varints.encode(length // 4) + b"\x00\x00\x02\x01" + b"\x00\x01" * (length // 4 - 1)
    with pytest.raises(PatchError, match="count"):
        decode_sparse_diff_crc(codecs.pack(raw, 3, Backend.ZSTD), Backend.ZSTD, bytes(length), length, 1)


def test_codec_12_needs_version_6() -> None:
    assert version_for([Segment(Codec.SPARSE_DIFF_CRC, 1, Transform.NONE, 8, 0, 8, 9, 0)]) == 6


def _central_records(data: bytes) -> list[int]:
    """The offsets of a zip's central-directory records."""
    end = data.rfind(b"PK\x05\x06")
    position = int.from_bytes(data[end + 16 : end + 20], "little")
    records = []
    while data[position : position + 4] == b"PK\x01\x02":
        records.append(position)
        lengths = [int.from_bytes(data[position + at : position + at + 2], "little") for at in (28, 30, 32)]
        position += 46 + sum(lengths)
    return records


def _twice_the_directory(data: bytes) -> bytes:
    end = data.rfind(b"PK\x05\x06")
    size = int.from_bytes(data[end + 12 : end + 16], "little")
    offset = int.from_bytes(data[end + 16 : end + 20], "little")
    trailer = bytearray(data[end:])
    count = 2 * int.from_bytes(trailer[8:10], "little")
    trailer[8:12] = count.to_bytes(2, "little") * 2
    trailer[12:16] = (2 * size).to_bytes(4, "little")
    return data[:offset] + data[offset : offset + size] * 2 + bytes(trailer)


def _last_header_past_the_end(data: bytes) -> bytes:
    changed = bytearray(data)
    last = _central_records(data)[-1]
    changed[last + 42 : last + 46] = (len(data) - 5).to_bytes(4, "little")
    return bytes(changed)


def _unreadable_version(data: bytes) -> bytes:
    changed = bytearray(data)
    changed[_central_records(data)[-1] + 6] = 99  # "version needed": zipfile refuses the archive
    return bytes(changed)


@pytest.mark.parametrize("damage", [_twice_the_directory, _last_header_past_the_end, _unreadable_version])
def test_odd_and_damaged_zips_still_round_trip(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    """Found by review: a central directory written twice made one field listed twice (create crashed), a local
    header offset near the end made the field finder raise; an archive zipfile refuses gives no fields."""
    old_bytes, new_bytes = (damage(data) for data in _sparse_pair())
    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    old.write_bytes(old_bytes)
    new.write_bytes(new_bytes)
    assert isinstance(crc_fields(memoryview(new_bytes)), list)
    create_patch(old, new, tmp_path / "p")
    apply_patch(old, tmp_path / "p", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new_bytes
