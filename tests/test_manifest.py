"""Manifest/index model: canonical bytes, strict parsing with messages naming the field, schema files."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from lorien.repo.errors import ManifestError
from lorien.repo.layout import blob_path, checked_relative_path
from lorien.repo.manifest import parse_index, parse_manifest

SCHEMAS = Path(__file__).resolve().parent.parent / "repo" / "schemas"


def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


def test_published_documents_validate_against_json_schemas(published: Path) -> None:
    index = json.loads((published / "index.json").read_text())
    jsonschema.validate(index, _schema("index.schema.json"))
    for family in index["families"]:
        jsonschema.validate(
            json.loads((published / family["manifest"]).read_text()), _schema("manifest.schema.json")
        )


def test_parse_serialize_round_trip_is_byte_identical(published: Path) -> None:
    raw = (published / "classifier" / "manifest.json").read_bytes()
    assert parse_manifest(raw).to_bytes() == raw
    raw_index = (published / "index.json").read_bytes()
    assert parse_index(raw_index).to_bytes() == raw_index


def _mutated(published: Path, change) -> bytes:
    document = json.loads((published / "classifier" / "manifest.json").read_text())
    change(document)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(schema=2), "format version 2 is not supported"),
        (lambda d: d.pop("latest"), "missing field 'latest'"),
        (lambda d: d.update(sequence="3"), "sequence: expected an integer"),
        (lambda d: d.update(latest="9.9"), "latest: '9.9' is not one of the listed versions"),
        (lambda d: d["versions"][0].update(size=-1), r"versions\[0\].size: -1 is outside"),
        (lambda d: d["versions"][0].update(sha256="XYZ"), r"versions\[0\].sha256"),
        (lambda d: d["versions"][0].update(blob="../../etc/passwd"), "forbidden component"),
        (lambda d: d["versions"][0].update(blob="/etc/passwd"), "absolute"),
        (lambda d: d["patches"][0].update(blob="blobs/sha256/00/" + "0" * 64), "not the content address"),
        (lambda d: d["patches"][0].update(source_sha256="0" * 64), "from-sha256 disagrees"),
        (lambda d: d["patches"][0].update({"from": "7.7.7"}), "'from' version '7.7.7' is not listed"),
        (lambda d: d["versions"].append(d["versions"][0]), "listed twice"),
        (lambda d: d.update(family="../x"), "family"),
    ],
)
def test_invalid_manifests_are_refused_with_a_precise_message(published: Path, change, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(_mutated(published, change), "classifier/manifest.json")


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"\xff\xfe", b'{"schema": 1}'])
def test_garbage_is_refused(raw: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(raw)
    with pytest.raises(ManifestError):
        parse_index(raw)


def test_oversized_document_refused() -> None:
    with pytest.raises(ManifestError, match="document limit"):
        parse_manifest(b" " * (16 * 1024 * 1024 + 1))


def test_paths() -> None:
    digest = "ab" * 32
    assert blob_path(digest, "tflite") == f"blobs/sha256/ab/{digest}.tflite"
    assert blob_path(digest, "weird/ext") == f"blobs/sha256/ab/{digest}"
    for bad in ["", "/abs", "a/../b", "a//b", ".hidden/x", "a\\b", "./a"]:
        with pytest.raises(ManifestError):
            checked_relative_path(bad, "test")
