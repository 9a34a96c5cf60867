"""Codec 10 (SPARSE_DIFF) and the run-level candidates of the lorien engine.

Checks the codec's round trip at every element width and backend (gaps of every varint length included), that a
hostile payload (truncated, counts and varints that do not add up, positions past the segment, an oversized
frame) is refused with PatchError, that the container writes codec 10 only at version 4, and that a model whose
many small pieces sit at the same place in both files is coded as one run segment — smaller than the same
pieces on their own.
"""

from __future__ import annotations

import bz2
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorien.repo.engine import apply_patch, codecs, create_patch, runs
from lorien.repo.engine.container import (
    ENTRY_SIZE,
    HEADER_SIZE,
    Backend,
    Codec,
    Header,
    Segment,
    Transform,
    pack_header,
    version_for,
)
from lorien.repo.engine.lorien_engine import Encoded, LorienEngine
from lorien.repo.engine.planning import plan
from lorien.repo.engine.sparse_diff import (
    BYTES,
    ELEMENTS,
    HEAD,
    decode_sparse_diff,
    read_varints,
    sparse_diff_residual,
    varints,
)
from lorien.repo.errors import PatchError
from lorien.repo.hashing import sha256_file
from lorien.repo.limits import DEFAULT_LIMITS
from tests.support.model_files import write_safetensors


def _changed(width: int, elements: int = 1 << 16) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(width)
    dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32}[width]
    old = rng.integers(0, np.iinfo(dtype).max, elements, dtype=dtype, endpoint=True)
    new = old.copy()
    positions = np.concatenate(([0, 1, 200, 20_000], rng.choice(elements, 300, replace=False), [elements - 1]))
    new[positions] += rng.integers(1, 300, len(positions)).astype(dtype)  # wraps: differences of both signs
    return new.tobytes(), old.tobytes()


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("backend", list(Backend))
@pytest.mark.parametrize("mode", [ELEMENTS, BYTES])
def test_sparse_diff_round_trips(width: int, backend: Backend, mode: int) -> None:
    target, reference = _changed(width)
    raw = sparse_diff_residual(target, reference, width, mode)
    assert raw is not None
    payload = codecs.pack(raw, 19, backend)
    assert decode_sparse_diff(payload, backend, reference, len(target), width) == target
    segment = Segment(
        Codec.SPARSE_DIFF, width, Transform.NONE, len(target), 0, len(reference), len(payload), 0, backend
    )
    assert codecs.decode(segment, payload, reference) == target


def test_bytes_mode_follows_changes_at_odd_offsets() -> None:
    """float32 values at offset 2 of an odd-length run: BYTES entries cover each changed value with one 4-byte
    difference (ELEMENTS would split it across two elements and needs whole ones), the very last bytes too."""
    rng = np.random.default_rng(5)
    values = rng.standard_normal(4096).astype(np.float32)
    changed = values.copy()
    changed[rng.choice(4095, 40, replace=False)] *= np.float32(1.01)
    changed[-1] *= np.float32(1.01)
    reference, target = b"\x07\x07" + values.tobytes() + b"\x00", b"\x07\x07" + changed.tobytes() + b"\x00"
    by_bytes = sparse_diff_residual(target, reference, 4, BYTES)
    by_elements = sparse_diff_residual(target[:-3], reference[:-3], 4, ELEMENTS)  # whole elements only
    assert by_bytes is not None and by_elements is not None
    assert HEAD.unpack_from(by_bytes) == (BYTES, 41)
    assert len(codecs.zstd_compress(by_bytes, 19)) < len(codecs.zstd_compress(by_elements, 19))
    payload = codecs.pack(by_bytes, 19, Backend.ZSTD)
    assert decode_sparse_diff(payload, Backend.ZSTD, reference, len(target), 4) == target
    payload = codecs.pack(by_elements, 19, Backend.ZSTD)
    assert decode_sparse_diff(payload, Backend.ZSTD, reference[:-3], len(target) - 3, 4) == target[:-3]
    with pytest.raises(PatchError, match="do not fill"):
        decode_sparse_diff(payload, Backend.ZSTD, reference, len(target), 4)


def test_sparse_diff_of_identical_bytes_and_of_a_dense_change() -> None:
    data = bytes(range(256)) * 16
    raw = sparse_diff_residual(data, data, 4)
    assert raw == HEAD.pack(ELEMENTS, 0)
    assert decode_sparse_diff(codecs.pack(raw, 19, Backend.ZSTD), Backend.ZSTD, data, len(data), 4) == data
    assert sparse_diff_residual(bytes(len(data)), data, 1) is None  # nearly every byte changed


