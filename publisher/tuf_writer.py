"""Writing a repository's TUF metadata with python-tuf (``tuf.api.metadata``): root, targets, snapshot, timestamp.

:class:`TufWriter` is used with the repository's writer lock held, by :mod:`publisher.signed` at the end of every
publish (``publish_targets``: the files devices fetch → targets → snapshot → timestamp) and by ``lorien trust``
(:mod:`publisher.trust_admin`: a new root version). Layout and naming are in :mod:`repo.tufmeta`.

Publish order, every write atomic (temp file, fsync, rename, fsync the directory)::

    hash-prefixed copies of new targets (immutable) ─▶ N+1.targets.json ─▶ M+1.snapshot.json
      ─▶ timestamp.json (the one mutable file a TUF client starts from: written last)

A crash anywhere leaves the previous timestamp → snapshot → targets chain intact and complete; the next run
writes the same versions again (an unreferenced ``N+1.targets.json`` is simply overwritten). Crash points
(``repo/testhooks.py``): ``tuf-targets``, ``tuf-snapshot``, ``tuf-timestamp``.

Online roles (targets, snapshot, timestamp) are signed with every given key the root authorises for them; too
few is a :class:`~repo.errors.SignatureError` naming the keys the root expects. Each role is renewed when less
than half its validity is left (``renew``), so ``lorien watch`` keeps a 1-day timestamp fresh unattended.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from lorien.repo.atomic import atomic_write_bytes, fsync_dir
from lorien.repo.errors import BadInputError, ManifestError, SignatureError
from lorien.repo.signing import SigningKey
from lorien.repo.testhooks import crash_point
from lorien.repo.tufmeta import (
    DEFAULT_EXPIRY_DAYS,
    HASH,
    METADATA_DIR,
    ROOT,
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    hash_prefixed,
    metadata_path,
    parse_metadata,
    signer,
    tuf_key,
    utc,
)

log = logging.getLogger(__name__)

_SERIALIZER = JSONSerializer(compact=False)
STAGED_DIR = ".trust"  # metadata waiting for offline signatures (hidden: never served)


def serialize(metadata: Metadata[Any]) -> bytes:
    return metadata.to_bytes(_SERIALIZER)


@dataclass(frozen=True)
class Target:
    """One file devices may fetch: its repository path, length and SHA-256, and where its bytes are (``data``
    for small documents, else the file at ``source``)."""

    path: str
    length: int
    sha256: str
    data: bytes | None = None
    source: Path | None = None


@dataclass
class Expiry:
    """Days each role's metadata stays valid after it is signed (``--expiry ROLE=DAYS``)."""

    days: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EXPIRY_DAYS))

    def of(self, role: str) -> float:
        return self.days[role]

    @classmethod
    def parse(cls, items: Sequence[str]) -> Expiry:
        """``["timestamp=1", "snapshot=7"]`` → an Expiry (BadInputError naming the bad item)."""
        expiry = cls()
        for item in items:
            role, _, value = item.partition("=")
            if role not in expiry.days or not value:
                raise BadInputError(
                    f"--expiry {item!r}: expected ROLE=DAYS with ROLE one of {', '.join(expiry.days)}"
                )
            try:
                days = float(value)
            except ValueError:
                raise BadInputError(f"--expiry {item!r}: {value!r} is not a number of days") from None
            if not 1 / 86400 <= days <= 3660:
                raise BadInputError(f"--expiry {item!r}: days must be from 1/86400 (one second) to 3660")
            expiry.days[role] = days
        return expiry


