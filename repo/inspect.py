"""Read a whole repository (directory or URL) for a person, and optionally re-verify every blob.

Flow: TUF metadata (when the repository has it: python-tuf's client workflow from the given trusted root, else
from the repository's own ``metadata/1.root.json``) → ``index.json`` → each family's manifest, each read as a
signed target → (with verify) stream every referenced blob once, comparing size, SHA-256 and MD5 with the
manifest and with its signed target entry. Problems are collected, never raised one at a time, so a report names
every missing or mismatching file in one go — except when ``index.json`` itself cannot be fetched (the server
is unreachable after the transport's retries, or answers an HTTP error; a directory has no readable index):
there is no repository to report on, so that :class:`~repo.errors.NetworkError` is raised, once. An index that
arrives but does not parse, or (with keys) is not validly signed, is a problem in the report like any other.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lorien.repo.channels import Channel
from lorien.repo.errors import LorienError, NetworkError, NotFoundError
from lorien.repo.fetch import Fetcher
from lorien.repo.hashing import digest_chunks
from lorien.repo.layout import INDEX_FILE
from lorien.repo.limits import DEFAULT_LIMITS
from lorien.repo.manifest import Index, Manifest, VersionEntry, parse_index, parse_manifest
from lorien.repo.tufclient import TufClient
from lorien.repo.tufmeta import HASH, ROOT, metadata_path


@dataclass
class Report:
    location: str
    index: Index | None = None
    manifests: dict[str, Manifest] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how it was read (unsigned, which root was trusted)
    blobs_checked: int = 0
    bytes_checked: int = 0
    signed_by: dict[str, str] = field(default_factory=dict)  # document path → what vouched for it (TUF)
    tuf: dict[str, Any] | None = None  # roles, keys, thresholds, versions, expiries; None: no TUF metadata
    client: TufClient | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        families = []
        for name, manifest in self.manifests.items():
            full = {entry.version: entry.size for entry in manifest.versions}
            document = manifest.to_dict()
            for patch in document["patches"]:
                patch["percent_of_full"] = round(100 * patch["size"] / full[patch["to"]], 2)
            if manifest.file_patches:
                document["bundle_updates"] = bundle_costs(manifest)
            for version in document["versions"]:
                if "compressed" in version:
                    version["compressed"]["percent_of_full"] = round(
                        100 * version["compressed"]["size"] / version["size"], 2
                    )
            families.append({"name": name, **document})
        return {
            "location": self.location,
            "families": families,
            "problems": self.problems,
            "warnings": self.warnings,
            "notes": self.notes,
            "blobs_checked": self.blobs_checked,
            "bytes_checked": self.bytes_checked,
            "signed_by": self.signed_by,
            "tuf": self.tuf,
            "ok": self.ok,
        }


def _tuf_client(fetcher: Fetcher, report: Report, trusted_root: bytes | None, metadata_dir: Path) -> None:
    """Refresh the repository's TUF metadata into ``report`` (its roles, and the client that reads targets); a
    repository without TUF metadata is reported unsigned, a failing refresh as a problem."""
    if trusted_root is None:
        try:
            trusted_root = fetcher.read_document(metadata_path(ROOT, 1), DEFAULT_LIMITS.max_root_bytes)
        except NotFoundError:
            report.notes.append("no TUF metadata (metadata/1.root.json): the repository is unsigned")
            return
        report.notes.append(
            "trusting the repository's own metadata/1.root.json; pass --root with the root.json your devices "
            "have to check against it"
        )
    try:
        client = TufClient(fetcher, trusted_root, metadata_dir, DEFAULT_LIMITS)
        report.tuf = client.refresh().to_dict()
    except NetworkError:
        raise
    except LorienError as error:
        report.problems.append(str(error))
        return
    report.client = client


def load(fetcher: Fetcher, trusted_root: bytes | None = None, metadata_dir: Path | None = None) -> Report:
    """Read index.json and every manifest; when the repository has TUF metadata (or ``trusted_root`` is given)
    each must be a signed target under it. ``metadata_dir``: where python-tuf may keep what it verified
    (default: a temporary directory).

    Raises:
        NetworkError: index.json or the TUF metadata could not be fetched at all.
    """
    report = Report(fetcher.location)
    if metadata_dir is None:
        with tempfile.TemporaryDirectory(prefix="lorien-inspect-") as temporary:
            return load(fetcher, trusted_root, Path(temporary))
    _tuf_client(fetcher, report, trusted_root, metadata_dir)
    client = report.client

    def read(path: str) -> bytes:
        if client is None:
            return fetcher.read_document(path)
        data = client.read_target(path)
        report.signed_by[path] = f"tuf targets v{report.tuf['targets_version']}" if report.tuf else "tuf"
        return data

    try:
        report.index = parse_index(read(INDEX_FILE), INDEX_FILE)
    except NetworkError:
        raise  # nothing to inspect: the command ends as a network failure, not with findings
    except LorienError as error:
        report.problems.append(str(error))
        return report
    now = datetime.now(UTC)
    for entry in report.index.families:
        try:
            manifest = parse_manifest(read(entry.manifest), entry.manifest)
        except LorienError as error:
            report.problems.append(str(error))
            continue
        expires = manifest.expires_at()
        if expires is not None and expires <= now:
            message = (
                f"{entry.manifest}: expired at {manifest.expires}; devices refuse it until it is re-published"
            )
            (report.problems if client is not None else report.warnings).append(message)
        if manifest.family != entry.name:
            report.problems.append(f"{entry.manifest}: says family {manifest.family!r}, index says {entry.name!r}")
        if manifest.latest != entry.latest:
            report.warnings.append(
                f"{INDEX_FILE}: family {entry.name!r} latest is {entry.latest!r} but its manifest says "
                f"{manifest.latest!r} (a publish was interrupted before index.json; re-run publish)"
            )
        report.manifests[entry.name] = manifest
    return report


ByteProgress = Callable[[int, int], None]  # (bytes re-hashed so far, bytes to re-hash)


def _referenced(report: Report) -> dict[str, tuple[str, int, str, str]]:
    """Each blob path the manifests reference, once: where it is referenced, its size, SHA-256 and MD5."""
    blobs: dict[str, tuple[str, int, str, str]] = {}
    for family, manifest in report.manifests.items():
        for file in manifest.blob_files():
            blobs.setdefault(file.blob, (f"{family} {file.what}", file.size, file.sha256, file.md5))
    return blobs


def _counted(chunks: Iterable[bytes], progress: ByteProgress, done: int, total: int) -> Iterator[bytes]:
    for chunk in chunks:
        done += len(chunk)
        progress(done, total)
        yield chunk


def verify_blobs(fetcher: Fetcher, report: Report, progress: ByteProgress | None = None) -> None:
    """Stream every blob referenced by the loaded manifests once; record each mismatch as a problem.
    ``progress`` is told the bytes re-hashed so far, of the sizes the manifests declare."""
    blobs = _referenced(report)
    done, total = 0, sum(size for _, size, _, _ in blobs.values())
    for path, (what, size, sha256, md5) in blobs.items():
        where = f"{what}: {path}"
        chunks = fetcher.iter_blob(path, size)
        if progress is not None:
            chunks = _counted(chunks, progress, done, total)
        done += size
        try:
            if report.client is not None:
                info = report.client.target(path)
                if info.length != size or info.hashes.get(HASH) != sha256:
                    report.problems.append(f"{where}: the signed targets metadata gives another size or sha256")
            digests = digest_chunks(chunks)
        except LorienError as error:
            report.problems.append(f"{where}: {error}")
            continue
        report.blobs_checked += 1
        report.bytes_checked += digests.size
        if digests.size != size:
            report.problems.append(f"{where}: size {digests.size}, manifest says {size}")
        elif digests.sha256 != sha256:
            report.problems.append(f"{where}: sha256 {digests.sha256}, manifest says {sha256}")
        elif digests.md5 != md5:
            report.problems.append(f"{where}: md5 {digests.md5}, manifest says {md5}")


def inspect_repository(
    fetcher: Fetcher,
    verify: bool = False,
    trusted_root: bytes | None = None,
    progress: ByteProgress | None = None,
) -> Report:
    """Load the repository (:func:`load`) and with ``verify`` re-hash every blob, telling ``progress``."""
    with tempfile.TemporaryDirectory(prefix="lorien-inspect-") as metadata_dir:
        report = load(fetcher, trusted_root, Path(metadata_dir))
        if verify:
            verify_blobs(fetcher, report, progress)
    return report


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def bundle_costs(manifest: Manifest) -> list[dict[str, Any]]:
    """Per (from, to) pair of bundle versions with file patches: per file of the target what a device downloads
    (``keep`` 0 bytes, the file's patch, or the ``full`` file — the cheapest) and the totals."""
    pairs = sorted({(p.source, p.target) for p in manifest.file_patches}, key=lambda pair: pair)
    costs = []
    for source_name, target_name in pairs:
        source, target = manifest.version(source_name).bundle, manifest.version(target_name).bundle
        if source is None or target is None:
            continue
        have = {f.sha256 for f in source.files}
        patches = {p.path: p for p in manifest.file_patches if (p.source, p.target) == (source_name, target_name)}
        files = []
        for entry in target.files:
            patch = patches.get(entry.path)
            if entry.sha256 in have:
                files.append({"path": entry.path, "how": "keep", "bytes": 0, "size": entry.size})
            elif patch is not None and patch.size < entry.size:
                files.append({"path": entry.path, "how": "patch", "bytes": patch.size, "size": entry.size})
            else:
                files.append({"path": entry.path, "how": "full", "bytes": entry.size, "size": entry.size})
        download = sum(f["bytes"] for f in files)
        costs.append(
            {"from": source_name, "to": target_name, "files": files, "bytes": download, "full": target.total_size}
        )
    return costs


def _format(entry: VersionEntry) -> str:
    return "bundle zip" if entry.bundle is not None else entry.format


def _bundle_lines(manifest: Manifest) -> list[str]:
    lines = []
    for entry in manifest.versions:
        if entry.bundle is None:
            continue
        lines.append(
            f"  bundle {entry.version}: {len(entry.bundle.files)} files, digest {entry.bundle.digest[:16]}…"
        )
        for file in entry.bundle.files:
            fingerprint = file.fingerprint.format if file.fingerprint is not None else "-"
            lines.append(f"    {file.path:<40} {human_size(file.size):>11} {fingerprint:<12} {file.sha256[:16]}…")
    for cost in bundle_costs(manifest):
        percent = 100 * cost["bytes"] / cost["full"] if cost["full"] else 0.0
        lines.append(
            f"  bundle update {cost['from']} → {cost['to']}: {human_size(cost['bytes'])} of "
            f"{human_size(cost['full'])} ({percent:.1f}%)"
        )
        for file in cost["files"]:
            lines.append(f"    {file['path']:<40} {file['how']:<6} {human_size(file['bytes']):>11}")
    return lines


def _compressed(size: int, entry: Any) -> str:
    """The compressed full download's size and share of the model, or '-' when the version has none."""
    if entry.compressed is None:
        return "-"
    return f"{human_size(entry.compressed.size)} {100 * entry.compressed.size / size:4.1f}%"


def _channel_text(channel: Channel) -> str:
    """``1.3.0 at 10 % (halted) from 2026-12-01T02:00:00Z, previous 1.2.0, rolled back 1.2.5``."""
    text = channel.target
    rollout = channel.rollout
    if rollout is not None:
        text += f" at {rollout.percent:g} %" + (" (halted)" if rollout.halted else "")
        text += f" from {rollout.start}" if rollout.start else ""
        text += "".join(f", {step.percent:g} % at {step.at}" for step in rollout.steps)
    text += f", previous {channel.previous}" if channel.previous else ""
    text += f", rolled back {', '.join(channel.rolled_back)}" if channel.rolled_back else ""
    return text


def render_text(report: Report, verified: bool) -> str:
    lines = [f"repository {report.location}"]
    if report.tuf is not None:
        lines.append(
            f"TUF metadata ok: root v{report.tuf['root_version']}, targets v{report.tuf['targets_version']}"
        )
        lines.append(f"  {'role':<10} {'version':>7}  {'expires':<20} {'threshold':>9}  keys")
        for role in report.tuf["roles"]:
            keys = ", ".join(keyid[:16] for keyid in role["keyids"])
            lines.append(
                f"  {role['role']:<10} {role['version'] or '-':>7}  {role['expires'] or '-':<20} "
                f"{role['threshold']:>4} of {len(role['keyids']):<2}  {keys}"
            )
    for name, manifest in report.manifests.items():
        lines.append(
            f"\nfamily {name}  latest {manifest.latest}  sequence {manifest.sequence}  "
            f"generated {manifest.generated_at}  expires {manifest.expires or 'never'}"
        )
        signer = report.signed_by.get(f"{name}/manifest.json")
        if signer:
            lines.append(f"  signed target: {signer}")
        lines.append(f"  {'version':<16} {'size':>11} {'compressed':>18} {'format':<12} {'short_id':<17} sha256")
        for entry in manifest.versions:
            marker = "*" if entry.version == manifest.latest else " "
            lines.append(
                f" {marker}{entry.version:<16} {human_size(entry.size):>11} {_compressed(entry.size, entry):>18} "
                f"{_format(entry):<12} {entry.fingerprint.short_id:<17} {entry.sha256[:16]}…"
            )
        lines.extend(_bundle_lines(manifest))
        for channel, published in sorted((manifest.channels or {}).items()):
            lines.append(f"  channel {channel}: {_channel_text(published)}")
        if manifest.patches:
            lines.append(f"  {'patch':<34} {'engine':<8} {'size':>11} {'of full':>8}")
            for patch in manifest.patches:
                full = manifest.version(patch.target).size
                pair = f"{patch.source} → {patch.target}"
                lines.append(
                    f"  {pair:<34} {patch.engine:<8} {human_size(patch.size):>11} {100 * patch.size / full:7.1f}%"
                )
        elif not manifest.file_patches:
            lines.append("  no patches")
    for note in report.notes:
        lines.append(f"note: {note}")
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    if verified:
        lines.append(
            f"\nverified {report.blobs_checked} blobs, {human_size(report.bytes_checked)}: "
            + ("all sizes and digests match" if report.ok else f"{len(report.problems)} problem(s)")
        )
    for problem in report.problems:
        lines.append(f"error: {problem}")
    return "\n".join(lines)
