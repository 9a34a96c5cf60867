"""Garbage collection of blobs no manifest references any more (and of superseded TUF metadata and hash-prefixed
manifest copies), after a grace period.

A withdrawn version's blobs (and patches from or to it) stay on the server for ``grace`` seconds after they
were first seen unreferenced, so a device that read the old manifest can still finish its download. The first
sighting is remembered in ``REPO/.gc.json`` (hidden: never served). Run with the repository lock held.

Data flow: every ``*/manifest.json`` → referenced blob paths → blob files on disk minus referenced → update the
first-seen times (drop blobs referenced again) → delete those older than the grace period → rewrite
``.gc.json`` atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from lorien.publisher.tuf_writer import TufWriter
from lorien.repo.atomic import atomic_write_bytes, is_temp_name, write_failure
from lorien.repo.errors import ManifestError
from lorien.repo.layout import BLOB_DIR, INDEX_FILE, MANIFEST_FILE
from lorien.repo.manifest import parse_manifest
from lorien.repo.tufmeta import METADATA_DIR, SNAPSHOT, TARGETS, hash_prefixed, metadata_path

log = logging.getLogger(__name__)

GC_STATE = ".gc.json"
_PREFIXED = re.compile(r"^[0-9a-f]{64}\.")
_TWICE = re.compile(r"^([0-9a-f]{64})\.\1\.")  # a blob's hash-prefixed (TUF) name
DEFAULT_GRACE = 3600.0


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)  # with dry_run: what would have been removed
    waiting: dict[str, float] = field(default_factory=dict)  # blob → seconds until it may go
    problems: list[str] = field(default_factory=list)
    referenced: int = 0  # blobs some manifest references

    def summary(self, dry_run: bool = False) -> str:
        """One line: what was (or would be) removed, how many blobs are referenced and how many wait."""
        counts = f"{self.referenced} blobs referenced, {len(self.waiting)} waiting for the grace period"
        if not self.removed:
            return f"gc: nothing to remove ({counts})"
        return f"gc: {'would remove' if dry_run else 'removed'} {len(self.removed)} blobs ({counts})"


def referenced_blobs(repo: Path) -> tuple[set[str], list[str]]:
    """Every file the current metadata names: blobs (and their hash-prefixed TUF names), the hash-prefixed copies
    of the current manifests and index, and the snapshot and targets versions the current timestamp leads to."""
    referenced: set[str] = set()
    problems = []
    for manifest_file in sorted(repo.glob(f"*/{MANIFEST_FILE}")):
        try:
            data = manifest_file.read_bytes()
            manifest = parse_manifest(data, str(manifest_file))
        except (OSError, ManifestError) as error:
            problems.append(f"{manifest_file}: {error}")
            continue
        referenced.add(hash_prefixed(f"{manifest.family}/{MANIFEST_FILE}", hashlib.sha256(data).hexdigest()))
        for file in manifest.blob_files():
            referenced.update((file.blob, hash_prefixed(file.blob, file.sha256)))
    try:
        referenced.add(hash_prefixed(INDEX_FILE, hashlib.sha256((repo / INDEX_FILE).read_bytes()).hexdigest()))
        current = TufWriter(repo).read_current()
    except FileNotFoundError:
        current = None
    except (OSError, ManifestError) as error:
        problems.append(f"{repo / METADATA_DIR}: {error}")
        current = None
    if current is not None:
        _timestamp, snapshot, targets = current
        referenced.add(metadata_path(SNAPSHOT, snapshot.signed.version))
        referenced.add(metadata_path(TARGETS, targets.signed.version))
    return referenced, problems


def _collectable(repo: Path) -> set[str]:
    """Files gc may remove once unreferenced: blobs, hash-prefixed manifest and index copies, old snapshot and
    targets metadata (root versions stay for ever: devices walk the chain)."""
    found = {
        str(path.relative_to(repo))
        for path in (repo / BLOB_DIR).rglob("*")
        if path.is_file() and not is_temp_name(path.name)
    }
    found.update(
        str(path.relative_to(repo)) for path in repo.glob("*/*.manifest.json") if _PREFIXED.match(path.name)
    )
    found.update(path.name for path in repo.glob("*.index.json") if _PREFIXED.match(path.name))
    for role in (SNAPSHOT, TARGETS):
        found.update(f"{METADATA_DIR}/{path.name}" for path in (repo / METADATA_DIR).glob(f"[0-9]*.{role}.json"))
    return found


def collect_garbage(
    repo: Path, grace: float = DEFAULT_GRACE, now: float | None = None, dry_run: bool = False
) -> GcReport:
    """Remove the blobs unreferenced for ``grace`` seconds; ``dry_run`` only reports them (and leaves
    ``.gc.json`` as it is, so a dry run starts no clock)."""
    now = time.time() if now is None else now
    report = GcReport()
    referenced, report.problems = referenced_blobs(repo)
    report.referenced = sum(
        1 for path in referenced if path.startswith(f"{BLOB_DIR}/") and not _TWICE.match(Path(path).name)
    )
    if report.problems:
        # a manifest we cannot read might reference anything: deleting would be a guess
        return report
    state_file = repo / GC_STATE
    try:
        first_seen = json.loads(state_file.read_text())
        if not isinstance(first_seen, dict):
            first_seen = {}
    except (OSError, ValueError):
        first_seen = {}
    unreferenced = _collectable(repo) - referenced
    updated = {}
    for blob in sorted(unreferenced):
        try:
            seen = min(float(first_seen.get(blob, now)), now)  # a bad or future entry restarts the clock
        except (TypeError, ValueError):
            seen = now
        if now - seen >= grace:
            report.removed.append(blob)
            if not dry_run:
                (repo / blob).unlink(missing_ok=True)
                log.info("gc: removed %s (unreferenced for %.0f s)", blob, now - seen)
        else:
            updated[blob] = seen
            report.waiting[blob] = grace - (now - seen)
    if updated != first_seen and not dry_run:
        try:
            atomic_write_bytes(state_file, (json.dumps(updated, indent=1, sort_keys=True) + "\n").encode())
        except OSError as error:  # e.g. disk full: the removals stand, the clocks restart next time
            raise write_failure(error, state_file, "the garbage collector's state") from None
    return report
