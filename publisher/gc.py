"""Garbage collection of blobs no manifest references any more, after a grace period.

A withdrawn version's blobs (and patches from or to it) stay on the server for ``grace`` seconds after they
were first seen unreferenced, so a device that read the old manifest can still finish its download. The first
sighting is remembered in ``REPO/.gc.json`` (hidden: never served). Run with the repository lock held.

Data flow: every ``*/manifest.json`` → referenced blob paths → blob files on disk minus referenced → update the
first-seen times (drop blobs referenced again) → delete those older than the grace period → rewrite
``.gc.json`` atomically.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from lorien.repo.atomic import atomic_write_bytes, is_temp_name, write_failure
from lorien.repo.errors import ManifestError
from lorien.repo.layout import MANIFEST_FILE
from lorien.repo.manifest import parse_manifest

log = logging.getLogger(__name__)

GC_STATE = ".gc.json"
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
    referenced: set[str] = set()
    problems = []
    for manifest_file in sorted(repo.glob(f"*/{MANIFEST_FILE}")):
        try:
            manifest = parse_manifest(manifest_file.read_bytes(), str(manifest_file))
        except (OSError, ManifestError) as error:
            problems.append(f"{manifest_file}: {error}")
            continue
        referenced.update(entry.blob for entry in manifest.versions)
        referenced.update(entry.compressed.blob for entry in manifest.versions if entry.compressed is not None)
        referenced.update(entry.blob for entry in manifest.patches)
    return referenced, problems


def collect_garbage(
    repo: Path, grace: float = DEFAULT_GRACE, now: float | None = None, dry_run: bool = False
) -> GcReport:
    """Remove the blobs unreferenced for ``grace`` seconds; ``dry_run`` only reports them (and leaves
    ``.gc.json`` as it is, so a dry run starts no clock)."""
    now = time.time() if now is None else now
    report = GcReport()
    referenced, report.problems = referenced_blobs(repo)
    report.referenced = len(referenced)
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
    blobs_dir = repo / "blobs"
    present = (
        {
            str(path.relative_to(repo))
            for path in blobs_dir.rglob("*")
            if path.is_file() and not is_temp_name(path.name)
        }
        if blobs_dir.exists()
        else set()
    )
    unreferenced = present - referenced
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