def test_bytes_mode_near_the_end() -> None:
    """A change in the last bytes is covered by an entry that ends with the data; when that entry would overlap
    the one before (changes 3 and 1 bytes before the end, width 4), the mode does not apply."""
    reference = bytes(64)
    target = bytearray(reference)
    target[62] = 9
    raw = sparse_diff_residual(bytes(target), reference, 4, BYTES)
    assert raw is not None and HEAD.unpack_from(raw) == (BYTES, 1)
    assert decode_sparse_diff(codecs.pack(raw, 3, Backend.ZSTD), Backend.ZSTD, reference, 64, 4) == target
    target[59] = target[63] = 7  # entry 59..62, then byte 63: an entry there would start at 60 and overlap
    assert sparse_diff_residual(bytes(target), reference, 4, BYTES) is None


@settings(max_examples=200, deadline=None)
@given(
    length=st.integers(0, 80),
    changes=st.lists(st.tuples(st.integers(0, 79), st.integers(1, 255)), max_size=12),
    width=st.sampled_from([1, 2, 4, 8]),
    mode=st.sampled_from([ELEMENTS, BYTES]),
)
def test_sparse_diff_round_trips_any_changes(
    length: int, changes: list[tuple[int, int]], width: int, mode: int
) -> None:
    """Any changes at any offsets: the stream decodes to the target, or the mode declines (None)."""
    if mode == ELEMENTS:
        length -= length % width
    reference = bytes(range(length))
    target = bytearray(reference)
    for position, delta in changes:
        if position < length:
            target[position] = (target[position] + delta) % 256
    raw = sparse_diff_residual(bytes(target), reference, width, mode)
    if raw is not None:
        payload = codecs.pack(raw, 3, Backend.ZSTD)
        assert decode_sparse_diff(payload, Backend.ZSTD, reference, length, width) == target


def test_varints_round_trip_at_every_length() -> None:
    values = np.array([0, 1, 127, 128, (1 << 14) - 1, 1 << 14, (1 << 21) + 5, 1 << 28, (1 << 35) - 1])
    coded = varints(values)
    assert len(coded) == 1 + 1 + 1 + 2 + 2 + 3 + 4 + 5 + 5
    assert read_varints(coded, len(values)).tolist() == values.tolist()


@pytest.mark.parametrize(
    ("raw", "width", "why"),
    [
        (b"\x00\x01\x00", 1, "shorter than its mode and count"),
        (HEAD.pack(2, 0), 1, "mode 2 is unknown"),
        (HEAD.pack(ELEMENTS, 5) + b"\x00" * 3, 1, "lists 5 changes"),  # no room for 5 values
        (HEAD.pack(ELEMENTS, 2000) + b"\x00", 1, "lists 2000 changes"),  # more changes than elements
        (HEAD.pack(BYTES, 300) + b"\x00" * 1500, 4, "lists 300 changes"),  # 4-byte entries: at most 256 fit
        (HEAD.pack(ELEMENTS, 1) + b"\x00\x00" + b"\x07", 1, "hold 2 values"),  # two gaps for one change
        (HEAD.pack(ELEMENTS, 1) + b"\x80" + b"\x07", 1, "hold 0 values"),  # unterminated varint
        (HEAD.pack(ELEMENTS, 1) + b"\x80" * 5 + b"\x00" + b"\x07", 1, "longer than 5 bytes"),
        (HEAD.pack(ELEMENTS, 1) + varints(np.array([1024])) + b"\x07", 1, "outside its segment"),
        (HEAD.pack(ELEMENTS, 2) + varints(np.array([10, 1013])) + b"\x07\x07", 1, "outside its segment"),
        (HEAD.pack(BYTES, 1) + varints(np.array([255])) + b"\x01" + b"\x07" * 4, 4, "outside"),  # 1021 + 4
        (HEAD.pack(BYTES, 2) + varints(np.array([0, 254])) + b"\x00\x01" + b"\x07" * 8, 4, "outside"),
        (HEAD.pack(BYTES, 1) + varints(np.array([0])) + b"\x04" + b"\x07" * 4, 4, "remainder is not below 4"),
    ],
)
def test_hostile_sparse_diff_payloads_are_refused(raw: bytes, width: int, why: str) -> None:
    reference = bytes(1024)
    for backend in (Backend.ZSTD, Backend.BZ2):
        with pytest.raises(PatchError, match=why):
            decode_sparse_diff(codecs.pack(raw, 3, backend), backend, reference, len(reference), width)


def test_sparse_diff_frames_larger_than_the_segment_allows_are_refused() -> None:
    reference = bytes(64)
    huge = codecs.zstd_compress(bytes(10_000), 3)  # declares 10,000 bytes where about 64 * 2 fit
    with pytest.raises(PatchError, match="more than the segment allows"):
        decode_sparse_diff(huge, Backend.ZSTD, reference, 64, 1)
    bomb = bz2.compress(bytes(1 << 20))
    with pytest.raises(PatchError, match="at most"):
        decode_sparse_diff(bomb, Backend.BZ2, reference, 64, 1)
    with pytest.raises(PatchError):
        decode_sparse_diff(b"\x28\xb5\x2f", Backend.ZSTD, reference, 64, 1)  # truncated frame header


