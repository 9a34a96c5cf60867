"""Create-side planning of the ``lorien`` engine: which parts of the new file become which pieces.

    old, new (mmap) → tensor regions of both (:func:`~repo.engine.formats.find_tensors`; small ones dropped)
      → new tensors aligned to old ones by name, then by dtype+shape, then by size (:func:`align`)
      → pieces covering the new file in order: tensor chunks (≤ 8 MiB, element-aligned) with the aligned old
        bytes they may be predicted from, and the generic bytes between/around them, referenced at the position
        implied by the previous aligned tensor (so insertions shift correctly)

The pieces go to :mod:`repo.engine.candidates`, which lists every codec able to express each one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from lorien.repo.engine.formats import TensorRegion, find_tensors
from lorien.repo.limits import Limits

MiB = 1 << 20
PIECE = 8 * MiB  # tensor and generic chunk size on the create side
MIN_TENSOR = 4096  # smaller tensors are cheaper as part of the surrounding generic bytes
LOCAL_WINDOW = 256 * 1024


@dataclass(frozen=True)
class Piece:
    """A contiguous part of the new file and the parts of the old file that may predict it."""

    offset: int
    length: int
    width: int = 1
    is_tensor: bool = False
    same: tuple[int, int] | None = None  # old bytes of equal length at the aligned position
    window: tuple[int, int] | None = None  # old bytes to use as a zstd dictionary
    cast: tuple[int, int] | None = None  # old float32 bytes predicting float16 target bytes


def plan(old: memoryview, new: memoryview, limits: Limits) -> list[Piece]:
    """Pieces covering ``new`` in order; the model-aware part of the engine."""
    _, old_regions = find_tensors(old)
    _, new_regions = find_tensors(new)
    old_regions = [r for r in old_regions if r.length >= MIN_TENSOR]
    new_regions = [r for r in new_regions if r.length >= MIN_TENSOR]
    matches = align(old_regions, new_regions)
    pieces: list[Piece] = []
    position = shift = 0
    for region in new_regions:
        pieces.extend(_generic(position, region.offset - position, shift, len(old), limits))
        match = matches.get(region.name + f"@{region.offset}")
        pieces.extend(_tensor(region, match, len(old), limits))
        if match is not None:
            shift = match.end - region.end
        position = region.end
    pieces.extend(_generic(position, len(new) - position, shift, len(old), limits))
    return pieces


def _generic(offset: int, length: int, shift: int, old_size: int, limits: Limits) -> Iterator[Piece]:
    for start in range(offset, offset + length, PIECE):
        size = min(PIECE, offset + length - start)
        mapped = start + shift
        same = (mapped, size) if mapped >= 0 and mapped + size <= old_size else None
        # a local window: loading a dictionary costs time per byte, and the whole-file candidate already
        # covers content that moved far (for files within the limits)
        limit = min(limits.max_reference, max(3 * size, LOCAL_WINDOW))
        yield Piece(start, size, same=same, window=_window(mapped, size, old_size, limit))


def _tensor(region: TensorRegion, match: TensorRegion | None, old_size: int, limits: Limits) -> Iterator[Piece]:
    width = region.width if region.width in (1, 2, 4, 8) else 1
    step = max(width, PIECE // width * width)
    for relative in range(0, region.length, step):
        size = min(step, region.length - relative)
        if size % width:
            width = 1
        same = window = cast = None
        if match is not None:
            if match.length == region.length:
                same = (match.offset + relative, size)
            elif (
                match.dtype == "float32"
                and region.dtype == "float16"
                and width == 2
                and match.length == 2 * region.length
            ):
                cast = (match.offset + 2 * relative, 2 * size)
            center = match.offset + relative * match.length // max(region.length, 1)
            window = _window(center, size, old_size, limits.max_reference)
            if window and match.length <= limits.max_reference:
                window = (match.offset, match.length)
        yield Piece(region.offset + relative, size, width, True, same, window, cast)


def _window(center: int, length: int, old_size: int, limit: int) -> tuple[int, int] | None:
    """Up to ``limit`` old bytes around ``center``, leaning forward, clipped to the old file."""
    if old_size == 0:
        return None
    if old_size <= limit:
        return (0, old_size)
    start = max(0, min(center - (limit - length) // 2, old_size - limit))
    return (start, limit)


def align(old: list[TensorRegion], new: list[TensorRegion]) -> dict[str, TensorRegion]:
    """New tensor (``name@offset``) → old tensor: same name, else same dtype+shape, else same size, in order."""
    by_name: dict[str, TensorRegion] = {}
    for region in old:
        by_name.setdefault(region.name, region)
    used: set[int] = set()
    matches: dict[str, TensorRegion] = {}
    unmatched = []
    for region in new:
        match = by_name.get(region.name)
        if match is not None and match.offset not in used:
            used.add(match.offset)
            matches[f"{region.name}@{region.offset}"] = match
        else:
            unmatched.append(region)
    for keys in (lambda r: (r.dtype, r.shape), lambda r: (r.length,)):
        still = []
        for region in unmatched:
            candidate = next((o for o in old if o.offset not in used and keys(o) == keys(region)), None)
            if candidate is None:
                still.append(region)
            else:
                used.add(candidate.offset)
                matches[f"{region.name}@{region.offset}"] = candidate
        unmatched = still
    return matches
