"""Codec 11 COVERS (container version 5): bsdiff-style covers for structural edits — round trips, when the engine
uses it, the cap, and a decoder that refuses every inconsistent stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorien.repo.engine import apply_patch, codecs, covers, create_patch, patch_info, varints
from lorien.repo.engine.container import Backend, Codec
from lorien.repo.engine.lorien_engine import LorienEngine
from lorien.repo.errors import PatchError
from tests.support.model_files import mlp_tensors, write_safetensors


def _round_trip(target: bytes, reference: bytes) -> bytes:
    made = covers.payload(target, reference, 19)
    assert made is not None
    backend, payload = made
    return covers.decode(payload, backend, reference, len(target))


def test_a_removed_block_and_shifted_offsets_round_trip() -> None:
    rng = np.random.default_rng(1)
    reference = rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    target = bytearray(reference[:10_000] + reference[20_000:])  # a block removed
    for offset in range(100, 1000, 97):
        target[offset] = (target[offset] - 16) % 256  # offsets further on moved by the same amount
    target += b"new tail"
    assert _round_trip(bytes(target), reference) == bytes(target)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=600), st.binary(min_size=0, max_size=600))
def test_any_pair_round_trips(reference: bytes, target: bytes) -> None:
    made = covers.payload(target, reference, 3)
    if made is not None:  # None: the raw stream would be over max_raw
        backend, payload = made
        assert covers.decode(payload, backend, reference, len(target)) == target


def test_a_removed_block_with_shifted_offsets_is_one_covers_segment_smaller_than_under_the_cap(
    tmp_path: Path,
) -> None:
    """A block removed and the offsets before it moved by the same amount (as a format's metadata does): one
    COVERS segment, version 5, well under what the classic codecs make of it."""
    rng = np.random.default_rng(5)
    old_bytes = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    new_bytes = bytearray(old_bytes[:30_000] + old_bytes[60_000:])
    for offset in range(500, 30_000, 1500):
        new_bytes[offset] = (new_bytes[offset] - 16) % 256
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    old.write_bytes(old_bytes)
    new.write_bytes(bytes(new_bytes))
    stats = create_patch(old, new, tmp_path / "p")
    assert [s.codec for s in LorienEngine().segments(tmp_path / "p")] == [Codec.COVERS]
    assert stats.format_version == 5 == patch_info(tmp_path / "p").format_version
    apply_patch(old, tmp_path / "p", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new.read_bytes()
    capped = create_patch(old, new, tmp_path / "p4", max_format=4)
    assert Codec.COVERS not in {s.codec for s in LorienEngine().segments(tmp_path / "p4")}
    assert 2 * stats.patch_size < capped.patch_size  # measured: 81 B against 240


def test_a_weight_update_does_not_try_covers(tmp_path: Path) -> None:
    old, new = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    tensors = mlp_tensors(4, (256, 256, 10))
    write_safetensors(old, tensors)
    write_safetensors(new, {k: v * np.float32(1.01) for k, v in tensors.items()})  # a patch well over 64 KiB
    create_patch(old, new, tmp_path / "p")
    assert Codec.COVERS not in {s.codec for s in LorienEngine().segments(tmp_path / "p")}


def _stream(
    covers_list: list[tuple[int, int, int]], changes: list[tuple[int, int]], extra: bytes, count: int | None = None
) -> bytes:
    raw = bytearray(varints.encode(len(covers_list) if count is None else count))
    for copied, added, move in covers_list:
        raw += varints.encode(copied) + varints.encode(added) + varints.encode(varints.zigzag(move))
    raw += varints.encode(len(changes))
    previous = -1
    for index, _ in changes:
        raw += varints.encode(index - previous - 1)
        previous = index
    raw += bytes(value for _, value in changes) + extra
    return codecs.pack(bytes(raw), 3, Backend.ZSTD)


REFERENCE = bytes(range(200))


def test_a_hand_made_stream_decodes_as_specified() -> None:
    payload = _stream([(10, 2, 5), (5, 0, 0)], [(0, 1), (14, 255)], b"xy")
    expected = bytearray(REFERENCE[0:10] + b"xy" + REFERENCE[15:20])
    expected[0] += 1
    expected[2 + 14] = (expected[2 + 14] + 255) % 256  # index 14 of the copied bytes: the second cover's 5th
    assert covers.decode(payload, Backend.ZSTD, REFERENCE, 17) == bytes(expected)


@pytest.mark.parametrize(
    ("payload", "length", "message"),
    [
        (_stream([(10, 0, 0)], [], b""), 11, "produce 10 bytes"),
        (_stream([(10, 0, 0)], [], b""), 9, "holds"),  # the cover alone is more than the segment
        (_stream([(150, 0, 0), (100, 0, 0)], [], b""), 250, "past the 200-byte reference"),
        (_stream([(10, 0, -20), (5, 0, 0)], [], b""), 15, "outside"),
        (_stream([(10, 0, 0)], [(10, 1)], b""), 10, "past the 10 copied bytes"),
        (_stream([(10, 2, 0)], [], b"x"), 12, "1 new bytes where its covers take 2"),
        (_stream([(10, 0, 0)], [], b"extra"), 10, "5 new bytes where its covers take 0"),
        (_stream([(10, 0, 0)], [], b"", count=3), 10, "ends inside a number"),
        (codecs.pack(b"\x01\x0a\x00\x00\x03\x00\x00\x00\x05", 3, Backend.ZSTD), 10, "inside the changed bytes"),
        (b"not a frame", 10, "corrupt zstd"),
        (codecs.pack(varints.encode(covers.MAX_COVERS + 1), 3, Backend.ZSTD), 1 << 20, "cover count"),
        (codecs.pack(bytes(100_000), 3, Backend.ZSTD), 10, "more than the segment allows"),
    ],
)
def test_inconsistent_streams_are_refused(payload: bytes, length: int, message: str) -> None:
    with pytest.raises(PatchError, match=message):
        covers.decode(payload, Backend.ZSTD, REFERENCE, length)


def test_only_plans_that_reproduce_most_of_the_file_nearly_as_is_count_as_structural() -> None:
    from lorien.repo.engine.container import Segment, Transform
    from lorien.repo.engine.lorien_engine import Encoded, _nearly_copied

    def item(codec: Codec, length: int, payload: int) -> Encoded:
        return Encoded(Segment(codec, 0, Transform.NONE, length, 0, length, payload, 0), b"")

    layer_removed = [item(Codec.ZSTD_REF, 5_000, 300), item(Codec.SPARSE_DIFF, 4_000_000, 40)]
    converted = [item(Codec.XOR_PLANES, 2_000_000, 9_000), item(Codec.XOR_PLANES, 2_000_000, 8_000)]
    cast = [Encoded(Segment(Codec.XOR_PLANES, 2, Transform.F32_TO_F16, 2_000_000, 0, 4_000_000, 9, 0), b"")]
    assert _nearly_copied(layer_removed) and not _nearly_copied(converted) and not _nearly_copied(cast)
    assert _nearly_copied([item(Codec.COPY, 10, 0), item(Codec.ZSTD, 10, 5)])  # half is enough


def _offset_table_pair(seed: int) -> tuple[bytes, bytes]:
    """A FlatBuffer-like model: a header, a vector of 4-byte offsets relative to their own place, the data they
    point to. The new version drops entries 40–55 and their 30,000 bytes of data: the entries before the gap
    change by the data removed, those after it by a small amount, as TFLite's buffer offsets do."""
    rng = np.random.default_rng(seed)
    header = rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
    data = rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    steps = rng.choice([116, 132, 2324, 9236], 60)
    offsets = 150_000 - np.cumsum(steps)

    def vector(values: np.ndarray) -> bytes:
        return len(values).to_bytes(4, "little") + values.astype("<u4").tobytes()

    old = header + vector(offsets) + data
    new = (
        header + vector(np.concatenate((offsets[:40] - 30_064, offsets[56:] - 64))) + data[:20_000] + data[50_000:]
    )
    return old, new


def test_an_offset_table_that_moved_is_copied_with_differences_not_sent_as_new_bytes() -> None:
    """bsdiff leaves the rewritten offsets as new bytes (fewer than half their bytes match); absorbing them
    into copies codes their repeated differences instead. Fails if ``absorb_new_bytes`` changes nothing."""
    old, new = _offset_table_pair(3)
    import bsdiff4.core

    found = covers._controls(bsdiff4.core.diff(old, new)[0])
    assert sum(added for _, added, _ in found) >= 150  # the table is new bytes to bsdiff
    absorbed = covers.absorb_new_bytes(old, new, found)
    assert sum(added for _, added, _ in absorbed) < 20
    plain = min(
        len(codecs.pack(covers._raw(found, *covers._differences(old, new, found)), 19, b)) for b in Backend
    )
    backend, payload = covers.payload(new, old, 19) or (Backend.ZSTD, b"")
    assert len(payload) < 0.7 * plain  # measured: 83 B against 149
    assert covers.decode(payload, backend, old, len(new)) == new


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_absorbed_covers_always_rebuild_the_target(data: st.DataObject) -> None:
    """Whatever runs get absorbed, the covers stay consistent: decoding them gives the target exactly."""
    reference = data.draw(st.binary(min_size=1, max_size=400))
    target = bytearray(reference)
    for _ in range(data.draw(st.integers(0, 4))):  # removals, insertions and byte changes
        at = data.draw(st.integers(0, len(target)))
        kind = data.draw(st.sampled_from(["remove", "insert", "change"]))
        if kind == "remove":
            del target[at : at + data.draw(st.integers(1, 60))]
        elif kind == "insert":
            target[at:at] = data.draw(st.binary(min_size=1, max_size=60))
        else:
            for offset in range(at, min(len(target), at + data.draw(st.integers(1, 40))), 2):
                target[offset] = (target[offset] + 7) % 256
    import bsdiff4.core

    found = covers._controls(bsdiff4.core.diff(reference, bytes(target))[0])
    absorbed = covers.absorb_new_bytes(reference, bytes(target), found)
    raw = covers._raw(absorbed, *covers._differences(reference, bytes(target), absorbed))
    payload = codecs.pack(raw, 3, Backend.ZSTD)
    assert covers.decode(payload, Backend.ZSTD, reference, len(target)) == bytes(target)
