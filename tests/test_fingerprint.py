"""Mallorn fingerprint, bit-exact, checked against values computed here with hashlib only."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from lorien.repo.errors import FingerprintError
from lorien.repo.fingerprint import detect_format, fingerprint, fingerprint_bytes, sampled_hash
from tests.support.processes import run_lorien

KIB = 1024


def expected(data: bytes) -> dict:
    """Independent reimplementation of the spec in PRODUCT.md."""
    if len(data) < 68 * KIB:
        header = tail = hashlib.md5(data).digest()
    else:
        header, tail = hashlib.md5(data[: 64 * KIB]).digest(), hashlib.md5(data[-4 * KIB :]).digest()
    combined = bytes(a ^ b for a, b in zip(header, tail, strict=True)).hex()
    return {
        "file_size": len(data),
        "header_hash": header.hex(),
        "tail_hash": tail.hex(),
        "combined_hash": combined,
        "short_id": combined[:16],
    }


def _write(tmp_path: Path, size: int, seed: int = 7) -> tuple[Path, bytes]:
    data = hashlib.shake_256(str(seed).encode()).digest(size)
    path = tmp_path / f"model-{size}.bin"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("size", [4, 1000, 68 * KIB - 1, 68 * KIB, 68 * KIB + 1, 3 * 1024 * KIB + 17])
def test_fingerprint_matches_independent_hashlib_values(tmp_path: Path, size: int) -> None:
    path, data = _write(tmp_path, size)
    result = fingerprint(path).to_dict()
    for key, value in expected(data).items():
        assert result[key] == value, key
    assert fingerprint_bytes(data) == fingerprint(path)


def test_short_files_have_the_all_zero_short_id_flaw(tmp_path: Path) -> None:
    a, _ = _write(tmp_path, 1000, seed=1)
    b, _ = _write(tmp_path, 2000, seed=2)
    fa, fb = fingerprint(a), fingerprint(b)
    assert fa.combined_hash == "0" * 32 and fa.short_id == fb.short_id == "0" * 16
    assert fa.short_id_is_ambiguous
    assert not fa.matches(fb), "identity must use size + header/tail hashes, not short_id"


def test_exactly_68_kib_uses_the_split_rule(tmp_path: Path) -> None:
    path, data = _write(tmp_path, 68 * KIB)
    result = fingerprint(path)
    assert result.header_hash == hashlib.md5(data[: 64 * KIB]).hexdigest()
    assert result.tail_hash == hashlib.md5(data[-4 * KIB :]).hexdigest()
    assert not result.short_id_is_ambiguous


@pytest.mark.parametrize("size", [0, 1, 3])
def test_files_under_4_bytes_are_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "tiny"
    path.write_bytes(b"x" * size)
    with pytest.raises(FingerprintError, match="at least 4 bytes"):
        fingerprint(path)


def test_missing_file_and_directory_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FingerprintError, match="cannot read"):
        fingerprint(tmp_path / "absent.tflite")
    with pytest.raises(FingerprintError, match="not a regular file"):
        fingerprint(tmp_path)


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b"\x18\x00\x00\x00TFL3", "tflite"),
        (b"\x1c\x00\x00\x00TFL3", "tflite"),
        (b"\x20\x00\x00\x00TFL3", "tflite"),
        (b"\x14\x00\x00\x00TFL3", "unknown"),
        (b"GGUF\x03\x00\x00\x00", "gguf"),
        (b"\x08\x07\x12\x04", "onnx"),
        (b"\x12\x00\x00\x00", "onnx"),
        (struct.pack("<Q", 123) + b'{"a":1}', "safetensors"),
        (struct.pack("<Q", 1_000_000) + b"{", "unknown"),
        (struct.pack("<Q", 0) + b"{", "unknown"),
        (b"PK\x03\x04", "unknown"),
    ],
)
def test_format_rules(head: bytes, fmt: str) -> None:
    assert detect_format(head) == fmt


def test_cli_json_keys(tmp_path: Path) -> None:
    path, data = _write(tmp_path, 100 * KIB)
    result = run_lorien("fingerprint", path, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    mallorn_fields = {"format", "file_size", "header_hash", "tail_hash", "combined_hash", "short_id"}
    assert set(document) == mallorn_fields | {"sampled_sha256"}
    assert document["combined_hash"] == expected(data)["combined_hash"]
    assert document["sampled_sha256"] == sampled_hash(path)


def test_cli_error_exit_code(tmp_path: Path) -> None:
    result = run_lorien("fingerprint", tmp_path / "nope.tflite")
    assert result.returncode == 2
    assert "nope.tflite" in result.stderr and "cannot read" in result.stderr
