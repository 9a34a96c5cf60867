"""device.trusted with TUF-verified bytes and a clock only: no server, no files, no sleeping. (The TUF verification
that comes before it is tested in tests/test_tuf.py.)"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from lorien.device.trusted import AcceptedManifest, verify_manifest
from lorien.repo.errors import FreshnessError, ManifestError
from lorien.repo.fingerprint import Fingerprint
from lorien.repo.layout import blob_path
from lorien.repo.manifest import Manifest, VersionEntry, format_timestamp
from lorien.repo.trust import TrustPolicy, VerifiedDocument

REPO = "http://repo.example/"
FAMILY = "classifier"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


SIGNED_BY = "tuf targets v3 (root v1)"
SIGNED = TrustPolicy(b"{}")  # a trusted root is configured (its bytes are only used by repo.trust)


def _manifest_bytes(sequence: int = 5, family: str = FAMILY, expires: datetime = NOW + timedelta(days=7)) -> bytes:
    sha = hashlib.sha256(b"model 1.0.0").hexdigest()
    fingerprint = Fingerprint("tflite", 4096, "a" * 32, "b" * 32, "c" * 32, "d" * 16)
    entry = VersionEntry("1.0.0", "model.tflite", 4096, sha, "e" * 32, fingerprint, blob_path(sha, "tflite"))
    manifest = Manifest(
        family, sequence, format_timestamp(NOW), "1.0.0", (entry,), expires=format_timestamp(expires)
    )
    return manifest.to_bytes()


def _signed(data: bytes) -> VerifiedDocument:
    return VerifiedDocument(data, SIGNED_BY)


def _verify(document: VerifiedDocument, accepted: AcceptedManifest | None = None, policy: TrustPolicy = SIGNED):
    return verify_manifest(document, repo_url=REPO, family=FAMILY, accepted=accepted, policy=policy, now=NOW)


def test_a_good_manifest_gives_the_manifest_and_the_record_to_persist() -> None:
    data = _manifest_bytes()
    verified = _verify(_signed(data))
    assert verified.manifest.sequence == 5 and verified.manifest.latest == "1.0.0"
    record = verified.record
    assert (record.repo_url, record.family, record.sequence) == (REPO, FAMILY, 5)
    assert record.sha256 == hashlib.sha256(data).hexdigest() and record.signed_by == SIGNED_BY
    assert record.at == "2026-06-01T12:00:00Z"
    assert AcceptedManifest.from_dict(record.to_dict()) == record
    assert _verify(_signed(data), accepted=record).record.sequence == 5  # the same bytes again: fine


def test_a_manifest_used_unsigned_by_policy_is_recorded_as_unsigned() -> None:
    insecure = TrustPolicy(b"{}", allow_unsigned=True)
    verified = _verify(VerifiedDocument(_manifest_bytes(), None), policy=insecure)
    assert verified.record.signed_by is None


def test_an_expired_manifest_is_refused() -> None:
    with pytest.raises(FreshnessError, match="expired at"):
        _verify(_signed(_manifest_bytes(expires=NOW - timedelta(seconds=1))))


def test_a_lower_sequence_than_accepted_is_refused() -> None:
    accepted = _verify(_signed(_manifest_bytes(sequence=7))).record
    with pytest.raises(FreshnessError, match="sequence 5 is lower than 7"):
        _verify(_signed(_manifest_bytes(sequence=5)), accepted=accepted)
    assert _verify(_signed(_manifest_bytes(sequence=8)), accepted=accepted).record.sequence == 8


def test_the_same_sequence_with_other_bytes_is_a_fork() -> None:
    accepted = _verify(_signed(_manifest_bytes())).record
    other = _manifest_bytes(expires=NOW + timedelta(days=8))  # same sequence 5, other content
    with pytest.raises(FreshnessError, match="already accepted with different content"):
        _verify(_signed(other), accepted=accepted)


def test_a_manifest_of_another_family_is_refused() -> None:
    data = _manifest_bytes(family="detector")
    # a signed target, but of another family: only the family check can catch it
    with pytest.raises(ManifestError, match="is for family 'detector', this device runs 'classifier'"):
        _verify(_signed(data))


def test_a_record_of_an_unsigned_manifest_does_not_pin_signed_mode() -> None:
    pinned = AcceptedManifest(REPO, FAMILY, 99, "0" * 64, None, None, "2026-05-01T00:00:00Z")
    assert _verify(_signed(_manifest_bytes(sequence=5)), accepted=pinned).record.sequence == 5
    insecure = TrustPolicy(b"{}", allow_unsigned=True)  # while insecure, the record still counts
    with pytest.raises(FreshnessError, match="lower than 99"):
        _verify(_signed(_manifest_bytes(sequence=5)), accepted=pinned, policy=insecure)
    signed_pin = replace(pinned, signed_by="0" * 64)  # an old-scheme record (a key id) still pins
    with pytest.raises(FreshnessError, match="lower than 99"):
        _verify(_signed(_manifest_bytes(sequence=5)), accepted=signed_pin)
