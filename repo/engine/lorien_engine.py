"""Engine ``lorien`` (the default): model-aware segmentation, smallest codec per segment, streaming apply.

Create (needs numpy and zstandard, plus :mod:`repo.engine.formats` to find tensors)::

    old, new (mmap) → pieces covering the new file in order (:mod:`repo.engine.planning`: tensors found and
        aligned, tensor chunks and the generic bytes around them, each with the old bytes that may predict it)
      → per piece, every applicable codec (:mod:`repo.engine.candidates`) is tried and the smallest payload
        wins (ranked at a fast zstd level, the winner re-encoded at the final level; small pieces are compared
        at the final level; tensor pieces from 2 MiB rank every codec on a 512 KiB sample and build only the
        best one or two for the whole piece) — pieces in threads, or for large files in a process pool
        (:mod:`repo.engine.pool`)
      → for large files each payload goes to a temporary file beside the output as it arrives
        (:mod:`repo.engine.spool`), so memory does not grow with the patch; only segments stay in memory
      → runs of pieces at the same place in both files tried as one segment (:mod:`repo.engine.runs`)
      → adjacent copies merge; a whole-file "zstd --patch-from" candidate and (small patches, or small files
        where a sample of covers beats the plan) the whole file as bsdiff-style covers compete when both files
        fit the reference limit
      → files under 64 MiB, the version-6 pass: sparse segments of a zip with its changed CRC-32 fields
        recomputed on apply (codec 12), small segments re-coded with Brotli where smaller — kept only when that
        makes the patch >= 1 % smaller → container (see :mod:`repo.engine.container`)
        written atomically

Apply: :mod:`repo.engine.applying` (streaming, every check; memory bounded by the limits, not the model size).
"""

from __future__ import annotations

import bisect
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from lorien.repo.atomic import atomic_writer
from lorien.repo.engine import codecs, covers, runs
from lorien.repo.engine.applying import apply_patch_file, open_patch
from lorien.repo.engine.base import ApplyResult, PatchInfo
from lorien.repo.engine.candidates import Candidate, CandidateKey, candidates, float_alone
from lorien.repo.engine.container import (
    BACKEND_CODECS,
    COMPACT_GAIN,
    DEFAULT_LIMITS,
    ENTRY_SIZE,
    FORMAT_VERSION,
    Backend,
    Codec,
    Header,
    Limits,
    Segment,
    Transform,
    backend_usable_up_to,
    checked_max_version,
    recognises,
    smallest_head,
    usable_up_to,
)
from lorien.repo.engine.ggml_blocks import LAYOUTS
from lorien.repo.engine.planning import Hints, Piece, plan
from lorien.repo.engine.pool import PROCESSES_FROM, encode_all, mapped
from lorien.repo.engine.sparse_diff import (
    MAX_CRC_WORK,
    Fixup,
    crc_fixups_raw,
    max_crc_fields,
    raw_bound,
    sparse_diff_residual,
)
from lorien.repo.engine.spool import PayloadSpool
from lorien.repo.engine.zip_tensors import crc_fields
from lorien.repo.errors import PatchError
from lorien.repo.hashing import sha256_file