def test_codec_10_needs_format_version_4() -> None:
    segment = Segment(Codec.SPARSE_DIFF, 1, Transform.NONE, 8, 0, 8, 9, 0)
    assert version_for([segment]) == 4
    assert version_for([Segment(Codec.SPARSE, 1, Transform.NONE, 8, 0, 8, 9, 0)]) == 1


def _int8_model(path: Path, tensors: dict[str, np.ndarray]) -> None:
    write_safetensors(path, tensors)


def _requantized(tmp_path: Path) -> tuple[Path, Path]:
    """Many small int8 tensors (each a piece of its own) whose re-quantization flips ~3 % of the values by one."""
    rng = np.random.default_rng(11)
    old = {f"layer{i}.weight": rng.integers(-127, 128, 4608, dtype=np.int16).astype(np.int8) for i in range(24)}
    new = {}
    for name, values in old.items():
        flips = (rng.random(values.shape) < 0.03) * rng.choice(np.array([-1, 1], np.int16), values.shape)
        new[name] = np.clip(values.astype(np.int16) + flips, -127, 127).astype(np.int8)
    _int8_model(tmp_path / "old.safetensors", old)
    _int8_model(tmp_path / "new.safetensors", new)
    return tmp_path / "old.safetensors", tmp_path / "new.safetensors"


def test_a_run_of_small_pieces_becomes_one_smaller_segment(tmp_path: Path) -> None:
    old, new = _requantized(tmp_path)
    patch, out = tmp_path / "p", tmp_path / "out"
    create_patch(old, new, patch)
    apply_patch(old, patch, out)
    assert out.read_bytes() == new.read_bytes()
    segments = LorienEngine().segments(patch)
    assert [s.codec for s in segments if s.codec != Codec.COPY] == [Codec.SPARSE_DIFF]  # the header is a copy
    # the same pieces coded on their own (the plan without the run rule) cost more than the one run segment
    engine = LorienEngine()
    old_view, new_view = memoryview(old.read_bytes()), memoryview(new.read_bytes())
    pieces = plan(old_view, new_view, DEFAULT_LIMITS)
    assert len(pieces) > 20
    own = HEADER_SIZE + sum(
        engine.encode(p, old_view, new_view).segment.payload_length + ENTRY_SIZE for p in pieces
    )
    assert patch.stat().st_size < own - 20 * ENTRY_SIZE


def test_a_run_that_codes_no_smaller_keeps_its_segments() -> None:
    rng = np.random.default_rng(3)
    old = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    new = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()  # unrelated: every residual is noise
    from lorien.repo.engine.planning import Piece

    pieces = [Piece(0, 2048, same=(0, 2048)), Piece(2048, 2048, same=(2048, 2048))]
    kept = [Encoded(Segment(Codec.ZSTD, 0, Transform.NONE, 2048, 0, 0, 10, 0), b"x" * 10) for _ in pieces]
    result = runs.improve(
        pieces, [[item] for item in kept], memoryview(old), memoryview(new), 19, DEFAULT_LIMITS, Encoded
    )
    assert result == kept


def test_a_patch_using_codec_10_is_version_4_and_refused_as_version_3(tmp_path: Path) -> None:
    old, new = _requantized(tmp_path)
    patch = tmp_path / "p"
    create_patch(old, new, patch, max_format=4)  # the classic layout, at the version its codecs need
    data = bytearray(patch.read_bytes())
    assert struct.unpack_from("<H", data, 8)[0] == 4
    count = struct.unpack_from("<I", data, 12)[0]
    header = Header(count, *struct.unpack_from("<QQ32s32s", data, 16))
    table = bytes(data[HEADER_SIZE : HEADER_SIZE + count * ENTRY_SIZE])
    data[:HEADER_SIZE] = pack_header(header, table, 3)  # valid checksum, version too low for its codecs
    patch.write_bytes(bytes(data))
    with pytest.raises(PatchError, match="version 3 uses codecs or backends of version 4"):
        apply_patch(old, patch, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_hostile_codec_10_segment_with_valid_checksums_is_refused(tmp_path: Path) -> None:
    old = tmp_path / "old.bin"
    old.write_bytes(bytes(range(256)) * 16)
    raw = HEAD.pack(BYTES, 1) + varints(np.array([1023])) + b"\x03" + b"\x07" * 4  # entry at 4095: past the end
    payload = codecs.pack(raw, 3, Backend.ZSTD)
    segment = Segment(Codec.SPARSE_DIFF, 4, Transform.NONE, 4096, 0, 4096, len(payload), zlib.crc32(payload))
    table = segment.pack()
    header = Header(1, 4096, 4096, bytes.fromhex(sha256_file(old)), b"\0" * 32)
    patch = tmp_path / "p"
    patch.write_bytes(pack_header(header, table, 4) + table + payload)
    with pytest.raises(PatchError, match="outside its segment"):
        apply_patch(old, patch, tmp_path / "out")
    assert not (tmp_path / "out").exists()
