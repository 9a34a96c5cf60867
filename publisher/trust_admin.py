"""``lorien trust``: a repository's TUF roles and keys — initialise, change keys and thresholds, sign offline.

Every change of keys or thresholds is a new root version (TUF's rule: signed by a threshold of the previous
root's root keys *and* of its own), so devices follow a rotation by themselves. Flow of one change::

    read the newest N.root.json ─▶ copy as version N+1, apply the change, renew its expiry
      ─▶ sign with the root keys given here (--sign-key) ─▶ complete? install it (N+1.root.json, root.json), then
         re-sign targets/snapshot/timestamp with the online keys given, so devices see the change at once
      ─▶ incomplete? stage it as REPO/.trust/N+1.root.json (hidden: never served) and say which keys must sign:
         copy it to the machine holding them, ``lorien trust sign FILE --sign-key …``, copy it back,
         ``lorien trust commit --repo REPO FILE``

A targets file staged by a publish whose targets key is offline (``publisher.tuf_writer``) goes the same way.
The caller holds the repository's writer lock.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Root

from lorien.publisher.options import PublishOptions
from lorien.publisher.signed import SignedMetadataWriter
from lorien.publisher.tuf_writer import STAGED_DIR, TufWriter, check_root_signatures, serialize
from lorien.repo.atomic import atomic_write_bytes
from lorien.repo.errors import BadInputError, SignatureError
from lorien.repo.layout import INDEX_FILE, MANIFEST_FILE
from lorien.repo.signing import SigningKey, TrustedKey, load_signing_key, load_trusted_key, verify_document
from lorien.repo.tufmeta import ROLES, ROOT, TARGETS, parse_metadata, signer, summarize, tuf_key, utc

log = logging.getLogger(__name__)


@dataclass
class RootChange:
    """What one new root version changes: keys added to or removed from roles, thresholds set."""

    add: list[tuple[str, TrustedKey | SigningKey]] = field(default_factory=list)
    remove: list[tuple[str, str]] = field(default_factory=list)  # (role, TUF key id or a prefix of one)
    thresholds: dict[str, int] = field(default_factory=dict)

    def apply(self, root: Root) -> None:
        for role, key in self.add:
            root.add_key(tuf_key(key), role)
        for role, wanted in self.remove:
            matches = [keyid for keyid in root.roles[role].keyids if keyid.startswith(wanted)]
            if len(matches) != 1:
                raise BadInputError(
                    f"--remove {role}={wanted}: {'no' if not matches else 'more than one'} {role} key matches "
                    f"(its keys: {', '.join(k[:16] for k in sorted(root.roles[role].keyids))})"
                )
            root.revoke_key(matches[0], role)
        for role, threshold in self.thresholds.items():
            root.roles[role].threshold = threshold
        for role in ROLES:
            delegation = root.roles[role]
            if not delegation.keyids:
                raise BadInputError(f"the {role} role would have no key left; add its new key in the same change")
            if not 1 <= delegation.threshold <= len(delegation.keyids):
                raise BadInputError(
                    f"the {role} role's threshold {delegation.threshold} must be from 1 to its {len(delegation.keyids)} "
                    "key(s)"
                )


def role_key(text: str, what: str) -> tuple[str, TrustedKey | SigningKey]:
    """``ROLE=FILE`` (a public .pub or a private .key file) → (role, key)."""
    role, _, path = text.partition("=")
    if role not in ROLES or not path:
        raise BadInputError(f"{what} {text!r}: expected ROLE=FILE with ROLE one of {', '.join(ROLES)}")
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    key: TrustedKey | SigningKey = (
        load_signing_key(Path(path)) if b"PRIVATE KEY" in data else load_trusted_key(Path(path))
    )
    return role, key


def role_number(text: str, what: str) -> tuple[str, int]:
    role, _, value = text.partition("=")
    if role not in ROLES or not value.isdigit():
        raise BadInputError(f"{what} {text!r}: expected ROLE=N with ROLE one of {', '.join(ROLES)}")
    return role, int(value)


@dataclass
class TrustResult:
    root_version: int
    installed: bool  # False: staged, waiting for signatures
    staged: Path | None = None
    missing: str = ""
    online_roles_written: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root_version": self.root_version,
            "installed": self.installed,
            "staged": str(self.staged) if self.staged else None,
            "missing": self.missing,
            "online_roles_written": self.online_roles_written,
            "warnings": self.warnings,
        }


class TrustAdmin:
    """The TUF roles of the repository at ``repo``; ``keys`` sign whatever they may (root and online roles)."""

    def __init__(self, repo: Path, keys: Sequence[SigningKey], options: PublishOptions | None = None) -> None:
        self.repo = repo
        self.keys = tuple(keys)
        self.options = options or PublishOptions()
        self.options.sign_keys = self.keys
        self.tuf = TufWriter(repo, self.keys, self.options.expiry)

    # -- init ------------------------------------------------------------------------------------------------
    def init(
        self, role_keys: dict[str, list[TrustedKey | SigningKey]], thresholds: dict[str, int], from_key: bool
    ) -> TrustResult:
        """Version 1 of the root. ``from_key``: the repository was signed with the old scheme by ``self.keys``;
        every existing manifest and index.json must verify under it before it becomes a signed target."""
        if self.tuf.exists():
            raise BadInputError(
                f"{self.repo}: already a TUF repository (metadata/root.json); change keys with `lorien trust "
                "add-key/remove-key/rotate`"
            )
        if from_key:
            self._verify_old_scheme()
        missing = [role for role in ROLES if not role_keys.get(role)]
        if missing:
            raise BadInputError(
                f"no key for the {', '.join(missing)} role(s): give --key ROLE=FILE (or --from-key)"
            )
        root = self.tuf.initial_root(role_keys, thresholds)
        RootChange().apply(root.signed)  # the threshold checks
        return self._sign_and_install(root, None)

    def _verify_old_scheme(self) -> None:
        public = tuple(TrustedKey(key.private.public_key(), key.keyid, key.source) for key in self.keys)
        documents = [
            INDEX_FILE,
            *(f"{p.parent.name}/{MANIFEST_FILE}" for p in sorted(self.repo.glob(f"*/{MANIFEST_FILE}"))),
        ]
        for relative in documents:
            path = self.repo / relative
            if not path.exists():
                continue
            signature = self.repo / f"{relative}.sig"
            try:
                verify_document(path.read_bytes(), relative, signature.read_bytes(), public)
            except FileNotFoundError:
                raise SignatureError(
                    f"{path}: has no {signature.name}; it cannot be vouched for by --from-key"
                ) from None

    # -- change ----------------------------------------------------------------------------------------------
    def change(self, change: RootChange) -> TrustResult:
        previous = self.tuf.read_root()
        root = Metadata(copy.deepcopy(previous.signed))  # to_dict shares lists with the original
        root.signed.version += 1
        root.signed.expires = utc(self.options.expiry.of(ROOT))
        change.apply(root.signed)
        return self._sign_and_install(root, previous)

    def _sign_and_install(self, root: Metadata[Root], previous: Metadata[Root] | None) -> TrustResult:
        root_keyids = set(root.signed.roles[ROOT].keyids) | (
            set(previous.signed.roles[ROOT].keyids) if previous else set()
        )
        for key in self.keys:
            if tuf_key(key).keyid in root_keyids:
                root.sign(signer(key), append=True)
        return self.commit_root(root, previous)

    def commit_root(self, root: Metadata[Root], previous: Metadata[Root] | None) -> TrustResult:
        """Install ``root`` if its signatures are complete (then re-sign the online roles), else stage it."""
        try:
            check_root_signatures(root, previous)
        except SignatureError as error:
            staged = self.tuf.stage(root, f"{root.signed.version}.root.json")
            return TrustResult(root.signed.version, False, staged, str(error))
        self.tuf.write_root(root, previous)
        result = TrustResult(root.signed.version, True)
        self._resign_online(result)
        return result

    def _resign_online(self, result: TrustResult) -> None:
        """After a new root: targets, snapshot and timestamp again, signed by the keys the new root names."""
        writer = SignedMetadataWriter(self.repo, self.options)
        manifests, problems = writer.all_manifests()
        result.warnings.extend(problems)
        try:
            result.online_roles_written = writer.publish_tuf(manifests, force=True)
        except SignatureError as error:
            result.warnings.append(
                f"{error}. Devices refuse the repository's metadata until it is re-signed: run `lorien publish` (or "
                "`lorien trust commit`) with the keys of the new root"
            )

    # -- offline signing ---------------------------------------------------------------------------------------
    def commit(self, staged: Path) -> TrustResult:
        """Install a staged root or targets file signed elsewhere (``lorien trust sign``)."""
        metadata = parse_metadata(_read(staged), str(staged))
        if metadata.signed.type == ROOT:
            previous = self.tuf.read_root()
            result = self.commit_root(
                metadata, previous if previous.signed.version < metadata.signed.version else None
            )
        elif metadata.signed.type == TARGETS:
            written = self.tuf.commit_targets(metadata)
            result = TrustResult(self.tuf.read_root().signed.version, True, online_roles_written=written)
        else:
            raise BadInputError(
                f"{staged}: is {metadata.signed.type} metadata; only root and targets are signed offline"
            )
        if result.installed:
            staged.unlink(missing_ok=True)
        return result

    def show(self) -> dict[str, Any]:
        root = self.tuf.read_root()
        current = self.tuf.read_current()
        signed = {} if current is None else {m.signed.type: m.signed for m in current}
        staged = sorted(str(p) for p in (self.repo / STAGED_DIR).glob("*.json"))
        return {
            "repo": str(self.repo),
            "root_sha256": hashlib.sha256(
                (self.repo / "metadata" / f"{root.signed.version}.root.json").read_bytes()
            ).hexdigest(),
            "roles": [row.to_dict() for row in summarize(root.signed, signed)],
            "keys": {keyid: root.signed.keys[keyid].keytype for keyid in sorted(root.signed.keys)},
            "consistent_snapshot": root.signed.consistent_snapshot,
            "staged": staged,
        }


def sign_file(path: Path, keys: Sequence[SigningKey]) -> list[str]:
    """Add signatures by ``keys`` to a metadata file (on the offline machine: no repository needed)."""
    metadata = parse_metadata(_read(path), str(path))
    if not keys:
        raise BadInputError("give the key(s) to sign with: --sign-key FILE")
    for key in keys:
        metadata.sign(signer(key), append=True)
    atomic_write_bytes(path, serialize(metadata))
    return [tuf_key(key).keyid for key in keys]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise BadInputError(f"{path}: cannot read: {error.strerror or error}") from None
