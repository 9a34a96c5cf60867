"""Which version is installed, and the cheapest way from it to the latest (patch chain or full file).

``identify(model_path, manifest)`` fingerprints the installed file (Mallorn algorithm), matches it against the
manifest by (size, header_hash, tail_hash) and confirms the match with SHA-256. ``cheapest_plan`` runs Dijkstra
over the manifest's patch graph, weighted by download bytes, using only patches whose engine this device has
and whose container version (``format_version``, when the manifest gives it) it reads,
and compares the best chain with downloading the full model — the cheaper of the raw blob and, when the
manifest lists one whose engine this device has, the model compressed on its own (``compressed``: costed by
its compressed size, decoded on the device).
"""

from __future__ import annotations

import heapq
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lorien.repo.engine import available_engines, reads_format
from lorien.repo.errors import FingerprintError
from lorien.repo.fingerprint import fingerprint
from lorien.repo.hashing import sha256_file
from lorien.repo.limits import DEFAULT_LIMITS
from lorien.repo.manifest import CompressedEntry, Manifest, PatchEntry, VersionEntry


@dataclass(frozen=True)
class Installed:
    version: str | None  # None: unknown model (or none at all)
    sha256: str | None
    size: int
    short_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Step:
    """One download: a patch (``source`` → ``target``), the full model or the full model compressed on its own
    (``source`` is None; for "compressed", ``size``/``md5``/``sha256`` are the compressed blob's)."""

    kind: str  # "patch" | "full" | "compressed"
    blob: str
    size: int
    md5: str
    sha256: str
    target: str
    target_sha256: str
    source: str | None = None
    source_sha256: str | None = None
    engine: str | None = None
    id: str = ""
    # bundle families (device/bundles.py): the file this step makes, and the installed file it starts from;
    # kind "keep" then means "already installed: no download"
    path: str | None = None
    source_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("path", "source_path"):  # written only for bundle steps
            if data[key] is None:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        return cls(**data)


@dataclass(frozen=True)
class Plan:
    installed: Installed
    latest: str
    steps: tuple[Step, ...]
    full_size: int

    @property
    def up_to_date(self) -> bool:
        return not self.steps

    @property
    def download_bytes(self) -> int:
        return sum(step.size for step in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "installed": self.installed.to_dict(),
            "latest": self.latest,
            "up_to_date": self.up_to_date,
            "steps": [step.to_dict() for step in self.steps],
            "download_bytes": self.download_bytes,
            "full_size": self.full_size,
            "saving_percent": round(100 * (1 - self.download_bytes / self.full_size), 1) if self.full_size else 0,
        }


def identify(model_path: Path, manifest: Manifest) -> Installed:
    if not model_path.is_file():
        return Installed(None, None, 0, None)
    try:
        local = fingerprint(model_path)
    except FingerprintError:
        return Installed(None, None, model_path.stat().st_size, None)
    candidates = [entry for entry in manifest.versions if entry.fingerprint.matches(local)]
    sha = sha256_file(model_path) if candidates else None
    for entry in candidates:
        if entry.sha256 == sha:
            return Installed(entry.version, sha, local.file_size, local.short_id)
    return Installed(None, sha, local.file_size, local.short_id)


def full_step(entry: VersionEntry) -> Step:
    return Step("full", entry.blob, entry.size, entry.md5, entry.sha256, entry.version, entry.sha256)


def applicable(entry: PatchEntry | CompressedEntry, engines: Collection[str]) -> bool:
    """Whether this device can apply a listed patch or compressed model: it has the engine and reads the
    container version the manifest gives (a newer one is planned around: another chain or the raw model)."""
    return entry.engine in engines and reads_format(entry.engine, entry.format_version)


def cheapest_full(entry: VersionEntry, engines: Collection[str]) -> Step:
    """The smaller of the raw model and its compressed blob (when listed and ``engines`` has its engine)."""
    compressed = entry.compressed
    if compressed is None or compressed.size >= entry.size or not applicable(compressed, engines):
        return full_step(entry)
    return Step(
        "compressed",
        compressed.blob,
        compressed.size,
        compressed.md5,
        compressed.sha256,
        entry.version,
        entry.sha256,
        engine=compressed.engine,
    )


def cheapest_plan(
    manifest: Manifest, installed: Installed, target: str | None = None, max_chain: int | None = None
) -> Plan:
    """Cheapest chain of patches from the installed version to ``target`` (default: latest), or the full file.
    A chain longer than ``max_chain`` patches (default: the limit in repo.limits) is replaced by the full file."""
    max_chain = DEFAULT_LIMITS.max_chain_length if max_chain is None else max_chain
    goal = manifest.version(target or manifest.latest)
    if installed.sha256 == goal.sha256:
        return Plan(installed, goal.version, (), goal.size)
    engines = set(available_engines())  # once per plan: an absent mallorn is looked for on every call
    full = (cheapest_full(goal, engines),)
    if installed.version is None:
        return Plan(installed, goal.version, full, goal.size)
    edges: dict[str, list[Any]] = {}
    for patch in manifest.patches:
        if applicable(patch, engines):
            edges.setdefault(patch.source, []).append(patch)
    best: dict[str, int] = {installed.version: 0}
    previous: dict[str, Any] = {}
    queue = [(0, installed.version)]
    while queue:
        cost, version = heapq.heappop(queue)
        if version == goal.version or cost > best.get(version, cost):
            continue
        for patch in edges.get(version, []):
            total = cost + patch.size
            if total < best.get(patch.target, total + 1):
                best[patch.target] = total
                previous[patch.target] = patch
                heapq.heappush(queue, (total, patch.target))
    if goal.version not in best or best[goal.version] >= full[0].size:
        return Plan(installed, goal.version, full, goal.size)
    chain = []
    version = goal.version
    while version != installed.version:
        patch = previous[version]
        chain.append(patch)
        version = patch.source
    chain.reverse()
    if len(chain) > max_chain:
        return Plan(installed, goal.version, full, goal.size)
    steps = tuple(
        Step(
            "patch",
            p.blob,
            p.size,
            p.md5,
            p.sha256,
            p.target,
            p.target_sha256,
            p.source,
            p.source_sha256,
            p.engine,
            p.id,
        )
        for p in chain
    )
    return Plan(installed, goal.version, steps, goal.size)
