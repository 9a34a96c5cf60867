"""``lorien publish``: models directory → static repository, in an order that survives a crash at any instant.

Flow, under the repository's writer lock:

1. remove leftovers of a killed writer (hidden temp files, ``.staging/``);
2. scan the models directory (``publisher.scan``); families with problems are skipped whole;
3. per family: hash every version, copy new ones into content-addressed blobs (hash re-checked while copying),
   create missing patches from each of the previous ``keep`` versions to the newest (sources are read from
   the repository's own verified blobs), then write ``<family>/manifest.json`` only if its content changed,
   then the family's ``index.html``;
4. last: the root ``index.html`` and, very last, ``index.json``.

Blobs are immutable and appear before anything refers to them; a manifest is replaced in one rename; so a
reader always sees a consistent repository. Re-running with no change rewrites nothing. A full disk (or any
other refusal of the file system) ends the publish with one ``LocalIOError`` naming the path — and, for a
blob, the space it needs, checked before copying — and leaves no temporary or staging file behind.

``LORIEN_TEST_CRASH_AT=<point>`` makes the process SIGKILL itself at a named point (``blob``, ``patch``,
``manifest``, ``html``, ``index``). It exists for the crash-safety tests and does nothing when unset.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lorien.publisher.html import render_family_page, render_root_page
from lorien.publisher.scan import ModelFile, ScanResult, scan_models
from lorien.repo.atomic import (
    atomic_write_bytes,
    atomic_writer,
    fsync_dir,
    is_temp_name,
    require_space,
    write_failure,
    write_if_changed,
)
from lorien.repo.engine import DEFAULT_ENGINE, PatchStats, create_patch, get_engine
from lorien.repo.engine.completeness import incomplete_reason
from lorien.repo.errors import (
    BadInputError,
    IntegrityError,
    LocalIOError,
    LorienError,
    ManifestError,
    SignatureError,
)
from lorien.repo.fingerprint import fingerprint, sampled_hash
from lorien.repo.hashing import DigestAccumulator, Digests, digest_file, iter_file
from lorien.repo.layout import (
    BLOB_DIR,
    HTML_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    PATCH_EXTENSION,
    blob_path,
    manifest_path,
)
from lorien.repo.lock import repository_lock
from lorien.repo.manifest import (
    MAX_SEQUENCE,
    Index,
    IndexEntry,
    Manifest,
    PatchEntry,
    VersionEntry,
    format_timestamp,
    parse_manifest,
)
from lorien.repo.signing import (
    SIGNATURE_SUFFIX,
    SigningKey,
    TrustedKey,
    sign_document,
    signature_path,
    verify_document,
)
from lorien.repo.testhooks import crash_point
from lorien.repo.versions import sort_versions

log = logging.getLogger("lorien.publish")

STAGING_DIR = ".staging"
DEFAULT_KEEP = 3
DEFAULT_EXPIRES_DAYS = 7.0


@dataclass
class FamilyResult:
    family: str
    latest: str = ""
    versions: int = 0
    manifest_written: bool = False
    new_blobs: int = 0
    patches_created: list[tuple[str, str, PatchStats]] = field(default_factory=list)
    patches_rejected: list[tuple[str, str, PatchStats]] = field(default_factory=list)  # over max_patch_ratio
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # watch mode: bad files left out, family still published
    new_versions: list[str] = field(default_factory=list)


@dataclass
class PublishReport:
    families: list[FamilyResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    index_written: bool = False
    refreshed: list[str] = field(default_factory=list)  # manifests re-written only to renew their expiry

    @property
    def ok(self) -> bool:
        return not self.problems and all(not f.problems for f in self.families)

    def all_problems(self) -> list[str]:
        return self.problems + [p for family in self.families for p in family.problems]


@dataclass
class PublishOptions:
    keep: int = DEFAULT_KEEP
    max_patch_ratio: float | None = None  # a patch larger than this share of the full model is not published
    lenient: bool = False  # watch mode: skip bad files instead of holding back their family
    rejected: set[tuple[str, str]] = field(default_factory=set)  # (source, target) sha256 pairs already too big
    sign_keys: tuple[SigningKey, ...] = ()  # every manifest and index.json gets a .sig with one entry per key
    expires_days: float = DEFAULT_EXPIRES_DAYS  # manifests expire this long after being written; 0 = never
    allow_downgrade: bool | None = None  # None: keep what each family's manifest says (default False)
    min_sequence: int = 0  # a rebuilt repository starts its sequences above what devices already accepted
    warned: set[Path] = field(default_factory=set)  # backup/editor files already warned about (once per file)

    @property
    def validity(self) -> timedelta | None:
        return timedelta(days=self.expires_days) if self.expires_days > 0 else None

    def check(self) -> None:
        if self.keep < 0:
            raise BadInputError(f"--keep must be 0 or more, got {self.keep}")
        if not 0 <= self.expires_days <= 3660:
            raise BadInputError(f"--expires-days must be from 0 (never) to 3660, got {self.expires_days}")
        if not 0 <= self.min_sequence <= MAX_SEQUENCE // 2:
            raise BadInputError(
                f"--min-sequence must be from 0 to {MAX_SEQUENCE // 2} (half the largest sequence, so renewals "
                f"keep working for ever), got {self.min_sequence}"
            )


class RepositoryWriter:
    """Writes blobs, patches, manifests and pages into one repository. Callers hold the writer lock."""

    def __init__(self, root: Path, engine: str = DEFAULT_ENGINE, options: PublishOptions | None = None) -> None:
        self.root = root
        self.engine = get_engine(engine).name
        self.staging = root / STAGING_DIR
        self.options = options or PublishOptions()
        self._own_keys = tuple(
            TrustedKey(key.private.public_key(), key.keyid, key.source) for key in self.options.sign_keys
        )
        self._was_signed: bool | None = None

    # -- signatures and expiry -----------------------------------------------------------------------------------
    def check_signing_mode(self) -> None:
        """Refuse to write unsigned metadata into a signed repository (devices would reject it)."""
        if self.options.sign_keys:
            return
        signed = next(self._signature_files(), None)
        if signed is not None:
            raise BadInputError(
                f"{self.root}: repository is signed ({signed.name} exists) but no --sign-key was given; pass "
                f"the publisher key, or delete the {SIGNATURE_SUFFIX} files to publish unsigned on purpose"
            )

    def write_signed(self, relative: str, data: bytes) -> bool:
        """Write a metadata document, then its signature (ed25519 is deterministic: unchanged bytes and keys give
        the same .sig, so nothing is rewritten; a missing or stale .sig, e.g. after a crash or a key change, is
        rewritten). While the two disagree on disk, a hidden ``.<name>.signing`` marker holds the SHA-256 of
        the bytes being signed, so the next run can tell its own interrupted write from someone else's edit."""
        if not self.options.sign_keys:
            return write_if_changed(self.root / relative, data)
        document, signature_file = self.root / relative, self.root / signature_path(relative)
        signature = sign_document(data, relative, self.options.sign_keys)
        document_current = _read_or_none(document) == data
        signature_current = _read_or_none(signature_file) == signature
        if document_current and signature_current:
            return False
        marker = self._signing_marker(relative)
        atomic_write_bytes(marker, hashlib.sha256(data).hexdigest().encode())
        if not document_current:
            atomic_write_bytes(document, data)
        crash_point("signature")
        if not signature_current:
            atomic_write_bytes(signature_file, signature)
        marker.unlink()
        fsync_dir(marker.parent)
        return True

    def _signing_marker(self, relative: str) -> Path:
        path = self.root / relative
        return path.with_name(f".{path.name}.signing")

    def check_untampered(self, relative: str, data: bytes) -> None:
        """With signing keys, existing metadata must carry a valid signature by one of them — or be exactly what
        an interrupted run of ours was signing. Anything else was changed by someone else, and re-signing it
        would bless their change (e.g. an extra patch entry or ``allow_downgrade`` added on a web server)."""
        if not self.options.sign_keys or not self._repository_was_signed():
            return
        try:
            verify_document(data, relative, (self.root / signature_path(relative)).read_bytes(), self._own_keys)
            return
        except FileNotFoundError:
            reason = "it has no signature"
        except SignatureError as error:
            reason = str(error)
        if _read_or_none(self._signing_marker(relative)) == hashlib.sha256(data).hexdigest().encode():
            return  # our own write, interrupted between the document and its signature
        raise SignatureError(
            f"{self.root / relative}: not signed by the given --sign-key ({reason}). Either it was changed after "
            "lorien signed it — restore it from a backup — or it was signed with another key: after a key "
            "rotation, publish once with both the old and the new --sign-key"
        )

    def _repository_was_signed(self) -> bool:
        """Whether the repository had signatures when this writer first looked (a first signed publish of an
        unsigned repository signs its existing manifests as they are)."""
        if self._was_signed is None:
            self._was_signed = next(self._signature_files(), None) is not None
        return self._was_signed

    def _signature_files(self) -> Iterator[Path]:
        """``index.json.sig`` and every ``<family>/manifest.json.sig`` there is."""
        yield from self.root.glob(f"*{SIGNATURE_SUFFIX}")
        yield from self.root.glob(f"*/*{SIGNATURE_SUFFIX}")

    def needs_refresh(self, manifest: Manifest, now: datetime) -> bool:
        """True when the manifest's expiry is not what the options want: within half the validity period of
        expiring (so a watcher re-signs long before devices refuse it), or set differently."""
        validity = self.options.validity
        expires = manifest.expires_at()
        if validity is None or expires is None:
            return (validity is None) != (expires is None)
        remaining = expires - now
        return remaining < validity / 2 or remaining > validity + timedelta(minutes=1)

    def refresh_expiring(self, manifests: list[Manifest]) -> tuple[list[Manifest], list[str]]:
        """Re-write (new expiry, next sequence, new signature) every manifest that needs it, and re-sign any whose
        signature is missing or stale; families whose model directory is gone are included. Returns the
        manifests as they now are, and the families whose metadata was rewritten."""
        current, refreshed = [], []
        now = datetime.now(UTC)
        for manifest in manifests:
            if self.needs_refresh(manifest, now) or manifest.sequence < self.options.min_sequence:
                manifest, _ = self.write_manifest(manifest, manifest, force=True)
                refreshed.append(manifest.family)
            elif self.write_signed(manifest_path(manifest.family), manifest.to_bytes()):
                refreshed.append(manifest.family)
            current.append(manifest)
        return current, refreshed

    def renew_and_index(self) -> tuple[list[str], bool, list[str]]:
        """The end of every publish (and watch's renewal timer): read every manifest once, renew what needs it,
        then write the root page and index.json. Returns (renewed families, index written, problems)."""
        manifests, problems = self.all_manifests()
        manifests, refreshed = self.refresh_expiring(manifests)
        index_written, _ = self.write_index((manifests, problems))
        return refreshed, index_written, problems

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

    def create_patch(
        self, family: str, source: VersionEntry, target: VersionEntry
    ) -> tuple[PatchEntry, PatchStats]:
        self.staging.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=self.staging, suffix=f".{PATCH_EXTENSION}")
        os.close(fd)
        temp = Path(temp_name)
        try:
            stats = create_patch(self.blob_file(source.blob), self.blob_file(target.blob), temp, self.engine)
            digests = digest_file(temp)
            relative = blob_path(digests.sha256, PATCH_EXTENSION)
            destination = self.blob_file(relative)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, destination)
            fsync_dir(destination.parent)
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
        )
        return entry, stats

    # -- documents ---------------------------------------------------------------------------------------------
    def read_manifest(self, family: str) -> Manifest | None:
        path = self.root / manifest_path(family)
        if not path.exists():
            return None
        data = path.read_bytes()
        self.check_untampered(manifest_path(family), data)
        try:
            return parse_manifest(data, str(path))
        except ManifestError as error:
            raise ManifestError(
                f"{error}; the existing manifest is damaged: restore it from a backup, or remove it and publish "
                "with --min-sequence above the highest sequence devices accepted (they refuse a restart at 1)"
            ) from None

    def write_manifest(
        self, manifest: Manifest, previous: Manifest | None, force: bool = False
    ) -> tuple[Manifest, bool]:
        """Write unless only bookkeeping would change and the expiry is still fine; bump the sequence when
        writing. The signature is (re)written either way, so a crash between the two writes heals here."""
        now = datetime.now(UTC)
        relative = manifest_path(manifest.family)
        if not force and manifest.same_content(previous):
            assert previous is not None
            if not self.needs_refresh(previous, now) and previous.sequence >= self.options.min_sequence:
                resigned = self.write_signed(relative, previous.to_bytes())  # the bytes that were checked
                return previous, resigned  # a repaired or rotated signature is a change mirrors must copy
        validity = self.options.validity
        sequence = max((previous.sequence + 1) if previous else 1, self.options.min_sequence)
        if sequence > MAX_SEQUENCE:
            raise ManifestError(f"{relative}: sequence would exceed {MAX_SEQUENCE}; start a new repository URL")
        final = replace(
            manifest,
            sequence=sequence,
            generated_at=format_timestamp(now),
            expires=format_timestamp(now + validity) if validity is not None else None,
        )
        crash_point("manifest")
        self.write_signed(relative, final.to_bytes())
        return final, True

    def write_family_page(self, manifest: Manifest) -> None:
        write_if_changed(self.root / manifest.family / HTML_FILE, render_family_page(manifest).encode())
        crash_point("html")

    def all_manifests(self) -> tuple[list[Manifest], list[str]]:
        manifests, problems = [], []
        for path in sorted(self.root.glob(f"*/{MANIFEST_FILE}")):
            if path.parent.name == BLOB_DIR or path.parent.name.startswith("."):
                continue
            try:
                data = path.read_bytes()
                self.check_untampered(f"{path.parent.name}/{MANIFEST_FILE}", data)
                manifests.append(parse_manifest(data, str(path)))
            except (ManifestError, SignatureError) as error:
                problems.append(f"{error}; left out of index.json")
        return manifests, problems

    def write_index(self, loaded: tuple[list[Manifest], list[str]] | None = None) -> tuple[bool, list[str]]:
        """Root page first, then index.json (the very last write of a publish), from ``loaded`` (manifests and
        their problems, as :meth:`all_manifests` returns them) or the manifests on disk."""
        manifests, problems = loaded or self.all_manifests()
        index = Index(families=tuple(IndexEntry(m.family, m.latest, manifest_path(m.family)) for m in manifests))
        write_if_changed(self.root / HTML_FILE, render_root_page(index, manifests).encode())
        crash_point("index")
        return self.write_signed(INDEX_FILE, index.to_bytes()), problems


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def ordered_patches(version_order: list[str], patches: list[PatchEntry]) -> tuple[PatchEntry, ...]:
    """Manifest order of patches: by target version, then by source version (both oldest first)."""
    rank = {name: i for i, name in enumerate(version_order)}
    return tuple(sorted(patches, key=lambda patch: (rank[patch.target], rank[patch.source])))


