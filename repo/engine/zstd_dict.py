"""Engine ``zstd``: the whole old model as a zstd raw-content dictionary, long-distance matching on.

This is the library equivalent of ``zstd --long --patch-from=OLD NEW``. Patch file layout::

    offset  size  field
    0       8     magic  b"LRNZSTD1"
    8       8     source size   (uint64, little-endian)
    16      8     target size   (uint64, little-endian)
    24      32    source SHA-256 (raw digest)
    56      32    target SHA-256 (raw digest)
    88      ...   one zstd frame

The applier refuses a source whose size or SHA-256 differs, never writes more than the declared target size,
and checks the target SHA-256 before the output file appears. Before decoding, the frame header is read: its
content size must equal the declared target size (at most ``Limits.max_target``), and its window may be no
larger than the sizes need (the window the creator would have chosen) nor than ``Limits.max_window`` — so a
tiny patch cannot make the decoder allocate gigabytes. The creator never chooses a window above the default
``max_window``: larger models get a patch whose matches reach back that far only.
"""

from __future__ import annotations

import hashlib
import math
import struct
from pathlib import Path
from typing import BinaryIO

import zstandard

from lorien.repo.atomic import atomic_writer
from lorien.repo.engine.base import ApplyResult, PatchInfo
from lorien.repo.errors import PatchError
from lorien.repo.hashing import sha256_file
from lorien.repo.limits import DEFAULT_LIMITS, Limits

MAGIC = b"LRNZSTD1"
_HEADER = struct.Struct("<8sQQ32s32s")
HEADER_SIZE = _HEADER.size
DEFAULT_LEVEL = 19
MAX_WINDOW_LOG = DEFAULT_LIMITS.max_window.bit_length() - 1
CHUNK = 1 << 20
FRAME_HEADER_MAX = 18  # bytes: magic, descriptor, window, dictionary id, content size


def _window_log(old_size: int, new_size: int) -> int:
    """Smallest window that lets matches reach back across the whole dictionary and the new data (capped)."""
    return max(zstandard.WINDOWLOG_MIN, min(MAX_WINDOW_LOG, math.ceil(math.log2(max(old_size + new_size, 2)))))


