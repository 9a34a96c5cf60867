"""``lorien publish``: models directory → static repository, in an order that survives a crash at any instant.

Flow, under the repository's writer lock:

1. remove leftovers of a killed writer (hidden temp files, ``.staging/``);
2. scan the models directory (``publisher.scan``); families with problems are skipped whole;
3. per family: hash every version, copy new ones into content-addressed blobs (hash re-checked while copying;
   a version directory becomes one blob per file plus a zip package: ``publisher.bundles``), compress the
   newest and every channel's target on its own when that saves enough and it has no compressed blob yet
   (other versions keep the one they have; never a bundle), create missing patches from each of the previous
   ``keep`` versions to the newest and to every channel's target (``channels.toml``, :mod:`publisher.channels`;
   sources are read from the repository's own verified blobs; for a bundle, per-file patches of the files that
   changed), then write ``<family>/manifest.json`` only if its content changed,
   then the family's ``index.html``;
4. last: the root ``index.html`` and, very last, ``index.json``.

Blobs are immutable and appear before anything refers to them; a manifest is replaced in one rename; so a
reader always sees a consistent repository. Re-running with no change rewrites nothing. A full disk (or any
other refusal of the file system) ends the publish with one ``LocalIOError`` naming the path — and, for a
blob, the space it needs, checked before copying — and leaves no temporary or staging file behind.

This module is the orchestration (:func:`publish`, :func:`publish_family`); the writes themselves are
:class:`~publisher.writer.RepositoryWriter`'s (blobs, patches, leftovers) and, through it,
:class:`~publisher.signed.SignedMetadataWriter`'s (manifests, signatures, expiry renewal, pages, index.json);
:class:`~publisher.options.PublishOptions` says what was asked. ``RepositoryWriter`` and ``PublishOptions`` are
importable from here too.

``LORIEN_TEST_CRASH_AT=<point>`` makes the process SIGKILL itself at a named point (``blob``, ``patch``,
``manifest``, ``signature``, ``html``, ``index``). It exists for the crash-safety tests and does nothing when
unset.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lorien.publisher.bundles import bundle_version, make_file_patches, still_valid_file_patches
from lorien.publisher.channels import CHANNELS_FILE, merge_channels, read_channels_file
from lorien.publisher.options import DEFAULT_KEEP, PublishOptions
from lorien.publisher.scan import ModelFile, ScanResult, scan_models
from lorien.publisher.writer import RepositoryWriter
from lorien.repo.channels import DEFAULT_CHANNEL
from lorien.repo.engine import DEFAULT_ENGINE, ByteProgress, PatchStats
from lorien.repo.engine.completeness import incomplete_reason
from lorien.repo.errors import BadInputError, LocalIOError, LorienError
from lorien.repo.fingerprint import fingerprint, sampled_hash
from lorien.repo.hashing import Digests, digest_file
from lorien.repo.layout import blob_path
from lorien.repo.lock import repository_lock
from lorien.repo.manifest import Manifest, PatchEntry, VersionEntry
from lorien.repo.versions import sort_versions

__all__ = [
    "FamilyResult",
    "PublishOptions",
    "PublishReport",
    "RepositoryWriter",
    "ordered_patches",
    "publish",
    "publish_family",
]

log = logging.getLogger("lorien.publish")


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
    withdrawn: list[str] = field(default_factory=list)  # versions the previous manifest had and this one has not
    # bundle families: (from, to, bytes a device downloads, full bytes of the target bundle) per patched pair
    bundle_pairs: list[tuple[str, str, int, int]] = field(default_factory=list)
    compressed: list[tuple[str, PatchStats, bool]] = field(default_factory=list)  # (version, stats, kept) made

    def events(self) -> list[dict[str, Any]]:
        """What publishing this family did (see :meth:`PublishReport.events`)."""
        if self.problems:
            return [{"event": "problem", "family": self.family, "message": problem} for problem in self.problems]
        published = {
            "event": "published" if self.manifest_written else "unchanged",
            "family": self.family,
            "latest": self.latest,
            "versions": self.versions,
            "new_versions": self.new_versions,
            "patches": [_patch_event(*created) for created in self.patches_created],
            "rejected_patches": [_patch_event(*rejected) for rejected in self.patches_rejected],
        }
        if self.bundle_pairs:
            published["bundle_updates"] = [
                {"source": source, "target": target, "download_bytes": download, "full_bytes": full}
                for source, target, download, full in self.bundle_pairs
            ]
        if self.compressed:
            published["compressed"] = [_compressed_event(*made) for made in self.compressed]
        return [published] + [{"event": "withdrawn", "family": self.family, "version": v} for v in self.withdrawn]


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

    def events(self) -> list[dict[str, Any]]:
        """What this publish did, one JSON-ready object per event (``publish --json``, ``watch --json``):
        ``published`` or ``unchanged`` per family (versions, patches with sizes, rejected patches),
        ``withdrawn`` per version removed, ``renewed`` per manifest re-signed only for its expiry, ``problem``
        and ``skipped`` per message, and last ``index``."""
        events = [event for family in self.families for event in family.events()]
        events += [{"event": "renewed", "family": family} for family in self.refreshed]
        events += [{"event": "problem", "family": None, "message": problem} for problem in self.problems]
        events += [{"event": "skipped", "message": message} for message in self.skipped]
        return [*events, {"event": "index", "written": self.index_written}]


def _compressed_event(version: str, stats: PatchStats, kept: bool) -> dict[str, Any]:
    event = {**_patch_event("", version, stats), "kept": kept}
    del event["source"]
    return event


def _patch_event(source: str, target: str, stats: PatchStats) -> dict[str, Any]:
    return {
        "source": source,
        "target": target,
        "engine": stats.engine,
        "size": stats.patch_size,
        "target_size": stats.target_size,
        "percent_of_full": round(100 * stats.ratio, 2),
        "seconds": round(stats.seconds, 3),
    }


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


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # vanished since the scan: _version_entries says so
        return 0


def _version_entries(
    files: list[ModelFile], previous: Manifest | None, result: FamilyResult, progress: ByteProgress | None
) -> list[tuple[ModelFile, VersionEntry, Digests]]:
    entries = []
    done, total = 0, sum(_file_size(model.path) for model in files)
    for model in files:
        if progress is not None:
            progress(done, total)
        done += _file_size(model.path)
        if model.bundle:
            continue  # publish_family: bundle_version()
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
    if progress is not None:
        progress(total, total)
    return entries


def publish_family(
    writer: RepositoryWriter, family: str, files: list[ModelFile], keep: int, options: PublishOptions | None = None
) -> FamilyResult:
    options = options or PublishOptions(keep=keep)
    result = FamilyResult(family)
    previous = writer.read_manifest(family)
    entries = _version_entries(files, previous, result, _progress(options, f"{family} versions (hashing)"))
    bundles = _bundle_entries(writer, [model for model in files if model.bundle], previous, result)
    if result.problems and options.lenient:
        result.skipped, result.problems = result.problems, []
    if result.problems or not (entries or bundles):
        return result  # (lenient: every file of the family is still incomplete or bad)
    channels_file = files[0].path.parent / CHANNELS_FILE
    names = {entry.version for _, entry, _ in entries} | {entry.version for entry in bundles}
    channels, notes = merge_channels(read_channels_file(channels_file), previous, names, str(channels_file))
    for note in notes:
        log.warning("%s", note)
    versions = list(bundles)
    for model, entry, digests in entries:
        _, created = writer.store_model(model.path, digests, model.extension)
        result.new_blobs += created
        versions.append(entry)
    by_name = {entry.version: _with_compressed(writer, previous, entry) for entry in versions}
    order = sort_versions(by_name)
    allow_downgrade = options.allow_downgrade
    if allow_downgrade is None:
        allow_downgrade = previous.allow_downgrade if previous is not None else False
    manifest = Manifest(
        family=family,
        sequence=0,
        generated_at="",
        latest=order[-1],
        versions=tuple(by_name[name] for name in order),
        patches=tuple(_still_valid_patches(writer, previous, by_name).values()),
        allow_downgrade=allow_downgrade,
        channels=channels,
    )
    manifest = with_channel_patches(writer, manifest, keep, options, result)
    manifest = _with_file_patches(writer, manifest, previous, keep, options, result)
    final, result.manifest_written = writer.write_manifest(manifest, previous)
    writer.write_family_page(final)
    result.latest, result.versions = final.latest, len(final.versions)
    known = {entry.version for entry in previous.versions} if previous is not None else set()
    result.new_versions = [name for name in order if name not in known]
    result.withdrawn = [name for name in sort_versions(known) if name not in by_name]
    return result


def _bundle_entries(
    writer: RepositoryWriter, models: list[ModelFile], previous: Manifest | None, result: FamilyResult
) -> list[VersionEntry]:
    """Manifest entries of the family's version directories (file blobs and zip package stored); a bad or
    changed bundle is one problem naming it."""
    entries = []
    for model in models:
        try:
            entry, created = bundle_version(writer, model, _published(previous, model.version))
        except BadInputError as error:
            result.problems.append(str(error))
            continue
        result.new_blobs += created
        entries.append(entry)
    return entries


def _with_compressed(writer: RepositoryWriter, previous: Manifest | None, entry: VersionEntry) -> VersionEntry:
    """``entry`` with the compressed blob the previous manifest listed for it, if that blob is still there."""
    old = _published(previous, entry.version)
    kept = old.compressed if old is not None and old.sha256 == entry.sha256 else None
    kept = writer.reusable(kept) if kept is not None else None
    return entry if kept is None else replace(entry, compressed=kept)


def _compressed_target(
    writer: RepositoryWriter, target: VersionEntry, options: PublishOptions, result: FamilyResult
) -> VersionEntry:
    """A version devices are sent to, with a compressed blob, made now if it has none and compressing saves
    enough (a model that does not is remembered for this process, so a watcher does not try it again). Never a
    bundle: its files are downloaded one by one."""
    if target.bundle is not None:
        return target
    if target.compressed is not None or not options.compress or target.sha256 in options.incompressible:
        return target
    label = f"{result.family} {target.version} compressed"
    compressed, stats = writer.create_compressed(target, _progress(options, label))
    result.compressed.append((target.version, stats, compressed is not None))
    if compressed is None:
        options.incompressible.add(target.sha256)
        return target
    return replace(target, compressed=compressed)


def with_channel_patches(
    writer: RepositoryWriter, manifest: Manifest, keep: int, options: PublishOptions, result: FamilyResult
) -> Manifest:
    """``manifest`` (versions oldest first) with ``latest`` set — the ``stable`` channel's target when there is
    one (clients without channels follow it), else the newest version — and the missing patches made towards
    latest and every channel's target: from the ``keep`` versions before each target and from the versions a
    channel rolled back to it; each of those targets also compressed on its own (``_compressed_target``). Used by publish and by ``lorien rollout`` (``publisher.rollout``)."""
    order = [entry.version for entry in manifest.versions]
    by_name = {entry.version: entry for entry in manifest.versions}
    channels = manifest.channels or {}
    latest = channels[DEFAULT_CHANNEL].target if DEFAULT_CHANNEL in channels else order[-1]
    patches = {(patch.source, patch.target): patch for patch in manifest.patches}
    targets = list(dict.fromkeys([latest, *(channel.target for channel in channels.values())]))
    for target in targets:  # a device with no usable version downloads these whole: compressed when it pays
        by_name[target] = _compressed_target(writer, by_name[target], options, result)
    for target in targets:
        before = order[: order.index(target)]
        named = [name for channel in channels.values() if channel.target == target for name in channel.rolled_back]
        sources = [by_name[name] for name in dict.fromkeys([*(before[-keep:] if keep > 0 else []), *named])]
        if by_name[target].bundle is None:  # bundles are patched file by file (_with_file_patches)
            sources = [source for source in sources if source.bundle is None]
            _make_patches(writer, sources, by_name[target], patches, options, result)
    versions = tuple(by_name[name] for name in order)
    return replace(
        manifest, latest=latest, versions=versions, patches=ordered_patches(order, list(patches.values()))
    )


def _with_file_patches(
    writer: RepositoryWriter,
    manifest: Manifest,
    previous: Manifest | None,
    keep: int,
    options: PublishOptions,
    result: FamilyResult,
) -> Manifest:
    """``manifest`` with the per-file patches towards every bundle among latest and the channels' targets, from
    the ``keep`` versions before each (those of ``previous`` still valid are kept)."""
    order = [entry.version for entry in manifest.versions]
    by_name = {entry.version: entry for entry in manifest.versions}
    file_patches = still_valid_file_patches(writer, previous, by_name)
    targets = [manifest.latest, *(channel.target for channel in (manifest.channels or {}).values())]
    for target in dict.fromkeys(targets):
        if by_name[target].bundle is None:
            continue
        before = order[: order.index(target)]
        sources = [by_name[name] for name in (before[-keep:] if keep > 0 else [])]
        file_patches, pairs = make_file_patches(
            writer, manifest.family, sources, by_name[target], file_patches, options
        )
        result.bundle_pairs += pairs
    rank = {name: index for index, name in enumerate(order)}
    ordered = sorted(file_patches.values(), key=lambda p: (rank[p.target], rank[p.source], p.path))
    return replace(manifest, file_patches=tuple(ordered))


def _progress(options: PublishOptions, label: str) -> ByteProgress | None:
    """``options.progress`` for the work called ``label``, as the engine's ``(done, total)`` callback."""
    hook = options.progress
    return None if hook is None else lambda done, total: hook(label, done, total)