def _published(previous: Manifest | None, version: str) -> VersionEntry | None:
    if previous is None:
        return None
    try:
        return previous.version(version)
    except KeyError:
        return None


def _version_entries(
    files: list[ModelFile], previous: Manifest | None, result: FamilyResult
) -> list[tuple[ModelFile, VersionEntry, Digests]]:
    entries = []
    for model in files:
        old = _published(previous, model.version)
        if old is None and (why := incomplete_reason(model.path)):
            result.problems.append(
                f"{model.path}: {why}; not published — waiting for the rest (lorien watch retries when it changes; "
                "if it is damaged rather than still being copied, replace it)"
            )
            continue
        digests = digest_file(model.path)
        model_fingerprint = fingerprint(model.path)
        if old is not None and old.sha256 != digests.sha256:
            result.problems.append(
                f"{model.path}: version {model.version} was already published with sha256 {old.sha256[:16]}… "
                f"and now has {digests.sha256[:16]}…; devices may hold the old content, so publish the new "
                "content under a new version name"
            )
            continue
        entry = VersionEntry(
            version=model.version,
            filename=model.path.name,
            size=digests.size,
            sha256=digests.sha256,
            md5=digests.md5,
            fingerprint=model_fingerprint,
            blob=blob_path(digests.sha256, model.extension),
            sampled_sha256=sampled_hash(model.path),
        )
        entries.append((model, entry, digests))
    return entries