MiB = 1 << 20
RANK_LEVEL = 1  # candidates are ranked at zstd's fastest level, the winner re-encoded at the final level
XZ_PIECES_BELOW = 64 * 1024  # LZMA2 at its strongest runs ~1 MB/s: only small pieces try it
XZ_BELOW = 4  # residuals zstd squeezes below 1/4 are also tried with LZMA2 and bzip2 (< 1 bit per byte)
GOOD_ENOUGH = 64  # a ranked winner under 1/64 of its piece is kept as is
WHOLE_FILE_HOPE = 0.7  # for larger files, level 19 is tried when level 1 is within 1/0.7 of the plan
ALWAYS_WHOLE_FILE_BELOW = 4 * MiB  # old + new bytes: small enough to always try at level 19
COVERS_PLAN_BELOW = 64 * 1024  # patches under this also try the whole file as covers (structural edits)
COVERS_SAMPLES = 4  # larger plans of small files estimate covers on this many slices of the new file first
COVERS_SAMPLE = 32 * 1024  # bytes of each slice
COVERS_NEAR = 64 * 1024  # each slice is matched against the old bytes at its relative position ± this much
NEARLY_COPIED = 1000  # a segment whose payload is at most 1/this of its bytes reproduces them nearly as is
ALONE_FROM = 0.75  # a plan over this share of the new file also tries the new file compressed on its own
ALONE_PIECE_FROM = 0.5  # a float piece (or generic bytes, see float_alone) whose best candidate is over this
# share of it also tries FLOAT_PLANES
ALL_AT_FINAL_BELOW = 64 * 1024  # smaller pieces try every candidate at the final level
COMPARE_AT_FINAL_BELOW = 1024 * 1024  # smaller pieces re-encode their three best candidates at the final level
PLANE_LEVEL = 12  # byte planes are entropy-bound: levels above this cost time and save almost nothing
SPOOL_FROM = PROCESSES_FROM  # new files from this size spool their payloads to disk while encoding
BROTLI_RAW_BELOW = 1 * MiB  # the brotli pass tries the raw streams of segments up to this size
# their raw stream is the payload: no other backend
SELF_CODED = (Codec.DIFF_RANS, Codec.FLOAT_PLANES, Codec.RANGES)

SAMPLED_FROM = 2 * MiB  # tensor pieces from this size rank their candidates on a sample first
SAMPLE_SLICES = 4
SAMPLE_SLICE = 128 * 1024  # bytes of the new piece per slice
SAMPLE_NEAR = 256 * 1024  # a sampled slice with aligned old bytes uses those ± this much as its dictionary
SHORTLIST = 2  # candidates the sample sends on to be built for the whole piece, at most
SHORTLIST_MARGIN = 1.05  # ... and only those within 5 % of the smallest on the sample

Ranked = tuple[bytes, Candidate, bytes | None]  # payload, candidate, raw stream


@dataclass(frozen=True)
class Shortlist:
    keys: frozenset[CandidateKey]
    other_backend: bool  # bzip2 or LZMA2 beat zstd on the sample


@dataclass(frozen=True)
class Encoded:
    segment: Segment
    payload: bytes


