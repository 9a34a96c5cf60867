"""Applying a ``lorien`` patch: the segment table decoded onto the source model, streaming, with every check.

Needs numpy, zstandard and — for version-6 patches — brotli; the table says where every segment goes::

    header + table checked against limits and the source's size (:mod:`repo.engine.container`); the source's
    SHA-256 computed on a second thread meanwhile
      → for each segment: read payload (CRC-32 checked), read its reference from the source with pread (the
        next segment's reference is read ahead by the kernel), decode (:mod:`repo.engine.codecs`); a third
        thread hashes and writes the decoded bytes in order to a temporary file beside the output (at most one
        segment behind)
      → target size and SHA-256 and the source's SHA-256 checked (a wrong source is reported as such, also
        when it made decoding fail) → atomic rename (temporary file removed on any error)

Memory is bounded by :class:`~repo.limits.Limits` (one segment's reference, payload and output at a time), not
by model size.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import BinaryIO

from lorien.repo.atomic import atomic_writer
from lorien.repo.engine import codecs
from lorien.repo.engine.container import Codec, Header, Segment, read_header_and_table, short_digest_matches
from lorien.repo.errors import PatchError
from lorien.repo.hashing import sha256_file
from lorien.repo.limits import Limits

COPY_CHUNK = 1 << 20  # a copy is read from the source and written this many bytes at a time


def open_patch(handle: BinaryIO, patch: Path, limits: Limits) -> tuple[Header, list[Segment], int]:
    """The checked header and segment table of the patch open as ``handle`` (left at the first payload), and
    the patch's size."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(0)
    header, segments = read_header_and_table(handle, size, str(patch), limits)
    return header, segments, size


def apply_patch_file(
    model: Path, patch: Path, output: Path | None, limits: Limits, progress: Callable[[int, int], None] | None
) -> tuple[Header, str]:
    """Decode ``patch`` onto ``model`` into ``output`` (atomically; None: only check), telling ``progress``
    (bytes done, target size) after each segment; returns the header and the result's SHA-256 (hex).
    Raises PatchError for a corrupt patch or the wrong source model, with nothing written."""
    with (
        open(patch, "rb") as patch_handle,
        open(model, "rb") as source,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorien-apply-source") as hasher,
    ):
        header, segments, _ = open_patch(patch_handle, patch, limits)
        source_size = os.fstat(source.fileno()).st_size
        if source_size != header.source_size:
            raise _wrong_source(patch, model, header, source_size)
        # the source is hashed beside the decoding (a segment's reference is read where it is needed); a
        # wrong source is reported as such before any decoding error it caused, and no output is kept
        source_sha256 = hasher.submit(sha256_file, model)
        try:
            with atomic_writer(output) if output is not None else nullcontext(None) as sink:
                digest = _decode_all(header, segments, patch_handle, source, sink, patch, progress)
                if not short_digest_matches(header.source_sha256, source_sha256.result()):
                    raise _wrong_source(patch, model, header, source_size)
        except PatchError:
            if not short_digest_matches(header.source_sha256, source_sha256.result()):
                raise _wrong_source(patch, model, header, source_size) from None
            raise
    return header, digest


def _decode_all(
    header: Header,
    segments: list[Segment],
    patch_handle: BinaryIO,
    source: BinaryIO,
    sink: BinaryIO | None,
    patch: Path,
    progress: Callable[[int, int], None] | None,
) -> str:
    sha = hashlib.sha256()
    fd = source.fileno()
    done = 0
    with _Sink(sha, sink) as output:  # hashing and writing overlap the next segment's decoding
        for index, segment in enumerate(segments):
            if index + 1 < len(segments):
                _prefetch(fd, segments[index + 1])
            for chunk in _decode_one(segment, patch_handle, fd, patch, index):
                output.put(chunk)
            done += segment.target_length
            if progress is not None:
                progress(done, header.target_size)
    digest = sha.hexdigest()
    if not short_digest_matches(header.target_sha256, digest):
        raise PatchError(f"{patch}: corrupt patch: result sha256 {digest} does not match the patch's target")
    return digest


def _decode_one(segment: Segment, patch_handle: BinaryIO, fd: int, patch: Path, index: int) -> Iterator[bytes]:
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


def _wrong_source(patch: Path, model: Path, header: Header, source_size: int) -> PatchError:
    return PatchError(
        f"{patch}: made for another source model (expects {header.source_size} bytes, sha256 "
        f"{header.source_sha256.hex()[:16]}…); {model} is {source_size} bytes — apply it to the "
        "version it was made from"
    )


class _Sink:
    """Hashes and writes decoded chunks in order on one background thread (hashlib and file writes release the
    GIL), at most ``AHEAD`` chunk behind the decoder (each chunk held costs up to a segment of memory); the
    first error is raised in the decoding thread."""

    AHEAD = 1

    def __init__(self, sha: hashlib._Hash, sink: BinaryIO | None) -> None:
        self._sha, self._sink = sha, sink
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorien-apply-sink")
        self._pending: deque[Future[None]] = deque()

    def __enter__(self) -> _Sink:
        return self

    def put(self, chunk: bytes) -> None:
        self._pending.append(self._pool.submit(self._consume, chunk))
        while len(self._pending) > self.AHEAD:
            self._pending.popleft().result()

    def _consume(self, chunk: bytes) -> None:
        self._sha.update(chunk)
        if self._sink is not None:
            self._sink.write(chunk)

    def __exit__(self, error_type: type[BaseException] | None, *_: object) -> None:
        try:
            while self._pending and error_type is None:  # after an error the output is thrown away anyway
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _prefetch(fd: int, segment: Segment) -> None:
    """Ask the kernel to start reading the next segment's reference while this one decodes (a large model's
    source is not all in the page cache: an 8 MiB reference read from disk costs as much as decoding it)."""
    if segment.ref_length and hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, segment.ref_offset, segment.ref_length, os.POSIX_FADV_WILLNEED)


def _pread_exact(fd: int, size: int, offset: int, patch: Path) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise PatchError(f"{patch}: source model changed while the patch was applied")
    return data
