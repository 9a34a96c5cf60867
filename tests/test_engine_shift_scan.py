"""The shift scan of generic bytes (repo/engine/shift_scan.py): in a file of a format lorien does not parse,
bytes inserted or removed where no structure says so are found by content, so a dense fine-tune is still
predicted element by element instead of costing as much as the new file compressed on its own."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import bsdiff4
import numpy as np
import pytest

from lorien.repo.engine import apply_patch, create_patch, shift_scan
from lorien.repo.engine.planning import plan
from lorien.repo.limits import DEFAULT_LIMITS

HEADER = b"HEADERv1"


def _dense(elements: int, dtype: type, seed: int = 3) -> tuple[bytes, bytes]:
    """Raw weights and their dense fine-tune (noise relative to |w|), as bytes of ``dtype``."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal(elements, dtype=np.float32) * np.float32(0.05)
    tuned = weights * (np.float32(1) + rng.standard_normal(elements, dtype=np.float32) * np.float32(1e-3))
    return weights.astype(dtype).tobytes(), tuned.astype(dtype).tobytes()


def _runs(old: bytes, new: bytes) -> list[shift_scan.Run] | None:
    return shift_scan.scanned_runs(memoryview(old), memoryview(new), 0, len(new), 0, None)


def test_a_grown_header_is_found_as_one_shift_for_the_data() -> None:
    weights, tuned = _dense(200_000, np.float16)
    runs = _runs(HEADER + weights, HEADER + b"x" + tuned)
    assert runs is not None and runs[0][0] == 0 and runs[-1][1] == len(HEADER) + 1 + len(tuned)
    assert all(first[1] == second[0] for first, second in pairwise(runs))  # contiguous
    data = [shift for start, end, shift in runs if end - start > 1000]
    assert data == [-1]


def test_an_insertion_in_the_middle_cuts_the_stretch_at_the_inserted_bytes() -> None:
    weights, tuned = _dense(600_000, np.float16)
    middle = len(tuned) // 2 + 1  # an odd offset: the cut is found by content, not by element size
    inserted = b"INSERTED-123"
    runs = _runs(HEADER + weights, HEADER + tuned[:middle] + inserted + tuned[middle:])
    assert runs is not None
    shifts = [shift for _start, _end, shift in runs]
    assert shifts[0] == 0 and shifts[-1] == -len(inserted)
    cut = runs[-1][0]
    assert abs(cut - (len(HEADER) + middle)) <= len(inserted) + 64, (cut, len(HEADER) + middle)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_a_large_block_inserted_is_found_by_the_far_search(dtype: type) -> None:
    """100 KB inserted in the middle: far beyond REACH, found through every 4th byte (the floats' top bytes)."""
    weights, tuned = _dense(600_000, dtype)
    middle = len(tuned) // 2
    block = np.random.default_rng(7).bytes(100_000)
    old, new = HEADER + weights, HEADER + tuned[:middle] + block + tuned[middle:]
    near_only = _runs(old, new)
    assert near_only is None or -len(block) not in [shift for _start, _end, shift in near_only]
    runs = shift_scan.scanned_runs(memoryview(old), memoryview(new), 0, len(new), 0, None, _far(old))
    assert runs is not None and runs[0][2] == 0 and runs[-1][2] == -len(block), runs
    assert len(HEADER) + middle <= runs[-1][0] <= len(HEADER) + middle + len(block)


def test_the_far_search_gives_up_on_unrelated_files() -> None:
    rng = np.random.default_rng(5)
    old, new = rng.bytes(8 << 20), rng.bytes(8 << 20)
    far = _far(old)
    assert shift_scan.scanned_runs(memoryview(old), memoryview(new), 0, len(new), 0, None, far) is None
    assert far.fruitless >= shift_scan.FAR_GIVE_UP and far.shifts(memoryview(new), 0, 1 << 20) == ()


