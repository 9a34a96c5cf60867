"""device.trusted with bytes and a clock only: no server, no files, no sleeping."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lorien.device.trusted import AcceptedManifest, verify_manifest
from lorien.repo.errors import FreshnessError, ManifestError, SignatureError
from lorien.repo.fingerprint import Fingerprint
from lorien.repo.layout import blob_path, manifest_path
from lorien.repo.manifest import Manifest, VersionEntry, format_timestamp
from lorien.repo.signing import SigningKey, TrustedKey, key_id, sign_document
from lorien.repo.trust import SignedDocument, TrustPolicy

REPO = "http://repo.example/"
FAMILY = "classifier"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _keys() -> tuple[SigningKey, TrustedKey]:
    private = Ed25519PrivateKey.generate()
    keyid = key_id(private.public_key())
    return SigningKey(private, keyid, "test"), TrustedKey(private.public_key(), keyid, "test")


PUBLISHER, TRUSTED = _keys()
STRANGER, _ = _keys()
SIGNED = TrustPolicy((TRUSTED,))


def _manifest_bytes(sequence: int = 5, family: str = FAMILY, expires: datetime = NOW + timedelta(days=7)) -> bytes:
    sha = hashlib.sha256(b"model 1.0.0").hexdigest()
    fingerprint = Fingerprint("tflite", 4096, "a" * 32, "b" * 32, "c" * 32, "d" * 16)
    entry = VersionEntry("1.0.0", "model.tflite", 4096, sha, "e" * 32, fingerprint, blob_path(sha, "tflite"))
    manifest = Manifest(
        family, sequence, format_timestamp(NOW), "1.0.0", (entry,), expires=format_timestamp(expires)
    )
    return manifest.to_bytes()


def _signed(data: bytes, key: SigningKey = PUBLISHER, family: str = FAMILY) -> SignedDocument:
    return SignedDocument(data, sign_document(data, manifest_path(family), [key]))


def _verify(document: SignedDocument, accepted: AcceptedManifest | None = None, policy: TrustPolicy = SIGNED):
    return verify_manifest(document, repo_url=REPO, family=FAMILY, accepted=accepted, policy=policy, now=NOW)


def test_a_good_manifest_gives_the_manifest_and_the_record_to_persist() -> None:
    data = _manifest_bytes()
    verified = _verify(_signed(data))
    assert verified.manifest.sequence == 5 and verified.manifest.latest == "1.0.0"
    record = verified.record
    assert (record.repo_url, record.family, record.sequence) == (REPO, FAMILY, 5)
    assert record.sha256 == hashlib.sha256(data).hexdigest() and record.signed_by == TRUSTED.keyid
    assert record.at == "2026-06-01T12:00:00Z"
    assert AcceptedManifest.from_dict(record.to_dict()) == record
    assert _verify(_signed(data), accepted=record).record.sequence == 5  # the same bytes again: fine


def test_one_changed_byte_is_refused() -> None:
    data = _manifest_bytes()
    document = _signed(data)
    tampered = bytearray(data)
    tampered[len(data) // 2] ^= 0x01
    with pytest.raises(SignatureError, match="signature is for other bytes"):
        _verify(replace(document, data=bytes(tampered)))


def test_a_key_that_is_not_trusted_is_refused_and_so_is_no_signature() -> None:
    with pytest.raises(SignatureError, match="none of which is trusted"):
        _verify(_signed(_manifest_bytes(), key=STRANGER))
    with pytest.raises(SignatureError, match=r"no signature \(HTTP 404\)"):
        _verify(SignedDocument(_manifest_bytes(), None, "HTTP 404"))


def test_insecure_mode_uses_a_badly_signed_manifest_unsigned() -> None:
    insecure = TrustPolicy((TRUSTED,), allow_unsigned=True)
    verified = _verify(_signed(_manifest_bytes(), key=STRANGER), policy=insecure)
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
    # signed for this family's path, so only the family check can catch it
    with pytest.raises(ManifestError, match="is for family 'detector', this device runs 'classifier'"):
        _verify(_signed(data, family=FAMILY))
    with pytest.raises(SignatureError, match=r"not 'classifier/manifest\.json'"):
        _verify(_signed(data, family="detector"))


def test_a_record_of_an_unsigned_manifest_does_not_pin_signed_mode() -> None:
    pinned = AcceptedManifest(REPO, FAMILY, 99, "0" * 64, None, None, "2026-05-01T00:00:00Z")
    assert _verify(_signed(_manifest_bytes(sequence=5)), accepted=pinned).record.sequence == 5
    insecure = TrustPolicy((TRUSTED,), allow_unsigned=True)  # while insecure, the record still counts
    with pytest.raises(FreshnessError, match="lower than 99"):
        _verify(_signed(_manifest_bytes(sequence=5)), accepted=pinned, policy=insecure)
    signed_pin = replace(pinned, signed_by=TRUSTED.keyid)
    with pytest.raises(FreshnessError, match="lower than 99"):
        _verify(_signed(_manifest_bytes(sequence=5)), accepted=signed_pin)