class TufWriter:
    """The TUF metadata of the repository at ``root``, signed with ``keys``. Callers hold the writer lock."""

    def __init__(self, root: Path, keys: Sequence[SigningKey] = (), expiry: Expiry | None = None) -> None:
        self.root = root
        self.directory = root / METADATA_DIR
        self.keys = tuple(keys)
        self.expiry = expiry or Expiry()

    # -- reading ---------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.root / metadata_path(ROOT)).is_file()

    def read_root(self) -> Metadata[Root]:
        """The newest root version: the highest ``N.root.json`` (root.json is a copy for people)."""
        versions = sorted(
            int(path.name.split(".", 1)[0])
            for path in self.directory.glob("*.root.json")
            if path.name.split(".", 1)[0].isdigit()
        )
        if not versions:
            raise ManifestError(
                f"{self.directory}: no N.root.json; this repository has no TUF root (run `lorien trust init`)"
            )
        return self._read(metadata_path(ROOT, versions[-1]), ROOT)

    def _read(self, relative: str, role: str) -> Metadata[Any]:
        path = self.root / relative
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ManifestError(f"{path}: missing; the repository's TUF metadata is incomplete") from None
        return parse_metadata(data, str(path), role)

    def read_current(self) -> tuple[Metadata[Timestamp], Metadata[Snapshot], Metadata[Targets]] | None:
        """timestamp → the snapshot it names → the targets that names, or None before the first publish."""
        if not (self.root / metadata_path(TIMESTAMP)).is_file():
            return None
        timestamp = self._read(metadata_path(TIMESTAMP), TIMESTAMP)
        snapshot = self._read(metadata_path(SNAPSHOT, timestamp.signed.snapshot_meta.version), SNAPSHOT)
        targets = self._read(metadata_path(TARGETS, snapshot.signed.meta[f"{TARGETS}.json"].version), TARGETS)
        return timestamp, snapshot, targets

    def trusted_targets(self) -> Targets | None:
        """The current targets, once their signatures check out against the current root (or the one before it,
        right after a key rotation). SignatureError if not: someone else wrote them."""
        current = self.read_current()
        if current is None:
            return None
        targets = current[2]
        roots = [self.read_root()]
        if roots[0].signed.version > 1:
            roots.append(self._read(metadata_path(ROOT, roots[0].signed.version - 1), ROOT))
        for root in roots:
            try:
                root.signed.verify_delegate(TARGETS, targets.signed_bytes, targets.signatures)
                return targets.signed
            except UnsignedMetadataError:
                continue
        raise SignatureError(
            f"{self.directory}/{targets.signed.version}.targets.json: not signed by the targets keys of the "
            "repository's root; it was changed by someone else — restore the metadata directory from a backup"
        )

    # -- root --------------------------------------------------------------------------------------------------
    def write_root(self, root: Metadata[Root], previous: Metadata[Root] | None) -> None:
        """Install a root version once it verifies: signed by the previous root's threshold (if any) and its own.
        ``N.root.json`` first, then the ``root.json`` copy."""
        check_root_signatures(root, previous)
        data = serialize(root)
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / metadata_path(ROOT, root.signed.version), data)
        crash_point("tuf-root")
        atomic_write_bytes(self.root / metadata_path(ROOT), data)

    def initial_root(
        self, role_keys: Mapping[str, Sequence[Any]], thresholds: Mapping[str, int]
    ) -> Metadata[Root]:
        """Version 1 of a root naming ``role_keys`` (SigningKey or TrustedKey per role), unsigned."""
        root = Root(expires=utc(self.expiry.of(ROOT)), consistent_snapshot=True)
        for role, keys in role_keys.items():
            for key in keys:
                root.add_key(tuf_key(key), role)
            root.roles[role].threshold = thresholds.get(role, 1)
        return Metadata(root)

    # -- online roles ------------------------------------------------------------------------------------------
    def _usable(self, role: str, root: Root) -> list[SigningKey]:
        wanted = set(root.roles[role].keyids)
        return [key for key in self.keys if tuf_key(key).keyid in wanted]

    def _sign(self, metadata: Metadata[Any], role: str, root: Root) -> None:
        delegation = root.roles[role]
        wanted = set(delegation.keyids)
        usable = self._usable(role, root)
        if len(usable) < delegation.threshold:
            raise SignatureError(
                f"{self.root}: signing {role} metadata needs {delegation.threshold} of the keys the root names "
                f"for it ({', '.join(sorted(k[:16] for k in wanted))}), {len(usable)} given; pass them with "
                "--sign-key (see `lorien trust show`)"
            )
        metadata.signatures.clear()
        for key in usable:
            metadata.sign(signer(key), append=True)

    def _write(self, relative: str, metadata: Metadata[Any], point: str) -> bytes:
        data = serialize(metadata)
        atomic_write_bytes(self.root / relative, data)
        crash_point(point)
        return data

    def _half_gone(self, signed: Any, role: str, now: datetime) -> bool:
        remaining = signed.expires - now
        validity = timedelta(days=self.expiry.of(role))
        return remaining < validity / 2 or remaining > validity + timedelta(minutes=1)

    def publish(self, targets: Sequence[Target], now: datetime | None = None, force: bool = False) -> list[str]:
        """Make ``targets`` the repository's signed targets (new versions only where something changed or is half
        expired; ``force``: re-sign all three, e.g. after a key rotation). Returns the roles written.

        Without the targets key (kept offline) a changed targets version is staged unsigned in ``.trust/`` and a
        SignatureError says how to sign and commit it; the repository keeps serving its previous state."""
        now = now or datetime.now(UTC)
        root = self.read_root().signed
        if not any(self._usable(role, root) for role in (TARGETS, SNAPSHOT, TIMESTAMP)):
            named = sorted(
                {keyid[:16] for role in (TARGETS, SNAPSHOT, TIMESTAMP) for keyid in root.roles[role].keyids}
            )
            raise SignatureError(
                f"{self.root}: none of the --sign-key keys is one the repository's root names for targets, snapshot or "
                f"timestamp ({', '.join(named)}; see `lorien trust show`)"
            )
        current = self.read_current()
        wanted = {target.path: TargetFile(target.length, {HASH: target.sha256}, target.path) for target in targets}
        for target in targets:
            self._place(target)
        targets_md = current[2] if current else None
        if current is not None and not all(_signed_under(root, metadata) for metadata in current):
            force = True  # after a key rotation: re-sign everything with the keys the root now names
        if not (
            targets_md is None
            or force
            or targets_md.signed.targets != wanted
            or self._half_gone(targets_md.signed, TARGETS, now)
        ):
            return self._snapshot_and_timestamp(root, current, targets_md.signed.version, False, force, now)
        version = (targets_md.signed.version if targets_md else 0) + 1
        signed_targets = Metadata(Targets(version=version, expires=utc(self.expiry.of(TARGETS), now)))
        signed_targets.signed.targets = wanted
        if len(self._usable(TARGETS, root)) < root.roles[TARGETS].threshold and not force:
            staged = self.stage(signed_targets, f"{version}.targets.json")
            raise SignatureError(
                f"{self.root}: the targets key is not here, so targets version {version} was staged unsigned as "
                f"{staged}; sign it where the targets key is (`lorien trust sign FILE --sign-key TARGETS.key`) and "
                f"install it with `lorien trust commit --repo {self.root} FILE --sign-key …` (snapshot and timestamp "
                "keys); until then devices keep the previous state"
            )
        self._sign(signed_targets, TARGETS, root)
        self._write(metadata_path(TARGETS, version), signed_targets, "tuf-targets")
        return [TARGETS, *self._snapshot_and_timestamp(root, current, version, True, force, now)]

    def commit_targets(self, targets: Metadata[Targets], now: datetime | None = None) -> list[str]:
        """Install a targets version signed offline (the next version, verified against the root), then snapshot
        and timestamp with the online keys."""
        now = now or datetime.now(UTC)
        root = self.read_root().signed
        current = self.read_current()
        expected = (current[2].signed.version if current else 0) + 1
        if targets.signed.version != expected:
            raise BadInputError(
                f"targets version {targets.signed.version} is not the next one ({expected}); publish again and sign "
                "the newly staged file"
            )
        try:
            root.verify_delegate(TARGETS, targets.signed_bytes, targets.signatures)
        except UnsignedMetadataError as error:
            raise SignatureError(
                f"targets version {targets.signed.version}: {error}; sign it with the targets key(s)"
            ) from None
        self._write(metadata_path(TARGETS, targets.signed.version), targets, "tuf-targets")
        return [TARGETS, *self._snapshot_and_timestamp(root, current, targets.signed.version, True, False, now)]

    def _snapshot_and_timestamp(
        self,
        root: Root,
        current: tuple[Metadata[Timestamp], Metadata[Snapshot], Metadata[Targets]] | None,
        targets_version: int,
        new_targets: bool,
        force: bool,
        now: datetime,
    ) -> list[str]:
        """The snapshot (naming ``targets_version``) and timestamp after ``current`` (what ``read_current`` gave
        before this publish wrote anything), each new only where needed."""
        snapshot_md = current[1] if current else None
        timestamp_md = current[0] if current else None
        written: list[str] = []
        if new_targets or snapshot_md is None or force or self._half_gone(snapshot_md.signed, SNAPSHOT, now):
            snapshot_version = (snapshot_md.signed.version if snapshot_md else 0) + 1
            snapshot = Metadata(Snapshot(version=snapshot_version, expires=utc(self.expiry.of(SNAPSHOT), now)))
            snapshot.signed.meta = {f"{TARGETS}.json": MetaFile(version=targets_version)}
            self._sign(snapshot, SNAPSHOT, root)
            snapshot_bytes = self._write(metadata_path(SNAPSHOT, snapshot_version), snapshot, "tuf-snapshot")
            written.append(SNAPSHOT)
        else:
            assert snapshot_md is not None
            snapshot_version = snapshot_md.signed.version
            snapshot_bytes = (self.root / metadata_path(SNAPSHOT, snapshot_version)).read_bytes()
        if written or timestamp_md is None or force or self._half_gone(timestamp_md.signed, TIMESTAMP, now):
            version = (timestamp_md.signed.version if timestamp_md else 0) + 1
            timestamp = Metadata(Timestamp(version=version, expires=utc(self.expiry.of(TIMESTAMP), now)))
            timestamp.signed.snapshot_meta = MetaFile.from_data(snapshot_version, snapshot_bytes, [HASH])
            self._sign(timestamp, TIMESTAMP, root)
            self._write(metadata_path(TIMESTAMP), timestamp, "tuf-timestamp")
            written.append(TIMESTAMP)
        if written or new_targets:
            fsync_dir(self.directory)
            log.info("TUF metadata written: %s", ", ".join(([TARGETS] if new_targets else []) + written))
        return written

    def stage(self, metadata: Metadata[Any], name: str) -> Path:
        """Write metadata that still needs signatures into ``.trust/`` (hidden: never served)."""
        path = self.root / STAGED_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, serialize(metadata))
        return path

    def _place(self, target: Target) -> None:
        """The target's hash-prefixed name, once: a document written out, a blob hard-linked (copied where the
        file system has no hard links)."""
        destination = self.root / hash_prefixed(target.path, target.sha256)
        if destination.exists():
            return
        destination.parent.mkdir(parents=True, exist_ok=True)
        if target.data is not None:
            atomic_write_bytes(destination, target.data)
            return
        assert target.source is not None
        try:
            os.link(target.source, destination)
        except OSError:
            temp = destination.with_name(f".{destination.name}.tmp-link")
            shutil.copyfile(target.source, temp)
            os.replace(temp, destination)
        fsync_dir(destination.parent)


