"""Create-side planning of the ``lorien`` engine: which parts of the new file become which pieces.

    old, new (mmap) → tensor regions of both (:func:`~repo.engine.formats.find_tensors`; small ones dropped)
      → new tensors aligned to old ones by name, then by dtype+shape, then by size (:func:`align`), then by
        content where a same-length old tensor's bytes match far better (:mod:`repo.engine.content_align`)
      → pieces covering the new file in order: tensor chunks (≤ 8 MiB, element- or block-aligned; a
        block-quantized chunk carries its ggml type id for codec BLOCK_PLANES) with the aligned old
        bytes they may be predicted from, and the generic bytes between/around them, referenced at the position
        implied by the previous aligned tensor (so insertions shift correctly), or by a small tensor inside them
        whose aligned old bytes are exactly its own (:func:`_anchors`)
      → runs of small 2-byte-element pieces (float16/bfloat16 tensors and the even-length generic bytes between
        them) that sit at the same place in both files grouped into one piece (:func:`group_half_floats`), so
        a small model's many tiny tensors share one entropy model instead of each paying its own table
      → runs of pieces at the same place in both files that still hold typed tensors (small ones at odd
        offsets, in zip entries or protobufs) become one piece listing them as typed ranges
        (:func:`with_ranges`; codec ``RANGES``), which keeps the run's pieces to fall back on

The pieces go to :mod:`repo.engine.candidates`, which lists every codec able to express each one.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass

from lorien.repo.engine import shift_scan
from lorien.repo.engine.content_align import by_content
from lorien.repo.engine.formats import TensorRegion, find_tensors
from lorien.repo.engine.formats import _non_overlapping as non_overlapping
from lorien.repo.engine.ggml_blocks import BY_NAME, LAYOUTS
from lorien.repo.limits import Limits

MiB = 1 << 20
PIECE = 8 * MiB  # tensor and generic chunk size on the create side
MIN_TENSOR = 4096  # smaller tensors are cheaper as part of the surrounding generic bytes (unless grouped)
LOCAL_WINDOW = 256 * 1024
GROUP = 1 * MiB  # half-float pieces are grouped up to this size; larger tensors carry their own table well
ALONE = 64 * 1024  # compressing a model on its own: tensors from this size keep their own entropy models


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
    block: int | None = None  # ggml type id of a block-quantized tensor chunk (whole blocks, see ggml_blocks)
    ranges: tuple[tuple[int, int, int], ...] = ()  # typed ranges (offset in piece, length, width) for RANGES
    parts: tuple[Piece, ...] = ()  # a ranges run: the pieces it replaces, encoded instead when smaller


Hints = tuple[list[TensorRegion] | None, list[TensorRegion] | None]  # (old, new) regions known from elsewhere


def plan(old: memoryview, new: memoryview, limits: Limits, hints: Hints | None = None) -> list[Piece]:
    """Pieces covering ``new`` in order; the model-aware part of the engine. ``hints`` gives the tensor regions
    of a file whose tensors another file describes (:mod:`repo.engine.companions`), in place of its own finder."""
    old_hint, new_hint = hints or (None, None)
    new_regions = _hinted(new_hint, len(new)) if new_hint else find_tensors(new)[1]
    if not len(old):
        return plan_alone(new_regions, len(new), limits)
    old_regions = _hinted(old_hint, len(old)) if old_hint else find_tensors(old)[1]
    matches = by_content(old_regions, new_regions, align(old_regions, new_regions), old, new)
    groupable = [r for r in new_regions if r.length >= MIN_TENSOR or _may_group(r, matches)]
    anchors = _anchors(new_regions, matches, old, new)
    scan = ShiftScan(old, new)
    grouped = group_half_floats(_pieces(groupable, matches, len(old), len(new), limits, anchors, scan), limits)
    if not all(piece.length >= MIN_TENSOR or not piece.is_tensor for piece in grouped):
        # a small tensor left on its own (its neighbours sit at odd offsets): each would pay a segment entry and
        # a frame, so small tensors go back into the generic bytes around them
        large = [r for r in new_regions if r.length >= MIN_TENSOR]
        grouped = _pieces(large, matches, len(old), len(new), limits, anchors, scan.restarted())
    return with_ranges(grouped, new_regions, matches, limits)


def _hinted(regions: list[TensorRegion], size: int) -> list[TensorRegion]:
    return non_overlapping([r for r in regions if r.offset >= 0 and r.end <= size])


def plan_alone(regions: list[TensorRegion], new_size: int, limits: Limits) -> list[Piece]:
    """A model compressed on its own (no old file: nothing to match): tensors under ``ALONE`` bytes joined with
    their small neighbours of the same element width — and the padding between them when it is whole elements —
    into pieces of up to ``GROUP`` bytes, so small tensors share their planes' entropy models (large tensors
    keep their own: their scales differ); what is left (headers, tensors too small to stand alone) is generic
    bytes, adjacent ones joined."""
    pieces: list[Piece] = []
    for piece in _pieces(regions, {}, 0, new_size, limits):
        last = pieces[-1] if pieces else None
        if (
            last is not None
            and last.is_tensor
            and piece.is_tensor
            and last.width == piece.width
            and max(last.length, piece.length) < ALONE
            and last.length + piece.length <= GROUP
        ):
            pieces[-1] = Piece(last.offset, last.length + piece.length, last.width, True)
            continue
        pieces.append(piece)
    pieces = _fold_padding(pieces)
    joined: list[Piece] = []
    for piece in pieces:
        generic = not piece.is_tensor or piece.length < MIN_TENSOR
        if generic and joined and not joined[-1].is_tensor and joined[-1].length + piece.length <= PIECE:
            joined[-1] = Piece(joined[-1].offset, joined[-1].length + piece.length)
        else:
            joined.append(piece if not generic else Piece(piece.offset, piece.length))
    return joined


def _fold_padding(pieces: list[Piece]) -> list[Piece]:
    """Generic bytes between two tensor pieces of one width, whole elements long, join them."""
    folded: list[Piece] = []
    index = 0
    while index < len(pieces):
        piece = pieces[index]
        if folded and folded[-1].is_tensor and not piece.is_tensor and index + 1 < len(pieces):
            last, following = folded[-1], pieces[index + 1]
            total = last.length + piece.length + following.length
            if (
                following.is_tensor
                and following.width == last.width
                and piece.length % last.width == 0
                and max(last.length, following.length) < ALONE
                and total <= GROUP
            ):
                folded[-1] = Piece(last.offset, total, last.width, True)
                index += 2
                continue
        folded.append(piece)
        index += 1
    return folded


def _pieces(
    regions: list[TensorRegion],
    matches: dict[str, TensorRegion],
    old_size: int,
    new_size: int,
    limits: Limits,
    anchors: list[tuple[int, int]] = (),  # type: ignore[assignment]
    scan: ShiftScan | None = None,
) -> list[Piece]:
    """Tensor pieces for ``regions`` and generic pieces between them, referenced at the shift of the previous
    aligned tensor — or of the previous ``anchor`` (offset, shift) inside the generic bytes, where they are cut —
    unless ``scan`` finds that a generic piece's bytes match the old file far better at another shift."""
    pieces: list[Piece] = []
    position = shift = 0
    following = iter(anchors)
    anchor = next(following, None)
    for end, region in [*((r.offset, r) for r in regions), (new_size, None)]:
        while anchor is not None and anchor[0] < end:
            if anchor[0] >= position and anchor[1] != shift:
                pieces.extend(_generic(position, anchor[0] - position, shift, old_size, limits, scan))
                position, shift = anchor
            anchor = next(following, None)
        pieces.extend(_generic(position, end - position, shift, old_size, limits, scan))
        if region is None:
            break
        match = matches.get(region.name + f"@{region.offset}")
        pieces.extend(_tensor(region, match, old_size, limits))
        if match is not None:
            shift = match.end - region.end
        position = region.end
    return pieces


