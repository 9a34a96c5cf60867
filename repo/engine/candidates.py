"""Create-side candidate generation of the ``lorien`` engine: every codec able to express one piece.

    piece (from :mod:`repo.engine.planning`) + its target bytes + the old file
      → plain zstd of the target; zstd with the old window as dictionary; byte planes of the target (tensors)
      → with aligned old bytes of equal length: XOR and zigzag-difference planes per element width, sparse list,
        and for 2-byte elements (float16, bfloat16) the difference coded by rANS (:mod:`repo.engine.rans`),
        and the changed elements' gaps and differences (:mod:`repo.engine.sparse_diff`) per element width
      → with aligned old float32 bytes: XOR and difference planes against their float16 rounding
      → with no old file at all (a whole model compressed on its own): float planes, each its own zstd frame
      → block-quantized tensor chunks (GGUF Q8_0, Q4_K, …): their blocks split into field planes
        (:mod:`repo.engine.block_planes`), against the aligned old blocks when there are any, and on their own
      → a run of typed ranges at odd offsets (``piece.ranges``; its parts are encoded on their own too, see
        ``LorienEngine.encode_run``): the ranges' elements gathered per width and coded as one stream each
        (:mod:`repo.engine.ranges`)

Each :class:`Candidate` builds its raw (pre-entropy) stream lazily; the engine ranks them by payload size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lorien.repo.engine import block_planes, codecs, ranges
from lorien.repo.engine.container import Codec, Transform
from lorien.repo.engine.ggml_blocks import LAYOUTS
from lorien.repo.engine.planning import Piece
from lorien.repo.engine.sparse_diff import sparse_diff_residual

CandidateKey = tuple[Codec, int, Transform, bool]
GENERIC_FLOATS = range(1024, (1 << 20) + 1)  # generic pieces of these sizes may be coded as float32 planes


@dataclass(frozen=True)
class Candidate:
    """One way to encode a piece: a codec, its reference, and how to build its raw (pre-entropy) stream."""

    codec: Codec
    ref: tuple[int, int] | None
    width: int
    transform: Transform
    raw: Callable[[], bytes | None] | None  # None for ZSTD_REF, whose dictionary does the work
    dictionary: memoryview | None = None
    encode: Callable[[int], bytes] | None = None  # self-coded payload at a zstd level (raw is None then)

    @property
    def key(self) -> CandidateKey:
        """What tells this candidate from the others of the same piece."""
        return self.codec, self.width, self.transform, self.ref is not None

    def payload(self, target: bytes, raw: bytes | None, level: int) -> bytes:
        if self.encode is not None:
            return self.encode(level)
        if self.codec == Codec.ZSTD_REF:
            return codecs.zstd_compress(target, level, self.dictionary)
        assert raw is not None
        if self.codec in (Codec.DIFF_RANS, Codec.FLOAT_PLANES, Codec.RANGES):
            return raw  # its own entropy coding: the raw stream is the payload
        return codecs.zstd_compress(raw, level)


def float_alone(piece: Piece, target: bytes) -> Candidate | None:
    """FLOAT_PLANES — the piece's floats coded on their own, no reference — for 2- and 4-byte tensors, and for
    generic bytes of ``GENERIC_FLOATS`` sizes in whole 4-byte elements: runs of tensors under 4 KiB (biases,
    norms, small projections) between a format's metadata stay generic bytes, and retrained they are floats
    with nothing to match, as a large tensor is."""
    if piece.is_tensor:
        width = piece.width
    else:
        width = 4 if piece.length % 4 == 0 and piece.length in GENERIC_FLOATS else 0
    if width not in (2, 4):
        return None
    return Candidate(
        Codec.FLOAT_PLANES,
        None,
        width,
        Transform.NONE,
        lambda: codecs.float_planes_payload(target, width),
    )


def candidates(piece: Piece, target: bytes, old: memoryview) -> list[Candidate]:
    """Every codec that can express this piece, cheapest to build first — but FLOAT_PLANES (:func:`float_alone`),
    which the engine adds where it can pay."""
    found = [Candidate(Codec.ZSTD, None, 0, Transform.NONE, lambda: target)]
    if piece.window is not None:
        found.append(Candidate(Codec.ZSTD_REF, piece.window, 0, Transform.NONE, None, _span(old, piece.window)))
    if piece.is_tensor:
        found.append(
            Candidate(
                Codec.XOR_PLANES,
                None,
                piece.width,
                Transform.NONE,
                lambda: codecs.xor_residual(target, None, piece.width),
            )
        )
    if piece.block is not None:
        found.extend(_block_planes(piece, target, old))
    if piece.same is not None:
        found.extend(_against_same(piece, target, old, piece.same))
    if piece.ranges and piece.same is not None:
        # the whole run's other candidates stay: one segment of XOR planes or bzip2 over the run can beat both
        # RANGES and the run's own pieces (measured: int8 re-quantization, last-layers pairs)
        same = _span(old, piece.same)
        found.append(
            Candidate(
                Codec.RANGES, piece.same, 0, Transform.NONE, lambda: ranges.payload(target, same, piece.ranges)
            )
        )
    if piece.cast is not None:
        found.extend(_against_cast(target, old, piece.cast))
    return found


def _span(old: memoryview, span: tuple[int, int]) -> memoryview:
    return old[span[0] : span[0] + span[1]]


def _against_same(piece: Piece, target: bytes, old: memoryview, span: tuple[int, int]) -> list[Candidate]:
    """Residual codecs against old bytes of the same length: XOR and difference planes, sparse changes."""
    same = _span(old, span)
    known = piece.is_tensor and piece.width > 1  # width 1: bytes, or a dtype the finder could not tell
    widths = [piece.width] if known else [w for w in (1, 2, 4) if piece.length % w == 0]
    found = []
    for width in widths:
        found.append(
            Candidate(
                Codec.XOR_PLANES,
                span,
                width,
                Transform.NONE,
                lambda w=width: codecs.xor_residual(target, same, w),
            )
        )
        found.append(
            Candidate(
                Codec.DIFF_PLANES,
                span,
                width,
                Transform.NONE,
                lambda w=width: codecs.diff_residual(target, same, w),
            )
        )
    if 2 in widths:  # generic bytes too: small float16 tensors live there
        found.append(
            Candidate(Codec.DIFF_RANS, span, 2, Transform.NONE, lambda: codecs.diff_rans_payload(target, same))
        )
    found.append(
        Candidate(
            Codec.SPARSE, span, widths[0], Transform.NONE, lambda: codecs.sparse_residual(target, same, widths[0])
        )
    )
    found.extend(
        Candidate(Codec.SPARSE_DIFF, span, w, Transform.NONE, lambda w=w: sparse_diff_residual(target, same, w))
        for w in widths
    )
    return found


def _block_planes(piece: Piece, target: bytes, old: memoryview) -> list[Candidate]:
    """BLOCK_PLANES against the aligned old blocks (when the old tensor has the same length) and on its own."""
    layout = LAYOUTS.get(piece.block) if piece.block is not None else None
    if layout is None or piece.length % layout.block_bytes:
        return []
    references: list[tuple[tuple[int, int] | None, memoryview | None]] = [(None, None)]
    if piece.same is not None:
        references.append((piece.same, _span(old, piece.same)))
    return [
        Candidate(
            Codec.BLOCK_PLANES,
            span,
            1,
            Transform.NONE,
            None,
            encode=lambda level, r=reference: block_planes.payload(target, r, layout, level),
        )
        for span, reference in references
    ]


def _against_cast(target: bytes, old: memoryview, span: tuple[int, int]) -> list[Candidate]:
    """Residual codecs against old float32 bytes rounded to float16."""
    predicted = codecs.predicted_reference(_span(old, span), Transform.F32_TO_F16)
    return [
        Candidate(
            Codec.XOR_PLANES, span, 2, Transform.F32_TO_F16, lambda: codecs.xor_residual(target, predicted, 2)
        ),
        Candidate(
            Codec.DIFF_PLANES, span, 2, Transform.F32_TO_F16, lambda: codecs.diff_residual(target, predicted, 2)
        ),
    ]