def _signed_under(root: Root, metadata: Metadata[Any]) -> bool:
    """Whether ``metadata`` carries enough signatures by the keys ``root`` names for its role."""
    return root.get_verification_result(metadata.signed.type, metadata.signed_bytes, metadata.signatures).verified


def check_root_signatures(root: Metadata[Root], previous: Metadata[Root] | None) -> None:
    """A root version is valid when its own root keys and the previous version's both reach their thresholds
    (TUF's rule for root rotation). SignatureError saying how many signatures are missing, and whose."""
    checks = [("this root's", root.signed)]
    if previous is not None:
        if root.signed.version != previous.signed.version + 1:
            raise BadInputError(
                f"root version {root.signed.version} cannot follow version {previous.signed.version}; prepare the "
                "next root again"
            )
        checks.insert(0, ("the previous root's", previous.signed))
    for name, delegator in checks:
        result = delegator.get_verification_result(ROOT, root.signed_bytes, root.signatures)
        if not result.verified:
            missing = ", ".join(sorted(keyid[:16] for keyid in result.unsigned))
            raise SignatureError(
                f"root version {root.signed.version}: {len(result.signed)} of {name} root keys signed it, "
                f"{result.threshold} needed (not yet signed by: {missing}); sign it with `lorien trust sign FILE "
                "--sign-key ROOT.key` and commit it with `lorien trust commit`"
            )