class LorienEngine:
    name = "lorien"

    def __init__(
        self,
        level: int = 19,
        limits: Limits = DEFAULT_LIMITS,
        workers: int | None = None,
        processes: bool | None = None,
        spool: bool | None = None,
        max_version: int = FORMAT_VERSION,
    ) -> None:
        """``processes``: encode pieces in a process pool (None: for new files from 64 MiB, see :mod:`pool`);
        ``spool``: keep payloads in a temporary file beside the output until the container is written (None:
        for new files from ``SPOOL_FROM``). Neither changes the patch's bytes. ``max_version``: use only the
        codecs of container versions up to this one (a fleet whose devices read no newer version; the patch
        is still written at the lowest version it needs)."""
        self.max_version = checked_max_version(max_version)
        self.level = level
        self.limits = limits
        self.workers = workers or max(1, os.cpu_count() or 1)
        self.processes = processes
        self.spool = spool

    def recognises(self, head: bytes) -> bool:
        return recognises(head)

    # ------------------------------------------------------------------ create

    def encode(self, piece: Piece, old: memoryview, new: memoryview) -> Encoded:
        """The smallest encoding of one piece."""
        target = bytes(new[piece.offset : piece.offset + piece.length])
        if piece.same is not None and old[piece.same[0] : piece.same[0] + piece.same[1]] == target:
            return Encoded(
                Segment(Codec.COPY, 0, Transform.NONE, piece.length, *piece.same, 0, zlib.crc32(b"")), b""
            )
        shortlist = self._shortlist(piece, target, old) if _sampled(piece) else None
        ranked = self._ranked(piece, target, old, None if shortlist is None else shortlist.keys)
        payload, best, raw = self._final(piece, target, ranked)
        backend = Backend.ZSTD
        if len(payload) <= piece.length // XZ_BELOW and (shortlist is None or shortlist.other_backend):
            payload, backend, best = self._other_backends(piece, ranked, (payload, best, raw))
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

    def encode_run(self, piece: Piece, old: memoryview, new: memoryview) -> list[Encoded]:
        """A piece's segments: for a run of typed ranges (``piece.parts``), its best single segment or its parts'
        own segments, whichever is smaller (ties keep the parts: they need no newer container version)."""
        whole = self.encode(piece, old, new)
        if not piece.parts:
            return [whole]
        parts = _merge_copies(self.encode(part, old, new) for part in piece.parts)
        if self._cost(parts) <= self._cost([whole]):
            return parts
        return [whole]

    def _ranked(
        self, piece: Piece, target: bytes, old: memoryview, only: frozenset[CandidateKey] | None = None
    ) -> list[Ranked]:
        """Every candidate's payload (those in ``only``, when given) at the ranking level (the final one for
        small pieces), smallest first."""
        first_level = self._first_level(piece)
        ranked: list[Ranked] = []

        def rank(candidate: Candidate) -> None:
            if only is not None and candidate.key not in only:
                return
            if not usable_up_to(candidate.codec, self.max_version):
                return
            raw = candidate.raw() if candidate.raw is not None else None
            if candidate.raw is not None and raw is None:
                return  # e.g. sparse with too many changes
            ranked.append((candidate.payload(target, raw, first_level), candidate, raw))

        for candidate in candidates(piece, target, old):
            rank(candidate)
        # FLOAT_PLANES (the floats on their own): for a model compressed on its own, and in a patch for a piece
        # its old bytes predict badly (a re-initialised layer); a sampled piece's shortlist already decided
        alone = float_alone(piece, target)
        if alone is not None:
            poor = not ranked or min(len(item[0]) for item in ranked) > ALONE_PIECE_FROM * piece.length
            if not len(old) or only is not None or poor:
                rank(alone)
        ranked.sort(key=lambda item: len(item[0]))
        return ranked

    def _shortlist(self, piece: Piece, target: bytes, old: memoryview) -> Shortlist:
        """For a large tensor piece, the candidates worth building in full: every candidate is ranked on an
        evenly spread sample of the piece (``SAMPLE_SLICES`` slices), the ``SHORTLIST`` smallest within
        ``SHORTLIST_MARGIN`` of the smallest go on, and the other entropy backends are tried on the full piece
        only if one of them won on the sample."""
        sample_piece, sample_target, sample_old = _sample(piece, target, old)
        ranked = self._ranked(sample_piece, sample_target, sample_old)
        near = [
            candidate.key
            for payload, candidate, _ in ranked
            if len(payload) <= SHORTLIST_MARGIN * len(ranked[0][0])
        ]
        keys = frozenset(near[:SHORTLIST])
        other_backend = False
        if ranked and len(ranked[0][0]) <= sample_piece.length // XZ_BELOW:
            _, backend, best = self._other_backends(sample_piece, ranked, ranked[0])
            if backend != Backend.ZSTD:
                keys, other_backend = keys | {best.key}, True
        return Shortlist(keys, other_backend)

    def _first_level(self, piece: Piece) -> int:
        return self.level if piece.length < ALL_AT_FINAL_BELOW else RANK_LEVEL

    def _final(self, piece: Piece, target: bytes, ranked: list[Ranked]) -> Ranked:
        """The best of the ranked finalists re-encoded at the final level."""
        if piece.length < COMPARE_AT_FINAL_BELOW:
            finalists = ranked[:3] + [item for item in ranked[3:] if item[1].codec == Codec.ZSTD_REF]
        else:  # level 1 undersells zstd+reference, but level 19 with a 16 MiB dictionary costs seconds
            finalists = ranked[:1]
        payload, best, raw = finalists[0]
        if self._first_level(piece) == self.level or len(payload) <= piece.length // GOOD_ENOUGH:
            return payload, best, raw
        for first, candidate, candidate_raw in finalists:
            planes = candidate.codec in (Codec.XOR_PLANES, Codec.DIFF_PLANES, Codec.SPARSE, Codec.SPARSE_DIFF)
            level = min(self.level, PLANE_LEVEL) if planes else self.level
            final = min(first, candidate.payload(target, candidate_raw, level), key=len)
            if len(final) < len(payload):
                payload, best, raw = final, candidate, candidate_raw
        return payload, best, raw

    def _other_backends(
        self, piece: Piece, ranked: list[Ranked], winner: Ranked
    ) -> tuple[bytes, Backend, Candidate]:
        """Very compressible residuals: the other entropy coders, on the two best residual streams."""
        payload, best, raw = winner
        backend = Backend.ZSTD
        packable = [(c, r) for _, c, r in ranked[:3] if r is not None and c.codec not in SELF_CODED]
        others = [(c, r) for c, r in packable if c is not best][:1]
        streams = [(best, raw), *others] if raw is not None and best.codec not in SELF_CODED else others
        for candidate, candidate_raw in streams:
            for other in codecs.other_backends(slow=piece.length < XZ_PIECES_BELOW):
                packed = codecs.pack(candidate_raw, self.level, other)
                if len(packed) < len(payload):
                    payload, backend, best = packed, other, candidate
        return payload, backend, best

    def create(
        self,
        old: Path,
        new: Path,
        output: Path,
        progress: Callable[[int, int], None] | None = None,
        hints: Hints | None = None,
    ) -> None:
        with ExitStack() as stack:
            old_view = stack.enter_context(mapped(old))
            new_view = stack.enter_context(mapped(new))
            # hashed by reading, not through the maps: a map's pages would stay in this process's RSS
            header = Header(
                0, len(old_view), len(new_view), bytes.fromhex(sha256_file(old)), bytes.fromhex(sha256_file(new))
            )
            spool = stack.enter_context(PayloadSpool(output)) if self._spools(len(new_view)) else None
            encoded, spool = self._encoded((old, new), (old_view, new_view), header, hints, spool, progress)
            if spool is None:  # payloads in memory (new files under SPOOL_FROM)
                encoded = self._version_6_pass(header, encoded, old_view, new_view)
            self._write(output, header, encoded, spool)

    def _encoded(
        self,
        paths: tuple[Path, Path],
        views: tuple[memoryview, memoryview],
        header: Header,
        hints: Hints | None,
        spool: PayloadSpool | None,
        progress: Callable[[int, int], None] | None,
    ) -> tuple[list[Encoded], PayloadSpool | None]:
        """The smallest segments this engine makes of the new file (and the spool holding their payloads, or
        None when they are in memory): the plan of pieces, or the new file on its own, the whole-file frame or
        the whole file as covers, whichever makes the smallest patch."""
        old_view, new_view = views
        processes = self.processes if self.processes is not None else len(new_view) >= PROCESSES_FROM
        pieces = plan(old_view, new_view, self.limits, hints)
        made = encode_all(self.encode_run, pieces, paths, views, self.workers, processes)
        per_piece = _reporting(made, progress, len(new_view))
        reported: Iterable[Encoded]
        if spool is None:  # pieces held in memory: runs of them may code smaller as one segment
            reported = runs.improve(
                pieces, list(per_piece), old_view, new_view, self.level, self.limits, Encoded, self.max_version
            )
        else:
            reported = (item for items in per_piece for item in items)
        encoded = _merge_copies(reported if spool is None else _spooled(reported, spool))
        plan_size = self._patch_size(header, encoded)
        nearly_copied = _nearly_copied(encoded)
        if spool is None and len(old_view) and plan_size > ALONE_FROM * len(new_view):
            alone = self._alone(new_view, hints)
            alone_size = self._patch_size(header, alone)
            if alone_size < plan_size:
                encoded, plan_size = alone, alone_size
        # identical files: nothing to win (a plan of a few hundred bytes can still lose: a layer removed)
        identical = len(encoded) == 1 and encoded[0].segment.codec == Codec.COPY
        whole = None if identical else self._whole_file(old_view, new_view, plan_size)
        whole_size = None if whole is None else self._patch_size(header, [whole])
        if whole_size is not None and plan_size > whole_size:
            encoded, spool, plan_size = [whole], None, whole_size
        covered = None if identical else self._covers_file(old_view, new_view, plan_size, nearly_copied)
        if covered is not None and plan_size > self._patch_size(header, [covered]):
            encoded, spool = [covered], None
        return encoded, spool

    def _version_6_pass(
        self, header: Header, encoded: list[Encoded], old: memoryview, new: memoryview
    ) -> list[Encoded]:
        """``encoded`` with what container version 6 adds — ``SPARSE_DIFF`` segments whose zip CRC-32 fields
        are recomputed on apply (:meth:`_with_crc_fixups`), then each segment whose raw stream Brotli codes
        smaller re-coded so (:meth:`_in_brotli`) — when the cap allows version 6 and that makes the whole patch
        at least ``COMPACT_GAIN`` smaller (a patch needs the newer format only where it buys something, as for
        the compact layout; devices of older releases keep applying the rest). A pass over the finished patch,
        so the patch is never larger than without it and the plan is made once. Brotli tries only streams up to
        ``BROTLI_RAW_BELOW`` (it codes ~5 MB/s at its strongest, LZMA2's speed)."""
        if not backend_usable_up_to(Backend.BROTLI, self.max_version):
            return encoded
        sparse = any(item.segment.codec == Codec.SPARSE_DIFF for item in encoded)
        fields = crc_fields(new) if sparse else []  # reading a zip's entries costs a pass over their data
        upgraded, offset = [], 0
        for item in encoded:
            if fields and item.segment.codec == Codec.SPARSE_DIFF and item.segment.transform == Transform.NONE:
                item = self._with_crc_fixups(item, offset, fields, old, new) or item
            upgraded.append(self._in_brotli(item))
            offset += item.segment.target_length
        before, after = self._patch_size(header, encoded), self._patch_size(header, upgraded)
        return upgraded if before - after >= COMPACT_GAIN * before else encoded

    def _with_crc_fixups(
        self, item: Encoded, offset: int, fields: list[Fixup], old: memoryview, new: memoryview
    ) -> Encoded | None:
        """``item`` (a ``SPARSE_DIFF`` segment at ``offset`` in the new file) as codec 12 when smaller: the zip
        CRC-32 fields inside it that changed keep their old bytes in the differences and are listed to be
        recomputed on apply (each a changed entry's 4 random bytes, twice: local header, central directory).
        Checked by decoding it; None when nothing is gained."""
        segment = item.segment
        length = segment.target_length
        target = bytearray(new[offset : offset + length])
        reference = old[segment.ref_offset : segment.ref_offset + segment.ref_length]
        inside = [
            (field - offset, start - offset, size)
            for field, start, size in fields
            if offset <= field
            and field + 4 <= offset + length
            and offset <= start
            and start + size <= offset + length
        ]
        changed = [
            fixup for fixup in inside if target[fixup[0] : fixup[0] + 4] != reference[fixup[0] : fixup[0] + 4]
        ]
        fixed = [field for field, _, _ in changed]  # sorted (crc_fields sorts them)
        chosen: list[Fixup] = []
        work = 0
        for field, start, size in changed:  # a span holding a changed field would depend on the order: skip it
            overlaps = bisect.bisect_left(fixed, start - 3) < bisect.bisect_left(fixed, start + size)
            if work + size <= MAX_CRC_WORK * length and not overlaps:
                chosen.append((field, start, size))
                work += size
        chosen = chosen[: max_crc_fields(length)]
        if not chosen:
            return None
        for field, _, _ in chosen:
            target[field : field + 4] = reference[field : field + 4]
        mode = codecs.unpack(item.payload, segment.backend, None, raw_bound(length, segment.width))[0]
        residual = sparse_diff_residual(bytes(target), reference, segment.width, mode)
        if residual is None:
            return None
        raw = crc_fixups_raw(chosen) + residual
        backend, payload = codecs.smallest_pack(raw, self.level, (Backend.ZSTD, *codecs.other_backends(slow=True)))
        if len(payload) >= segment.payload_length:
            return None
        fixed_segment = replace(
            segment,
            codec=Codec.SPARSE_DIFF_CRC,
            backend=backend,
            payload_length=len(payload),
            payload_crc32=zlib.crc32(payload),
        )
        if codecs.decode(fixed_segment, payload, reference) != bytes(new[offset : offset + length]):
            raise AssertionError("codec 12 does not reproduce its segment")  # an engine bug, not input
        return Encoded(fixed_segment, payload)

    def _in_brotli(self, item: Encoded) -> Encoded:
        """``item`` re-coded with Brotli when that is smaller, else ``item``."""
        segment = item.segment
        if segment.codec not in BACKEND_CODECS or not 0 < segment.payload_length < BROTLI_RAW_BELOW:
            return item
        try:
            raw = codecs.unpack(item.payload, segment.backend, None, BROTLI_RAW_BELOW)
        except PatchError:  # a raw stream over BROTLI_RAW_BELOW
            return item
        payload = codecs.brotli_compress(raw)
        if len(payload) >= len(item.payload):
            return item
        return Encoded(
            replace(
                segment, backend=Backend.BROTLI, payload_length=len(payload), payload_crc32=zlib.crc32(payload)
            ),
            payload,
        )

    @staticmethod
    def _cost(encoded: list[Encoded]) -> int:
        """Payload and classic table bytes of these segments: how a piece's options are ranked (as in
        :func:`runs._cost`)."""
        return sum(item.segment.payload_length + ENTRY_SIZE for item in encoded)

    def _patch_size(self, header: Header, encoded: list[Encoded]) -> int:
        """The bytes of the whole patch these segments make, in the layout it would be written in: what the
        plan, the new file on its own and the whole-file frame are compared by (on a tiny patch the compact
        layout's head decides: a layer removed is a few copies around a small segment, not one frame)."""
        segments = [item.segment for item in encoded]
        head = smallest_head(header, segments, self.max_version)
        return len(head) + sum(segment.payload_length for segment in segments)

    def _alone(self, new: memoryview, hints: Hints | None) -> list[Encoded]:
        """The new file compressed on its own, as ``repo.engine.full`` does (no references): what a patch
        between barely related versions should not be larger than (a retrain from scratch, a new architecture)."""
        nothing = memoryview(b"")
        pieces = plan(nothing, new, self.limits, None if hints is None else (None, hints[1]))
        return [item for piece in pieces for item in self.encode_run(piece, nothing, new)]

    def _spools(self, new_size: int) -> bool:
        return self.spool if self.spool is not None else new_size >= SPOOL_FROM

    def _one_segment_fits(self, old: memoryview, new: memoryview) -> bool:
        """Whether the whole new file may be one segment referencing the whole old file (the apply limits)."""
        return 0 < len(old) <= self.limits.max_reference and 0 < len(new) <= self.limits.max_segment

    def _whole_file(self, old: memoryview, new: memoryview, plan_size: int) -> Encoded | None:
        """The ``zstd --patch-from`` equivalent, when both files fit the apply-side limits and a quick level-1
        estimate says it could beat the plan (level 19 costs seconds per MiB with a large dictionary)."""
        if not self._one_segment_fits(old, new):
            return None
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

    def _covers_file(
        self, old: memoryview, new: memoryview, plan_size: int, nearly_copied: bool
    ) -> Encoded | None:
        """The whole file as bsdiff-style covers (``COVERS``, container version 5), when both files fit the
        apply-side limits: for a patch small enough (under ``COVERS_PLAN_BELOW``) that what changed is
        structure, not weights — a block removed or inserted and the metadata that points past it — and, when
        old and new together are under ``ALWAYS_WHOLE_FILE_BELOW``, for any plan that a sample of covers says
        they could beat (weights the planner could not place: a format it does not parse, or data shifted by a
        header that grew — a dense fine-tune there is a patch-from frame, bsdiff's approximate copies are a
        third of it). Its matcher sorts the old file's suffixes: ~18 bytes of memory per old byte, ~3 s for
        10 MB; so beyond ``ALWAYS_WHOLE_FILE_BELOW`` only a plan under ``COVERS_PLAN_BELOW`` that reproduces
        most of the file nearly as is tries it (not a float32 → float16 conversion, whose small patch comes from
        predicting every value)."""
        if not usable_up_to(Codec.COVERS, self.max_version) or not self._one_segment_fits(old, new):
            return None
        if plan_size >= COVERS_PLAN_BELOW:
            if len(old) + len(new) > ALWAYS_WHOLE_FILE_BELOW or not _covers_may_win(old, new, plan_size):
                return None
        elif len(old) + len(new) > ALWAYS_WHOLE_FILE_BELOW and not nearly_copied:
            return None
        made = covers.payload(bytes(new), old, self.level)
        if made is None:
            return None
        backend, payload = made
        segment = Segment(
            Codec.COVERS, 0, Transform.NONE, len(new), 0, len(old), len(payload), zlib.crc32(payload), backend
        )
        return Encoded(segment, payload)

    def _write(self, output: Path, header: Header, encoded: list[Encoded], spool: PayloadSpool | None) -> None:
        """The container; payloads from ``encoded`` or, when given, from ``spool`` (which holds them in order)."""
        segments = [item.segment for item in encoded]
        if spool is not None and spool.size != sum(item.segment.payload_length for item in encoded):
            raise AssertionError("spooled payloads do not match the segment table")  # an engine bug, not input
        with atomic_writer(output) as handle:
            handle.write(smallest_head(header, segments, self.max_version))
            if spool is not None:
                spool.copy_to(handle)
                return
            for item in encoded:
                handle.write(item.payload)

    # ------------------------------------------------------------------ read / apply (repo.engine.applying)

    def info(self, patch: Path) -> PatchInfo:
        with open(patch, "rb") as handle:
            header, _, size = open_patch(handle, patch, self.limits)
        return PatchInfo(
            self.name,
            size,
            header.source_size,
            header.target_size,
            header.source_sha256.hex(),
            header.target_sha256.hex(),
            header.version,
        )

    def segments(self, patch: Path) -> list[Segment]:
        with open(patch, "rb") as handle:
            return open_patch(handle, patch, self.limits)[1]

    def apply(
        self, model: Path, patch: Path, output: Path | None, progress: Callable[[int, int], None] | None = None
    ) -> ApplyResult:
        header, digest = apply_patch_file(model, patch, output, self.limits, progress)
        return ApplyResult(self.name, header.target_size, digest, True, None if output is None else str(output))


