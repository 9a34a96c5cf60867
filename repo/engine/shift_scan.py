"""Create-side shift scan: the old bytes that predict a stretch of generic bytes, found by content.

Generic bytes (everything no format finder claimed as a tensor: a whole file of a format lorien does not parse,
a header, the bytes between tensors) are referenced at the shift the file's structure implies: the previous
aligned tensor's, else 0. When bytes were inserted or removed where no structure says so — a header that grew by
a byte in a file of raw float16 weights — that shift points a few bytes off, every element is predicted from
the wrong old one, and a dense fine-tune costs about as much as the new bytes compressed on their own (three
times ``bsdiff``'s patch on such a file).

    a generic piece of at least ``MIN_LENGTH`` bytes, its structural shift s, and the shift the previous scanned
    piece settled on (a second center, so a run of pieces keeps a shift found once)
      → a block (``BLOCK``) at a time: ``SLICES`` evenly spread slices of ``SLICE`` new bytes each; for every
        shift d within ``REACH`` bytes of the shift in force (and, every ``STRUCTURAL_EVERY`` blocks, of the
        structural one), the count of sampled bytes equal to the old bytes at shift d (one numpy comparison
        per slice over a sliding window of the old file)
      → the best d replaces the shift in force only when it matches ``1 / MARGIN`` of the sample more (a
        fine-tune of float16 weights at the right shift matches most high bytes and many low ones; a shift by
        a whole element matches only the high bytes' common values)
      → runs of blocks with one shift; each cut between two runs moved to the byte where it leaves the most
        bytes equal to their old bytes (:func:`_refined`)

The cost is about 10–25 ms per MiB of generic bytes, and only generic stretches of ``MIN_LENGTH`` or more pay
it: in the formats lorien parses they are small (headers, metadata), so large files of parsed formats scan next
to nothing. Blocks matched 7/8 or more at the shift in force stop there; after ``MISSES`` blocks in a row that
match nothing well (unrelated versions) only every ``SKIP``-th block is scanned.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MIN_LENGTH = (
    64 * 1024
)  # shorter generic stretches keep the structural shift (the covers codec handles small edits)
BLOCK = 1 << 20  # a stretch is scanned a block at a time, so a shift that changes inside it is followed
REACH = 4096  # shifts tried on each side of a center
SLICES = 8
SLICE = 64  # bytes per slice: a sample of 512 bytes per block
SAMPLE = SLICES * SLICE
MARGIN = 8  # a new shift must match 1/MARGIN of the sample more than the one in force
STRUCTURAL_EVERY = 8  # while another shift is in force, the structural one is tried again every 8th block
MISSES = 8  # after this many blocks in a row that match nothing well (unrelated bytes) …
SKIP = 16  # … only every 16th block is scanned until one matches again


Run = tuple[int, int, int]  # (start, end, shift) in the new file


def scanned_runs(
    old: memoryview, new: memoryview, offset: int, length: int, structural: int, previous: int | None
) -> list[Run] | None:
    """The stretch cut into runs of one shift each, or None when every block keeps ``structural``. ``previous``
    is the shift the stretch before settled on, tried here too."""
    if length < MIN_LENGTH or len(old) < SLICE:
        return None
    runs: list[Run] = []
    current = structural if previous is None else previous
    misses = 0
    for index, start in enumerate(range(offset, offset + length, BLOCK)):
        end = min(start + BLOCK, offset + length)
        skipped = misses >= MISSES and index % SKIP
        if end - start >= SAMPLE and not skipped:  # a short tail keeps the shift in force
            centers = (current, structural) if index % STRUCTURAL_EVERY == 0 else (current,)
            current, matched = _block_shift(old, new, start, end - start, centers)
            misses = 0 if matched >= SAMPLE // 4 else misses + 1
        if runs and runs[-1][2] == current:
            runs[-1] = (runs[-1][0], end, current)
        else:
            runs.append((start, end, current))
    if all(shift == structural for _start, _end, shift in runs):
        return None
    return _refined(old, new, runs)


def _block_shift(
    old: memoryview, new: memoryview, offset: int, length: int, centers: tuple[int, ...]
) -> tuple[int, int]:
    """(shift, sampled bytes it matches): the shift the block's sample matches best within ``REACH`` of the
    centers; the first center (the shift in force) unless another beats it by the margin."""
    starts = [offset + index * (length - SLICE) // (SLICES - 1) for index in range(SLICES)]
    in_force = centers[0]
    here = sum(int(_equal_bytes(old, new, start, start + SLICE, in_force).sum()) for start in starts)
    if here > SAMPLE - SAMPLE // MARGIN:  # no other shift can beat it by the margin
        return in_force, here
    scores: dict[int, int] = {}
    for center in dict.fromkeys(centers):
        counts = np.zeros(2 * REACH + 1, dtype=np.int64)
        for start in starts:
            counts += _equal_counts(old, new, start, center)
        for index in np.flatnonzero(counts):
            shift = center - REACH + int(index)
            scores[shift] = max(scores.get(shift, 0), int(counts[index]))
    if not scores:
        return in_force, 0
    best = max(scores, key=lambda shift: (scores[shift], shift == in_force))
    if scores[best] - scores.get(in_force, 0) < SAMPLE // MARGIN:
        return in_force, scores[best]
    return best, scores[best]


def _refined(old: memoryview, new: memoryview, runs: list[Run]) -> list[Run]:
    """Each boundary between two runs moved to the byte where the change of shift fits best: within the block on
    each side of it, the cut that leaves the most bytes equal to the old bytes at their run's shift."""
    runs = list(runs)
    for index in range(1, len(runs)):
        (first_start, cut, before), (_start, second_end, after) = runs[index - 1], runs[index]
        low, high = max(first_start, cut - BLOCK), min(second_end, cut + BLOCK)
        matches_before = np.cumsum(_equal_bytes(old, new, low, high, before))
        matches_after = np.cumsum(_equal_bytes(old, new, low, high, after))
        # bytes low..low+k-1 at ``before``, the rest at ``after``: k = 0 … high - low
        kept = np.concatenate(([0], matches_before)) + (matches_after[-1] - np.concatenate(([0], matches_after)))
        best = low + int(np.argmax(kept))
        runs[index - 1] = (first_start, best, before)
        runs[index] = (best, second_end, after)
    merged: list[Run] = []
    for start, end, shift in runs:
        if end <= start:
            continue
        if merged and merged[-1][2] == shift:
            merged[-1] = (merged[-1][0], end, shift)
        else:
            merged.append((start, end, shift))
    return merged


