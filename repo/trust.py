"""Deciding whether repository metadata may be used: signature first, then parsing, then freshness.

Data flow for one document (a family manifest or ``index.json``)::

    fetch <path>.sig and <path> (bounded, read_signed) ─▶ verify the exact bytes against the trusted keys
        (verify_signature, no I/O: repo.signing) ─▶ parse (repo.manifest, strict)
        ─▶ freshness (check_freshness): not expired, sequence not below the highest accepted

``read_verified`` is the first two steps; a caller that checks more (the device) passes all four to ``read_signed``.

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
from typing import TypeVar

from lorien.repo.errors import FreshnessError, NetworkError, SignatureError
from lorien.repo.fetch import Fetcher
from lorien.repo.limits import DEFAULT_LIMITS, Limits
from lorien.repo.manifest import Manifest
from lorien.repo.signing import TrustedKey, signature_path, verify_document

log = logging.getLogger(__name__)

SIGNATURE_ATTEMPTS = 3
T = TypeVar("T")


@dataclass(frozen=True)
class TrustPolicy:
    trusted_keys: tuple[TrustedKey, ...] = ()
    allow_unsigned: bool = False  # insecure: use metadata without a valid signature (logged loudly)
    limits: Limits = DEFAULT_LIMITS


@dataclass(frozen=True)
class VerifiedDocument:
    data: bytes
    keyid: str | None  # None: used unsigned, by policy


@dataclass(frozen=True)
class SignedDocument:
    """A document's bytes as fetched, with its detached signature. ``signature`` is None when none was fetched
    (no trusted keys) or fetching it failed (``missing`` says why)."""

    data: bytes
    signature: bytes | None = None
    missing: str = ""


def verify_signature(document: SignedDocument, path: str, policy: TrustPolicy) -> VerifiedDocument:
    """The document once its signature checks out (or unsigned use is allowed), else SignatureError. No I/O."""
    if not policy.trusted_keys:
        if not policy.allow_unsigned:
            raise SignatureError(f"{path}: no trusted keys configured to verify it with")
        log.warning("INSECURE: using %s without verifying it (no trusted keys)", path)
        return VerifiedDocument(document.data, None)
    try:
        if document.signature is None:
            raise SignatureError(
                f"{path}: no signature ({document.missing}); sign the repository with `lorien publish --sign-key`, "
                "or set insecure_allow_unsigned = true to accept unsigned metadata (anyone on the path could then "
                "install anything)"
            )
        keyid = verify_document(document.data, path, document.signature, policy.trusted_keys, limits=policy.limits)
    except SignatureError as error:
        if not policy.allow_unsigned:
            raise
        log.warning("INSECURE: using %s without a valid signature (%s)", path, error)
        return VerifiedDocument(document.data, None)
    return VerifiedDocument(document.data, keyid)


def read_signed(
    fetcher: Fetcher,
    path: str,
    policy: TrustPolicy,
    accept: Callable[[SignedDocument], T],
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Fetch ``<path>.sig`` and ``path`` (bounded) and return ``accept(document)``. While ``accept`` raises
    SignatureError, both are fetched again (``SIGNATURE_ATTEMPTS`` in all, one second apart); other errors end it."""
    if not policy.trusted_keys:  # nothing could verify a signature: fetch none (nor the document, unless allowed)
        data = fetcher.read_document(path, policy.limits.max_document_bytes) if policy.allow_unsigned else b""
        return accept(SignedDocument(data))
    last: SignatureError | None = None
    for attempt in range(SIGNATURE_ATTEMPTS):
        if attempt:
            sleep(1.0)
        try:
            signature, missing = fetcher.read_document(signature_path(path), policy.limits.max_signature_bytes), ""
        except NetworkError as error:
            signature, missing = None, str(error)
        data = fetcher.read_document(path, policy.limits.max_document_bytes)
        try:
            return accept(SignedDocument(data, signature, missing))
        except SignatureError as error:
            last = error
        log.warning("%s: %s (attempt %d of %d)", path, last, attempt + 1, SIGNATURE_ATTEMPTS)
    assert last is not None
    raise last


def read_verified(
    fetcher: Fetcher, path: str, policy: TrustPolicy, sleep: Callable[[float], None] = time.sleep
) -> VerifiedDocument:
    """The bytes of ``path`` once their signature checks out (or unsigned use is allowed), else SignatureError."""
    return read_signed(fetcher, path, policy, lambda document: verify_signature(document, path, policy), sleep)


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
