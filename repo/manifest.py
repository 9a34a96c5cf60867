"""The repository documents (format v1) as typed objects: parse with full validation, serialize canonically.

``index.json`` lists families; ``<family>/manifest.json`` lists a family's versions and patches. Parsing takes
raw bytes (exactly what was fetched or read), enforces a size limit, checks every field's type and every path,
and raises :class:`~repo.errors.ManifestError` naming the document and the field. Serializing always goes
through :func:`repo.atomic.canonical_json`, so equal documents are equal bytes.

The JSON Schema files in ``repo/schemas/`` describe the same documents for other tools; the tests check that
every document we write validates against them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from lorien.repo.atomic import canonical_json
from lorien.repo.bundle import BundleFile, bundle_digest, collision_key
from lorien.repo.channels import (
    CHANNEL_NAME,
    MAX_CHANNELS,
    MAX_ROLLED_BACK,
    MAX_STEPS,
    Channel,
    Rollout,
    RolloutStep,
    channels_to_dict,
)
from lorien.repo.errors import ManifestError
from lorien.repo.fingerprint import FORMATS, Fingerprint
from lorien.repo.layout import checked_blob_path, checked_relative_path, family_name_problem
from lorien.repo.limits import DEFAULT_LIMITS, Limits
from lorien.repo.versions import version_name_problem

SCHEMA_VERSION = 1
MAX_FORMAT_VERSION = 65535  # a patch container's version field is 16 bits
MAX_SEQUENCE = 1 << 62
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_ENGINE = re.compile(r"[a-z0-9_-]{1,32}")
_PATCH_ID = re.compile(r"[A-Za-z0-9._+-]{1,512}")
_FILE_PATCH_ID = re.compile(r"[A-Za-z0-9._+/-]{1,1600}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")


def format_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_now() -> str:
    return format_timestamp(datetime.now(UTC))


def parse_timestamp(text: str) -> datetime:
    """``YYYY-MM-DDTHH:MM:SSZ`` (UTC) → aware datetime; ValueError otherwise."""
    if not _TIMESTAMP.fullmatch(text):
        raise ValueError(f"{text!r} is not a UTC timestamp like 2026-01-31T12:00:00Z")
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@dataclass(frozen=True)
class BundleFileEntry:
    """One file of a bundle version: its relative path, digests, blob and (model files) Mallorn fingerprint."""

    path: str
    size: int
    sha256: str
    md5: str
    blob: str
    fingerprint: Fingerprint | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "md5": self.md5,
            "blob": self.blob,
        }
        if self.fingerprint is not None:
            data["fingerprint"] = self.fingerprint.to_dict()
        return data


@dataclass(frozen=True)
class Bundle:
    """The files of a bundle version (sorted by path) and their digest (``repo.bundle.bundle_digest``)."""

    digest: str
    files: tuple[BundleFileEntry, ...]

    def file(self, path: str) -> BundleFileEntry | None:
        for entry in self.files:
            if entry.path == path:
                return entry
        return None

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "files": [entry.to_dict() for entry in self.files]}


@dataclass(frozen=True)
class CompressedEntry:
    """A version's model compressed on its own (``repo.engine.full``): a blob that decodes to the version's
    ``size`` bytes with its ``sha256``. Optional; devices without it, and Mallorn clients, take ``blob``."""

    blob: str
    size: int
    sha256: str  # of the compressed blob (the decoded model's is the version's sha256)
    md5: str
    engine: str
    format_version: int | None = None  # the lorien container version of the blob; optional field

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "blob": self.blob,
            "size": self.size,
            "sha256": self.sha256,
            "md5": self.md5,
            "engine": self.engine,
        }
        return _with_format_version(data, self.format_version)


@dataclass(frozen=True)
class VersionEntry:
    version: str
    filename: str
    size: int
    sha256: str
    md5: str
    fingerprint: Fingerprint
    blob: str
    sampled_sha256: str | None = None  # lorien's sampled hash (repo.fingerprint.sampled_hash); optional field
    # a bundle version (a directory of files); then filename/size/sha256/md5/fingerprint/blob describe the
    # version's zip package (what a Mallorn or TOPE client downloads whole)
    bundle: Bundle | None = None
    compressed: CompressedEntry | None = None  # the model compressed on its own; optional field

    @property
    def format(self) -> str:
        return self.fingerprint.format

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "version": self.version,
            "filename": self.filename,
            "size": self.size,
            "sha256": self.sha256,
            "md5": self.md5,
            "fingerprint": self.fingerprint.to_dict(),
            "blob": self.blob,
        }
        if self.sampled_sha256 is not None:
            data["sampled_sha256"] = self.sampled_sha256
        if self.bundle is not None:
            data["bundle"] = self.bundle.to_dict()
        if self.compressed is not None:
            data["compressed"] = self.compressed.to_dict()
        return data


@dataclass(frozen=True)
class PatchEntry:
    id: str
    source: str  # version name ("from" in JSON)
    target: str  # version name ("to" in JSON)
    engine: str
    size: int
    sha256: str
    md5: str
    blob: str
    source_sha256: str
    target_sha256: str
    # the lorien container version of the blob (optional field: absent in manifests written before it existed
    # and for engines with one format); a device skips a patch whose version it cannot read
    format_version: int | None = field(default=None, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "from": self.source,
            "to": self.target,
            "engine": self.engine,
            "size": self.size,
            "sha256": self.sha256,
            "md5": self.md5,
            "blob": self.blob,
            "source_sha256": self.source_sha256,
            "target_sha256": self.target_sha256,
        }
        return _with_format_version(data, self.format_version)


def _with_format_version(data: dict[str, Any], format_version: int | None) -> dict[str, Any]:
    if format_version is not None:
        data["format_version"] = format_version
    return data


@dataclass(frozen=True)
class FilePatchEntry(PatchEntry):
    """A patch of one file of a bundle: ``path`` in version ``source`` → the same path in version ``target``;
    ``source_sha256``/``target_sha256`` are of that file in those versions."""

    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "path": self.path}


@dataclass(frozen=True)
class BlobFile:
    """One blob a manifest names: its repository path, size and digests, and what names it (for messages)."""

    blob: str
    size: int
    sha256: str
    md5: str
    what: str


@dataclass(frozen=True)
class Manifest:
    family: str
    sequence: int
    generated_at: str
    latest: str
    versions: tuple[VersionEntry, ...]
    patches: tuple[PatchEntry, ...] = field(default=())
    schema: int = SCHEMA_VERSION
    expires: str | None = None  # after this instant devices refuse the manifest (freeze defence); None: never
    allow_downgrade: bool = False  # publisher decision: devices on a newer version may go back to ``latest``
    file_patches: tuple[FilePatchEntry, ...] = field(default=())  # per-file patches between bundle versions
    channels: dict[str, Channel] | None = None  # optional (repo.channels); None: every device follows ``latest``

    def channel(self, name: str) -> Channel | None:
        return (self.channels or {}).get(name)

    def version(self, name: str) -> VersionEntry:
        for entry in self.versions:
            if entry.version == name:
                return entry
        raise KeyError(name)

    def latest_entry(self) -> VersionEntry:
        return self.version(self.latest)

    def blob_files(self) -> list[BlobFile]:
        """Every blob this manifest names, once per mention, with what names it: what a device may fetch — also
        every file of a bundle version and every file patch (gc keeps them, TUF signs them, inspect re-hashes
        them)."""
        files = []
        for entry in self.versions:
            files.append(BlobFile(entry.blob, entry.size, entry.sha256, entry.md5, f"version {entry.version}"))
            if (c := entry.compressed) is not None:
                files.append(BlobFile(c.blob, c.size, c.sha256, c.md5, f"version {entry.version} compressed"))
        files += [BlobFile(p.blob, p.size, p.sha256, p.md5, f"patch {p.id}") for p in self.patches]
        for entry in self.versions:
            for file in entry.bundle.files if entry.bundle is not None else ():
                what = f"version {entry.version} file {file.path}"
                files.append(BlobFile(file.blob, file.size, file.sha256, file.md5, what))
        files += [BlobFile(p.blob, p.size, p.sha256, p.md5, f"file patch {p.id}") for p in self.file_patches]
        return files

    def patch(self, source: str, target: str) -> PatchEntry | None:
        for entry in self.patches:
            if entry.source == source and entry.target == target:
                return entry
        return None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema": self.schema,
            "family": self.family,
            "sequence": self.sequence,
            "generated_at": self.generated_at,
            "latest": self.latest,
            "versions": [entry.to_dict() for entry in self.versions],
            "patches": [entry.to_dict() for entry in self.patches],
        }
        if self.expires is not None:
            data["expires"] = self.expires
        if self.allow_downgrade:
            data["allow_downgrade"] = True
        if self.file_patches:
            data["file_patches"] = [entry.to_dict() for entry in self.file_patches]
        if self.channels:
            data["channels"] = channels_to_dict(self.channels)
        return data

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    def expires_at(self) -> datetime | None:
        return parse_timestamp(self.expires) if self.expires is not None else None

    def same_content(self, other: Manifest | None) -> bool:
        """Equal except for the bookkeeping fields that change on every write (sequence, times)."""
        if other is None:
            return False
        neutral = {"sequence": 0, "generated_at": "", "expires": None}
        return replace(self, **neutral) == replace(other, **neutral)


@dataclass(frozen=True)
class IndexEntry:
    name: str
    latest: str
    manifest: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "latest": self.latest, "manifest": self.manifest}


@dataclass(frozen=True)
class Index:
    families: tuple[IndexEntry, ...]
    schema: int = SCHEMA_VERSION

    def family(self, name: str) -> IndexEntry:
        for entry in self.families:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "families": [entry.to_dict() for entry in self.families]}

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())


# --- parsing -------------------------------------------------------------------------------------------------


class _Reader:
    """Typed field access that names the document and the field in every error."""

    def __init__(self, data: Any, where: str, limits: Limits = DEFAULT_LIMITS) -> None:
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(data).__name__}")
        self.data = data
        self.where = where
        self.limits = limits

    def _get(self, key: str) -> Any:
        if key not in self.data:
            raise ManifestError(f"{self.where}: missing field '{key}'")
        return self.data[key]

    def str(self, key: str, pattern: re.Pattern[str] | None = None) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise ManifestError(f"{self.where}.{key}: expected a string, got {type(value).__name__}")
        if pattern is not None and not pattern.fullmatch(value):
            raise ManifestError(f"{self.where}.{key}: {value[:80]!r} is not in the expected form")
        if _CONTROL.search(value) or not _encodable(value):
            raise ManifestError(f"{self.where}.{key}: contains control characters or invalid Unicode")
        return value

    def int(self, key: str, minimum: int = 0, maximum: int | None = None) -> int:
        maximum = self.limits.max_blob_bytes if maximum is None else maximum
        value = self._get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ManifestError(f"{self.where}.{key}: expected an integer, got {type(value).__name__}")
        if not minimum <= value <= maximum:
            raise ManifestError(f"{self.where}.{key}: {value} is outside [{minimum}, {maximum}]")
        return value

    def list(self, key: str, limit: int) -> list[Any]:
        value = self._get(key)
        if not isinstance(value, list):
            raise ManifestError(f"{self.where}.{key}: expected a list, got {type(value).__name__}")
        if len(value) > limit:
            raise ManifestError(f"{self.where}.{key}: {len(value)} entries exceed the limit of {limit}")
        return value

    def optional(self, key: str, kind: type, default: Any) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ManifestError(f"{self.where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
        return value

    def sub(self, key: str) -> _Reader:
        return _Reader(self._get(key), f"{self.where}.{key}", self.limits)

    def item(self, value: Any, where: str) -> _Reader:
        return _Reader(value, where, self.limits)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: could be parsed but never written back
        return False
    return True


def _load_json(raw: bytes, where: str, limits: Limits) -> Any:
    if len(raw) > limits.max_document_bytes:
        raise ManifestError(
            f"{where}: {len(raw)} bytes exceed the {limits.max_document_bytes}-byte document limit"
        )
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:  # ValueError: also integers beyond 4300 digits
        raise ManifestError(f"{where}: not valid UTF-8 JSON: {str(error)[:200]}") from None
    except RecursionError:
        raise ManifestError(f"{where}: JSON nested too deeply") from None


def _check_schema(reader: _Reader) -> int:
    schema = reader.int("schema", 0, 1 << 31)
    if schema != SCHEMA_VERSION:
        raise ManifestError(
            f"{reader.where}: repository format version {schema} is not supported (this lorien reads version "
            f"{SCHEMA_VERSION}); upgrade lorien"
        )
    return schema


def _checked_version_name(reader: _Reader, key: str) -> str:
    name = reader.str(key)
    problem = version_name_problem(name)
    if problem:
        raise ManifestError(f"{reader.where}.{key}: version {name!r} {problem}")
    return name


def _checked_filename(reader: _Reader) -> str:
    name = reader.str("filename")
    if not 0 < len(name) <= 255 or name.startswith(".") or any(c in name for c in "/\\\x00"):
        raise ManifestError(f"{reader.where}.filename: {name[:80]!r} is not a plain file name")
    return name


def _parse_fingerprint(reader: _Reader) -> Fingerprint:
    fmt = reader.str("format")
    if fmt not in FORMATS:
        raise ManifestError(f"{reader.where}.format: unknown format {fmt!r}")
    return Fingerprint(
        format=fmt,
        file_size=reader.int("file_size", 4),
        header_hash=reader.str("header_hash", _HEX32),
        tail_hash=reader.str("tail_hash", _HEX32),
        combined_hash=reader.str("combined_hash", _HEX32),
        short_id=reader.str("short_id", _HEX16),
    )


def _parse_version(reader: _Reader) -> VersionEntry:
    sha256 = reader.str("sha256", _HEX64)
    entry = VersionEntry(
        version=_checked_version_name(reader, "version"),
        filename=_checked_filename(reader),
        size=reader.int("size", 1),
        sha256=sha256,
        md5=reader.str("md5", _HEX32),
        fingerprint=_parse_fingerprint(reader.sub("fingerprint")),
        blob=checked_blob_path(reader.str("blob"), sha256, f"{reader.where}.blob"),
        sampled_sha256=reader.str("sampled_sha256", _HEX64) if "sampled_sha256" in reader.data else None,
        bundle=_parse_bundle(reader.sub("bundle")) if "bundle" in reader.data else None,
        compressed=_parse_compressed(reader.sub("compressed")) if "compressed" in reader.data else None,
    )
    if entry.fingerprint.file_size != entry.size:
        raise ManifestError(f"{reader.where}: fingerprint.file_size disagrees with size")
    return entry


def _parse_bundle(reader: _Reader) -> Bundle:
    """Paths checked like every repository path, unique (also by case), bounded in count and total size, and
    the digest recomputed from the listed files."""
    files = []
    seen: set[str] = set()
    total = 0
    for i, item in enumerate(reader.list("files", reader.limits.max_bundle_files)):
        file_reader = reader.item(item, f"{reader.where}.files[{i}]")
        sha256 = file_reader.str("sha256", _HEX64)
        path = checked_relative_path(file_reader.str("path"), f"{file_reader.where}.path")
        if collision_key(path) in seen:
            raise ManifestError(
                f"{file_reader.where}.path: {path!r} is listed twice (names may not differ by case)"
            )
        seen.add(collision_key(path))
        fingerprint = None
        if "fingerprint" in file_reader.data:
            fingerprint = _parse_fingerprint(file_reader.sub("fingerprint"))
        entry = BundleFileEntry(
            path=path,
            size=file_reader.int("size", 0),
            sha256=sha256,
            md5=file_reader.str("md5", _HEX32),
            blob=checked_blob_path(file_reader.str("blob"), sha256, f"{file_reader.where}.blob"),
            fingerprint=fingerprint,
        )
        if fingerprint is not None and fingerprint.file_size != entry.size:
            raise ManifestError(f"{file_reader.where}: fingerprint.file_size disagrees with size")
        total += entry.size
        files.append(entry)
    if not files:
        raise ManifestError(f"{reader.where}.files: a bundle lists at least one file")
    if total > reader.limits.max_bundle_bytes:
        raise ManifestError(
            f"{reader.where}: files total {total} bytes, over the limit {reader.limits.max_bundle_bytes}"
        )
    for path in seen:
        parts = path.split("/")
        if any("/".join(parts[:depth]) in seen for depth in range(1, len(parts))):
            raise ManifestError(f"{reader.where}.files: {path!r} lies under a path that is also a file")
    digest = reader.str("digest", _HEX64)
    computed = bundle_digest(BundleFile(f.path, f.size, f.sha256, f.md5) for f in files)
    if digest != computed:
        raise ManifestError(f"{reader.where}.digest: does not match the listed files (computed {computed})")
    return Bundle(digest=digest, files=tuple(sorted(files, key=lambda f: f.path)))


def _parse_file_patch(reader: _Reader) -> FilePatchEntry:
    patch = _parse_patch(reader, _FILE_PATCH_ID)
    path = checked_relative_path(reader.str("path"), f"{reader.where}.path")
    return FilePatchEntry(**{f.name: getattr(patch, f.name) for f in fields(PatchEntry)}, path=path)


def _parse_compressed(reader: _Reader) -> CompressedEntry:
    sha256 = reader.str("sha256", _HEX64)
    return CompressedEntry(
        blob=checked_blob_path(reader.str("blob"), sha256, f"{reader.where}.blob"),
        size=reader.int("size", 1),
        sha256=sha256,
        md5=reader.str("md5", _HEX32),
        engine=reader.str("engine", _ENGINE),
        format_version=_format_version(reader),
    )


def _format_version(reader: _Reader) -> int | None:
    return reader.int("format_version", 1, MAX_FORMAT_VERSION) if "format_version" in reader.data else None


def _parse_patch(reader: _Reader, id_pattern: re.Pattern[str] = _PATCH_ID) -> PatchEntry:
    sha256 = reader.str("sha256", _HEX64)
    return PatchEntry(
        id=reader.str("id", id_pattern),
        source=_checked_version_name(reader, "from"),
        target=_checked_version_name(reader, "to"),
        engine=reader.str("engine", _ENGINE),
        size=reader.int("size", 1),
        sha256=sha256,
        md5=reader.str("md5", _HEX32),
        blob=checked_blob_path(reader.str("blob"), sha256, f"{reader.where}.blob"),
        source_sha256=reader.str("source_sha256", _HEX64),
        target_sha256=reader.str("target_sha256", _HEX64),
        format_version=_format_version(reader),
    )


def parse_manifest(raw: bytes, where: str = "manifest.json", limits: Limits = DEFAULT_LIMITS) -> Manifest:
    """Validate and load a family manifest; every reference inside it must resolve."""
    reader = _Reader(_load_json(raw, where, limits), where, limits)
    schema = _check_schema(reader)
    family = reader.str("family")
    if problem := family_name_problem(family):
        raise ManifestError(f"{where}.family: {family!r} {problem}")
    versions = tuple(
        _parse_version(reader.item(item, f"{where}.versions[{i}]"))
        for i, item in enumerate(reader.list("versions", limits.max_versions))
    )
    patches = tuple(
        _parse_patch(reader.item(item, f"{where}.patches[{i}]"))
        for i, item in enumerate(reader.list("patches", limits.max_patches))
    )
    expires = reader.optional("expires", str, None)
    if expires is not None:
        try:
            parse_timestamp(expires)
        except ValueError as error:
            raise ManifestError(f"{where}.expires: {error}") from None
    manifest = Manifest(
        family=family,
        sequence=reader.int("sequence", 0, MAX_SEQUENCE),
        generated_at=reader.str("generated_at", _TIMESTAMP),
        latest=reader.str("latest"),
        versions=versions,
        patches=patches,
        schema=schema,
        expires=expires,
        allow_downgrade=reader.optional("allow_downgrade", bool, False),
        file_patches=tuple(
            _parse_file_patch(reader.item(item, f"{where}.file_patches[{i}]"))
            for i, item in enumerate(reader.list("file_patches", limits.max_patches))
        )
        if "file_patches" in reader.data
        else (),
        channels=_parse_channels(reader) if "channels" in reader.data else None,
    )
    _check_references(manifest, where)
    _check_file_patches(manifest, where)
    return manifest


def _checked_time(reader: _Reader, key: str) -> str:
    text = reader.str(key, _TIMESTAMP)
    try:
        parse_timestamp(text)
    except ValueError as error:
        raise ManifestError(f"{reader.where}.{key}: {error}") from None
    return text


def _percent(reader: _Reader, key: str) -> float:
    value = reader._get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise ManifestError(f"{reader.where}.{key}: expected a number from 0 to 100, got {str(value)[:40]}")
    if round(value, 2) != value:
        raise ManifestError(f"{reader.where}.{key}: {value} has more than two decimals")
    return float(value)


def _known_keys(reader: _Reader, known: set[str]) -> None:
    unknown = sorted(set(reader.data) - known)
    if unknown:
        raise ManifestError(
            f"{reader.where}: unknown field {unknown[0][:40]!r} (known: {', '.join(sorted(known))})"
        )


def _parse_rollout(reader: _Reader) -> Rollout:
    _known_keys(reader, {"percent", "start", "steps", "halted"})
    steps = []
    for i, item in enumerate(reader.list("steps", MAX_STEPS) if "steps" in reader.data else []):
        step = reader.item(item, f"{reader.where}.steps[{i}]")
        _known_keys(step, {"at", "percent"})
        steps.append(RolloutStep(_checked_time(step, "at"), _percent(step, "percent")))
    if [s.at for s in steps] != sorted(s.at for s in steps):
        raise ManifestError(f"{reader.where}.steps: must be in time order")
    return Rollout(
        percent=_percent(reader, "percent"),
        start=_checked_time(reader, "start") if "start" in reader.data else None,
        steps=tuple(steps),
        halted=reader.optional("halted", bool, False),
    )


def _parse_channel(reader: _Reader) -> Channel:
    _known_keys(reader, {"target", "previous", "rollout", "rolled_back"})
    rolled_back = []
    for i, item in enumerate(reader.list("rolled_back", MAX_ROLLED_BACK) if "rolled_back" in reader.data else []):
        if not isinstance(item, str) or version_name_problem(item):
            raise ManifestError(f"{reader.where}.rolled_back[{i}]: {str(item)[:80]!r} is not a version name")
        rolled_back.append(item)
    return Channel(
        target=_checked_version_name(reader, "target"),
        previous=_checked_version_name(reader, "previous") if "previous" in reader.data else None,
        rollout=_parse_rollout(reader.sub("rollout")) if "rollout" in reader.data else None,
        rolled_back=tuple(rolled_back),
    )


def _parse_channels(reader: _Reader) -> dict[str, Channel]:
    table = reader.sub("channels")
    if len(table.data) > MAX_CHANNELS:
        raise ManifestError(f"{table.where}: {len(table.data)} channels exceed the limit of {MAX_CHANNELS}")
    channels = {}
    for name in sorted(table.data):
        if not isinstance(name, str) or not CHANNEL_NAME.fullmatch(name):
            raise ManifestError(f"{table.where}: channel name {name[:40]!r} is not in the form [a-z0-9_-]{{1,32}}")
        channels[name] = _parse_channel(table.sub(name))
    return channels


def _check_references(manifest: Manifest, where: str) -> None:
    by_name: dict[str, VersionEntry] = {}
    for entry in manifest.versions:
        if entry.version in by_name:
            raise ManifestError(f"{where}: version {entry.version!r} is listed twice")
        by_name[entry.version] = entry
    if not by_name:
        raise ManifestError(f"{where}: lists no versions")
    if manifest.latest not in by_name:
        raise ManifestError(f"{where}.latest: {manifest.latest!r} is not one of the listed versions")
    for name, channel in (manifest.channels or {}).items():
        for version in channel.versions():
            if version not in by_name:
                raise ManifestError(
                    f"{where}.channels.{name}: version {version!r} is not one of the listed versions"
                )
    ids: set[str] = set()
    for patch in manifest.patches:
        if patch.id in ids:
            raise ManifestError(f"{where}: patch id {patch.id!r} is listed twice")
        ids.add(patch.id)
        for role, name, digest in (
            ("from", patch.source, patch.source_sha256),
            ("to", patch.target, patch.target_sha256),
        ):
            if name not in by_name:
                raise ManifestError(f"{where}: patch {patch.id!r} '{role}' version {name!r} is not listed")
            if by_name[name].sha256 != digest:
                raise ManifestError(f"{where}: patch {patch.id!r} {role}-sha256 disagrees with version {name!r}")


def _check_file_patches(manifest: Manifest, where: str) -> None:
    by_name = {entry.version: entry for entry in manifest.versions}
    ids: set[str] = set()
    for patch in manifest.file_patches:
        if patch.id in ids:
            raise ManifestError(f"{where}: file patch id {patch.id!r} is listed twice")
        ids.add(patch.id)
        for role, name, digest in (
            ("from", patch.source, patch.source_sha256),
            ("to", patch.target, patch.target_sha256),
        ):
            entry = by_name.get(name)
            if entry is None or entry.bundle is None:
                raise ManifestError(
                    f"{where}: file patch {patch.id!r} '{role}' version {name!r} is not a listed bundle"
                )
            listed = entry.bundle.file(patch.path)
            if listed is None or listed.sha256 != digest:
                raise ManifestError(
                    f"{where}: file patch {patch.id!r} {role}-sha256 disagrees with {patch.path!r} of version {name!r}"
                )


def parse_index(raw: bytes, where: str = "index.json", limits: Limits = DEFAULT_LIMITS) -> Index:
    reader = _Reader(_load_json(raw, where, limits), where, limits)
    schema = _check_schema(reader)
    families = []
    seen: set[str] = set()
    for i, item in enumerate(reader.list("families", limits.max_patches)):
        entry_reader = reader.item(item, f"{where}.families[{i}]")
        name = entry_reader.str("name")
        if problem := family_name_problem(name):
            raise ManifestError(f"{entry_reader.where}.name: {name!r} {problem}")
        if name in seen:
            raise ManifestError(f"{where}: family {name!r} is listed twice")
        seen.add(name)
        families.append(
            IndexEntry(
                name=name,
                latest=_checked_version_name(entry_reader, "latest"),
                manifest=checked_relative_path(entry_reader.str("manifest"), f"{entry_reader.where}.manifest"),
            )
        )
    return Index(families=tuple(families), schema=schema)
