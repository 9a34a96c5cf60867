"""lorien's sampled hash (docs/fingerprint.md, "Sampled hash"), checked against the documented algorithm
re-implemented here with hashlib only, and its optional place in the manifest."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pytest

from lorien.repo.errors import FingerprintError, ManifestError
from lorien.repo.fingerprint import fingerprint, sample_offsets, sampled_hash, sampled_hash_bytes
from lorien.repo.manifest import parse_manifest

KIB = 1024


def documented(data: bytes) -> str:
    """SHA-256 of the 8-byte little-endian size, then the whole file (≤ 256 KiB) or 64 blocks of 4 KiB at
    floor(i * (size - 4096) / 63)."""
    size = len(data)
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    if size <= 256 * KIB:
        digest.update(data)
    else:
        for i in range(64):
            offset = i * (size - 4096) // 63
            digest.update(data[offset : offset + 4096])
    return digest.hexdigest()


@pytest.mark.parametrize("size", [0, 1, 4 * KIB, 256 * KIB, 256 * KIB + 1, 1024 * KIB + 123, 5_000_001])
def test_sampled_hash_follows_the_documented_algorithm(tmp_path: Path, size: int) -> None:
    data = hashlib.shake_256(b"sampled").digest(size)
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    assert sampled_hash(path) == sampled_hash_bytes(data) == documented(data)


def test_offsets_start_and_end_the_file_and_never_overlap() -> None:
    assert sample_offsets(256 * KIB) == [0]
    for size in (256 * KIB + 1, 300_000, 7_654_321):
        offsets = sample_offsets(size)
        assert len(offsets) == 64 and offsets[0] == 0 and offsets[-1] == size - 4096
        assert all(b - a >= 4096 for a, b in itertools.pairwise(offsets))


def test_it_separates_files_the_mallorn_fingerprint_cannot(tmp_path: Path) -> None:
    base = bytearray(hashlib.shake_256(b"base").digest(2_000_000))
    sampled_change, unsampled_change = bytearray(base), bytearray(base)
    middle = sample_offsets(len(base))[32]
    sampled_change[middle + 10] ^= 0xFF  # inside a sampled block, far from the first 64 KiB and last 4 KiB
    unsampled_change[middle + 4096 + 10] ^= 0xFF  # between two sampled blocks
    paths = []
    for name, data in (("a", base), ("b", sampled_change), ("c", unsampled_change)):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(bytes(data))
    fingerprints = [fingerprint(p) for p in paths]
    assert fingerprints[0].matches(fingerprints[1]) and fingerprints[0].matches(fingerprints[2])
    assert sampled_hash(paths[0]) != sampled_hash(paths[1])
    assert sampled_hash(paths[0]) == sampled_hash(paths[2])  # the documented limit: then only sha256 helps


def test_unreadable_file_is_a_fingerprint_error(tmp_path: Path) -> None:
    with pytest.raises(FingerprintError, match="cannot read"):
        sampled_hash(tmp_path / "absent")


def test_published_manifest_records_it_and_older_manifests_still_parse(published: Path, models_dir: Path) -> None:
    raw = (published / "classifier" / "manifest.json").read_bytes()
    manifest = parse_manifest(raw)
    for entry in manifest.versions:
        assert entry.sampled_sha256 == sampled_hash(models_dir / "classifier" / entry.filename)
    document = json.loads(raw)
    for version in document["versions"]:
        del version["sampled_sha256"]
    old = json.dumps(document).encode()
    parsed = parse_manifest(old)
    assert all(entry.sampled_sha256 is None for entry in parsed.versions)
    assert "sampled_sha256" not in parsed.to_bytes().decode()
    document["versions"][0]["sampled_sha256"] = "XYZ"
    with pytest.raises(ManifestError, match="sampled_sha256"):
        parse_manifest(json.dumps(document).encode())