def _anchors(
    regions: list[TensorRegion], matches: dict[str, TensorRegion], old: memoryview, new: memoryview
) -> list[tuple[int, int]]:
    """(offset, shift) of the small typed tensors whose aligned old bytes are theirs exactly and not all one value:
    places inside generic bytes where the old file's layout is known to resume (after a layer removed, the small
    tensors before the next large one sit at the new shift, not the previous tensor's)."""
    found = []
    for region in regions:
        match = matches.get(f"{region.name}@{region.offset}")
        if region.length >= MIN_TENSOR or match is None or match.length != region.length or region.length < 16:
            continue
        if region.dtype == "unknown":  # other stored files (TorchScript's many equal debug pickles): not layout
            continue
        data = bytes(new[region.offset : region.end])
        if data == old[match.offset : match.end] and data.count(data[:1]) != len(data):
            found.append((region.offset, match.offset - region.offset))
    return sorted(found)


def group_half_floats(pieces: list[Piece], limits: Limits) -> list[Piece]:
    """Adjacent pieces merged while they are 2-byte-element runs at the same place in both files. Generic bytes
    join only between two half-float pieces: identical headers would add zero symbols that every other symbol
    pays for in the shared table."""
    grouped: list[Piece] = []
    for index, piece in enumerate(pieces):
        following = pieces[index + 1] if index + 1 < len(pieces) else None
        joins = bool(grouped) and _joins(grouped[-1], piece)
        if joins and not _half_float(piece):
            joins = following is not None and _joins(_joined(grouped[-1], piece, limits), following)
        if joins:
            grouped[-1] = _joined(grouped[-1], piece, limits)
        else:
            grouped.append(piece)
    return grouped