class ZstdDictEngine:
    name = "zstd"

    def __init__(self, level: int = DEFAULT_LEVEL, limits: Limits = DEFAULT_LIMITS) -> None:
        self.level = level
        self.limits = limits

    def recognises(self, head: bytes) -> bool:
        return head.startswith(MAGIC)

    def create(self, old: Path, new: Path, output: Path) -> None:
        old_bytes = old.read_bytes()
        new_bytes = new.read_bytes()
        params = zstandard.ZstdCompressionParameters.from_level(
            self.level,
            source_size=len(new_bytes),
            dict_size=len(old_bytes),
            window_log=_window_log(len(old_bytes), len(new_bytes)),
            enable_ldm=True,
        )
        dictionary = zstandard.ZstdCompressionDict(old_bytes, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        compressor = zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params)
        frame = compressor.compress(new_bytes)
        header = _HEADER.pack(
            MAGIC,
            len(old_bytes),
            len(new_bytes),
            hashlib.sha256(old_bytes).digest(),
            hashlib.sha256(new_bytes).digest(),
        )
        with atomic_writer(output) as handle:
            handle.write(header)
            handle.write(frame)

    def _read_header(self, handle: BinaryIO, patch: Path) -> PatchInfo:
        raw = handle.read(HEADER_SIZE)
        if len(raw) < HEADER_SIZE:
            raise PatchError(f"{patch}: truncated patch ({len(raw)} bytes, header needs {HEADER_SIZE})")
        magic, source_size, target_size, source_sha, target_sha = _HEADER.unpack(raw)
        if magic != MAGIC:
            raise PatchError(f"{patch}: not a '{self.name}' patch (bad magic)")
        if target_size > self.limits.max_target:
            raise PatchError(
                f"{patch}: corrupt patch: target size {target_size} exceeds the limit {self.limits.max_target}"
            )
        handle.seek(0, 2)
        patch_size = handle.tell()
        handle.seek(HEADER_SIZE)
        return PatchInfo(self.name, patch_size, source_size, target_size, source_sha.hex(), target_sha.hex())

    def info(self, patch: Path) -> PatchInfo:
        with open(patch, "rb") as handle:
            return self._read_header(handle, patch)

    def apply(self, model: Path, patch: Path, output: Path | None) -> ApplyResult:
        with open(patch, "rb") as patch_handle:
            info = self._read_header(patch_handle, patch)
            source_size = model.stat().st_size
            if source_size != info.source_size or sha256_file(model) != info.source_sha256:
                raise PatchError(
                    f"{patch}: made for another source model (expects {info.source_size} bytes, sha256 "
                    f"{info.source_sha256[:16]}…); {model} is {source_size} bytes — apply it to the version "
                    "it was made from"
                )
            dictionary = zstandard.ZstdCompressionDict(
                model.read_bytes(), dict_type=zstandard.DICT_TYPE_RAWCONTENT
            )
            window = self._check_frame(patch_handle, info, patch)
            decompressor = zstandard.ZstdDecompressor(dict_data=dictionary, max_window_size=window)
            if output is None:
                digest = self._decode(decompressor, patch_handle, None, info, patch)
            else:
                with atomic_writer(output) as out:
                    digest = self._decode(decompressor, patch_handle, out, info, patch)
        return ApplyResult(self.name, info.target_size, digest, True, None if output is None else str(output))

    def _check_frame(self, handle: BinaryIO, info: PatchInfo, patch: Path) -> int:
        """The window the frame may use; refuses a frame whose header asks for more than the sizes need."""
        head = handle.read(FRAME_HEADER_MAX)
        handle.seek(HEADER_SIZE)
        try:
            frame = zstandard.get_frame_parameters(head)
        except zstandard.ZstdError as error:
            raise PatchError(f"{patch}: corrupt patch data: {error}") from None
        if frame.content_size != info.target_size:
            raise PatchError(
                f"{patch}: corrupt patch: the zstd frame declares {frame.content_size} bytes, the header "
                f"{info.target_size}"
            )
        allowed = min(self.limits.max_window, 1 << _window_log(info.source_size, info.target_size))
        if frame.window_size > allowed:
            raise PatchError(
                f"{patch}: corrupt patch: the zstd frame asks for a {frame.window_size}-byte window; "
                f"{allowed} bytes are enough for its sizes and allowed (limit max_window {self.limits.max_window})"
            )
        return allowed

    def _decode(
        self,
        decompressor: zstandard.ZstdDecompressor,
        source: BinaryIO,
        sink: BinaryIO | None,
        info: PatchInfo,
        patch: Path,
    ) -> str:
        """Decode into ``sink`` (or nowhere), bounded by the declared target size; raise on any mismatch."""
        sha = hashlib.sha256()
        written = 0
        try:
            with decompressor.stream_reader(source, read_across_frames=False, closefd=False) as reader:
                while chunk := reader.read(CHUNK):
                    written += len(chunk)
                    if written > info.target_size:
                        raise PatchError(f"{patch}: decodes to more than the declared {info.target_size} bytes")
                    sha.update(chunk)
                    if sink is not None:
                        sink.write(chunk)
        except zstandard.ZstdError as error:
            raise PatchError(f"{patch}: corrupt patch data: {error}") from None
        if written != info.target_size:
            raise PatchError(f"{patch}: truncated patch: decoded {written} of {info.target_size} bytes")
        digest = sha.hexdigest()
        if digest != info.target_sha256:
            raise PatchError(f"{patch}: corrupt patch: result sha256 {digest} does not match the patch's target")
        return digest