def test_bytes_inserted_with_a_move_are_a_gap_without_reference() -> None:
    """A compressible 100 KB block inserted: neither shift predicts it, so it is a run of its own (shift None)
    instead of being coded against the unrelated old bytes the next run's shift points at."""
    weights, tuned = _dense(600_000, np.float16)
    middle = len(tuned) // 2
    block = bytes(range(256)) * 400
    old, new = HEADER + weights, HEADER + tuned[:middle] + block + tuned[middle:]
    runs = shift_scan.scanned_runs(memoryview(old), memoryview(new), 0, len(new), 0, None, _far(old))
    assert runs is not None and [shift for _start, _end, shift in runs] == [0, None, -len(block)], runs
    gap_start, gap_end = runs[1][0], runs[1][1]
    inserted = len(HEADER) + middle, len(HEADER) + middle + len(block)
    assert inserted[0] - 4096 <= gap_start and gap_end <= inserted[1] + 4096
    assert gap_end - gap_start >= len(block) - 2 * 4096


def _far(old: bytes) -> shift_scan.FarSearch:
    return shift_scan.FarSearch(memoryview(old))


def test_removed_bytes_are_a_positive_shift() -> None:
    weights, tuned = _dense(200_000, np.float32)
    runs = _runs(HEADER + weights, b"HDR" + tuned)
    assert runs is not None and [shift for start, end, shift in runs if end - start > 1000] == [5]


@pytest.mark.parametrize(
    "new",
    [
        lambda old: np.random.default_rng(1).bytes(len(old)),  # unrelated
        lambda old: old,  # unchanged: the structural shift stays
        lambda old: bytes(len(old)),  # all zeros: every shift matches as badly
    ],
    ids=["unrelated", "unchanged", "zeros"],
)
def test_no_shift_is_invented(new) -> None:
    weights, _tuned = _dense(200_000, np.float16)
    old = HEADER + weights
    assert _runs(old, new(old)) is None


def test_short_stretches_and_tiny_old_files_are_not_scanned() -> None:
    weights, tuned = _dense(200_000, np.float16)
    assert shift_scan.scanned_runs(memoryview(weights), memoryview(b"x" + tuned), 0, 1000, 0, None) is None
    assert shift_scan.scanned_runs(memoryview(b"ab"), memoryview(b"x" + tuned), 0, len(tuned), 0, None) is None


def test_the_plan_references_the_scanned_shift() -> None:
    weights, tuned = _dense(300_000, np.float16)
    old, new = HEADER + weights, HEADER + b"xyz" + tuned
    pieces = plan(memoryview(old), memoryview(new), DEFAULT_LIMITS)
    assert pieces[0].offset == 0 and sum(piece.length for piece in pieces) == len(new)
    largest = max(pieces, key=lambda piece: piece.length)
    assert largest.same is not None and largest.same[0] - largest.offset == -3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dtype", "edit"),
    [
        (np.float16, lambda data: HEADER + b"x" + data),  # a header grown by a byte
        (np.float32, lambda data: b"HDR" + data),  # a header shrunk by five bytes
        (np.float16, lambda data: HEADER + data[: len(data) // 3] + b"12345" + data[len(data) // 3 :]),
        (
            np.float16,
            lambda data: HEADER + data[: len(data) // 2] + bytes(range(256)) * 400 + data[len(data) // 2 :],
        ),
    ],
    ids=["fp16-grown-header", "fp32-shrunk-header", "fp16-inserted-in-the-middle", "fp16-100-kb-inserted"],
)
def test_dense_fine_tunes_of_unparsed_files_stay_within_bsdiff4(tmp_path: Path, dtype: type, edit) -> None:
    """Files above the size where the whole file is also tried as covers (bsdiff's model): before the scan the
    grown-header pair patched to 3.2 × bsdiff4's size (one zstd frame against the old file)."""
    weights, tuned = _dense(1_400_000 if dtype is np.float32 else 2_600_000, dtype)
    old, new = HEADER + weights, edit(tuned)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    stats = create_patch(tmp_path / "old", tmp_path / "new", tmp_path / "patch")
    apply_patch(tmp_path / "old", tmp_path / "patch", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new
    generic = len(bsdiff4.diff(old, new))
    assert stats.patch_size <= generic + 1024, (stats.patch_size, generic)