def publish_family(
    writer: RepositoryWriter, family: str, files: list[ModelFile], keep: int, options: PublishOptions | None = None
) -> FamilyResult:
    options = options or PublishOptions(keep=keep)
    result = FamilyResult(family)
    previous = writer.read_manifest(family)
    entries = _version_entries(files, previous, result)
    if result.problems and options.lenient:
        result.skipped, result.problems = result.problems, []
    if result.problems or not entries:
        return result  # (lenient: every file of the family is still incomplete or bad)
    versions = []
    for model, entry, digests in entries:
        _, created = writer.store_model(model.path, digests, model.extension)
        result.new_blobs += created
        versions.append(entry)
    by_name = {entry.version: entry for entry in versions}
    order = sort_versions(by_name)
    latest = by_name[order[-1]]
    patches: dict[tuple[str, str], PatchEntry] = {}
    if previous is not None:
        for patch in previous.patches:
            source, target = by_name.get(patch.source), by_name.get(patch.target)
            still_valid = source is not None and target is not None and source.sha256 == patch.source_sha256
            if still_valid and writer.blob_file(patch.blob).exists():
                patches[(patch.source, patch.target)] = patch
    for source_name in order[:-1][-keep:] if keep > 0 else []:
        source = by_name[source_name]
        if (source_name, latest.version) in patches or (source.sha256, latest.sha256) in options.rejected:
            continue
        entry, stats = writer.create_patch(family, source, latest)
        if options.max_patch_ratio is not None and stats.patch_size > options.max_patch_ratio * latest.size:
            writer.blob_file(entry.blob).unlink(missing_ok=True)  # devices take the full model instead
            options.rejected.add((source.sha256, latest.sha256))
            result.patches_rejected.append((source_name, latest.version, stats))
            continue
        patches[(source_name, latest.version)] = entry
        result.patches_created.append((source_name, latest.version, stats))
    allow_downgrade = options.allow_downgrade
    if allow_downgrade is None:
        allow_downgrade = previous.allow_downgrade if previous is not None else False
    manifest = Manifest(
        family=family,
        sequence=0,
        generated_at="",
        latest=latest.version,
        versions=tuple(by_name[name] for name in order),
        patches=ordered_patches(order, list(patches.values())),
        allow_downgrade=allow_downgrade,
    )
    final, result.manifest_written = writer.write_manifest(manifest, previous)
    writer.write_family_page(final)
    result.latest, result.versions = final.latest, len(final.versions)
    known = {entry.version for entry in previous.versions} if previous is not None else set()
    result.new_versions = [name for name in order if name not in known]
    return result


