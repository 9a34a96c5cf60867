"""Property-based fuzzing of the repository-document parsers (parse_manifest, parse_index) and path checks.

Contract under test: whatever bytes a repository serves, parsing either returns a document whose every invariant
holds (safe content-addressed blob paths, resolvable references, bounded sizes, valid names and timestamps, and
re-serialization that parses back to the same object) or raises :class:`~repo.errors.ManifestError` naming the
document — never KeyError, TypeError, ValueError, RecursionError, UnicodeError or anything else.

Run-time budget: 7,340 hypothesis examples in all (per-test ``max_examples`` in the ``@settings`` below, with
``deadline=None``), an exhaustive single-substitution sweep (73 manifest slots and 10 index slots, each deleted or
replaced by 94 hostile or edge values: ~7,800 parses) and ~180 fixed cases. Measured on a 2-core machine: ~18 s when
everything passes (hypothesis shrinking adds a few seconds when a property fails); keep it under ~40 s.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorien.repo.errors import ManifestError
from lorien.repo.fingerprint import FORMATS, Fingerprint
from lorien.repo.layout import blob_path, checked_blob_path, checked_relative_path
from lorien.repo.limits import DEFAULT_LIMITS, Limits
from lorien.repo.manifest import (
    Index,
    IndexEntry,
    Manifest,
    PatchEntry,
    VersionEntry,
    format_timestamp,
    parse_index,
    parse_manifest,
)

WHERE = "fuzz/manifest.json"
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --------------------------------------------------------------------------- a valid starting point


def _hex(seed: int, length: int) -> str:
    return (f"{seed:02x}" * length)[:length]


def _version(name: str, seed: int, size: int) -> VersionEntry:
    sha = _hex(seed, 64)
    return VersionEntry(
        version=name,
        filename=f"{name}.tflite",
        size=size,
        sha256=sha,
        md5=_hex(seed + 1, 32),
        fingerprint=Fingerprint("tflite", size, _hex(seed + 2, 32), _hex(seed + 3, 32), "0" * 32, "0" * 16),
        blob=blob_path(sha, "tflite"),
    )


def _patch(source: VersionEntry, target: VersionEntry, seed: int) -> PatchEntry:
    sha = _hex(seed, 64)
    return PatchEntry(
        id=f"{source.version}-to-{target.version}",
        source=source.version,
        target=target.version,
        engine="lorien",
        size=1234 + seed,
        sha256=sha,
        md5=_hex(seed + 1, 32),
        blob=blob_path(sha, "patch"),
        source_sha256=source.sha256,
        target_sha256=target.sha256,
    )


_V1, _V2, _V3 = _version("1.0.0", 0x11, 170_000), _version("1.1.0", 0x22, 170_004), _version("1.2.0", 0x33, 9)
BASE = Manifest(
    family="classifier",
    sequence=7,
    generated_at="2026-01-31T12:00:00Z",
    latest="1.2.0",
    versions=(_V1, _V2, _V3),
    patches=(_patch(_V1, _V3, 0x44), _patch(_V2, _V3, 0x55)),
    expires="2026-03-01T00:00:00Z",
    allow_downgrade=True,
)
BASE_RAW = BASE.to_bytes()
BASE_INDEX = Index(
    families=(
        IndexEntry("classifier", "1.2.0", "classifier/manifest.json"),
        IndexEntry("detector", "build7", "detector/manifest.json"),
    )
)
BASE_INDEX_RAW = BASE_INDEX.to_bytes()

# --------------------------------------------------------------------------- hostile values

SAFE_PATH = re.compile(r"[A-Za-z0-9._+/-]+")  # fullmatch: no `$`-before-newline loophole
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
FAMILY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
HEX64, HEX32, HEX16 = re.compile(r"[0-9a-f]{64}"), re.compile(r"[0-9a-f]{32}"), re.compile(r"[0-9a-f]{16}")
TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")

# Path tricks; "{sha}"/"{aa}" are filled with the digest of the entry they replace, so that the content-address
# check passes and only the trick itself can make the parser refuse the path.
PATH_TRICKS = [
    "../x",
    "/etc/passwd",
    "blobs/../../x",
    "blobs/sha256/aa/%2e%2e",
    "blobs\\x",
    "http://evil/x",
    "blobs/sha256/aa/x?y",
    "blobs/./x",
    ".hidden",
    "",
    "blobs/sha256/{aa}/{sha}/..",
    "blobs/sha256/{aa}/../../../etc/{sha}",
    "blobs/sha256/{aa}/{sha}/../../../../x",
    "/blobs/sha256/{aa}/{sha}",
    "//evil/blobs/{sha}",
    "blobs//sha256/{aa}/{sha}",
    "blobs/sha256/{aa}/{sha}/",
    "blobs/./sha256/{aa}/{sha}",
    "blobs/sha256/{aa}/.{sha}",
    "blobs\\sha256\\{aa}\\{sha}",
    "blobs/sha256/{aa}/{sha}\x00.tflite",
    "blobs/sha256/{aa}/{sha}\n",
    "blobs/sha256/{aa}/{sha}\r\n",
    "blobs/sha256/{aa}/{sha}\nHost: evil",
    "blobs/sha256/{aa}/{sha} ",
    "blobs/sha256/{aa}/{sha}\t",
    "blobs/sha256/{aa}/{sha}?x=1",
    "blobs/sha256/{aa}/{sha}#frag",
    "blobs/sha256/{aa}/{sha};x",
    "blobs/sha256/{aa}/%2e%2e/{sha}",
    "blobs/sha256/{aa}/%2F{sha}",
    "http://evil/blobs/{sha}",
    "blobs/http:{sha}",
    "file:///blobs/{sha}",
    "C:/blobs/{sha}",
    "C:\\blobs\\{sha}",
    "~/blobs/{sha}",
    "blobs/sha256/{aa}/{sha}\u2024tflite",  # one dot leader
    "blobs\u2215sha256\u2215{aa}\u2215{sha}",  # division slash
    "blobs/\uff0e\uff0e/{sha}",  # fullwidth full stops
    "bl\u043ebs/sha256/{aa}/{sha}",  # Cyrillic o
    "blobs/sha256/{aa}/{sha}\u200b",  # zero-width space
    "blobs/sha256/{aa}/\u202e{sha}",  # right-to-left override
    "blobs/sha256/{aa}/{sha}\ud800",  # lone surrogate
    "blobs/sha256/{aa}/" + "a" * 300 + "{sha}",
    "blobs/" + "a/" * 600 + "{sha}",
]
INDEX_PATH_TRICKS = [
    *(t.replace("{sha}", "manifest.json").replace("{aa}", "classifier") for t in PATH_TRICKS),
    "classifier/manifest.json\n",
    "classifier/../../etc/manifest.json",
    "./classifier/manifest.json",
]
PATH_TRICKS += ["{sha}", "models/sha256/{aa}/{sha}.tflite", "blobs"]  # safe paths, but not a blob's address
HOSTILE_STRINGS = [
    *(t.replace("{sha}", "0" * 64).replace("{aa}", "00") for t in PATH_TRICKS),
    "1.0.0\n",
    "classifier\n",
    "\n",
    "\x00",
    "\ud800",
    "blobs",
    "1.0.0/../x",
    "\uff11.0.0",  # fullwidth digit one
    "\uff12\uff10\uff12\uff16-01-31T12:00:00Z",  # fullwidth-digit year
    "2026-01-31T12:00:00Z\n",
    "2026-13-45T25:61:61Z",
    "0000-00-00T00:00:00Z",
    "x" * 5000,
    "a" * 64 + "\n",
    # well-formed but wrong: only the cross-checks (digest in blob name, references, latest) can refuse these
    "0" * 64,
    "blobs/sha256/00/" + "0" * 64 + ".tflite",
    "blobs/" + "0" * 64,
    "1.0.0",
    "1.1.0",
    "9.9.9",
]


class _Huge:
    """Placeholder for an integer literal too long for Python's int-from-string limit (4300 digits)."""