def with_ranges(
    pieces: list[Piece], regions: list[TensorRegion], matches: dict[str, TensorRegion], limits: Limits
) -> list[Piece]:
    """Runs of pieces that sit at the same place in both files (≤ ``GROUP`` bytes, at least two pieces) and hold
    2- or 4-byte tensors aligned to old ones of equal length, replaced by one piece listing those tensors as
    typed ranges (codec ``RANGES``: each width's elements coded as one stream, whatever their offsets). The
    run's pieces stay in ``parts``: the engine keeps them when they encode smaller."""
    ordered = sorted(regions, key=lambda region: region.offset)
    offsets = [region.offset for region in ordered]
    planned: list[Piece] = []
    run: list[Piece] = []
    for piece in [*pieces, None]:
        if piece is not None and run and _continues(run, piece):
            run.append(piece)
            continue
        if len(run) > 1:  # the regions that may lie inside the run, in file order
            inside = ordered[
                bisect_left(offsets, run[0].offset) : bisect_left(offsets, run[-1].offset + run[-1].length)
            ]
            planned.extend(_ranged(run, inside, matches, limits))
        else:
            planned.extend(run)
        run = [piece] if piece is not None and _runs(piece) else []
        if piece is not None and not run:
            planned.append(piece)
    return planned


def _runs(piece: Piece) -> bool:
    return piece.same is not None and piece.cast is None and piece.length <= GROUP


def _continues(run: list[Piece], piece: Piece) -> bool:
    last = run[-1]
    assert last.same is not None
    return (
        _runs(piece)
        and piece.same is not None
        and last.same[0] + last.same[1] == piece.same[0]
        and last.offset + last.length == piece.offset
        and last.offset + last.length - run[0].offset + piece.length <= GROUP
    )


def _ranged(
    run: list[Piece], regions: list[TensorRegion], matches: dict[str, TensorRegion], limits: Limits
) -> list[Piece]:
    first = run[0]
    assert first.same is not None
    start, end, shift = first.offset, run[-1].offset + run[-1].length, first.same[0] - first.offset
    ranges: list[tuple[int, int, int]] = []
    for region in regions:
        match = matches.get(f"{region.name}@{region.offset}")
        if (
            region.width in (2, 4)
            and start <= region.offset
            and region.end <= end
            and region.length % region.width == 0
            and region.length > 0
            and match is not None
            and match.length == region.length
            and match.offset - region.offset == shift
            and (not ranges or ranges[-1][0] + ranges[-1][1] <= region.offset - start)
        ):
            ranges.append((region.offset - start, region.length, region.width))
    if not ranges:
        return run
    window = first.window
    for piece in run[1:]:
        if window is not None and piece.window is not None:
            low, high = min(window[0], piece.window[0]), max(sum(window), sum(piece.window))
            window = (low, high - low) if high - low <= limits.max_reference else window
    same = (first.same[0], end - start)
    return [Piece(start, end - start, 1, False, same, window, ranges=tuple(ranges), parts=tuple(run))]


def _may_group(region: TensorRegion, matches: dict[str, TensorRegion]) -> bool:
    """A small 2-byte-element tensor with an old one of equal length: worth a piece of its own only because
    :func:`group_half_floats` can add it to its neighbours' run."""
    match = matches.get(f"{region.name}@{region.offset}")
    return region.width == 2 and match is not None and match.length == region.length


def _half_float(piece: Piece) -> bool:
    return piece.is_tensor and piece.width == 2


def _joins(first: Piece, second: Piece) -> bool:
    """Whether ``second`` continues ``first`` as one run of 2-byte elements against contiguous old bytes."""
    if first.same is None or second.same is None or first.cast is not None or second.cast is not None:
        return False
    return (
        _half_float(first)
        and (_half_float(second) or (not second.is_tensor and second.length % 2 == 0))
        and first.offset + first.length == second.offset
        and first.same[0] + first.same[1] == second.same[0]
        and first.length + second.length <= GROUP
    )


