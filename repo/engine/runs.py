"""Run-level candidates of the ``lorien`` engine: one segment for a run of pieces that sit at the same place in
both files, when that is smaller than the run's own segments.

    pieces (:mod:`repo.engine.planning`) + their encoded segments, in order
      → runs: consecutive pieces whose aligned old bytes (``Piece.same``) follow each other, so the run's new
        bytes have old bytes of equal length in one span (a re-quantized or sparsely changed model whose
        layout did not move: the whole file is one run)
      → per run, residuals of the whole run: the changed elements' gaps and differences (codec 10, for element
        widths 1, 2 and 4, and 2- and 4-byte entries at any offset for tensors at odd offsets) and, for runs up to ``DENSE_RUN`` bytes, XOR and difference byte planes (width 1)
      → each through zstd, and for very compressible residuals bzip2 and (runs up to ``DENSE_RUN``) LZMA2
      → the run becomes that one segment when it costs less (payload + one table entry) than its segments

Why: each segment costs a 40-byte table entry and its entropy stage's own header and tables; a small model's
many small tensors (and the generic bytes between them) pay that per piece, and a residual's statistics are
often the same across the run (int8 re-quantization flips, sparse changes), so one model for all of it wins —
what bsdiff gets from coding the whole file's byte differences at once.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

from lorien.repo.engine import codecs
from lorien.repo.engine.container import (
    ENTRY_SIZE,
    FORMAT_VERSION,
    Backend,
    Codec,
    Segment,
    Transform,
    usable_up_to,
)
from lorien.repo.engine.planning import Piece
from lorien.repo.engine.sparse_diff import BYTES, ELEMENTS, sparse_diff_residual
from lorien.repo.limits import Limits

if TYPE_CHECKING:
    from lorien.repo.engine.lorien_engine import Encoded

Item = TypeVar("Item")
MiB = 1 << 20
RUN = 8 * MiB  # a run is cut into spans of at most this many bytes (the planner's piece size)
DENSE_RUN = 1 * MiB  # longer runs try only the sparse residual: full-size planes cost seconds per MiB there
RANK_LEVEL = 3  # residuals are ranked at this zstd level, the winner re-encoded at the final one
FINALISTS = 3  # the best ranked residuals re-encoded at the final level (their order can change there)
CHEAP = 8  # a segment whose payload is under 1/8 of its bytes may join a stretch of cheap neighbours
OTHER_BELOW = 4  # a winner under 1/4 of the run also tries bzip2 (and LZMA2 for dense-sized runs)


def improve(
    pieces: list[Piece],
    encoded: list[list[Encoded]],
    old: memoryview,
    new: memoryview,
    level: int,
    limits: Limits,
    make: Callable[[Segment, bytes], Encoded],
    max_version: int = FORMAT_VERSION,
) -> list[Encoded]:
    """The segments of ``encoded`` (each piece's, in order) with every run that codes smaller as one segment
    replaced by it (only by codecs of container versions up to ``max_version``)."""
    result: list[Encoded] = []
    for first, last in _runs(pieces, limits):
        start, end = _trimmed(encoded, first, last, _copy)
        if end - start < 2 and not (end > start and pieces[start].parts):  # a ranges run is several pieces
            result.extend(_flat(encoded[first:last]))
            continue
        # the run as one segment, with and without the copies at its ends (kept, they cost an entry each)
        options = [(start, end)] + ([(first, last)] if (start, end) != (first, last) else [])
        chosen = _flat(encoded[first:last])
        cheapest = _cost(chosen)
        for low, high in options:
            length = sum(piece.length for piece in pieces[low:high])
            one = _one_segment(
                new, old, (pieces[low].offset, _same(pieces[low])[0], length), level, max_version, make
            )
            if one is None:
                continue
            option = [*_flat(encoded[first:low]), one, *_flat(encoded[high:last])]
            if _cost(option) < cheapest:
                chosen, cheapest = option, _cost(option)
        if len(chosen) > 2:
            chosen = _cheap_stretches(
                chosen, pieces[first:last], encoded[first:last], old, new, level, make, max_version
            )
        result.extend(chosen)
    return result


def _cheap_stretches(
    chosen: list[Encoded],
    pieces: list[Piece],
    encoded: list[list[Encoded]],
    old: memoryview,
    new: memoryview,
    level: int,
    make: Callable[[Segment, bytes], Encoded],
    max_version: int = FORMAT_VERSION,
) -> list[Encoded]:
    """``chosen`` (a run's segments, each piece's own when the whole run did not code smaller as one) with each
    stretch of cheap segments (copies, residuals under 1/``CHEAP`` of their bytes) coded as one segment when
    that costs less: a run whose middle changed wholesale (a layer inserted) keeps that middle's segments and
    merges the nearly unchanged parts on either side."""
    if chosen != _flat(encoded):
        return chosen  # the run became one segment
    places = list(_places(pieces, encoded))
    if len(places) != len(chosen):
        return chosen
    result: list[Encoded] = []
    index = 0
    while index < len(chosen):
        end = index
        while end < len(chosen) and places[end] is not None and _cheap(chosen[end]):
            end += 1
        if end - index < 2:
            result.append(chosen[index])
            index += 1
            continue
        stretch = chosen[index:end]
        low, high = _trimmed(chosen, index, end, _is_copy)  # copies at the ends stay copies, as for runs
        best_items, best_cost = stretch, _cost(stretch)
        for start, stop in {(low, high), (index, end)}:
            if stop - start < 2:
                continue
            offset, reference = places[start]  # type: ignore[misc]
            length = sum(item.segment.target_length for item in chosen[start:stop])
            one = _one_segment(new, old, (offset, reference, length), level, max_version, make)
            if one is None:
                continue
            option = [*chosen[index:start], one, *chosen[stop:end]]
            if _cost(option) < best_cost:
                best_items, best_cost = option, _cost(option)
        result.extend(best_items)
        index = end
    return result


def _places(pieces: list[Piece], encoded: list[list[Encoded]]) -> Iterator[tuple[int, int] | None]:
    """Each segment's (offset in the new file, offset of its aligned old bytes), None where the piece has no
    aligned old bytes of its length (the run's pieces' old bytes follow each other, so a stretch of these is
    one span in both files)."""
    for piece, items in zip(pieces, encoded, strict=True):
        position = piece.offset
        for item in items:
            yield None if piece.same is None else (position, piece.same[0] + position - piece.offset)
            position += item.segment.target_length


def _cheap(item: Encoded) -> bool:
    return _is_copy(item) or item.segment.payload_length * CHEAP <= item.segment.target_length


def _flat(encoded: list[list[Encoded]]) -> list[Encoded]:
    return [item for items in encoded for item in items]


def _trimmed(items: Sequence[Item], start: int, end: int, is_copy: Callable[[Item], bool]) -> tuple[int, int]:
    """``items[start:end]`` without the copies at its ends: they stay copies (free but for their entry, merged
    later)."""
    while start < end and is_copy(items[start]):
        start += 1
    while end > start and is_copy(items[end - 1]):
        end -= 1
    return start, end


def _is_copy(item: Encoded) -> bool:
    return item.segment.codec == Codec.COPY


def _copy(items: list[Encoded]) -> bool:
    """A piece all of whose segments are copies."""
    return all(_is_copy(item) for item in items)


def _one_segment(
    new: memoryview,
    old: memoryview,
    place: tuple[int, int, int],
    level: int,
    max_version: int,
    make: Callable[[Segment, bytes], Encoded],
) -> Encoded | None:
    """``place`` = (offset in the new file, offset of the aligned old bytes, length) coded as one segment by
    its best run-level residual (:func:`_best`), or None when none applies."""
    offset, reference, length = place
    best = _best(new[offset : offset + length], old[reference : reference + length], level, max_version)
    if best is None:
        return None
    codec, width, backend, payload = best
    segment = Segment(
        codec, width, Transform.NONE, length, reference, length, len(payload), zlib.crc32(payload), backend
    )
    return make(segment, payload)


def _cost(encoded: list[Encoded]) -> int:
    """Payloads plus table entries, counting adjacent copies once (they merge; a run's references follow on).
    Entries count at the classic layout's 40 bytes, as most patches are written; whether a tiny patch is
    smaller as a whole in the compact layout is decided by ``LorienEngine.create``."""
    entries = sum(
        1 for index, item in enumerate(encoded) if not (index and _is_copy(item) and _is_copy(encoded[index - 1]))
    )
    return sum(item.segment.payload_length for item in encoded) + ENTRY_SIZE * entries


def _same(piece: Piece) -> tuple[int, int]:
    assert piece.same is not None
    return piece.same


def _runs(pieces: list[Piece], limits: Limits) -> Iterator[tuple[int, int]]:
    """Index ranges [start, end) covering ``pieces`` in order; a range of several pieces is a run."""
    cap = min(RUN, limits.max_segment, limits.max_reference)
    start = 0
    for index in range(1, len(pieces) + 1):
        if index < len(pieces) and _continues(pieces[start], pieces[index - 1], pieces[index], cap):
            continue
        yield start, index
        start = index


def _continues(first: Piece, last: Piece, piece: Piece, cap: int) -> bool:
    """Whether ``piece`` extends the run ``first`` … ``last``: its old bytes follow theirs, within ``cap``."""
    return (
        first.same is not None
        and last.same is not None
        and piece.same is not None
        and last.same[0] + last.same[1] == piece.same[0]
        and piece.offset - first.offset + piece.length <= cap
    )


def _best(
    target_view: memoryview, reference: memoryview, level: int, max_version: int = FORMAT_VERSION
) -> tuple[Codec, int, Backend, bytes] | None:
    """The smallest run-level encoding: (codec, width, backend, payload), or None when none applies."""
    target = bytes(target_view)
    dense = len(target) <= DENSE_RUN
    raws: list[tuple[Codec, int, bytes]] = []
    sparse = usable_up_to(Codec.SPARSE_DIFF, max_version)
    for width, mode in ((1, ELEMENTS), (2, ELEMENTS), (4, ELEMENTS), (2, BYTES), (4, BYTES)):
        if sparse and (mode == BYTES or len(target) % width == 0):
            raw = sparse_diff_residual(target, reference, width, mode)
            if raw is not None:
                raws.append((Codec.SPARSE_DIFF, width, raw))
    if dense:
        raws.append((Codec.DIFF_PLANES, 1, codecs.diff_residual(target, reference, 1)))
        raws.append((Codec.XOR_PLANES, 1, codecs.xor_residual(target, reference, 1)))
    if not raws:
        return None
    ranked = sorted(
        ((codecs.zstd_compress(raw, RANK_LEVEL), codec, width, raw) for codec, width, raw in raws),
        key=lambda item: len(item[0]),
    )
    best = (Codec.ZSTD, 0, Backend.ZSTD, b"")
    for first, codec, width, raw in ranked[:FINALISTS]:
        final = min(first, codecs.zstd_compress(raw, level), key=len)
        if not best[3] or len(final) < len(best[3]):
            best = (codec, width, Backend.ZSTD, final)
    if len(best[3]) * OTHER_BELOW > len(target):
        return best
    for _, codec, width, raw in ranked[:FINALISTS]:
        for backend in codecs.other_backends(slow=dense):
            payload = codecs.pack(raw, level, backend)
            if len(payload) < len(best[3]):
                best = (codec, width, backend, payload)
    return best