def publish(
    models_dir: Path,
    repo_dir: Path,
    keep: int = DEFAULT_KEEP,
    engine: str = DEFAULT_ENGINE,
    options: PublishOptions | None = None,
    exclude: frozenset[Path] = frozenset(),
    locked: bool = False,
) -> PublishReport:
    """Publish every family; ``locked`` means the caller already holds the repository lock (watch mode)."""
    options = options or PublishOptions(keep=keep)
    options.check()
    report = PublishReport()
    scan = scan_models(models_dir, exclude=exclude, lenient=options.lenient)
    report.problems.extend(scan.problems.get(None, []))
    report.skipped.extend(scan.skipped)
    for path in scan.ignored:
        if path not in options.warned:
            options.warned.add(path)
            log.warning("ignoring %s: a backup or editor file, not a version (rename it to publish it)", path)
    try:
        repo_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.nullcontext() if locked else repository_lock(repo_dir):
            writer = RepositoryWriter(repo_dir, engine, options)
            writer.check_signing_mode()
            writer.remove_leftovers()
            _publish_families(writer, scan, options, report)
            # also families no longer in the models directory
            report.refreshed, report.index_written, index_problems = writer.renew_and_index()
            report.problems.extend(index_problems)
    except OSError as error:  # e.g. the disk filled while writing a manifest or a page
        raise LocalIOError.wrap(error, f"publishing into {repo_dir}") from None
    return report


def _publish_families(
    writer: RepositoryWriter, scan: ScanResult, options: PublishOptions, report: PublishReport
) -> None:
    for family, messages in scan.problems.items():
        if family is not None:
            report.families.append(FamilyResult(family, problems=list(messages)))
    for family, files in scan.families.items():
        try:
            result = publish_family(writer, family, files, options.keep, options)
        except LocalIOError:
            raise  # a full or read-only disk ends the publish: the other families would fail the same way
        except LorienError as error:
            result = FamilyResult(family, problems=[str(error)])
        report.families.append(result)
        report.skipped.extend(result.skipped)
        if result.manifest_written:
            log.info(
                "published %s %s (%d versions, %d new patches)",
                family,
                result.latest,
                result.versions,
                len(result.patches_created),
            )
