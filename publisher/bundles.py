"""Bundle versions on the publisher side: a version directory → file blobs, a zip package, per-file patches.

Data flow for one version directory ``MODELS/<family>/<version>/`` (called by :mod:`publisher.publish`):

    directory → :func:`repo.bundle.describe_directory` (paths checked, every file hashed)
      → already published with the same bundle digest? reuse that manifest entry as is;
        published with another digest? a problem (devices may hold the old content)
      → each file into its content-addressed blob (``writer.store_model``; unchanged files share one blob)
      → a deterministic zip package of the files (sorted, fixed timestamps, stored) into a ``.zip`` blob: the
        version's Mallorn-compatible ``filename``/``size``/``sha256``/``md5``/``fingerprint``/``blob`` describe
        it, so a Mallorn or TOPE client downloads one complete package
      → ``VersionEntry`` with ``bundle`` = digest + files (model files carry their Mallorn fingerprint)

Per-file patches (:func:`make_file_patches`): from each of the previous ``keep`` bundle versions to the latest,
one patch per path present in both with different content (unchanged files cost nothing; new files are
downloaded whole). The engine is the publisher's (``lorien`` by default: model-aware where its tensor finders —
or a companion file, :mod:`repo.engine.companions` — know the format, generic zstd-with-reference otherwise).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path, PurePosixPath

from lorien.publisher.options import PublishOptions
from lorien.publisher.scan import ModelFile
from lorien.publisher.writer import RepositoryWriter
from lorien.repo.bundle import BundleFile, bundle_digest, describe_directory
from lorien.repo.engine.companions import companion_regions
from lorien.repo.errors import BadInputError
from lorien.repo.fingerprint import MIN_FILE_SIZE, Fingerprint, fingerprint, sampled_hash
from lorien.repo.hashing import digest_file
from lorien.repo.layout import blob_path
from lorien.repo.manifest import Bundle, BundleFileEntry, FilePatchEntry, Manifest, VersionEntry

PACKAGE_EXTENSION = "zip"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# files whose bytes are model weights even when their first bytes say nothing (external data, IR weights, …)
WEIGHT_SUFFIXES = frozenset({".bin", ".data", ".weights", ".pt", ".pth", ".npz", ".keras", ".h5", ".mlmodel"})


def _file_extension(path: str) -> str:
    suffix = PurePosixPath(path).suffix.lstrip(".")
    return suffix if suffix and any(ch.isalpha() for ch in suffix) else ""


def _model_fingerprint(path: Path, relative: str, size: int) -> Fingerprint | None:
    """The Mallorn fingerprint of a model file (a recognised format or a weights suffix); None for the rest."""
    if size < MIN_FILE_SIZE:
        return None
    found = fingerprint(path)
    if found.format != "unknown" or PurePosixPath(relative).suffix.lower() in WEIGHT_SUFFIXES:
        return found
    return None


def write_package(root: Path, files: list[BundleFile], output: Path) -> None:
    """A reproducible zip of ``files`` under ``root``: sorted names, fixed times and modes, stored (no deflate:
    model weights barely compress, and a device or client then reads each file at its offset)."""
    with zipfile.ZipFile(output, "w", zipfile.ZIP_STORED) as archive:
        for entry in sorted(files, key=lambda f: f.path):
            info = zipfile.ZipInfo(entry.path, ZIP_TIME)
            info.external_attr = 0o100644 << 16
            info.create_system = 3
            with (
                open(root / entry.path, "rb") as source,
                archive.open(info, "w", force_zip64=entry.size >= 1 << 31) as out,
            ):
                while chunk := source.read(1 << 20):
                    out.write(chunk)


def bundle_version(
    writer: RepositoryWriter, model: ModelFile, previous: VersionEntry | None
) -> tuple[VersionEntry, int]:
    """The manifest entry of a version directory and how many new blobs it stored.

    Raises:
        BadInputError: the directory is not a valid bundle, or the version was published with other content.
    """
    files = describe_directory(model.path)
    digest = bundle_digest(files)
    if previous is not None:
        if previous.bundle is not None and previous.bundle.digest == digest:
            return previous, 0
        was = previous.bundle.digest if previous.bundle is not None else previous.sha256
        raise BadInputError(
            f"{model.path}: version {model.version} was already published with other content ({was[:16]}…, "
            f"now bundle {digest[:16]}…); devices may hold the old content, so publish it under a new version name"
        )
    created = 0
    entries = []
    for described in files:
        source = model.path / described.path
        digests = digest_file(source)
        if (digests.size, digests.sha256) != (described.size, described.sha256):
            raise BadInputError(f"{source}: changed while being published; publish again once it is stable")
        blob, new = writer.store_model(source, digests, _file_extension(described.path))
        created += new
        entries.append(
            BundleFileEntry(
                described.path,
                described.size,
                described.sha256,
                described.md5,
                blob,
                _model_fingerprint(source, described.path, described.size),
            )
        )
    writer.staging.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=writer.staging, suffix=f".{PACKAGE_EXTENSION}")
    os.close(descriptor)
    package = Path(temp_name)
    try:
        write_package(model.path, files, package)
        digests = digest_file(package)
        blob, new = writer.store_model(package, digests, PACKAGE_EXTENSION)
        created += new
        entry = VersionEntry(
            version=model.version,
            filename=f"{model.version}.{PACKAGE_EXTENSION}",
            size=digests.size,
            sha256=digests.sha256,
            md5=digests.md5,
            fingerprint=fingerprint(package),
            blob=blob_path(digests.sha256, PACKAGE_EXTENSION),
            sampled_sha256=sampled_hash(package),
            bundle=Bundle(digest, tuple(entries)),
        )
    finally:
        writer.remove_staging()
    if entry.blob != blob:
        raise AssertionError("package blob path disagrees with its digest")
    return entry, created


def make_file_patches(
    writer: RepositoryWriter,
    family: str,
    sources: list[VersionEntry],
    latest: VersionEntry,
    still_valid: dict[tuple[str, str, str], FilePatchEntry],
    options: PublishOptions,
) -> tuple[dict[tuple[str, str, str], FilePatchEntry], list[tuple[str, str, int, int]]]:
    """Per-file patches from each bundle in ``sources`` to the bundle ``latest``, by (from, to, path): those of
    ``still_valid`` kept, the missing ones created; also (from, to, patch bytes, full bytes) per version pair."""
    assert latest.bundle is not None
    made = dict(still_valid)
    summary = []
    target_files = {entry.path: writer.blob_file(entry.blob) for entry in latest.bundle.files}
    for source in sources:
        if source.bundle is None:
            continue  # a single-file version before a bundle: devices take the bundle's files whole
        source_files = {entry.path: writer.blob_file(entry.blob) for entry in source.bundle.files}
        pair_bytes = 0
        for target in latest.bundle.files:
            old = source.bundle.file(target.path)
            if old is None or old.sha256 == target.sha256:
                pair_bytes += 0 if old is not None else target.size
                continue
            key = (source.version, latest.version, target.path)
            if key not in made and (old.sha256, target.sha256) not in options.rejected:
                hints = (
                    companion_regions(source_files, target.path),
                    companion_regions(target_files, target.path),
                )
                patch, _ = writer.create_patch(
                    family, _as_version(source, old), _as_version(latest, target), None, hints=hints
                )
                if options.max_patch_ratio is not None and patch.size > options.max_patch_ratio * target.size:
                    writer.blob_file(patch.blob).unlink(missing_ok=True)
                    options.rejected.add((old.sha256, target.sha256))
                else:
                    made[key] = FilePatchEntry(
                        **{**asdict(patch), "id": f"{family}_{source.version}_to_{latest.version}/{target.path}"},
                        path=target.path,
                    )
            pair_bytes += min(made[key].size, target.size) if key in made else target.size  # as devices do
        summary.append((source.version, latest.version, pair_bytes, latest.bundle.total_size))
    return made, summary


def _as_version(version: VersionEntry, file: BundleFileEntry) -> VersionEntry:
    """A file of a bundle dressed as a version, for the writer's patch maker (which reads ``blob``/``sha256``)."""
    return VersionEntry(
        version=version.version,
        filename=PurePosixPath(file.path).name,
        size=file.size,
        sha256=file.sha256,
        md5=file.md5,
        fingerprint=file.fingerprint or version.fingerprint,
        blob=file.blob,
    )


def still_valid_file_patches(
    writer: RepositoryWriter, previous: Manifest | None, by_name: dict[str, VersionEntry]
) -> dict[tuple[str, str, str], FilePatchEntry]:
    """The previous manifest's file patches whose two versions still hold those files and whose blob exists,
    within ``--max-patch-format`` (``RepositoryWriter.reusable``)."""
    kept: dict[tuple[str, str, str], FilePatchEntry] = {}
    for patch in previous.file_patches if previous is not None else ():
        source, target = by_name.get(patch.source), by_name.get(patch.target)
        if source is None or target is None or source.bundle is None or target.bundle is None:
            continue
        old, new = source.bundle.file(patch.path), target.bundle.file(patch.path)
        if old is None or new is None or (old.sha256, new.sha256) != (patch.source_sha256, patch.target_sha256):
            continue
        reusable = writer.reusable(patch)
        if reusable is not None:
            kept[(patch.source, patch.target, patch.path)] = reusable
    return kept
