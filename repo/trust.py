"""Deciding whether repository metadata may be used: TUF verification first, then parsing, then freshness.

Data flow for one document (a family manifest or ``index.json``)::

    TufClient.refresh (root chain, timestamp, snapshot, targets: python-tuf) ─▶ read_target(path): the bytes
        under their hash-prefixed name, checked against the signed length and SHA-256 (read_trusted)
        ─▶ parse (repo.manifest, strict) ─▶ freshness (check_freshness): not expired, sequence not below the
        highest accepted

Unsigned metadata is only used when the caller explicitly allows it (``insecure_allow_unsigned``), and that is
logged as a warning every time: with no trusted root at all, or when TUF verification fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lorien.repo.errors import FreshnessError, ManifestError, SignatureError, VerificationError
from lorien.repo.fetch import Fetcher
from lorien.repo.limits import DEFAULT_LIMITS, Limits
from lorien.repo.manifest import Manifest
from lorien.repo.tufclient import TufClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrustPolicy:
    trusted_root: bytes | None = None  # the repository's initial root.json (TUF); None: nothing can verify
    allow_unsigned: bool = False  # insecure: use metadata without valid signatures (logged loudly)
    limits: Limits = DEFAULT_LIMITS

    @property
    def signed(self) -> bool:
        """Whether only signed metadata is used (a trusted root, and unsigned use not allowed)."""
        return self.trusted_root is not None and not self.allow_unsigned


@dataclass(frozen=True)
class VerifiedDocument:
    data: bytes
    signed_by: str | None  # "tuf targets vN (root vM)"; None: used unsigned, by policy
    client: TufClient | None = None  # the refreshed client that verified it (None: unsigned)


def read_trusted(fetcher: Fetcher, path: str, policy: TrustPolicy, metadata_dir: Path) -> VerifiedDocument:
    """The bytes of ``path`` once TUF vouches for them (or unsigned use is allowed), else a VerificationError
    (SignatureError, FreshnessError) or ManifestError; NetworkError when the repository cannot be read.

    ``metadata_dir`` keeps the trusted TUF metadata between calls (rollback protection across restarts)."""
    if policy.trusted_root is None:
        if not policy.allow_unsigned:
            raise SignatureError(f"{path}: no trusted root.json configured to verify it with")
        log.warning("INSECURE: using %s without verifying it (no trusted root)", path)
        return VerifiedDocument(fetcher.read_document(path, policy.limits.max_document_bytes), None)
    try:
        client = TufClient(fetcher, policy.trusted_root, metadata_dir, policy.limits)
        state = client.refresh()
        data = client.read_target(path)
    except (VerificationError, ManifestError) as error:
        if not policy.allow_unsigned:
            raise
        log.warning("INSECURE: using %s without a valid signature (%s)", path, error)
        return VerifiedDocument(fetcher.read_document(path, policy.limits.max_document_bytes), None)
    return VerifiedDocument(data, f"tuf targets v{state.targets_version} (root v{state.root_version})", client)


def check_freshness(manifest: Manifest, highest_sequence: int, where: str, now: datetime | None = None) -> None:
    """Refuse an expired manifest (freeze attack) or one older than the newest already accepted (rollback)."""
    now = now or datetime.now(UTC)
    expires = manifest.expires_at()
    if expires is not None and expires <= now:
        raise FreshnessError(
            f"{where}: expired at {manifest.expires} (now {now:%Y-%m-%dT%H:%M:%SZ}); the repository is stale or "
            "being replayed — the publisher must re-publish (lorien watch re-signs before expiry), or check this "
            "device's clock"
        )
    if manifest.sequence < highest_sequence:
        raise FreshnessError(
            f"{where}: sequence {manifest.sequence} is lower than {highest_sequence}, which this device already "
            "accepted: refusing an older manifest (rollback attack or a stale mirror)"
        )
