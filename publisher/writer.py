"""The content half of a repository write: model blobs and patches, each at its content address, plus the
clean-up of a killed writer's leftovers.

:class:`RepositoryWriter` extends :class:`~publisher.signed.SignedMetadataWriter` (manifests, index.json,
signatures, pages), so one object writes a whole repository; callers hold the writer lock. Data flow:

- ``store_model``: model file → ``blobs/<sha256>.<ext>`` through a temporary file, re-hashed while copying (a
  file changing under us fails), after checking there is room for it; an existing blob is kept;
- ``create_patch``: two verified blobs → a patch made in ``.staging/`` by the chosen engine → hashed →
  renamed to ``blobs/<sha256>.lpatch``; ``.staging/`` is removed whatever happens;
- ``create_compressed``: a verified model blob → compressed on its own (``repo.engine.full``) in ``.staging/``
  → kept as ``blobs/<sha256>.compressed`` only when at most ``COMPRESSED_MAX_RATIO`` of the model;
- ``reusable``: a patch or compressed model of an earlier publish, checked against ``--max-patch-format``;
- ``remove_leftovers``: hidden temporary files and ``.staging/`` of a writer that was killed.

Crash points (``repo/testhooks.py``): ``blob`` after a blob is in place, ``patch`` after a patch is,
``compressed`` after a compressed model is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from lorien.publisher.options import PublishOptions
from lorien.publisher.signed import SignedMetadataWriter
from lorien.repo.atomic import atomic_writer, fsync_dir, is_temp_name, require_space, write_failure
from lorien.repo.engine import (
    DEFAULT_ENGINE,
    ByteProgress,
    Hints,
    PatchStats,
    create_patch,
    get_engine,
    patch_info,
)
from lorien.repo.engine.full import compress_model
from lorien.repo.errors import IntegrityError, LorienError
from lorien.repo.hashing import DigestAccumulator, Digests, digest_file, iter_file
from lorien.repo.layout import COMPRESSED_EXTENSION, PATCH_EXTENSION, blob_path
from lorien.repo.manifest import CompressedEntry, PatchEntry, VersionEntry
from lorien.repo.testhooks import crash_point

STAGING_DIR = ".staging"
COMPRESSED_MAX_RATIO = 0.95  # a compressed model saving less than 5 % is not worth a second blob
Reused = TypeVar("Reused", PatchEntry, CompressedEntry)


class RepositoryWriter(SignedMetadataWriter):
    """Writes blobs, patches, manifests and pages into one repository. Callers hold the writer lock."""

    def __init__(self, root: Path, engine: str = DEFAULT_ENGINE, options: PublishOptions | None = None) -> None:
        super().__init__(root, options)
        self.engine = get_engine(engine).name
        self.staging = root / STAGING_DIR

    # -- housekeeping ------------------------------------------------------------------------------------------
    def remove_leftovers(self) -> int:
        """Delete temp files of a writer that was killed; safe because we hold the lock."""
        removed = int(self.staging.exists())
        self.remove_staging()
        for directory, _dirs, files in os.walk(self.root):
            for name in files:
                if is_temp_name(name):
                    Path(directory, name).unlink(missing_ok=True)
                    removed += 1
        return removed

    def remove_staging(self) -> None:
        """The staging directory exists only while ``create_patch`` runs."""
        shutil.rmtree(self.staging, ignore_errors=True)

    # -- blobs -------------------------------------------------------------------------------------------------
    def blob_file(self, relative: str) -> Path:
        return self.root / relative

    def store_model(self, source: Path, expected: Digests, extension: str) -> tuple[str, bool]:
        """Copy ``source`` into its content address; the copy is re-hashed so a file changing under us fails."""
        relative = blob_path(expected.sha256, extension)
        destination = self.blob_file(relative)
        if destination.exists() and destination.stat().st_size == expected.size:
            return relative, False
        require_space(destination, expected.size, f"the blob of {source}")
        accumulator = DigestAccumulator()
        try:
            with atomic_writer(destination) as out:
                for chunk in iter_file(source):
                    accumulator.update(chunk)
                    out.write(chunk)
                if accumulator.result() != expected:
                    raise IntegrityError(
                        f"{source}: changed while being published; publish again once it is stable"
                    )
        except OSError as error:
            raise write_failure(error, destination, f"the blob of {source}", expected.size) from None
        crash_point("blob")
        return relative, True

    def _staged(self, suffix: str) -> Path:
        self.staging.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=self.staging, suffix=f".{suffix}")
        os.close(fd)
        return Path(temp_name)

    def _store_staged(self, temp: Path, extension: str) -> tuple[str, Digests]:
        """Move a finished file from ``.staging/`` to its content address."""
        digests = digest_file(temp)
        relative = blob_path(digests.sha256, extension)
        destination = self.blob_file(relative)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, destination)
        fsync_dir(destination.parent)
        return relative, digests

    def create_compressed(
        self, version: VersionEntry, progress: ByteProgress | None = None
    ) -> tuple[CompressedEntry | None, PatchStats]:
        """``version``'s model compressed on its own, stored when it is at most ``COMPRESSED_MAX_RATIO`` of the
        model (else None: devices take the raw blob)."""
        temp = self._staged(COMPRESSED_EXTENSION)
        try:
            stats = compress_model(
                self.blob_file(version.blob), temp, progress=progress, max_format=self.options.max_patch_format
            )
            if stats.patch_size > COMPRESSED_MAX_RATIO * version.size:
                return None, stats
            relative, digests = self._store_staged(temp, COMPRESSED_EXTENSION)
        finally:
            self.remove_staging()
        crash_point("compressed")
        entry = CompressedEntry(
            relative, digests.size, digests.sha256, digests.md5, stats.engine, stats.format_version
        )
        return entry, stats

    def create_patch(
        self,
        family: str,
        source: VersionEntry,
        target: VersionEntry,
        progress: ByteProgress | None = None,
        hints: Hints | None = None,
    ) -> tuple[PatchEntry, PatchStats]:
        temp = self._staged(PATCH_EXTENSION)
        try:
            stats = create_patch(
                self.blob_file(source.blob),
                self.blob_file(target.blob),
                temp,
                self.engine,
                progress=progress,
                hints=hints,
                max_format=self.options.max_patch_format,
            )
            relative, digests = self._store_staged(temp, PATCH_EXTENSION)
        finally:
            self.remove_staging()
        crash_point("patch")
        entry = PatchEntry(
            id=f"{family}_{source.version}_to_{target.version}",
            source=source.version,
            target=target.version,
            engine=stats.engine,
            size=digests.size,
            sha256=digests.sha256,
            md5=digests.md5,
            blob=relative,
            source_sha256=source.sha256,
            target_sha256=target.sha256,
            format_version=stats.format_version,
        )
        return entry, stats

    def reusable(self, entry: Reused) -> Reused | None:
        """A patch or compressed model of an earlier publish as it goes on: with its container version filled
        in (read from the blob's header when the manifest predates the field), or None — made again — when its
        blob is gone or unreadable, or it needs a newer container version than ``--max-patch-format``."""
        path = self.blob_file(entry.blob)
        if not path.is_file():
            return None
        version = entry.format_version
        if version is None and entry.engine == DEFAULT_ENGINE:
            try:
                version = patch_info(path).format_version
            except LorienError:
                return None
            entry = replace(entry, format_version=version)
        cap = self.options.max_patch_format
        if cap is not None and version is not None and version > cap:
            return None
        return entry