def _sampled(piece: Piece) -> bool:
    return piece.is_tensor and piece.length >= SAMPLED_FROM


def _sample(piece: Piece, target: bytes, old: memoryview) -> tuple[Piece, bytes, memoryview]:
    """A small piece standing for ``piece``: ``SAMPLE_SLICES`` evenly spread slices of the target, the same
    slices of its aligned old bytes (and of the old float32 bytes it may be cast from), and as its window the
    old bytes near each aligned slice (the whole window when nothing is aligned) — laid out in one buffer that
    plays the old file for the sample."""
    unit = LAYOUTS[piece.block].block_bytes if piece.block is not None else 8  # element (or ggml block) aligned
    step = piece.length // SAMPLE_SLICES // unit * unit
    starts = [index * step for index in range(SAMPLE_SLICES)]
    size = SAMPLE_SLICE // unit * unit
    sample_target = b"".join(target[start : start + size] for start in starts)
    length, parts, spans = len(sample_target), [], {}
    for name, span, scale in (("same", piece.same, 1), ("cast", piece.cast, 2)):
        if span is not None:
            spans[name] = (sum(map(len, parts)), scale * length)
            parts.extend(old[span[0] + scale * start : span[0] + scale * (start + size)] for start in starts)
    if piece.window is not None:
        if piece.same is not None:  # the old bytes around each slice: indexing a 16 MiB window costs ~0.4 s
            window = [
                old[max(0, piece.same[0] + start - SAMPLE_NEAR) : piece.same[0] + start + size + SAMPLE_NEAR]
                for start in starts
            ]
        else:
            window = [old[piece.window[0] : piece.window[0] + piece.window[1]]]
        spans["window"] = (sum(map(len, parts)), sum(map(len, window)))
        parts.extend(window)
    sample = Piece(
        0,
        length,
        piece.width,
        piece.is_tensor,
        spans.get("same"),
        spans.get("window"),
        spans.get("cast"),
        piece.block,
    )
    return sample, sample_target, memoryview(b"".join(parts))


