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
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

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

MiB = 1 << 20
RUN = 8 * MiB  # a run is cut into spans of at most this many bytes (the planner's piece size)
DENSE_RUN = 1 * MiB  # longer runs try only the sparse residual: full-size planes cost seconds per MiB there
RANK_LEVEL = 3  # residuals are ranked at this zstd level, the winner re-encoded at the final one
FINALISTS = 3  # the best ranked residuals re-encoded at the final level (their order can change there)
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
        start, end = _trimmed(encoded, first, last)
        if end - start < 2 and not (end > start and pieces[start].parts):  # a ranges run is several pieces
            result.extend(_flat(encoded[first:last]))
            continue
        # the run as one segment, with and without the copies at its ends (kept, they cost an entry each)
        options = [(start, end)] + ([(first, last)] if (start, end) != (first, last) else [])
        chosen = _flat(encoded[first:last])
        cheapest = _cost(chosen)
        for low, high in options:
            span = (pieces[low].offset, sum(piece.length for piece in pieces[low:high]))
            same = (_same(pieces[low])[0], span[1])
            best = _best(new[span[0] : span[0] + span[1]], old[same[0] : same[0] + same[1]], level, max_version)
            if best is None:
                continue
            codec, width, backend, payload = best
            segment = Segment(
                codec, width, Transform.NONE, span[1], *same, len(payload), zlib.crc32(payload), backend
            )
            option = [*_flat(encoded[first:low]), make(segment, payload), *_flat(encoded[high:last])]
            if _cost(option) < cheapest:
                chosen, cheapest = option, _cost(option)
        result.extend(chosen)
    return result


def _flat(encoded: list[list[Encoded]]) -> list[Encoded]:
    return [item for items in encoded for item in items]


def _trimmed(encoded: list[list[Encoded]], start: int, end: int) -> tuple[int, int]:
    """The run without the pieces at its ends that are copies: they stay copies (free but for their entry,
    merged later)."""
    while start < end and _copy(encoded[start]):
        start += 1
    while end > start and _copy(encoded[end - 1]):
        end -= 1
    return start, end


def _copy(items: list[Encoded]) -> bool:
    return all(item.segment.codec == Codec.COPY for item in items)


def _cost(encoded: list[Encoded]) -> int:
    """Payloads plus table entries, counting adjacent copies once (they merge; a run's references follow on)."""
    entries = sum(
        1
        for index, item in enumerate(encoded)
        if not (index and item.segment.codec == Codec.COPY and encoded[index - 1].segment.codec == Codec.COPY)
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
        for backend in (Backend.BZ2, Backend.XZ) if dense else (Backend.BZ2,):
            payload = codecs.pack(raw, level, backend)
            if len(payload) < len(best[3]):
                best = (codec, width, backend, payload)
    return best
