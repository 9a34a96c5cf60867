"""Whether this device may use a family manifest: TUF-verified bytes, the accepted record, a policy and a clock in —
a verified manifest and the record to persist out, or a typed refusal. No I/O: the pipeline (``updater``) fetches
and TUF-verifies the bytes (``repo.trust.read_trusted``) and persists the record before it uses the manifest.

Checks, in order (the first failure is the answer)::

    TUF: signed target, length and SHA-256 (repo.trust.read_trusted) SignatureError, FreshnessError (before this)
      ─▶ strict parse within limits, for this device's family        ManifestError
      ─▶ not expired at ``now``; sequence not below the accepted one  FreshnessError
      ─▶ the accepted sequence again only with the same bytes (fork)  FreshnessError

The accepted record is kept per repository + family. In signed mode a record of an unsigned manifest (accepted
while ``insecure_allow_unsigned`` was on) does not count: anyone could have pinned it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from lorien.repo.errors import FreshnessError, ManifestError
from lorien.repo.layout import manifest_path
from lorien.repo.manifest import Manifest, format_timestamp, parse_manifest
from lorien.repo.trust import TrustPolicy, VerifiedDocument, check_freshness


@dataclass(frozen=True)
class AcceptedManifest:
    """The newest manifest this device accepted from one repository and family (``state.json``)."""

    repo_url: str
    family: str
    sequence: int
    sha256: str  # of the manifest's bytes
    expires: str | None
    signed_by: (
        str | None
    )  # what vouched for it ("tuf targets vN (root vM)", or an old-scheme key id); None: unsigned
    at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AcceptedManifest:
        return cls(
            repo_url=data.get("repo_url", ""),
            family=data.get("family", ""),
            sequence=data.get("sequence", 0),
            sha256=data.get("sha256", ""),
            expires=data.get("expires"),
            signed_by=data.get("signed_by"),
            at=data.get("at", ""),
        )


@dataclass(frozen=True)
class Verified:
    manifest: Manifest
    record: AcceptedManifest  # to persist before the manifest is used


def verify_manifest(
    document: VerifiedDocument,
    *,
    repo_url: str,
    family: str,
    accepted: AcceptedManifest | None,
    policy: TrustPolicy,
    now: datetime,
) -> Verified:
    """Verify ``document`` (``<family>/manifest.json`` of ``repo_url``) against what was ``accepted`` before.

    Raises:
        ManifestError: malformed, outside ``policy.limits``, or for another family.
        FreshnessError: expired at ``now``, a lower sequence than accepted, or the same sequence with other bytes.
    """
    path = manifest_path(family)
    where = f"{repo_url}{path}"
    manifest = parse_manifest(document.data, where, policy.limits)
    if manifest.family != family:
        raise ManifestError(f"{where}: is for family {manifest.family!r}, this device runs {family!r}")
    if accepted is not None and accepted.signed_by is None and policy.signed:
        accepted = None
    check_freshness(manifest, accepted.sequence if accepted else 0, where, now)
    digest = hashlib.sha256(document.data).hexdigest()
    if accepted is not None and manifest.sequence == accepted.sequence and digest != accepted.sha256:
        raise FreshnessError(
            f"{where}: sequence {manifest.sequence} was already accepted with different content "
            "(a forked or replayed manifest); the publisher must publish a higher sequence"
        )
    record = AcceptedManifest(
        repo_url, family, manifest.sequence, digest, manifest.expires, document.signed_by, format_timestamp(now)
    )
    return Verified(manifest, record)
