"""TUF metadata of a lorien repository: where it lives, which keys sign which role, and reading it back.

Every lorien repository published with keys is a TUF repository (python-tuf's ``tuf.api.metadata``; the
publisher writes it in :mod:`publisher.tuf_writer`, devices read it with ``tuf.ngclient`` through
:mod:`repo.tufclient`). Layout, with consistent snapshots so a CDN never serves a mixed state::

    REPO/metadata/1.root.json, 2.root.json …   every root version: devices walk the chain on rotation
    REPO/metadata/root.json                      the newest root (to install on new devices; never fetched)
    REPO/metadata/N.targets.json                 what may be installed: every file a device fetches
    REPO/metadata/N.snapshot.json                which targets version is current
    REPO/metadata/timestamp.json                 which snapshot is current; written last, expires soonest
    REPO/<family>/<sha256>.manifest.json         each manifest version under its hash-prefixed name
    REPO/<sha256>.index.json                     likewise index.json
    REPO/blobs/sha256/<aa>/<sha256>.<name>       a blob's hash-prefixed name: a hard link to the blob

Targets are the repository-relative paths devices and Mallorn clients already use (``<family>/manifest.json``,
``index.json``, ``blobs/sha256/…``); a TUF client fetches ``<dir>/<sha256>.<name>`` instead, which never
changes once written. Keys are lorien's ed25519 key files (``lorien keygen``); TUF key ids are python-tuf's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, Signed
from tuf.api.serialization import DeserializationError

from lorien.repo.errors import (
    FreshnessError,
    LorienError,
    ManifestError,
    NetworkError,
    SignatureError,
)
from lorien.repo.signing import SigningKey, TrustedKey

METADATA_DIR = "metadata"
ROOT, TARGETS, SNAPSHOT, TIMESTAMP = "root", "targets", "snapshot", "timestamp"
ROLES = (ROOT, TARGETS, SNAPSHOT, TIMESTAMP)
ONLINE_ROLES = (TARGETS, SNAPSHOT, TIMESTAMP)  # signed by publish/watch; root is signed by `lorien trust`
DEFAULT_EXPIRY_DAYS = {ROOT: 365.0, TARGETS: 30.0, SNAPSHOT: 7.0, TIMESTAMP: 1.0}
HASH = "sha256"


def metadata_path(role: str, version: int | None = None) -> str:
    """Repository-relative path of a role's metadata file (``version`` for the versioned name)."""
    return f"{METADATA_DIR}/{role}.json" if version is None else f"{METADATA_DIR}/{version}.{role}.json"


def hash_prefixed(target_path: str, sha256: str) -> str:
    """The name a TUF client fetches a target under with consistent snapshots: ``dir/<sha256>.<name>``."""
    directory, slash, name = target_path.rpartition("/")
    return f"{directory}{slash}{sha256}.{name}"


def tuf_key(public: TrustedKey | SigningKey) -> SSlibKey:
    """A lorien key file's public half as a TUF key (python-tuf computes its key id)."""
    key = public.private.public_key() if isinstance(public, SigningKey) else public.public
    return SSlibKey.from_crypto(key)


def signer(key: SigningKey) -> CryptoSigner:
    return CryptoSigner(key.private, tuf_key(key))


def utc(days: float, now: datetime | None = None) -> datetime:
    """``now`` + ``days``, to the second (TUF expiry times have no fractions)."""
    moment = (now or datetime.now(UTC)) + timedelta(days=days)
    return moment.replace(microsecond=0)


def parse_metadata(data: bytes, where: str, role: str | None = None) -> Metadata[Any]:
    """Strictly parse TUF metadata (``role``: the type it must be), or ManifestError naming ``where``."""
    try:
        metadata: Metadata[Any] = Metadata.from_bytes(data)
    except DeserializationError as error:
        raise ManifestError(f"{where}: not valid TUF metadata ({error})") from None
    if role is not None and metadata.signed.type != role:
        raise ManifestError(f"{where}: is {metadata.signed.type} metadata, expected {role}")
    return metadata


@dataclass(frozen=True)
class RoleSummary:
    """One role as ``lorien inspect`` and the pages show it."""

    role: str
    version: int | None
    expires: str | None
    threshold: int
    keyids: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "version": self.version,
            "expires": self.expires,
            "threshold": self.threshold,
            "keyids": list(self.keyids),
        }


def summarize(root: Root, signed: dict[str, Signed]) -> list[RoleSummary]:
    """Roles, thresholds, key ids, versions and expiries from a root and the other roles' ``signed`` parts."""
    rows = []
    for role in ROLES:
        current = root if role == ROOT else signed.get(role)
        delegation = root.roles[role]
        rows.append(
            RoleSummary(
                role,
                current.version if current is not None else None,
                _timestamp(current.expires) if current is not None else None,
                delegation.threshold,
                tuple(sorted(delegation.keyids)),
            )
        )
    return rows


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def lorien_error(error: Exception, where: str) -> LorienError:
    """A python-tuf exception as the lorien error of the same cause (exit code, API status, advice)."""
    if isinstance(error, LorienError):
        return error
    text = f"{where}: {error}"
    if isinstance(error, tuf_errors.DownloadHTTPError) and error.status_code == 404:
        return NetworkError(
            f"{text}; the repository has no such TUF metadata: is it a signed repository (published with "
            "--sign-key), and is this the right repo_url? A device with trusted_root only uses signed repositories"
        )
    cause = error.__cause__
    if isinstance(error, tuf_errors.DownloadError) and isinstance(cause, LorienError):
        return cause
    if isinstance(error, tuf_errors.ExpiredMetadataError):
        return FreshnessError(
            f"{text}; the repository's metadata expired: the publisher must renew it (lorien watch renews "
            "timestamp and snapshot automatically), or check this device's clock"
        )
    if isinstance(error, tuf_errors.BadVersionNumberError):
        return FreshnessError(f"{text}; older metadata than this device already trusts (rollback or stale mirror)")
    if isinstance(error, tuf_errors.UnsignedMetadataError):
        return SignatureError(
            f"{text}; not signed by enough of the keys the trusted root names (a forged or mis-signed repository, "
            "or a key rotation this device has not followed)"
        )
    if isinstance(error, tuf_errors.LengthOrHashMismatchError):
        return SignatureError(f"{text}; the file does not match what the signed metadata says (tampered or mixed)")
    if isinstance(error, tuf_errors.DownloadLengthMismatchError):
        return NetworkError(f"{text}; the server sent more than the signed metadata allows")
    if isinstance(error, tuf_errors.DownloadError):
        return NetworkError(text)
    if isinstance(error, tuf_errors.RepositoryError):
        return SignatureError(f"{text}; the repository's TUF metadata is inconsistent or forged")
    return SignatureError(text)
