"""Codec 9 ``RANGES`` (issue 15 items 1 and 2): typed ranges at odd offsets coded with one entropy model per width.

Checks the codec's round trip (2- and 4-byte ranges, gaps, zip CRC-32 fields recomputed on apply), that a small
float16 ``.npz`` model (arrays behind odd-length zip and ``.npy`` headers) lands within 3 % of the order-0
entropy of its ulp differences as one ``RANGES`` segment in a version-4 patch, that a run whose own pieces are
smaller keeps them (never a bigger patch, no newer version), and that hostile payloads — truncated, lengths
that do not add up, ranges or checksum fields out of bounds, unknown modes — are a ``PatchError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import zlib
from pathlib import Path

import numpy as np
import pytest

from lorien.repo.engine import apply_patch, codecs, create_patch, ranges, varints
from lorien.repo.engine.container import Codec, Header, Segment, Transform, pack_header, version_for
from lorien.repo.engine.lorien_engine import LorienEngine
from lorien.repo.engine.planning import Piece, with_ranges
from lorien.repo.engine.regions import TensorRegion
from lorien.repo.errors import PatchError
from lorien.repo.limits import DEFAULT_LIMITS
from tests.support.model_files import mlp_tensors, nudged


def _zip_like(seed: int, changed: bool) -> tuple[bytes, list[ranges.Range]]:
    """Odd-length headers holding the CRC-32 of the float16/float32 data after them (a zip's local headers),
    a trailing directory repeating every CRC; old and new differ by a few ulps per element."""
    rng, noise = np.random.default_rng(seed), np.random.default_rng(seed + 100)
    body, listed, crcs = bytearray(), [], []
    for index, (count, dtype) in enumerate(
        [(300, np.float16), (7, np.float16), (50, np.float32), (999, np.float16)]
    ):
        values = rng.standard_normal(count).astype(dtype)
        if changed:
            values = values.view(np.uint16 if dtype == np.float16 else np.uint32) + noise.integers(
                0, 3, count
            ).astype(np.uint16 if dtype == np.float16 else np.uint32)
        data = values.tobytes()
        npy = b"\x93NUMPY" + bytes(10 + 16 * index)  # a header in front of the array, covered by the CRC
        header = b"PK\x03\x04" + zlib.crc32(npy + data).to_bytes(4, "little") + b"name%d" % index
        body += header
        listed.append((len(body) + len(npy), len(data), 2 if dtype == np.float16 else 4))
        body += npy + data
        crcs.append(zlib.crc32(npy + data).to_bytes(4, "little"))
    body += b"PK\x01\x02" + b"".join(c + b"xyz" for c in crcs)
    return bytes(body), listed


def test_round_trip_with_both_widths_gaps_and_checksum_fields() -> None:
    old, listed = _zip_like(1, False)
    new, listed_new = _zip_like(1, True)
    assert listed == listed_new
    payload = ranges.payload(new, old, listed)
    assert ranges.decode(payload, old, len(new)) == new
    assert len(payload) < 0.5 * len(codecs.zstd_compress(new, 19))


def test_checksum_fields_are_recomputed_not_stored() -> None:
    old, listed = _zip_like(2, False)
    new, _ = _zip_like(2, True)
    gaps = ranges._gaps(listed, len(new))
    found = ranges._crc_fixups(new, np.frombuffer(new, np.uint8), np.frombuffer(old, np.uint8), listed, gaps)
    assert len(found) == 2 * len(listed)  # every local header's CRC and its copy in the directory
    assert all(new[p : p + 4] != old[p : p + 4] for p, _, _ in found)


def test_joined_ranges_win_when_the_gaps_are_whole_elements() -> None:
    rng = np.random.default_rng(3)
    old = rng.standard_normal(4000).astype(np.float16)
    new = (old.view(np.uint16) + rng.integers(0, 3, 4000).astype(np.uint16)).view(np.float16)
    listed = [(o, 800, 2) for o in range(0, 8000, 1000)]  # 200-byte gaps of (changed) elements between them
    payload = ranges.payload(new.tobytes(), old.tobytes(), listed)
    assert payload[0] == 1  # one range: the gaps' bytes are coded as elements
    assert ranges.decode(payload, old.tobytes(), 8000) == new.tobytes()


def _order0_bytes(old: bytes, new: bytes, regions: list[TensorRegion]) -> float:
    difference = np.concatenate(
        [
            np.frombuffer(new[r.offset : r.end], np.int16) - np.frombuffer(old[r.offset : r.end], np.int16)
            for r in regions
        ]
    )
    _, counts = np.unique((difference << 1) ^ (difference >> 15), return_counts=True)
    return float(-(counts * np.log2(counts / counts.sum())).sum() / 8)


def test_small_npz_float16_model_is_one_ranges_segment_near_its_entropy(tmp_path: Path) -> None:
    from lorien.repo.engine.formats import find_tensors

    tensors = {f"b{i}.{k}": v for i in range(6) for k, v in mlp_tensors(i, (32, 96, 64, 48)).items()}
    old, new, patch, out = (tmp_path / name for name in ("old.npz", "new.npz", "p", "out"))
    np.savez(old, **{k: v.astype(np.float16) for k, v in tensors.items()})
    np.savez(new, **{k: v.astype(np.float16) for k, v in nudged(tensors, 7, 2e-3).items()})
    create_patch(old, new, patch)
    apply_patch(old, patch, out)
    assert out.read_bytes() == new.read_bytes()
    assert [s.codec for s in LorienEngine().segments(patch)] == [Codec.RANGES]
    assert version_for(LorienEngine().segments(patch)) == 4  # RANGES needs container version 4
    regions = find_tensors(new.read_bytes())[1]
    assert patch.stat().st_size <= 1.03 * _order0_bytes(old.read_bytes(), new.read_bytes(), regions)


def test_a_run_whose_own_pieces_are_smaller_keeps_them() -> None:
    """Unchanged tensors around random bytes that moved by one: a zstd reference window (one of the parts'
    codecs) finds them, the whole run's codecs (RANGES' gap stream, planes over the run) cannot — the run's own
    pieces must win."""
    data = np.random.default_rng(6).integers(0, 256, 16384, dtype=np.uint8).tobytes()
    moved = data[:2001] + data[2002:3001] + data[2001:2002] + data[3001:]
    old, new = memoryview(data), memoryview(moved)
    regions = [
        TensorRegion("a", 1, 2000, 2, "float16", (1000,)),
        TensorRegion("b", 3001, 4000, 2, "float16", (2000,)),
    ]
    pieces = [
        Piece(0, 1, same=(0, 1)),
        Piece(1, 2000, 2, True, (1, 2000)),
        Piece(2001, 1000, same=(2001, 1000), window=(0, len(data))),
        Piece(3001, 4000, 2, True, (3001, 4000)),
        Piece(7001, len(data) - 7001, same=(7001, len(data) - 7001)),
    ]
    planned = with_ranges(pieces, regions, {f"{r.name}@{r.offset}": r for r in regions}, DEFAULT_LIMITS)
    assert len(planned) == 1 and planned[0].ranges == ((1, 2000, 2), (3001, 4000, 2))
    assert planned[0].parts == tuple(pieces)
    whole = LorienEngine().encode(planned[0], old, new)
    encoded = LorienEngine().encode_run(planned[0], old, new)
    assert whole.segment.codec != Codec.COPY
    assert Codec.RANGES not in {e.segment.codec for e in encoded}
    assert sum(e.segment.payload_length + 40 for e in encoded) < whole.segment.payload_length + 40
    assert sum(e.segment.target_length for e in encoded) == len(data)


def test_tensors_whose_old_bytes_moved_are_not_ranges() -> None:
    regions = [TensorRegion("a", 10, 64, 2, "float16", (32,)), TensorRegion("b", 80, 64, 2, "float16", (32,))]
    moved = {"a@10": TensorRegion("a", 12, 64, 2, "float16", (32,)), "b@80": regions[1]}
    pieces = [Piece(0, 200, same=(0, 200)), Piece(200, 10, same=(200, 10))]
    planned = with_ranges(pieces, regions, moved, DEFAULT_LIMITS)
    assert planned[0].ranges == ((80, 64, 2),)


# --------------------------------------------------------------------------- hostile payloads


@pytest.fixture(scope="module")
def valid() -> tuple[bytes, bytes, bytes]:
    old, listed = _zip_like(4, False)
    new, _ = _zip_like(4, True)
    return ranges.payload(new, old, listed), old, new


def test_every_truncation_is_refused(valid: tuple[bytes, bytes, bytes]) -> None:
    payload, old, new = valid
    for cut in range(len(payload)):
        with pytest.raises(PatchError):
            ranges.decode(payload[:cut], old, len(new))


def test_trailing_bytes_are_refused(valid: tuple[bytes, bytes, bytes]) -> None:
    payload, old, new = valid
    with pytest.raises(PatchError, match="do not add up"):
        ranges.decode(payload + b"\0", old, len(new))


def _entries(count: int, listed: list[tuple[int, int]], streams: list[tuple[int, bytes]]) -> bytes:
    table = varints.encode(count)
    for gap, packed in listed:
        table += varints.encode(gap) + varints.encode(packed)
    for mode, stream in streams:
        table += bytes([mode]) + varints.encode(len(stream))
    return table + b"".join(stream for _, stream in streams)


EMPTY = [(ranges.MODE_DIFF, b""), (ranges.MODE_DIFF, b""), (ranges.MODE_XOR, b""), (ranges.MODE_CRC32, b"")]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (_entries(1, [(0, 200 << 1)], EMPTY), "holds 400 where at most 200"),  # past the 100-byte segment
        (_entries(1, [(0, 60 << 1)], EMPTY), "range of 120 bytes"),
        (_entries(1, [(99, 1 << 1)], EMPTY), "range of 2 bytes at 99"),
        (_entries(1, [(0, 0)], EMPTY), "range of 0 bytes"),
        (_entries(60, [], EMPTY), "at most 50"),  # more ranges than 2-byte elements fit
        (_entries(0, [], [(0, b"")] * 3), "ends before"),
        (_entries(0, [], [*EMPTY[:2], (ranges.MODE_XOR, b"x"), EMPTY[3]]), "gap stream|zstd"),
        (_entries(0, [], [*EMPTY[:2], (9, codecs.zstd_compress(bytes(100), 3)), EMPTY[3]]), "mode 9"),
        (_entries(1, [(0, 10 << 1)], [(7, b"ab"), *EMPTY[1:]]), "mode 7"),
        (_entries(1, [(0, 10 << 1)], [(ranges.MODE_DIFF, b""), *EMPTY[1:]]), "zstd"),
        (_entries(0, [], [EMPTY[0], (ranges.MODE_DIFF, b"zz"), *EMPTY[2:]]), "no 4-byte ranges"),
        (b"\xff" * 9, "inside a number"),
    ],
)
def test_hostile_tables_are_refused(payload: bytes, message: str) -> None:
    with pytest.raises(PatchError, match=message):
        ranges.decode(payload, bytes(100), 100)


def _fixups(*fields: tuple[int, int, int]) -> bytes:
    raw = varints.encode(len(fields)) + b"".join(b"".join(varints.encode(v) for v in f) for f in fields)
    return codecs.zstd_compress(raw, 3)


@pytest.mark.parametrize(
    ("fixups", "message"),
    [
        (_fixups((varints.zigzag(1), 0, 0)), "not there"),  # range index 1 of 1
        (_fixups((0, 16, 0)), "not there"),  # 16 bytes before a range at offset 10
        (_fixups((0, 0, varints.zigzag(95) << 1)), "outside"),  # field past the segment
        (_fixups((0, 0, varints.zigzag(200) << 1)), "holds"),  # a position no segment this size has
        (_fixups((0, 0, varints.zigzag(-20) << 1)), "outside"),  # before it
        (_fixups(*[(0, 0, 0)] * 5), "checksums too much"),  # 5 × 90 bytes > 4 × 100
        (_fixups((0, 0, 0)) + b"", None),  # valid: one field, applied
        (codecs.zstd_compress(varints.encode(1) + bytes(3) + b"\0", 3), "after its fields"),
    ],
)
def test_hostile_checksum_fields_are_refused(fixups: bytes, message: str | None) -> None:
    streams = [(ranges.MODE_DIFF, codecs.zstd_compress(bytes(90), 3)), EMPTY[1]]
    streams += [(ranges.MODE_XOR, codecs.zstd_compress(bytes(10), 3)), (ranges.MODE_CRC32, fixups)]
    payload = _entries(1, [(10, 45 << 1)], streams)
    if message is None:
        output = ranges.decode(payload, bytes(100), 100)
        assert output[10:14] == zlib.crc32(bytes(90)).to_bytes(4, "little")
        return
    with pytest.raises(PatchError, match=message):
        ranges.decode(payload, bytes(100), 100)


def test_hostile_rans_streams_are_refused() -> None:
    good = ranges._rans_stream(np.array([0, 1, 2, 0, 300, 1] * 20, dtype=np.uint16))
    for stream, message in [
        (varints.encode(0) + good[1:], "no lanes"),
        (varints.encode(1) + varints.encode(0) + good[2:], "no symbols"),
        (good + b"\0", "lengths do not add up|ends early|does not end"),
        (good[:-2], "ends early|does not end"),
    ]:
        payload = _entries(1, [(0, 120 << 1)], [(ranges.MODE_RANS, stream), *EMPTY[1:]])
        with pytest.raises(PatchError, match=message):
            ranges.decode(payload, bytes(240), 240)


def test_random_corruption_never_escapes_as_another_error(valid: tuple[bytes, bytes, bytes]) -> None:
    payload, old, new = valid
    rng = random.Random(5)
    for _ in range(300):
        broken = bytearray(payload)
        for _ in range(rng.randint(1, 4)):
            broken[rng.randrange(len(broken))] = rng.randrange(256)
        with contextlib.suppress(PatchError):
            assert len(ranges.decode(bytes(broken), old, len(new))) == len(new)


def _patch_with(segment: Segment, payload: bytes, source: bytes, version: int) -> bytes:
    header = Header(1, len(source), segment.target_length, hashlib.sha256(source).digest(), bytes(32))
    table = segment.pack()
    return pack_header(header, table, version) + table + payload


@pytest.mark.parametrize(
    ("width", "ref_length", "version", "message"),
    [
        (2, 100, 4, "RANGES needs width 0"),
        (0, 50, 4, "reference of its target length"),
        (0, 100, 3, "uses codecs or backends of version 4"),
    ],
)
def test_container_refuses_malformed_ranges_segments(
    width: int, ref_length: int, version: int, message: str, tmp_path: Path
) -> None:
    source = bytes(100)
    payload = _entries(0, [], [*EMPTY[:2], (ranges.MODE_XOR, codecs.zstd_compress(bytes(100), 3)), EMPTY[3]])
    segment = Segment(Codec.RANGES, width, Transform.NONE, 100, 0, ref_length, len(payload), zlib.crc32(payload))
    (tmp_path / "src").write_bytes(source)
    (tmp_path / "p").write_bytes(_patch_with(segment, payload, source, version))
    with pytest.raises(PatchError, match=message):
        apply_patch(tmp_path / "src", tmp_path / "p", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_regions_in_any_order_give_sorted_disjoint_ranges() -> None:
    regions = [
        TensorRegion("b", 80, 64, 2, "float16", (32,)),
        TensorRegion("a", 10, 64, 4, "float32", (16,)),
        TensorRegion("c", 100, 8, 2, "float16", (4,)),  # overlaps b: left out
    ]
    pieces = [Piece(0, 150, same=(0, 150)), Piece(150, 10, same=(150, 10))]
    planned = with_ranges(pieces, regions, {f"{r.name}@{r.offset}": r for r in regions}, DEFAULT_LIMITS)
    assert planned[0].ranges == ((10, 64, 4), (80, 64, 2))


def test_rare_large_differences_are_escaped_not_given_table_entries() -> None:
    rng = np.random.default_rng(8)
    values = rng.integers(0, 4, 20_000).astype(np.uint16)
    values[rng.choice(20_000, 30, replace=False)] = rng.integers(20, 3000, 30).astype(np.uint16)
    assert ranges._escape_symbol(values) == 4  # symbols 0-3 and one escape: rarer ones cost less as varints
    old = rng.integers(0, 1 << 16, 20_000).astype(np.uint16)
    new = old + codecs.unzigzag(values, 2)
    payload = ranges.payload(new.tobytes(), old.tobytes(), [(0, 40_000, 2)])
    assert ranges.decode(payload, old.tobytes(), 40_000) == new.tobytes()