def _joined(first: Piece, second: Piece, limits: Limits) -> Piece:
    assert first.same is not None and second.same is not None
    window = first.window
    if first.window is not None and second.window is not None:
        start = min(first.window[0], second.window[0])
        end = max(sum(first.window), sum(second.window))
        window = (start, end - start) if end - start <= limits.max_reference else first.window
    same = (first.same[0], first.same[1] + second.same[1])
    return Piece(first.offset, first.length + second.length, 2, True, same, window)


class ShiftScan:
    """Generic stretches cut where their bytes match the old file at another shift than the structure's
    (:mod:`repo.engine.shift_scan`), remembering the last shift found so the stretches after it try it too."""

    def __init__(self, old: memoryview, new: memoryview) -> None:
        self.old, self.new = old, new
        self.found: int | None = None
        self.far = shift_scan.FarSearch(old)

    def restarted(self) -> ShiftScan:
        """This scanner as a new one would start (no shift found, far search not given up), keeping the old
        file's far-search lanes so a second planning pass does not copy them again."""
        self.found = None
        self.far.fruitless = 0
        return self

    def __call__(self, offset: int, length: int, structural: int) -> list[shift_scan.Run] | None:
        runs = shift_scan.scanned_runs(self.old, self.new, offset, length, structural, self.found, self.far)
        if length >= shift_scan.MIN_LENGTH:
            self.found = structural if runs is None else runs[-1][2]  # never a gap: gaps sit between runs
        return runs


def _generic(
    offset: int, length: int, shift: int, old_size: int, limits: Limits, scan: ShiftScan | None = None
) -> Iterator[Piece]:
    runs = scan(offset, length, shift) if scan is not None else None
    if runs is None:
        yield from _chunks(offset, length, shift, old_size, limits)
        return
    in_force = shift
    for start, end, found in runs:
        if found is None:  # inserted bytes that match the old file at no shift: no equal-length reference
            yield from _chunks(start, end - start, in_force, old_size, limits, equal_length=False)
            continue
        in_force = found
        yield from _shifted(start, end - start, found, old_size, limits)


def _chunks(
    offset: int, length: int, shift: int, old_size: int, limits: Limits, equal_length: bool = True
) -> Iterator[Piece]:
    """Generic pieces of up to ``PIECE`` bytes referenced at ``shift``: the old bytes of equal length there (unless
    ``equal_length`` is off or they fall outside the old file) and a window of old bytes around them."""
    for start in range(offset, offset + length, PIECE):
        size = min(PIECE, offset + length - start)
        mapped = start + shift
        inside = equal_length and mapped >= 0 and mapped + size <= old_size
        # a local window: loading a dictionary costs time per byte, and the whole-file candidate already
        # covers content that moved far (for files within the limits)
        limit = min(limits.max_reference, max(3 * size, LOCAL_WINDOW))
        yield Piece(
            start, size, same=(mapped, size) if inside else None, window=_window(mapped, size, old_size, limit)
        )


def _shifted(offset: int, length: int, shift: int, old_size: int, limits: Limits) -> Iterator[Piece]:
    """A generic stretch referenced at a scanned shift: the part that maps inside the old file gets the old bytes
    of equal length, the few bytes before or after it (mapped outside) are pieces of their own. The inside part
    starts where its old bytes sit at a multiple of 4 in the old file: where elements were aligned there, the
    pieces' elements are (a planes codec reads a piece's elements from its first byte)."""
    inside_start = max(offset, -shift)
    inside_start += -(inside_start + shift) % 4
    inside_end = min(offset + length, old_size - shift)
    if inside_end - inside_start < shift_scan.MIN_LENGTH:
        yield from _chunks(offset, length, shift, old_size, limits)
        return
    for start, end in ((offset, inside_start), (inside_start, inside_end), (inside_end, offset + length)):
        if end > start:
            yield from _chunks(start, end - start, shift, old_size, limits)


def _tensor(region: TensorRegion, match: TensorRegion | None, old_size: int, limits: Limits) -> Iterator[Piece]:
    width = region.width if region.width in (1, 2, 4, 8) else 1
    step = max(width, PIECE // width * width)
    block = BY_NAME.get(region.dtype)
    if block is not None and region.length % LAYOUTS[block].block_bytes == 0:
        step = PIECE // LAYOUTS[block].block_bytes * LAYOUTS[block].block_bytes  # chunks of whole blocks
    else:
        block = None
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
        yield Piece(region.offset + relative, size, width, True, same, window, cast, block)


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
