"""Mallorn-compatible model fingerprints, bit-exact.

Algorithm (Mallorn's, kept as is so fingerprints interoperate):

* ``header_hash`` = MD5 of the first 64 KiB, ``tail_hash`` = MD5 of the last 4 KiB;
  a file shorter than 68 KiB uses the MD5 of the whole file for both; a file under 4 bytes is an error.
* ``combined_hash`` = byte-wise XOR of the two digests (hex); ``short_id`` = its first 16 hex characters.
* ``format`` from the first bytes (see :func:`detect_format`).

Known flaw we keep for compatibility but never rely on: for files under 68 KiB both digests are equal, so
``combined_hash`` is all zeros and every small file has ``short_id == "0000000000000000"``. Versions are
therefore identified by ``(file_size, header_hash, tail_hash)`` (:meth:`Fingerprint.matches`), and a lookup by
``short_id`` alone must report ambiguity instead of guessing.

Also here, lorien's own extension (never part of the fingerprint): :func:`sampled_hash`, a SHA-256 over 64
blocks of 4 KiB spread evenly over the file, which tells apart the many files Mallorn's fingerprint cannot
(releases of one architecture, fine-tunes of one base). Exact algorithm in ``docs/fingerprint.md``.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lorien.repo.errors import FingerprintError

HEADER_SIZE = 64 * 1024
TAIL_SIZE = 4 * 1024
MIN_SPLIT_SIZE = HEADER_SIZE + TAIL_SIZE  # 68 KiB: below this the whole file is hashed
MIN_FILE_SIZE = 4
AMBIGUOUS_SHORT_ID = "0" * 16

FORMATS = ("tflite", "gguf", "onnx", "safetensors", "unknown")


def detect_format(head: bytes) -> str:
    """Mallorn's format rules, applied to the first bytes of a file, in Mallorn's order."""
    if len(head) >= 4 and head[0] in (0x18, 0x1C, 0x20) and head[1:4] == b"\x00\x00\x00":
        return "tflite"
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:1] in (b"\x08", b"\x12"):
        return "onnx"
    if len(head) >= 9:
        (header_length,) = struct.unpack("<Q", head[:8])
        if 0 < header_length < 1_000_000 and head[8:9] == b"{":
            return "safetensors"
    return "unknown"


@dataclass(frozen=True)
class Fingerprint:
    format: str
    file_size: int
    header_hash: str
    tail_hash: str
    combined_hash: str
    short_id: str

    def matches(self, other: Fingerprint) -> bool:
        """Same model as ``other``: Mallorn's identity rule (size and both digests), never short_id alone."""
        return (self.file_size, self.header_hash, self.tail_hash) == (
            other.file_size,
            other.header_hash,
            other.tail_hash,
        )

    @property
    def short_id_is_ambiguous(self) -> bool:
        """True when short_id cannot tell this file apart (the all-zeros id of files under 68 KiB)."""
        return self.short_id == AMBIGUOUS_SHORT_ID

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def _xor_hex(a: bytes, b: bytes) -> str:
    return bytes(x ^ y for x, y in zip(a, b, strict=True)).hex()


def fingerprint_bytes(data: bytes) -> Fingerprint:
    """Fingerprint of an in-memory file (same algorithm as :func:`fingerprint`)."""
    size = len(data)
    if size < MIN_FILE_SIZE:
        raise FingerprintError(f"cannot fingerprint a {size}-byte file: Mallorn needs at least 4 bytes")
    if size < MIN_SPLIT_SIZE:
        header = tail = hashlib.md5(data, usedforsecurity=False).digest()
    else:
        header = hashlib.md5(data[:HEADER_SIZE], usedforsecurity=False).digest()
        tail = hashlib.md5(data[-TAIL_SIZE:], usedforsecurity=False).digest()
    combined = _xor_hex(header, tail)
    return Fingerprint(detect_format(data[:16]), size, header.hex(), tail.hex(), combined, combined[:16])


def fingerprint(path: Path | str) -> Fingerprint:
    """Fingerprint a model file on disk, reading at most 68 KiB of it."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise FingerprintError(f"{path}: not a regular file; give the path of a model file")
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < MIN_SPLIT_SIZE:
                return fingerprint_bytes(handle.read())
            head = handle.read(HEADER_SIZE)
            handle.seek(size - TAIL_SIZE)
            tail = handle.read(TAIL_SIZE)
    except FingerprintError as error:
        raise FingerprintError(f"{path}: {error}") from None
    except OSError as error:
        raise FingerprintError(f"{path}: cannot read: {error.strerror}") from None
    header_digest = hashlib.md5(head, usedforsecurity=False).digest()
    tail_digest = hashlib.md5(tail, usedforsecurity=False).digest()
    combined = _xor_hex(header_digest, tail_digest)
    return Fingerprint(
        detect_format(head[:16]), size, header_digest.hex(), tail_digest.hex(), combined, combined[:16]
    )


# --- lorien's sampled hash (an extension; the Mallorn fingerprint above is unchanged) ---------------------------

SAMPLE_BLOCK_SIZE = 4 * 1024
SAMPLE_BLOCKS = 64
SAMPLED_WHOLE_FILE_LIMIT = SAMPLE_BLOCK_SIZE * SAMPLE_BLOCKS  # 256 KiB: up to this size the whole file is hashed


def sample_offsets(size: int) -> list[int]:
    """Start offsets of the sampled blocks of a ``size``-byte file (docs/fingerprint.md, "Sampled hash").

    Up to 256 KiB: one "block", the whole file at offset 0. Above: 64 blocks of 4 KiB at
    ``floor(i * (size - 4096) / 63)`` for i = 0..63 — the first starts the file, the last ends it, none overlap.
    """
    if size <= SAMPLED_WHOLE_FILE_LIMIT:
        return [0]
    span = size - SAMPLE_BLOCK_SIZE
    return [i * span // (SAMPLE_BLOCKS - 1) for i in range(SAMPLE_BLOCKS)]


def _sampled_digest(size: int, blocks: list[bytes]) -> str:
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    for block in blocks:
        digest.update(block)
    return digest.hexdigest()


def sampled_hash_bytes(data: bytes) -> str:
    """:func:`sampled_hash` of an in-memory file."""
    size = len(data)
    if size <= SAMPLED_WHOLE_FILE_LIMIT:
        return _sampled_digest(size, [data])
    return _sampled_digest(size, [data[o : o + SAMPLE_BLOCK_SIZE] for o in sample_offsets(size)])


def sampled_hash(path: Path | str) -> str:
    """lorien's sampled SHA-256 of a model file, reading at most 256 KiB of it (64 seeks on a large file).

    It tells apart files that Mallorn's fingerprint cannot (same size, first 64 KiB and last 4 KiB: releases of
    one architecture, fine-tunes of one base) when their weights differ anywhere in the sampled blocks. It is a
    cheap hint, not an identity: files differing only between the samples share it (then only ``sha256`` helps).
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size <= SAMPLED_WHOLE_FILE_LIMIT:
                return _sampled_digest(size, [handle.read()])
            blocks = []
            for offset in sample_offsets(size):
                handle.seek(offset)
                blocks.append(handle.read(SAMPLE_BLOCK_SIZE))
    except OSError as error:
        raise FingerprintError(f"{path}: cannot read: {error.strerror}") from None
    return _sampled_digest(size, blocks)