def _reporting(
    made: Iterable[list[Encoded]], progress: Callable[[int, int], None] | None, total: int
) -> Iterator[list[Encoded]]:
    """Each piece's segments as the pieces are made, telling ``progress`` after each segment how much of the
    ``total`` target they cover."""
    done = 0
    for items in made:
        for item in items:
            done += item.segment.target_length
            if progress is not None:
                progress(done, total)
        yield items


def _spooled(encoded: Iterable[Encoded], spool: PayloadSpool) -> Iterator[Encoded]:
    """``encoded`` with each payload moved to ``spool`` (in order) as it arrives; segments pass through."""
    for item in encoded:
        spool.add(item.payload)
        yield Encoded(item.segment, b"")


def _covers_may_win(old: memoryview, new: memoryview, plan_size: int) -> bool:
    """Whether the whole file as covers could beat a plan of ``plan_size`` bytes: a new file up to
    ``COVERS_SAMPLES`` × ``COVERS_SAMPLE`` is simply tried; a larger one codes ``COVERS_SAMPLES`` evenly spread
    slices of ``COVERS_SAMPLE`` bytes at zstd's ``RANK_LEVEL``, each against the old bytes at the same relative
    position ± ``COVERS_NEAR``, and extrapolates: the whole file is tried only when that is under the plan (a
    dense float16 fine-tune at the same place codes ~15 % smaller as planned than as covers: not tried)."""
    if len(new) <= COVERS_SAMPLES * COVERS_SAMPLE:
        return True
    coded = 0
    for index in range(COVERS_SAMPLES):
        start = (len(new) - COVERS_SAMPLE) * (2 * index + 1) // (2 * COVERS_SAMPLES)
        near = start * len(old) // len(new)
        reference = old[max(0, near - COVERS_NEAR) : near + COVERS_SAMPLE + COVERS_NEAR]
        made = covers.payload(bytes(new[start : start + COVERS_SAMPLE]), reference, RANK_LEVEL)
        coded += COVERS_SAMPLE if made is None else len(made[1])
    estimate = coded * len(new) // (COVERS_SAMPLES * COVERS_SAMPLE)
    return estimate < plan_size


def _nearly_copied(encoded: list[Encoded]) -> bool:
    """Whether segments that reproduce old bytes as they are, but for a few (copies, a few changed elements:
    a payload of at most 1/``NEARLY_COPIED`` of their bytes, no transform — a float32 → float16 conversion
    predicts its bytes, it does not copy them), make at least half of the new file."""
    produced = sum(item.segment.target_length for item in encoded)
    nearly = sum(
        item.segment.target_length
        for item in encoded
        if item.segment.payload_length * NEARLY_COPIED <= item.segment.target_length
        and item.segment.transform == Transform.NONE
    )
    return 2 * nearly >= produced


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
