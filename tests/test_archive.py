"""Safe zip package extraction (repo/archive.py): good packages extract with digests; hostile ones (zip-slip,
absolute paths, links, special files, duplicates, zip bombs, lying sizes) are refused with nothing left behind."""

from __future__ import annotations

import hashlib
import stat
import struct
import zipfile
from pathlib import Path

import pytest

from lorien.repo.archive import extract_package, is_zip_package
from lorien.repo.bundle import BundleFile, bundle_digest, describe_directory
from lorien.repo.errors import PackageError
from lorien.repo.limits import DEFAULT_LIMITS


def _zip(path: Path, entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def _refused(tmp_path: Path, package: Path, message: str, limits=DEFAULT_LIMITS) -> None:
    staging = tmp_path / "staging"
    with pytest.raises(PackageError, match=message):
        extract_package(package, staging, limits)
    assert not staging.exists()


def test_good_package_extracts_with_digests_and_nested_paths(tmp_path: Path) -> None:
    files = {
        "model.onnx": b"\x08\x07" + b"m" * 5000,
        "model.onnx.data": bytes(range(256)) * 40,
        "tok/vocab.txt": b"a\nb\n",
    }
    staging = tmp_path / "staging"
    described = extract_package(_zip(tmp_path / "p.zip", files), staging)
    assert [f.path for f in described] == sorted(files)
    for entry in described:
        data = files[entry.path]
        assert (staging / entry.path).read_bytes() == data
        assert entry == BundleFile(
            entry.path, len(data), hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()
        )
    assert bundle_digest(described) == bundle_digest(describe_directory(staging))


def test_bundle_digest_depends_on_paths_and_content() -> None:
    one = [BundleFile("a", 1, "0" * 64, "0" * 32), BundleFile("b", 1, "1" * 64, "0" * 32)]
    assert bundle_digest(one) == bundle_digest(list(reversed(one)))
    assert bundle_digest(one) != bundle_digest([BundleFile("a", 1, "1" * 64, "0" * 32), one[1]])
    assert bundle_digest(one) != bundle_digest([BundleFile("c", 1, "0" * 64, "0" * 32), one[1]])


@pytest.mark.parametrize(
    "name, message",
    [
        ("../evil.txt", "forbidden component"),
        ("a/../../evil.txt", "forbidden component"),
        ("/etc/evil", "absolute"),
        ("C:/evil", "absolute"),
        ("a\\..\\evil", "backslash"),
        (".hidden", "forbidden component"),
        ("a/b c", "characters outside"),
    ],
)
def test_bad_names_are_refused(tmp_path: Path, name: str, message: str) -> None:
    package = tmp_path / "p.zip"
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("ok.txt", b"fine")
        archive.writestr(zipfile.ZipInfo(name), b"evil")
    _refused(tmp_path, package, message)
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize(
    "kind, label",
    [(stat.S_IFLNK, "symbolic link"), (stat.S_IFIFO, "special file"), (stat.S_IFCHR, "special file")],
)
def test_links_and_special_files_are_refused(tmp_path: Path, kind: int, label: str) -> None:
    package = tmp_path / "p.zip"
    with zipfile.ZipFile(package, "w") as archive:
        info = zipfile.ZipInfo("link")
        info.external_attr = (kind | 0o777) << 16
        archive.writestr(info, b"/etc/passwd")
    _refused(tmp_path, package, label)


@pytest.mark.parametrize(
    "names",
    [["Model.onnx", "model.onnx"], ["caf\u00e9.txt", "cafe\u0301.txt"], ["a", "a/b"], ["x.txt", "x.txt"]],
)
@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_duplicate_names_are_refused(tmp_path: Path, names: list[str]) -> None:
    package = tmp_path / "p.zip"
    with zipfile.ZipFile(package, "w") as archive:
        for name in names:
            archive.writestr(zipfile.ZipInfo(name), b"data")
    # non-ASCII names fail the path rules first; either refusal is a clear error before anything is written
    _refused(tmp_path, package, "same file|also a directory|characters outside")


def test_too_many_files_and_too_many_bytes_are_refused(tmp_path: Path) -> None:
    limits = DEFAULT_LIMITS.with_overrides({"max_bundle_files": 3, "max_bundle_bytes": 100}, "test")
    many = _zip(tmp_path / "many.zip", {f"f{i}": b"x" for i in range(4)})
    _refused(tmp_path, many, "max_bundle_files", limits)
    big = _zip(tmp_path / "big.zip", {"a": b"x" * 60, "b": b"y" * 60})
    _refused(tmp_path, big, "more than 100 bytes", limits)


def test_high_ratio_entry_is_refused_as_a_zip_bomb(tmp_path: Path) -> None:
    bomb = _zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(8 << 20)})
    _refused(tmp_path, bomb, "zip bomb")


def _patch_sizes(package: Path, name: bytes, file_size: int) -> None:
    """Rewrite the declared uncompressed size of ``name`` in the local header and the central directory."""
    data = bytearray(package.read_bytes())
    for signature, size_at, name_len_at, header in ((b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46)):
        start = 0
        while (position := data.find(signature, start)) >= 0:
            (name_length,) = struct.unpack_from("<H", data, position + name_len_at)
            if bytes(data[position + header : position + header + name_length]) == name:
                struct.pack_into("<I", data, position + size_at, file_size)
            start = position + 4
    package.write_bytes(bytes(data))


@pytest.mark.parametrize("declared", [10, 5000])
def test_declared_size_that_lies_is_refused(tmp_path: Path, declared: int) -> None:
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        package = _zip(tmp_path / "lie.zip", {"ok.txt": b"fine", "data.bin": bytes(range(256)) * 4}, compression)
        _patch_sizes(package, b"data.bin", declared)
        _refused(tmp_path, package, "data.bin")


def test_corrupt_data_is_refused(tmp_path: Path) -> None:
    package = _zip(tmp_path / "crc.zip", {"data.bin": b"A" * 1000}, zipfile.ZIP_STORED)
    data = bytearray(package.read_bytes())
    data[data.find(b"AAAA") + 10] = ord("B")
    package.write_bytes(bytes(data))
    _refused(tmp_path, package, "damaged")


def test_not_a_zip_and_empty_zip_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip at all")
    _refused(tmp_path, junk, "not a readable zip")
    empty = _zip(tmp_path / "empty.zip", {"dir/": b""})
    _refused(tmp_path, empty, "no files")


def test_existing_staging_directory_is_not_reused(tmp_path: Path) -> None:
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "keep").write_bytes(b"old")
    with pytest.raises(Exception, match="staging"):
        extract_package(_zip(tmp_path / "p.zip", {"a": b"b"}), tmp_path / "staging")
    assert (tmp_path / "staging" / "keep").read_bytes() == b"old"


def test_package_names() -> None:
    assert is_zip_package("update.ZIP") and not is_zip_package("model.pt") and not is_zip_package("m.tflite")