def _make_patches(
    writer: RepositoryWriter,
    sources: list[VersionEntry],
    latest: VersionEntry,
    patches: dict[tuple[str, str], PatchEntry],
    options: PublishOptions,
    result: FamilyResult,
) -> None:
    """The missing patches from ``sources`` to ``latest`` into ``patches``; too large ones are not kept."""
    for source in sources:
        if (source.version, latest.version) in patches or (source.sha256, latest.sha256) in options.rejected:
            continue
        label = f"{result.family} {source.version}→{latest.version} patch"
        entry, stats = writer.create_patch(result.family, source, latest, _progress(options, label))
        if options.max_patch_ratio is not None and stats.patch_size > options.max_patch_ratio * latest.size:
            writer.blob_file(entry.blob).unlink(missing_ok=True)  # devices take the full model instead
            options.rejected.add((source.sha256, latest.sha256))
            result.patches_rejected.append((source.version, latest.version, stats))
            continue
        patches[(source.version, latest.version)] = entry
        result.patches_created.append((source.version, latest.version, stats))


def _still_valid_patches(
    writer: RepositoryWriter, previous: Manifest | None, by_name: dict[str, VersionEntry]
) -> dict[tuple[str, str], PatchEntry]:
    """The previous manifest's patches whose versions are still published with the same content and whose blob
    is still there, within ``--max-patch-format`` (``RepositoryWriter.reusable``), by (source, target) version."""
    patches: dict[tuple[str, str], PatchEntry] = {}
    for patch in previous.patches if previous is not None else ():
        source, target = by_name.get(patch.source), by_name.get(patch.target)
        still_valid = source is not None and target is not None and source.sha256 == patch.source_sha256
        kept = writer.reusable(patch) if still_valid else None
        if kept is not None:
            patches[(patch.source, patch.target)] = kept
    return patches


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
                "published %s %s (%d versions, %d new patches%s)",
                family,
                result.latest,
                result.versions,
                len(result.patches_created),
                f", withdrew {', '.join(result.withdrawn)}" if result.withdrawn else "",
            )