def _equal_bytes(old: memoryview, new: memoryview, low: int, high: int, shift: int) -> np.ndarray:
    """Per new byte of ``low..high``: whether it equals the old byte at ``shift`` (False outside the old file)."""
    equal = np.zeros(high - low, dtype=np.int64)
    first, last = max(low, -shift), min(high, len(old) - shift)
    if last > first:
        mine = np.frombuffer(new, dtype=np.uint8, count=last - first, offset=first)
        theirs = np.frombuffer(old, dtype=np.uint8, count=last - first, offset=first + shift)
        equal[first - low : last - low] = mine == theirs
    return equal


def _equal_counts(old: memoryview, new: memoryview, start: int, center: int) -> np.ndarray:
    """For each shift in ``center ± REACH``: how many of the ``SLICE`` new bytes at ``start`` equal the old bytes
    at that shift (0 where the old file has no such bytes)."""
    counts = np.zeros(2 * REACH + 1, dtype=np.int64)
    first = start + center - REACH  # old offset of the window at the lowest shift
    low, high = max(first, 0), min(first + 2 * REACH + SLICE, len(old))
    if high - low < SLICE:
        return counts
    window = np.frombuffer(old, dtype=np.uint8, count=high - low, offset=low)
    sample = np.frombuffer(new, dtype=np.uint8, count=SLICE, offset=start)
    matched = (sliding_window_view(window, SLICE) == sample).sum(axis=1)
    counts[low - first : low - first + len(matched)] = matched
    return counts
