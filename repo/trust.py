"""Deciding whether repository metadata may be used: signature first, then parsing, then freshness.

Data flow for one document (a family manifest or ``index.json``)::

    fetch <path>.sig and <path> (bounded) ─▶ verify the exact bytes against the trusted keys (repo.signing)
        ─▶ parse (repo.manifest, strict)  ─▶ freshness: not expired, sequence not below the highest accepted

Unsigned metadata is only used when the caller explicitly allows it (``insecure_allow_unsigned``), and that is
logged as a warning every time. A signature that does not match is fetched again (twice, one second apart)
before being refused, because a device can read a manifest and its ``.sig`` on either side of a publish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from lorien.repo.errors import FreshnessError, NetworkError, SignatureError
from lorien.repo.fetch import Fetcher
from lorien.repo.limits import DEFAULT_LIMITS, Limits
from lorien.repo.manifest import Manifest
from lorien.repo.signing import TrustedKey, signature_path, verify_document

log = logging.getLogger(__name__)

SIGNATURE_ATTEMPTS = 3


@dataclass(frozen=True)
class TrustPolicy:
    trusted_keys: tuple[TrustedKey, ...] = ()
    allow_unsigned: bool = False  # insecure: use metadata without a valid signature (logged loudly)
    limits: Limits = DEFAULT_LIMITS


@dataclass(frozen=True)
class VerifiedDocument:
    data: bytes
    keyid: str | None  # None: used unsigned, by policy


def read_verified(
    fetcher: Fetcher, path: str, policy: TrustPolicy, sleep: Callable[[float], None] = time.sleep
) -> VerifiedDocument:
    """The bytes of ``path`` once their signature checks out (or unsigned use is allowed), else SignatureError."""
    if not policy.trusted_keys:  # nothing could verify a signature: do not fetch one
        if not policy.allow_unsigned:
            raise SignatureError(f"{path}: no trusted keys configured to verify it with")
        log.warning("INSECURE: using %s without verifying it (no trusted keys)", path)
        return VerifiedDocument(fetcher.read_document(path, policy.limits.max_document_bytes), None)
    last: SignatureError | None = None
    for attempt in range(SIGNATURE_ATTEMPTS):
        if attempt:
            sleep(1.0)
        try:
            signature = fetcher.read_document(signature_path(path), policy.limits.max_signature_bytes)
        except NetworkError as error:
            signature, missing = None, error
        data = fetcher.read_document(path, policy.limits.max_document_bytes)
        if signature is None:
            last = SignatureError(
                f"{path}: no signature ({missing}); sign the repository with `lorien publish --sign-key`, or set "
                "insecure_allow_unsigned = true to accept unsigned metadata (anyone on the path could then "
                "install anything)"
            )
        else:
            try:
                keyid = verify_document(data, path, signature, policy.trusted_keys, limits=policy.limits)
                return VerifiedDocument(data, keyid)
            except SignatureError as error:
                last = error
        if policy.allow_unsigned:
            log.warning("INSECURE: using %s without a valid signature (%s)", path, last)
            return VerifiedDocument(data, None)
        log.warning("%s: %s (attempt %d of %d)", path, last, attempt + 1, SIGNATURE_ATTEMPTS)
    assert last is not None
    raise last


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
