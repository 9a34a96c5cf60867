"""Engine ``lorien`` (the default): model-aware segmentation, smallest codec per segment, streaming apply.

Create (needs numpy and zstandard, plus :mod:`repo.engine.formats` to find tensors)::

    old, new (mmap) → tensor regions of both (TFLite / ONNX / safetensors / GGUF, else none)
      → align new tensors to old ones by name, then by dtype+shape, then by size
      → pieces covering the new file in order: tensor chunks (≤ 8 MiB, element-aligned) and the bytes
        between/around them (generic chunks, referenced against the matching region of the old file)
      → per piece, every applicable codec is tried and the smallest payload wins (ranked at a fast zstd
        level, the winner re-encoded at the final level; small pieces are compared at the final level)
      → adjacent copies merge; a whole-file "zstd --patch-from" candidate competes when both files fit the
        reference limit → container (see :mod:`repo.engine.container`) written atomically

Apply (needs numpy and zstandard only — the table says where every segment goes)::

    header + table checked against limits and the source's size and SHA-256
      → for each segment: read payload (CRC-32 checked), read its reference from the source with pread,
        decode, write sequentially to a temporary file beside the output while hashing
      → target size and SHA-256 checked → atomic rename (temporary file removed on any error)

Memory while applying is bounded by :class:`~repo.engine.container.Limits` (one segment's reference, payload
and output at a time), not by model size.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from lorien.repo.atomic import atomic_writer
from lorien.repo.engine import codecs
from lorien.repo.engine.base import ApplyResult, PatchInfo
from lorien.repo.engine.container import (
    DEFAULT_LIMITS,
    ENTRY_SIZE,
    MAGIC,
    Backend,
    Codec,
    Header,
    Limits,
    Segment,
    Transform,
    pack_header,
    read_header_and_table,
)
from lorien.repo.engine.formats import TensorRegion, find_tensors
from lorien.repo.errors import PatchError
from lorien.repo.hashing import sha256_file

MiB = 1 << 20
PIECE = 8 * MiB  # tensor and generic chunk size on the create side
MIN_TENSOR = 4096  # smaller tensors are cheaper as part of the surrounding generic bytes
RANK_LEVEL = 1  # candidates are ranked at zstd's fastest level, the winner re-encoded at the final level
XZ_PIECES_BELOW = 64 * 1024  # LZMA2 at its strongest runs ~1 MB/s: only small pieces try it
XZ_BELOW = 4  # residuals zstd squeezes below 1/4 are also tried with LZMA2 and bzip2 (< 1 bit per byte)
GOOD_ENOUGH = 64
TINY_PLAN = 512
LOCAL_WINDOW = 256 * 1024
WHOLE_FILE_HOPE = 0.7  # for larger files, level 19 is tried when level 1 is within 1/0.7 of the plan
ALWAYS_WHOLE_FILE_BELOW = (
    4 * 1024 * 1024
)  # old + new bytes: small enough to always try at level 19  # a ranked winner under 1/64 of its piece is kept as is
ALL_AT_FINAL_BELOW = 64 * 1024  # smaller pieces try every candidate at the final level
COMPARE_AT_FINAL_BELOW = 1024 * 1024  # smaller pieces re-encode their three best candidates at the final level
PLANE_LEVEL = 12  # byte planes are entropy-bound: levels above this cost time and save almost nothing
COPY_CHUNK = 1 * MiB

T = TypeVar("T")
R = TypeVar("R")


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


@dataclass(frozen=True)
class Encoded:
    segment: Segment
    payload: bytes


@dataclass(frozen=True)
class Candidate:
    """One way to encode a piece: a codec, its reference, and how to build its raw (pre-entropy) stream."""

    codec: Codec
    ref: tuple[int, int] | None
    width: int
    transform: Transform
    raw: Callable[[], bytes | None] | None  # None for ZSTD_REF, whose dictionary does the work
    dictionary: memoryview | None = None

    def payload(self, target: bytes, raw: bytes | None, level: int) -> bytes:
        if self.codec == Codec.ZSTD_REF:
            return codecs.zstd_compress(target, level, self.dictionary)
        assert raw is not None
        return codecs.zstd_compress(raw, level)


def _ordered_map(function: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """Like ``executor.map`` but with at most ``2 * workers`` results held at once."""
    with ThreadPoolExecutor(max_workers=workers) as executor:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(executor.submit(function, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _window(center: int, length: int, old_size: int, limit: int) -> tuple[int, int] | None:
    """Up to ``limit`` old bytes around ``center``, leaning forward, clipped to the old file."""
    if old_size == 0:
        return None
    if old_size <= limit:
        return (0, old_size)
    start = max(0, min(center - (limit - length) // 2, old_size - limit))
    return (start, limit)


class LorienEngine:
    name = "lorien"

    def __init__(self, level: int = 19, limits: Limits = DEFAULT_LIMITS, workers: int | None = None) -> None:
        self.level = level
        self.limits = limits
        self.workers = workers or max(1, os.cpu_count() or 1)

    def recognises(self, head: bytes) -> bool:
        return head.startswith(MAGIC)

    # ------------------------------------------------------------------ create

    def plan(self, old: memoryview, new: memoryview) -> list[Piece]:
        """Pieces covering ``new`` in order; the model-aware part of the engine."""
        _, old_regions = find_tensors(old)
        _, new_regions = find_tensors(new)
        old_regions = [r for r in old_regions if r.length >= MIN_TENSOR]
        new_regions = [r for r in new_regions if r.length >= MIN_TENSOR]
        matches = _align(old_regions, new_regions)
        pieces: list[Piece] = []
        position = shift = 0
        for region in new_regions:
            pieces.extend(self._generic(position, region.offset - position, shift, len(old)))
            match = matches.get(region.name + f"@{region.offset}")
            pieces.extend(self._tensor(region, match, len(old)))
            if match is not None:
                shift = match.end - region.end
            position = region.end
        pieces.extend(self._generic(position, len(new) - position, shift, len(old)))
        return pieces

    def _generic(self, offset: int, length: int, shift: int, old_size: int) -> Iterator[Piece]:
        for start in range(offset, offset + length, PIECE):
            size = min(PIECE, offset + length - start)
            mapped = start + shift
            same = (mapped, size) if mapped >= 0 and mapped + size <= old_size else None
            # a local window: loading a dictionary costs time per byte, and the whole-file candidate already
            # covers content that moved far (for files within the limits)
            limit = min(self.limits.max_reference, max(3 * size, LOCAL_WINDOW))
            yield Piece(start, size, same=same, window=_window(mapped, size, old_size, limit))

    def _tensor(self, region: TensorRegion, match: TensorRegion | None, old_size: int) -> Iterator[Piece]:
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
                window = _window(center, size, old_size, self.limits.max_reference)
                if window and match.length <= self.limits.max_reference:
                    window = (match.offset, match.length)
            yield Piece(region.offset + relative, size, width, True, same, window, cast)

    def candidates(self, piece: Piece, target: bytes, old: memoryview) -> list[Candidate]:
        """Every codec that can express this piece."""

        def ref(span: tuple[int, int] | None) -> memoryview | None:
            return None if span is None else old[span[0] : span[0] + span[1]]

        same = ref(piece.same)
        found = [Candidate(Codec.ZSTD, None, 0, Transform.NONE, lambda: target)]
        if piece.window is not None:
            found.append(Candidate(Codec.ZSTD_REF, piece.window, 0, Transform.NONE, None, ref(piece.window)))
        widths = [piece.width] if piece.is_tensor else [w for w in (1, 4) if piece.length % w == 0]
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
        if same is not None:
            for width in widths:
                found.append(
                    Candidate(
                        Codec.XOR_PLANES,
                        piece.same,
                        width,
                        Transform.NONE,
                        lambda w=width: codecs.xor_residual(target, same, w),
                    )
                )
                found.append(
                    Candidate(
                        Codec.DIFF_PLANES,
                        piece.same,
                        width,
                        Transform.NONE,
                        lambda w=width: codecs.diff_residual(target, same, w),
                    )
                )
            found.append(
                Candidate(
                    Codec.SPARSE,
                    piece.same,
                    widths[0],
                    Transform.NONE,
                    lambda: codecs.sparse_residual(target, same, widths[0]),
                )
            )
        if piece.cast is not None:
            predicted = codecs.predicted_reference(ref(piece.cast), Transform.F32_TO_F16)
            found.append(
                Candidate(
                    Codec.XOR_PLANES,
                    piece.cast,
                    2,
                    Transform.F32_TO_F16,
                    lambda: codecs.xor_residual(target, predicted, 2),
                )
            )
            found.append(
                Candidate(
                    Codec.DIFF_PLANES,
                    piece.cast,
                    2,
                    Transform.F32_TO_F16,
                    lambda: codecs.diff_residual(target, predicted, 2),
                )
            )
        return found

    def encode(self, piece: Piece, old: memoryview, new: memoryview) -> Encoded:
        """The smallest encoding of one piece."""
        target = bytes(new[piece.offset : piece.offset + piece.length])
        if piece.same is not None and old[piece.same[0] : piece.same[0] + piece.same[1]] == target:
            return Encoded(
                Segment(Codec.COPY, 0, Transform.NONE, piece.length, *piece.same, 0, zlib.crc32(b"")), b""
            )
        first_level = self.level if piece.length < ALL_AT_FINAL_BELOW else RANK_LEVEL
        ranked = []
        for candidate in self.candidates(piece, target, old):
            raw = candidate.raw() if candidate.raw is not None else None
            if candidate.raw is not None and raw is None:
                continue  # e.g. sparse with too many changes
            ranked.append((candidate.payload(target, raw, first_level), candidate, raw))
        ranked.sort(key=lambda item: len(item[0]))
        if piece.length < COMPARE_AT_FINAL_BELOW:
            finalists = ranked[:3] + [item for item in ranked[3:] if item[1].codec == Codec.ZSTD_REF]
        else:  # level 1 undersells zstd+reference, but level 19 with a 16 MiB dictionary costs seconds
            finalists = ranked[:1]
        payload, best, raw = finalists[0]
        if first_level != self.level and len(payload) > piece.length // GOOD_ENOUGH:
            for first, candidate, candidate_raw in finalists:
                planes = candidate.codec in (Codec.XOR_PLANES, Codec.DIFF_PLANES, Codec.SPARSE)
                level = min(self.level, PLANE_LEVEL) if planes else self.level
                final = min(first, candidate.payload(target, candidate_raw, level), key=len)
                if len(final) < len(payload):
                    payload, best, raw = final, candidate, candidate_raw
        backend = Backend.ZSTD
        if len(payload) <= piece.length // XZ_BELOW:
            # very compressible residuals: the other entropy coders, on the two best residual streams
            others = [(c, r) for _, c, r in ranked[:3] if r is not None and c is not best][:1]
            streams = [(best, raw), *others] if raw is not None else others
            for candidate, candidate_raw in streams:
                for other in (Backend.BZ2, Backend.XZ) if piece.length < XZ_PIECES_BELOW else (Backend.BZ2,):
                    packed = codecs.pack(candidate_raw, self.level, other)
                    if len(packed) < len(payload):
                        payload, backend, best = packed, other, candidate
        ref_offset, ref_length = best.ref or (0, 0)
        segment = Segment(
            best.codec,
            best.width,
            best.transform,
            piece.length,
            ref_offset,
            ref_length,
            len(payload),
            zlib.crc32(payload),
            backend,
        )
        return Encoded(segment, payload)

    def create(self, old: Path, new: Path, output: Path) -> None:
        with ExitStack() as stack:
            old_view = stack.enter_context(_mapped(old))
            new_view = stack.enter_context(_mapped(new))
            header = Header(
                0,
                len(old_view),
                len(new_view),
                hashlib.sha256(old_view).digest(),
                hashlib.sha256(new_view).digest(),
            )
            encoded = _merge_copies(
                _ordered_map(
                    lambda piece: self.encode(piece, old_view, new_view),
                    self.plan(old_view, new_view),
                    self.workers,
                )
            )
            plan_size = sum(e.segment.payload_length + ENTRY_SIZE for e in encoded)
            whole = self._whole_file(old_view, new_view, plan_size)
            if whole is not None and plan_size > whole.segment.payload_length + ENTRY_SIZE:
                encoded = [whole]
            self._write(output, header, encoded)

    def _whole_file(self, old: memoryview, new: memoryview, plan_size: int) -> Encoded | None:
        """The ``zstd --patch-from`` equivalent, when both files fit the apply-side limits and a quick level-1
        estimate says it could beat the plan (level 19 costs seconds per MiB with a large dictionary)."""
        if not (0 < len(old) <= self.limits.max_reference and 0 < len(new) <= self.limits.max_segment):
            return None
        if plan_size <= TINY_PLAN:
            return None  # (nearly) all copies: nothing to win
        target = bytes(new)
        if len(new) + len(old) <= ALWAYS_WHOLE_FILE_BELOW:
            payload = codecs.zstd_compress(target, self.level, old)
        else:
            estimate = codecs.zstd_compress(target, RANK_LEVEL, old)
            if len(estimate) * WHOLE_FILE_HOPE > plan_size:
                return None
            payload = min(estimate, codecs.zstd_compress(target, self.level, old), key=len)
        return Encoded(
            Segment(Codec.ZSTD_REF, 0, Transform.NONE, len(new), 0, len(old), len(payload), zlib.crc32(payload)),
            payload,
        )

    def _write(self, output: Path, header: Header, encoded: list[Encoded]) -> None:
        table = b"".join(item.segment.pack() for item in encoded)
        header = Header(
            len(encoded), header.source_size, header.target_size, header.source_sha256, header.target_sha256
        )
        with atomic_writer(output) as handle:
            handle.write(pack_header(header, table))
            handle.write(table)
            for item in encoded:
                handle.write(item.payload)

    # ------------------------------------------------------------------ read / apply

    def _open(self, handle: BinaryIO, patch: Path) -> tuple[Header, list[Segment], int]:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(0)
        header, segments = read_header_and_table(handle, size, str(patch), self.limits)
        return header, segments, size

    def info(self, patch: Path) -> PatchInfo:
        with open(patch, "rb") as handle:
            header, _, size = self._open(handle, patch)
        return PatchInfo(
            self.name,
            size,
            header.source_size,
            header.target_size,
            header.source_sha256.hex(),
            header.target_sha256.hex(),
        )

    def segments(self, patch: Path) -> list[Segment]:
        with open(patch, "rb") as handle:
            return self._open(handle, patch)[1]

    def apply(self, model: Path, patch: Path, output: Path | None) -> ApplyResult:
        with open(patch, "rb") as patch_handle, open(model, "rb") as source:
            header, segments, _ = self._open(patch_handle, patch)
            source_size = os.fstat(source.fileno()).st_size
            if source_size != header.source_size or sha256_file(model) != header.source_sha256.hex():
                raise PatchError(
                    f"{patch}: made for another source model (expects {header.source_size} bytes, sha256 "
                    f"{header.source_sha256.hex()[:16]}…); {model} is {source_size} bytes — apply it to the "
                    "version it was made from"
                )
            if output is None:
                digest = self._decode_all(header, segments, patch_handle, source, None, patch)
            else:
                with atomic_writer(output) as sink:
                    digest = self._decode_all(header, segments, patch_handle, source, sink, patch)
        return ApplyResult(self.name, header.target_size, digest, True, None if output is None else str(output))

    def _decode_all(
        self,
        header: Header,
        segments: list[Segment],
        patch_handle: BinaryIO,
        source: BinaryIO,
        sink: BinaryIO | None,
        patch: Path,
    ) -> str:
        sha = hashlib.sha256()
        fd = source.fileno()
        for index, segment in enumerate(segments):
            for chunk in self._decode_one(segment, patch_handle, fd, patch, index):
                sha.update(chunk)
                if sink is not None:
                    sink.write(chunk)
        digest = sha.hexdigest()
        if digest != header.target_sha256.hex():
            raise PatchError(f"{patch}: corrupt patch: result sha256 {digest} does not match the patch's target")
        return digest

    def _decode_one(
        self, segment: Segment, patch_handle: BinaryIO, fd: int, patch: Path, index: int
    ) -> Iterator[bytes]:
        if segment.codec == Codec.COPY:
            for start in range(segment.ref_offset, segment.ref_offset + segment.ref_length, COPY_CHUNK):
                size = min(COPY_CHUNK, segment.ref_offset + segment.ref_length - start)
                yield _pread_exact(fd, size, start, patch)
            return
        payload = patch_handle.read(segment.payload_length)
        if len(payload) != segment.payload_length or zlib.crc32(payload) != segment.payload_crc32:
            raise PatchError(f"{patch}: corrupt patch: segment {index} payload checksum mismatch")
        reference = _pread_exact(fd, segment.ref_length, segment.ref_offset, patch) if segment.ref_length else b""
        try:
            yield codecs.decode(segment, payload, reference)
        except PatchError as error:
            raise PatchError(f"{patch}: corrupt patch: segment {index}: {error}") from None


def _pread_exact(fd: int, size: int, offset: int, patch: Path) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise PatchError(f"{patch}: source model changed while the patch was applied")
    return data


@contextmanager
def _mapped(path: Path) -> Iterator[memoryview]:
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            yield memoryview(b"")
            return
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mapped)
        try:
            yield view
        finally:
            try:
                view.release()
                mapped.close()
            except BufferError:
                pass  # a slice is still referenced (e.g. by a traceback being raised): GC unmaps it later


def _align(old: list[TensorRegion], new: list[TensorRegion]) -> dict[str, TensorRegion]:
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


def _merge_copies(encoded: Iterable[Encoded]) -> list[Encoded]:
    merged: list[Encoded] = []
    for item in encoded:
        segment = item.segment
        if merged and segment.codec == Codec.COPY and merged[-1].segment.codec == Codec.COPY:
            last = merged[-1].segment
            if last.ref_offset + last.ref_length == segment.ref_offset:
                length = last.target_length + segment.target_length
                merged[-1] = Encoded(
                    Segment(Codec.COPY, 0, Transform.NONE, length, last.ref_offset, length, 0, zlib.crc32(b"")),
                    b"",
                )
                continue
        merged.append(item)
    return merged
