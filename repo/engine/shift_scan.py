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
      → a block that matches under 1/4 of its sample near both centers: :class:`FarSearch` looks for every
        4th byte of 64 new bytes (a float's top byte survives a fine-tune) among every 4th byte of the old
        file; places found exactly once are scored like the centers (within ``FAR_REACH``)
      → runs of blocks with one shift; each cut between two runs moved to the byte where it leaves the most
        bytes equal to their old bytes, and the stretch around it that matches neither shift (bytes inserted
        with the move: ``GAP_WINDOW`` windows matching ≤ 1/``GAP_DENSITY``, at least ``GAP_MIN``) made a gap,
        a run without a shift (:func:`_refined`)

The cost is about 10–25 ms per MiB of generic bytes, and only generic stretches of ``MIN_LENGTH`` or more pay
it: in the formats lorien parses they are small (headers, metadata), so large files of parsed formats scan next
to nothing. Blocks matched 7/8 or more at the shift in force stop there; after ``MISSES`` blocks in a row that
match nothing well (unrelated versions) only every ``SKIP``-th block is scanned. The far search copies an old
file of up to ``FAR_OLD_LIMIT`` once into its four lanes and stops for the file after ``FAR_GIVE_UP`` searches
in a row that found nothing (about 1 s on 64 MiB of unrelated bytes, all told).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MIN_LENGTH = 64 * 1024  # shorter generic stretches keep the structural shift (covers handle small edits)
BLOCK = 1 << 20  # a stretch is scanned a block at a time, so a shift that changes inside it is followed
REACH = 4096  # shifts tried on each side of a center
SLICES = 8
SLICE = 64  # bytes per slice: a sample of 512 bytes per block
SAMPLE = SLICES * SLICE
MARGIN = 8  # a new shift must match 1/MARGIN of the sample more than the one in force
STRUCTURAL_EVERY = 8  # while another shift is in force, the structural one is tried again every 8th block
MISSES = 8  # after this many blocks in a row that match nothing well (unrelated bytes) …
SKIP = 16  # … only every 16th block is scanned until one matches again
NEEDLE = 16  # bytes of a far-search needle (every 4th byte over 64 bytes of the new file)
FAR_SAMPLES = 1  # needles' places per block
FAR_CANDIDATES = 8
FAR_REACH = 64  # shifts tried around a far candidate (it is exact up to the element's phase)
FAR_OLD_LIMIT = 256 << 20  # old files up to this size get the far search (its lanes copy the old file once)
FAR_GIVE_UP = 4  # far searches in a row that find nothing end the far search for the file
GAP_WINDOW = 4096  # a gap between two runs is whole windows of this many bytes …
GAP_DENSITY = 16  # … each matching at most 1 byte in 16 at either shift …
GAP_MIN = 16 * 1024  # … and at least this long


Run = tuple[int, int, int | None]  # (start, end, shift) in the new file; shift None: a gap that matches nothing


class FarSearch:
    """Shifts beyond ``REACH`` (a block of bytes inserted or removed), found by the bytes that survive a dense
    fine-tune: a float's top byte (sign and exponent) rarely changes, so every 4th byte of the new file — one
    of four phases, a needle of ``NEEDLE`` bytes — is looked for among every 4th byte of the old one (four
    lanes, copied once per old file; only for old files up to ``FAR_OLD_LIMIT``)."""

    def __init__(self, old: memoryview) -> None:
        self.old = old
        self._lanes: list[bytes] | None = None
        self.fruitless = 0  # searches in a row that found no shift matching the block: unrelated files stop it

    def shifts(self, new: memoryview, offset: int, length: int) -> tuple[int, ...]:
        if len(self.old) > FAR_OLD_LIMIT or length < 8 * NEEDLE or self.fruitless >= FAR_GIVE_UP:
            return ()
        if self._lanes is None:
            whole = np.frombuffer(self.old, dtype=np.uint8)
            self._lanes = [whole[lane::4].tobytes() for lane in range(4)]
        found: list[int] = []
        for sample in range(FAR_SAMPLES):
            start = offset + (sample + 1) * (length - 4 * NEEDLE) // (FAR_SAMPLES + 1)
            for phase in range(4):
                needle = bytes(new[start + phase : start + phase + 4 * NEEDLE : 4])
                if len(set(needle)) < NEEDLE // 4:  # zeros, a constant exponent: found everywhere
                    continue
                for lane, data in enumerate(self._lanes):
                    at = data.find(needle)
                    if at >= 0 and data.find(needle, at + 1) < 0:  # one place only
                        found.append(lane + 4 * at - start - phase)
        return tuple(dict.fromkeys(found))[:FAR_CANDIDATES]


def scanned_runs(
    old: memoryview,
    new: memoryview,
    offset: int,
    length: int,
    structural: int,
    previous: int | None,
    far: FarSearch | None = None,
) -> list[Run] | None:
    """The stretch cut into runs of one shift each, or None when every block keeps ``structural``. ``previous``
    is the shift the stretch before settled on, tried here too; ``far`` looks farther for blocks that match
    nothing near."""
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
            if matched < SAMPLE // 4 and far is not None:
                farther = far.shifts(new, start, end - start)
                if farther:
                    current, matched = _block_shift(old, new, start, end - start, (current, *farther), FAR_REACH)
                far.fruitless = 0 if matched >= SAMPLE // 4 else far.fruitless + 1
            misses = 0 if matched >= SAMPLE // 4 else misses + 1
        if runs and runs[-1][2] == current:
            runs[-1] = (runs[-1][0], end, current)
        else:
            runs.append((start, end, current))
    if all(shift == structural for _start, _end, shift in runs):
        return None
    return _refined(old, new, runs)


def _block_shift(
    old: memoryview, new: memoryview, offset: int, length: int, centers: tuple[int, ...], reach: int = 0
) -> tuple[int, int]:
    """(shift, sampled bytes it matches): the shift the block's sample matches best within ``reach`` (default
    ``REACH``) of the centers; the first center (the shift in force) unless another beats it by the margin."""
    reach = reach or REACH
    starts = [offset + index * (length - SLICE) // (SLICES - 1) for index in range(SLICES)]
    in_force = centers[0]
    here = sum(int(_equal_bytes(old, new, start, start + SLICE, in_force).sum()) for start in starts)
    if here > SAMPLE - SAMPLE // MARGIN:  # no other shift can beat it by the margin
        return in_force, here
    scores: dict[int, int] = {}
    for center in dict.fromkeys(centers):
        counts = np.zeros(2 * reach + 1, dtype=np.int64)
        for start in starts:
            counts += _equal_counts(old, new, start, center, reach)
        for index in np.flatnonzero(counts):
            shift = center - reach + int(index)
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
    gaps: list[Run] = []
    for index in range(1, len(runs)):
        (first_start, cut, before), (_start, second_end, after) = runs[index - 1], runs[index]
        low, high = max(first_start, cut - BLOCK), min(second_end, cut + BLOCK)
        equal_before = _equal_bytes(old, new, low, high, before)
        equal_after = _equal_bytes(old, new, low, high, after)
        matches_before, matches_after = np.cumsum(equal_before), np.cumsum(equal_after)
        # bytes low..low+k-1 at ``before``, the rest at ``after``: k = 0 … high - low
        kept = np.concatenate(([0], matches_before)) + (matches_after[-1] - np.concatenate(([0], matches_after)))
        best = low + int(np.argmax(kept))
        gap_start, gap_end = _gap(np.maximum(equal_before, equal_after), best - low)
        runs[index - 1] = (first_start, low + gap_start, before)
        runs[index] = (low + gap_end, second_end, after)
        if gap_end > gap_start:
            gaps.append((low + gap_start, low + gap_end, None))
    runs = sorted(runs + gaps, key=lambda run: (run[0], run[1]))
    merged: list[Run] = []
    for start, end, shift in runs:
        if end <= start:
            continue
        if merged and merged[-1][2] == shift:
            merged[-1] = (merged[-1][0], end, shift)
        else:
            merged.append((start, end, shift))
    return merged


def _gap(equal: np.ndarray, cut: int) -> tuple[int, int]:
    """The stretch around ``cut`` (indexes into ``equal``, the bytes matching either side's shift) where
    ``GAP_WINDOW``-byte windows match at most 1 byte in ``GAP_DENSITY``: bytes inserted with the move, which
    neither shift predicts (a referenced piece would code them against unrelated old bytes); (cut, cut) when
    it is shorter than ``GAP_MIN``."""
    windows = len(equal) // GAP_WINDOW
    if windows == 0:
        return cut, cut
    density = equal[: windows * GAP_WINDOW].reshape(windows, GAP_WINDOW).sum(axis=1)
    sparse = density * GAP_DENSITY <= GAP_WINDOW
    at = min(cut // GAP_WINDOW, windows - 1)  # the cut's window may hold the first bytes matched after the gap
    seeds = [index for index in (at, at - 1, at + 1) if 0 <= index < windows and sparse[index]]
    if not seeds:
        return cut, cut
    first = last = seeds[0]
    while first > 0 and sparse[first - 1]:
        first -= 1
    while last + 1 < windows and sparse[last + 1]:
        last += 1
    start, end = first * GAP_WINDOW, (last + 1) * GAP_WINDOW
    if end - start < GAP_MIN:
        return cut, cut
    return start, end


def _equal_bytes(old: memoryview, new: memoryview, low: int, high: int, shift: int) -> np.ndarray:
    """Per new byte of ``low..high``: whether it equals the old byte at ``shift`` (False outside the old file)."""
    equal = np.zeros(high - low, dtype=np.int64)
    first, last = max(low, -shift), min(high, len(old) - shift)
    if last > first:
        mine = np.frombuffer(new, dtype=np.uint8, count=last - first, offset=first)
        theirs = np.frombuffer(old, dtype=np.uint8, count=last - first, offset=first + shift)
        equal[first - low : last - low] = mine == theirs
    return equal


def _equal_counts(old: memoryview, new: memoryview, start: int, center: int, reach: int) -> np.ndarray:
    """For each shift in ``center ± reach``: how many of the ``SLICE`` new bytes at ``start`` equal the old bytes
    at that shift (0 where the old file has no such bytes)."""
    counts = np.zeros(2 * reach + 1, dtype=np.int64)
    first = start + center - reach  # old offset of the window at the lowest shift
    low, high = max(first, 0), min(first + 2 * reach + SLICE, len(old))
    if high - low < SLICE:
        return counts
    window = np.frombuffer(old, dtype=np.uint8, count=high - low, offset=low)
    sample = np.frombuffer(new, dtype=np.uint8, count=SLICE, offset=start)
    matched = (sliding_window_view(window, SLICE) == sample).sum(axis=1)
    counts[low - first : low - first + len(matched)] = matched
    return counts
