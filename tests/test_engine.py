"""Delta engine interface (Mallorn names), for every built-in engine: round trips and every way a patch can be bad."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lorien.repo.engine import (
    apply_patch,
    container,
    create_patch,
    get_engine,
    patch_info,
    verify_patch,
    zstd_dict,
)
from lorien.repo.errors import BadInputError, IntegrityError, PatchError
from lorien.repo.hashing import sha256_file

HEADER_SIZES = {"lorien": container.HEADER_SIZE, "zstd": zstd_dict.HEADER_SIZE}
TARGET_SHA_AT = {"lorien": 64, "zstd": 56}


@pytest.fixture(params=["lorien", "zstd"])
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    old = rng.standard_normal(300_000).astype(np.float32)
    new = old.copy()
    new[:20_000] += rng.standard_normal(20_000).astype(np.float32) * 1e-3
    (tmp_path / "old.bin").write_bytes(old.tobytes())
    (tmp_path / "new.bin").write_bytes(new.tobytes() + b"appended tail")
    return tmp_path / "old.bin", tmp_path / "new.bin"


def test_round_trip_is_byte_identical_and_small(pair: tuple[Path, Path], tmp_path: Path, engine: str) -> None:
    old, new = pair
    stats = create_patch(old, new, tmp_path / "p.patch", engine)
    assert stats.engine == engine
    assert stats.patch_size < 0.3 * new.stat().st_size
    result = apply_patch(old, tmp_path / "p.patch", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == new.read_bytes()
    assert result.verified and result.target_sha256 == sha256_file(new)


def test_patch_info_reports_header(pair: tuple[Path, Path], tmp_path: Path, engine: str) -> None:
    old, new = pair
    create_patch(old, new, tmp_path / "p.patch", engine)
    info = patch_info(tmp_path / "p.patch")
    assert info.source_size == old.stat().st_size and info.target_size == new.stat().st_size
    # the compact layout (versions 5 and 6: this pair is one COVERS segment) keeps the first 8 bytes of each
    digits = 64 if engine != "lorien" or info.format_version < container.COMPACT_VERSION else 16
    assert info.source_sha256 == sha256_file(old)[:digits] and info.target_sha256 == sha256_file(new)[:digits]
    assert info.patch_size == (tmp_path / "p.patch").stat().st_size


def test_verify_patch_writes_nothing(pair: tuple[Path, Path], tmp_path: Path, engine: str) -> None:
    old, new = pair
    create_patch(old, new, tmp_path / "p.patch", engine)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert verify_patch(old, tmp_path / "p.patch").verified
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_wrong_source_is_refused_and_output_untouched(
    pair: tuple[Path, Path], tmp_path: Path, engine: str
) -> None:
    old, new = pair
    create_patch(old, new, tmp_path / "p.patch", engine)
    (tmp_path / "out.bin").write_bytes(b"previous content")
    with pytest.raises(PatchError, match="another source model"):
        apply_patch(new, tmp_path / "p.patch", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == b"previous content"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("damage", ["truncate-header", "truncate-body", "flip-body", "bad-magic", "wrong-target"])
def test_corrupt_patches_fail_cleanly(pair: tuple[Path, Path], tmp_path: Path, engine: str, damage: str) -> None:
    old, new = pair
    patch = tmp_path / "p.patch"
    create_patch(old, new, patch, engine)
    data = bytearray(patch.read_bytes())
    HEADER_SIZE = HEADER_SIZES[engine]
    if damage == "truncate-header":
        data = data[: HEADER_SIZE - 5]
    elif damage == "truncate-body":
        data = data[: HEADER_SIZE + (len(data) - HEADER_SIZE) // 2]
    elif damage == "flip-body":
        data[HEADER_SIZE + 40] ^= 0xFF
    elif damage == "bad-magic":
        data[0:8] = b"NOTAPTCH"
    elif damage == "wrong-target":
        data[TARGET_SHA_AT[engine]] ^= 0x01  # first byte of the target SHA-256
    patch.write_bytes(bytes(data))
    with pytest.raises((PatchError, IntegrityError)):
        apply_patch(old, patch, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_unknown_engine_and_missing_files(pair: tuple[Path, Path], tmp_path: Path, engine: str) -> None:
    old, new = pair
    with pytest.raises(PatchError, match="unknown patch engine 'bsdiff'"):
        get_engine("bsdiff")
    with pytest.raises(PatchError, match="unknown patch engine"):
        create_patch(old, new, tmp_path / "p.patch", engine="bsdiff")
    with pytest.raises(BadInputError, match="does not exist"):
        create_patch(tmp_path / "absent", new, tmp_path / "p.patch")


def test_identical_and_unrelated_files(tmp_path: Path, engine: str) -> None:
    rng = np.random.default_rng(5)
    a = tmp_path / "a"
    a.write_bytes(rng.bytes(200_000))
    b = tmp_path / "b"
    b.write_bytes(rng.bytes(150_000))
    same = create_patch(a, a, tmp_path / "same.patch", engine)
    assert same.patch_size < 1000
    other = create_patch(a, b, tmp_path / "other.patch", engine)
    apply_patch(a, tmp_path / "other.patch", tmp_path / "b2")
    assert (tmp_path / "b2").read_bytes() == b.read_bytes()
    assert other.patch_size < b.stat().st_size * 1.01
