"""Streaming digests of files: SHA-256 and MD5 in a single pass, in bounded memory."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


@dataclass(frozen=True)
class Digests:
    size: int
    sha256: str
    md5: str


class DigestAccumulator:
    """Feed chunks, read ``Digests`` at the end. Used for files on disk and bytes arriving over HTTP."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._sha256.update(chunk)
        self._md5.update(chunk)
        self.size += len(chunk)

    def result(self) -> Digests:
        return Digests(self.size, self._sha256.hexdigest(), self._md5.hexdigest())


def digest_chunks(chunks: Iterable[bytes]) -> Digests:
    accumulator = DigestAccumulator()
    for chunk in chunks:
        accumulator.update(chunk)
    return accumulator.result()


def iter_file(path: Path | str, chunk_size: int = CHUNK) -> Iterable[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            yield chunk


def digest_file(path: Path | str) -> Digests:
    return digest_chunks(iter_file(path))


def sha256_file(path: Path | str) -> str:
    return digest_file(path).sha256