HUGE = _Huge()
HUGE_LITERAL = "9" * 5000
EDGE_NUMBERS = [0, -1, 1, 3, 4, 2**31, 2**62, 2**62 + 1, 2**63, 1 << 40, (1 << 40) + 1, -(2**63), 10**100]
EDGE_VALUES = [*EDGE_NUMBERS, 1.0, 0.5, -0.0, 1e308, float("inf"), float("nan"), True, False, None, [], {}, HUGE]

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(HOSTILE_STRINGS),
    st.sampled_from(EDGE_VALUES),
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
plain_json = st.recursive(  # what the json module itself can produce, for the raw-input tests
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def _encode(document: Any, ensure_ascii: bool = True) -> bytes:
    def huge(value: Any) -> Any:
        if isinstance(value, _Huge):
            return "\x00HUGE\x00"
        raise TypeError(type(value))

    text = json.dumps(document, ensure_ascii=ensure_ascii, default=huge)
    return text.replace('"\\u0000HUGE\\u0000"', HUGE_LITERAL).encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------- invariants of accepted documents


def _check_safe_path(path: str) -> None:
    assert isinstance(path, str)
    assert SAFE_PATH.fullmatch(path), path
    assert not path.startswith("/"), path
    parts = path.split("/")
    assert ".." not in parts and "." not in parts and "" not in parts, path
    assert not any(part.startswith(".") for part in parts), path
    assert checked_relative_path(path, "invariant") == path


def _check_size(value: Any, minimum: int, limits: Limits) -> None:
    assert type(value) is int, value
    assert minimum <= value <= limits.max_blob_bytes, value


def _check_timestamp(value: str) -> None:
    assert TIMESTAMP.fullmatch(value), value
    datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")


def assert_manifest_invariants(manifest: Manifest, limits: Limits = DEFAULT_LIMITS) -> None:
    assert isinstance(manifest, Manifest)
    assert manifest.schema == 1
    assert FAMILY_NAME.fullmatch(manifest.family) and manifest.family != "blobs", manifest.family
    assert type(manifest.sequence) is int and 0 <= manifest.sequence <= 1 << 62
    assert 1 <= len(manifest.versions) <= limits.max_versions
    assert len(manifest.patches) <= limits.max_patches
    by_name: dict[str, VersionEntry] = {}
    for entry in manifest.versions:
        assert VERSION_NAME.fullmatch(entry.version), entry.version
        assert any(ch in "0123456789" for ch in entry.version), entry.version
        assert entry.version not in by_name, entry.version
        by_name[entry.version] = entry
        assert HEX64.fullmatch(entry.sha256) and HEX32.fullmatch(entry.md5), entry
        _check_size(entry.size, 1, limits)
        fp = entry.fingerprint
        assert fp.format in FORMATS and fp.file_size == entry.size, fp
        assert all(HEX32.fullmatch(h) for h in (fp.header_hash, fp.tail_hash, fp.combined_hash)), fp
        assert HEX16.fullmatch(fp.short_id), fp
        assert entry.filename and not entry.filename.startswith("."), entry.filename
        assert not any(c in entry.filename for c in "/\\\x00"), entry.filename
        _check_safe_path(entry.blob)
        assert checked_blob_path(entry.blob, entry.sha256, "invariant") == entry.blob
        assert entry.blob.startswith("blobs/") and entry.sha256 in entry.blob.rsplit("/", 1)[1]
    assert manifest.latest in by_name, manifest.latest
    ids: set[str] = set()
    for patch in manifest.patches:
        assert isinstance(patch.id, str) and patch.id not in ids, patch.id
        ids.add(patch.id)
        assert isinstance(patch.engine, str)
        assert patch.source in by_name and patch.target in by_name, patch
        assert by_name[patch.source].sha256 == patch.source_sha256, patch
        assert by_name[patch.target].sha256 == patch.target_sha256, patch
        assert HEX64.fullmatch(patch.sha256) and HEX32.fullmatch(patch.md5), patch
        _check_size(patch.size, 1, limits)
        _check_safe_path(patch.blob)
        assert checked_blob_path(patch.blob, patch.sha256, "invariant") == patch.blob
    if manifest.expires is not None:
        _check_timestamp(manifest.expires)
    assert isinstance(manifest.allow_downgrade, bool)
    # An accepted manifest can be written back (the publisher does) and means the same thing when re-read.
    assert parse_manifest(manifest.to_bytes(), WHERE, limits) == manifest


def assert_index_invariants(index: Index, limits: Limits = DEFAULT_LIMITS) -> None:
    assert isinstance(index, Index) and index.schema == 1
    assert len(index.families) <= limits.max_patches
    names = [entry.name for entry in index.families]
    assert len(set(names)) == len(names), names
    for entry in index.families:
        assert FAMILY_NAME.fullmatch(entry.name) and entry.name != "blobs", entry.name
        assert VERSION_NAME.fullmatch(entry.latest), entry.latest
        assert any(ch in "0123456789" for ch in entry.latest), entry.latest
        _check_safe_path(entry.manifest)
    assert parse_index(index.to_bytes(), WHERE, limits) == index


def parse_or_refuse(parser, raw: bytes, limits: Limits = DEFAULT_LIMITS):
    """The parser's result, or None when it raised ManifestError naming the document; anything else escapes."""
    try:
        return parser(raw, WHERE, limits)
    except ManifestError as error:
        assert str(error).startswith(WHERE), str(error)
        return None


def check_manifest_bytes(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> Manifest | None:
    manifest = parse_or_refuse(parse_manifest, raw, limits)
    if manifest is not None:
        assert_manifest_invariants(manifest, limits)
    return manifest


def check_index_bytes(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> Index | None:
    index = parse_or_refuse(parse_index, raw, limits)
    if index is not None:
        assert_index_invariants(index, limits)
    return index


def test_the_valid_base_documents_pass_every_invariant() -> None:
    # The mutation tests start here, so these must parse (else every mutant is refused and nothing is tested).
    assert check_manifest_bytes(BASE_RAW) == BASE
    assert check_index_bytes(BASE_INDEX_RAW) == BASE_INDEX


# --------------------------------------------------------------------------- 1. raw input


@pytest.mark.slow
@settings(FUZZ, max_examples=1000)
@given(raw=st.binary(max_size=512))
def test_arbitrary_bytes_are_refused_or_valid(raw: bytes) -> None:
    check_manifest_bytes(raw)
    check_index_bytes(raw)


@settings(FUZZ, max_examples=500)
@given(text=st.text(max_size=300))
def test_arbitrary_text_is_refused_or_valid(text: str) -> None:
    raw = text.encode("utf-8")
    check_manifest_bytes(raw)
    check_index_bytes(raw)


@pytest.mark.slow
@settings(FUZZ, max_examples=800)
@given(
    value=plain_json,
    wrap=st.sampled_from(["bare", "manifest", "index"]),
    key=st.sampled_from(["versions", "patches", "families", "latest", "family", "sequence", "schema"]),
)
def test_arbitrary_json_is_refused_or_valid(value: Any, wrap: str, key: str) -> None:
    # Wrapping the value inside an otherwise plausible document gets it past the first type checks.
    if wrap == "manifest":
        value = {**BASE.to_dict(), key: value}
    elif wrap == "index":
        value = {**BASE_INDEX.to_dict(), key: value}
    raw = json.dumps(value).encode()
    check_manifest_bytes(raw)
    check_index_bytes(raw)


# --------------------------------------------------------------------------- 2. structured mutations


def _locations(node: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) slot in a JSON tree, at every depth."""
    found: list[tuple[Any, Any]] = []
    if isinstance(node, dict):
        for key, child in node.items():
            found.append((node, key))
            found.extend(_locations(child))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found.append((node, index))
            found.extend(_locations(child))
    return found


def _containers(node: Any, kind: type) -> list[Any]:
    found = [node] if isinstance(node, kind) else []
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        found.extend(_containers(child, kind))
    return found


MUTATIONS = ["delete", "replace", "edge", "hostile", "duplicate", "swap", "add_key", "path_trick"]
KNOWN_KEYS = sorted({*BASE.to_dict(), *BASE.to_dict()["versions"][0], *BASE.to_dict()["patches"][0], "name"})


def _mutate(data: st.DataObject, document: Any, path_key: str, tricks: list[str]) -> None:
    kind = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    slots = _locations(document)
    if kind in ("delete", "replace", "edge", "hostile") and slots:
        container, key = data.draw(st.sampled_from(slots), label="slot")
        if kind == "delete":
            del container[key]
        else:
            source = {"replace": json_values, "edge": st.sampled_from(EDGE_VALUES)}.get(
                kind, st.sampled_from(HOSTILE_STRINGS)
            )
            container[key] = copy.deepcopy(data.draw(source, label="value"))
    elif kind == "duplicate" and (lists := [lst for lst in _containers(document, list) if lst]):
        target = data.draw(st.sampled_from(lists), label="list")
        item = data.draw(st.sampled_from(target), label="item")
        target.insert(data.draw(st.integers(0, len(target)), label="at"), copy.deepcopy(item))
    elif kind == "swap" and (patches := [d for d in _containers(document, dict) if "from" in d and "to" in d]):
        patch = data.draw(st.sampled_from(patches), label="patch")
        patch["from"], patch["to"] = patch["to"], patch["from"]
        if data.draw(st.booleans(), label="swap digests too"):
            patch["source_sha256"], patch["target_sha256"] = (
                patch.get("target_sha256"),
                patch.get("source_sha256"),
            )
    elif kind == "add_key" and (dicts := _containers(document, dict)):
        target = data.draw(st.sampled_from(dicts), label="dict")
        key = data.draw(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), label="key")
        target[key] = copy.deepcopy(data.draw(json_values, label="value"))
    elif kind == "path_trick" and (owners := [d for d in _containers(document, dict) if path_key in d]):
        owner = data.draw(st.sampled_from(owners), label="owner")
        sha = owner.get("sha256")
        sha = sha if isinstance(sha, str) and len(sha) == 64 else "0" * 64
        trick = data.draw(st.sampled_from(tricks), label="trick")
        owner[path_key] = trick.replace("{sha}", sha).replace("{aa}", sha[:2])


@pytest.mark.slow
@settings(FUZZ, max_examples=2000)
@given(data=st.data(), count=st.integers(1, 4), ascii_only=st.booleans())
def test_mutated_manifests_are_refused_or_valid(data: st.DataObject, count: int, ascii_only: bool) -> None:
    document = BASE.to_dict()
    for _ in range(count):
        _mutate(data, document, "blob", PATH_TRICKS)
    check_manifest_bytes(_encode(document, ascii_only))


@pytest.mark.slow
@settings(FUZZ, max_examples=600)
@given(data=st.data(), count=st.integers(1, 4), ascii_only=st.booleans())
def test_mutated_indexes_are_refused_or_valid(data: st.DataObject, count: int, ascii_only: bool) -> None:
    document = BASE_INDEX.to_dict()
    for _ in range(count):
        _mutate(data, document, "manifest", INDEX_PATH_TRICKS)
    check_index_bytes(_encode(document, ascii_only))


@pytest.mark.parametrize("trick", PATH_TRICKS)
@pytest.mark.parametrize("field", ["versions", "patches"])
def test_every_blob_path_trick_is_refused(field: str, trick: str) -> None:
    document = BASE.to_dict()
    entry = document[field][0]
    entry["blob"] = trick.replace("{sha}", entry["sha256"]).replace("{aa}", entry["sha256"][:2])
    with pytest.raises(ManifestError, match=rf"{field}\[0\]\.blob"):
        parse_manifest(_encode(document), WHERE)


@pytest.mark.parametrize("trick", INDEX_PATH_TRICKS)
def test_every_index_manifest_path_trick_is_refused(trick: str) -> None:
    document = BASE_INDEX.to_dict()
    document["families"][0]["manifest"] = trick
    with pytest.raises(ManifestError, match=r"families\[0\]\.manifest"):
        parse_index(_encode(document), WHERE)


# A trailing newline must not sneak through the name and digest checks (a regex `$` matches before a final
# "\n"). Each change leaves the document otherwise consistent, so only the newline itself can cause a refusal.
def _renamed_latest(d: dict) -> None:
    d["latest"] = d["versions"][2]["version"] = "1.2.0\n"
    for patch in d["patches"]:
        patch["to"] = "1.2.0\n"


def _newline_digest(d: dict) -> None:
    sha = d["versions"][2]["sha256"] + "\n"
    d["versions"][2].update(sha256=sha, blob=f"blobs/sha256/33/{sha}")
    for patch in d["patches"]:
        patch["target_sha256"] = sha


_NEWLINE_FIELDS = {
    "family": lambda d: d.update(family="classifier\n"),
    "latest": _renamed_latest,
    "version": lambda d: d["versions"][0].update(version="1.0.0\n") or d.update(patches=[]),
    "sha256": _newline_digest,
    "md5": lambda d: d["versions"][0].update(md5=d["versions"][0]["md5"] + "\n"),
    "short_id": lambda d: d["versions"][0]["fingerprint"].update(short_id="0" * 16 + "\n"),
}


@pytest.mark.parametrize("field", list(_NEWLINE_FIELDS))
def test_a_trailing_newline_is_refused_in_names_and_digests(field: str) -> None:
    document = BASE.to_dict()
    _NEWLINE_FIELDS[field](document)
    with pytest.raises(ManifestError):
        parse_manifest(_encode(document), WHERE)


def test_a_trailing_newline_is_refused_in_index_names() -> None:
    for change in ({"name": "classifier\n"}, {"latest": "1.2.0\n"}):
        document = BASE_INDEX.to_dict()
        document["families"][0].update(change)
        with pytest.raises(ManifestError):
            parse_index(_encode(document), WHERE)


# Exhaustive single substitutions: every slot of the valid documents, deleted or replaced by every hostile and
# edge value. Deterministic, so a problem that random mutation only hits rarely is still found on every run.
_DELETE = object()


def _slot_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    paths: list[tuple] = []
    for key, child in items:
        paths.append((*prefix, key))
        paths.extend(_slot_paths(child, (*prefix, key)))
    return paths


def _substituted(document: Any, path: tuple, value: Any) -> Any:
    document = copy.deepcopy(document)
    container = document
    for key in path[:-1]:
        container = container[key]
    if value is _DELETE:
        del container[path[-1]]
    else:
        container[path[-1]] = copy.deepcopy(value)
    return document


def _sweep(base: dict, check) -> list[str]:
    failures = []
    for path in _slot_paths(base):
        for value in (_DELETE, *HOSTILE_STRINGS, *EDGE_VALUES):
            try:
                check(_encode(_substituted(base, path, value)))
            except Exception as error:  # AssertionError included: an accepted document broke an invariant
                failures.append(
                    f"{'.'.join(map(str, path))} = {value!r:.60}: {type(error).__name__}: {error!s:.200}"
                )
    return failures


@pytest.mark.slow
def test_every_single_substitution_in_a_manifest_is_refused_or_valid() -> None:
    failures = _sweep(BASE.to_dict(), check_manifest_bytes)
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:25])


def test_every_single_substitution_in_an_index_is_refused_or_valid() -> None:
    failures = _sweep(BASE_INDEX.to_dict(), check_index_bytes)
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:25])


def test_expires_must_be_written_with_ascii_digits() -> None:
    document = {**BASE.to_dict(), "expires": "\uff12\uff10\uff12\uff16-03-01T00:00:00Z"}  # fullwidth 2026
    with pytest.raises(ManifestError, match="expires"):
        parse_manifest(_encode(document), WHERE)


@pytest.mark.parametrize(
    "path", [("generated_at",), ("versions", 0, "filename"), ("patches", 0, "id"), ("patches", 0, "engine")]
)
def test_a_lone_surrogate_is_refused_or_can_be_written_back(path: tuple) -> None:
    raw = _encode(_substituted(BASE.to_dict(), path, "x\ud800"))  # JSON text "x\\ud800": valid JSON, odd string
    manifest = parse_or_refuse(parse_manifest, raw)
    if manifest is not None:
        manifest.to_bytes()  # the publisher rewrites manifests it has read


# --------------------------------------------------------------------------- 3. byte-level mutations


@st.composite
def mutated_bytes(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from(b'"\\/.:-0123456789ae[]{},\n\x00\xff'))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"\\n", b"../", b"\\u0000"]))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


@pytest.mark.slow
@settings(FUZZ, max_examples=1500)
@given(raw=mutated_bytes(BASE_RAW))
def test_byte_mutated_manifests_are_refused_or_valid(raw: bytes) -> None:
    check_manifest_bytes(raw)


@pytest.mark.slow
@settings(FUZZ, max_examples=500)
@given(raw=mutated_bytes(BASE_INDEX_RAW))
def test_byte_mutated_indexes_are_refused_or_valid(raw: bytes) -> None:
    check_index_bytes(raw)


# --------------------------------------------------------------------------- 4. limits


@settings(FUZZ, max_examples=40)
@given(count=st.integers(1, 6), limit=st.integers(1, 6))
def test_version_count_limit(count: int, limit: int) -> None:
    versions = tuple(_version(f"{i}.0", 0x10 + i, 100 + i) for i in range(count))
    raw = Manifest("fam", 1, "2026-01-31T12:00:00Z", versions[-1].version, versions).to_bytes()
    limits = Limits(max_versions=limit)
    if count > limit:
        with pytest.raises(ManifestError, match=rf"versions: {count} entries exceed the limit of {limit}"):
            parse_manifest(raw, WHERE, limits)
    else:
        assert_manifest_invariants(parse_manifest(raw, WHERE, limits), limits)


def test_patch_count_limit() -> None:
    with pytest.raises(ManifestError, match="patches: 2 entries exceed the limit of 1"):
        parse_manifest(BASE_RAW, WHERE, Limits(max_patches=1))
    assert parse_manifest(BASE_RAW, WHERE, Limits(max_patches=2)) == BASE
    with pytest.raises(ManifestError, match="families: 2 entries exceed the limit of 1"):
        parse_index(BASE_INDEX_RAW, WHERE, Limits(max_patches=1))


@pytest.mark.parametrize("parser", [parse_manifest, parse_index])
def test_document_size_limit(parser) -> None:
    raw = BASE_RAW if parser is parse_manifest else BASE_INDEX_RAW
    with pytest.raises(ManifestError, match=rf"{len(raw)} bytes exceed the {len(raw) - 1}-byte document limit"):
        parser(raw, WHERE, Limits(max_document_bytes=len(raw) - 1))
    parser(raw, WHERE, Limits(max_document_bytes=len(raw)))
    padded = raw + b" " * (DEFAULT_LIMITS.max_document_bytes + 1 - len(raw))  # valid JSON, one byte too long
    with pytest.raises(ManifestError, match="document limit"):
        parser(padded, WHERE)


def test_blob_size_limit() -> None:
    largest = max(entry.size for entry in (*BASE.versions, *BASE.patches))
    assert largest == _V2.size
    with pytest.raises(ManifestError, match=rf"versions\[1\]\.size: {largest} is outside \[1, {largest - 1}\]"):
        parse_manifest(BASE_RAW, WHERE, Limits(max_blob_bytes=largest - 1))
    limits = Limits(max_blob_bytes=largest)
    assert_manifest_invariants(parse_manifest(BASE_RAW, WHERE, limits), limits)


DEEP = 100_000


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * DEEP,
        b"[" * DEEP + b"]" * DEEP,
        b'{"a":' * DEEP + b"1" + b"}" * DEEP,
        b'{"schema": 1, "family": "f", "versions": ' + b"[" * DEEP + b"]" * DEEP + b"}",
        b'{"schema": 1, "families": [' + b"{" * 1 + b'"name": ' + b"[" * DEEP + b"]" * DEEP + b"}]}",
    ],
    ids=["open-lists", "closed-lists", "objects", "inside-manifest", "inside-index"],
)
@pytest.mark.parametrize("parser", [parse_manifest, parse_index])
def test_deep_nesting_is_a_manifest_error_not_a_recursion_error(parser, raw: bytes) -> None:
    with pytest.raises(ManifestError):
        parser(raw, WHERE)


@pytest.mark.parametrize(
    "raw",
    [
        HUGE_LITERAL.encode(),
        b"-" + HUGE_LITERAL.encode(),
        b'{"schema": ' + HUGE_LITERAL.encode() + b"}",
        BASE_RAW.replace(b'"sequence": 7', b'"sequence": ' + HUGE_LITERAL.encode()),
    ],
    ids=["bare", "negative", "schema", "sequence"],
)
@pytest.mark.parametrize("parser", [parse_manifest, parse_index])
def test_integer_literal_beyond_pythons_digit_limit_is_a_manifest_error(parser, raw: bytes) -> None:
    with pytest.raises(ManifestError):
        parser(raw, WHERE)


# --------------------------------------------------------------------------- 5. round trip

_hex64 = st.binary(min_size=32, max_size=32).map(bytes.hex)
_hex32 = st.binary(min_size=16, max_size=16).map(bytes.hex)
_version_names = st.one_of(
    st.lists(st.integers(0, 10**6), min_size=1, max_size=4).map(lambda parts: ".".join(map(str, parts))),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,15}", fullmatch=True).map(
        lambda s: s if any(c.isdigit() for c in s) else s + "7"
    ),
)
_families = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True).filter(lambda s: s != "blobs")
_filenames = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")),
    min_size=1,
    max_size=40,  # no surrogates or controls
).filter(lambda s: not s.startswith(".") and not any(c in s for c in "/\\\x7f"))
_timestamps = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 1, 1)).map(
    lambda moment: format_timestamp(moment.replace(tzinfo=UTC))
)
_sizes = st.integers(4, DEFAULT_LIMITS.max_blob_bytes)
_extensions = st.sampled_from(["tflite", "gguf", "onnx", "safetensors", "bin", "patch", ""])


@st.composite
def valid_manifests(draw: st.DrawFn) -> Manifest:
    names = draw(st.lists(_version_names, min_size=1, max_size=5, unique=True))
    versions = []
    for name in names:
        sha, size = draw(_hex64), draw(_sizes)
        fingerprint = Fingerprint(
            draw(st.sampled_from(FORMATS)), size, draw(_hex32), draw(_hex32), draw(_hex32), draw(_hex32)[:16]
        )
        versions.append(
            VersionEntry(
                name, draw(_filenames), size, sha, draw(_hex32), fingerprint, blob_path(sha, draw(_extensions))
            )
        )
    pairs = [(a, b) for a in versions for b in versions if a is not b]
    chosen = (
        draw(st.lists(st.sampled_from(pairs), max_size=4, unique_by=lambda p: (p[0].version, p[1].version)))
        if pairs
        else []
    )
    patch_ids = draw(
        st.lists(
            st.from_regex(r"[A-Za-z0-9._+-]{1,20}", fullmatch=True),
            min_size=len(chosen),
            max_size=len(chosen),
            unique=True,
        )
    )
    patches = []
    for (source, target), patch_id in zip(chosen, patch_ids, strict=True):
        sha = draw(_hex64)
        patches.append(
            PatchEntry(
                patch_id,
                source.version,
                target.version,
                draw(
                    st.sampled_from(["lorien", "zstd", "mallorn"])
                    | st.from_regex(r"[a-z0-9_-]{1,10}", fullmatch=True)
                ),
                draw(st.integers(1, DEFAULT_LIMITS.max_blob_bytes)),
                sha,
                draw(_hex32),
                blob_path(sha, "patch"),
                source.sha256,
                target.sha256,
            )
        )
    return Manifest(
        family=draw(_families),
        sequence=draw(st.integers(0, 1 << 62)),
        generated_at=draw(_timestamps),
        latest=draw(st.sampled_from(names)),
        versions=tuple(versions),
        patches=tuple(patches),
        expires=draw(st.none() | _timestamps),
        allow_downgrade=draw(st.booleans()),
    )


@pytest.mark.slow
@settings(FUZZ, max_examples=400)
@given(manifest=valid_manifests())
def test_valid_manifests_round_trip(manifest: Manifest) -> None:
    raw = manifest.to_bytes()
    parsed = parse_manifest(raw, WHERE)
    assert parsed == manifest
    assert parsed.to_bytes() == raw
    assert_manifest_invariants(parsed)


# --------------------------------------------------------------------------- checked_relative_path

HOSTILE_PATHS = [
    "",
    ".",
    "..",
    "../x",
    "a/../b",
    "a/..",
    "/etc/passwd",
    "//evil/x",
    "a//b",
    "a/",
    "./a",
    "a/./b",
    ".hidden",
    "a/.hidden",
    "a\\b",
    "..\\x",
    "a\x00b",
    "a\n",
    "a\nb",
    "a\r\nb",
    "a b",
    "a\tb",
    "%2e%2e/x",
    "a/%2e%2e",
    "a%2Fb",
    "a?b",
    "a#b",
    "a;b",
    "http://evil/x",
    "file:///etc/passwd",
    "C:/x",
    "~/x",
    "\uff0e\uff0e/x",
    "a\u2215b",
    "\u0430",  # Cyrillic a
    "a\u200b",
    "a\ud800",
    "a" * 256,
    "a/" * 600 + "a",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_hostile_relative_paths_are_refused(path: str) -> None:
    with pytest.raises(ManifestError, match=r"^where: "):
        checked_relative_path(path, "where")


@pytest.mark.parametrize("path", ["a", "a/b", "blobs/sha256/ab/x.tflite", "A-Z_0.9+x/y", "a.b/c..d"])
def test_plain_relative_paths_are_accepted(path: str) -> None:
    assert checked_relative_path(path, "where") == path
