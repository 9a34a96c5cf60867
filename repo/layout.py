"""Where things live inside a repository, and the checks every path read from a manifest must pass.

::

    REPO/index.json                         families → latest version, manifest path   (mutable, written last)
    REPO/index.html                         page for people                           (mutable)
    REPO/<family>/manifest.json             versions and patches of one family        (mutable)
    REPO/<family>/index.html                page for people                           (mutable)
    REPO/blobs/sha256/<aa>/<sha256>.<ext>   models and patches, content-addressed     (immutable)
    REPO/.lock                              writer lock (never served)

Blob names carry the full SHA-256 of their content, so a CDN may cache them forever; the extension is only a
hint for people (``.patch`` for patches, ``.compressed`` for compressed models, the model's own extension for
models).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from lorien.repo.errors import ManifestError

INDEX_FILE = "index.json"
MANIFEST_FILE = "manifest.json"
HTML_FILE = "index.html"
BLOB_DIR = "blobs"
LOCK_FILE = ".lock"
PATCH_EXTENSION = "patch"
COMPRESSED_EXTENSION = "compressed"  # a model compressed on its own (repo.engine.full)

FAMILY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PATH_COMPONENT = re.compile(r"^[A-Za-z0-9._+-]{1,255}$")
_EXTENSION_PATTERN = re.compile(r"^[A-Za-z0-9_+-]{1,16}$")
RESERVED_FAMILY_NAMES = frozenset({BLOB_DIR})


def family_name_problem(name: str) -> str | None:
    if not FAMILY_PATTERN.fullmatch(name):
        return "may only contain letters, digits and . _ - and must start with a letter or digit"
    if name in RESERVED_FAMILY_NAMES:
        return f"'{name}' is reserved by the repository layout; rename the directory"
    return None


def manifest_path(family: str) -> str:
    return f"{family}/{MANIFEST_FILE}"


def blob_path(sha256: str, extension: str) -> str:
    """Repository-relative path of a blob with this content digest."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    suffix = f".{extension}" if extension and _EXTENSION_PATTERN.fullmatch(extension) else ""
    return f"{BLOB_DIR}/sha256/{sha256[:2]}/{sha256}{suffix}"


def checked_relative_path(value: str, where: str) -> str:
    """Return ``value`` if it is a safe repository-relative path, else raise ManifestError naming ``where``.

    Safe means: POSIX, relative, no empty, ``.`` or ``..`` components, no backslashes, no hidden components, and
    only characters that mean the same in a file name and in a URL path (so ``%2e%2e``, ``?``, ``#`` and
    ``scheme:`` tricks cannot turn into something else on the server).
    """
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: expected a non-empty relative path, got {value!r}")
    if "\\" in value or "\x00" in value:
        raise ManifestError(f"{where}: path {value!r} contains a backslash or NUL")
    path = PurePosixPath(value)
    if path.is_absolute():
        raise ManifestError(f"{where}: path {value!r} is absolute; manifests may only hold relative paths")
    for part in value.split("/"):
        if part in ("", ".", "..") or part.startswith("."):
            raise ManifestError(f"{where}: path {value!r} has a forbidden component {part!r}")
        if not _PATH_COMPONENT.fullmatch(part):
            raise ManifestError(
                f"{where}: path {value!r} has characters outside A-Z a-z 0-9 . _ + - (no %, :, ?, # or spaces: "
                "they change meaning inside a URL)"
            )
    if len(value) > 1024:
        raise ManifestError(f"{where}: path of {len(value)} characters is longer than 1024")
    return value


def checked_blob_path(value: str, sha256: str, where: str) -> str:
    """A blob path must be safe, live under blobs/, and carry the digest it claims."""
    checked_relative_path(value, where)
    if not value.startswith(f"{BLOB_DIR}/") or sha256 not in PurePosixPath(value).name:
        raise ManifestError(f"{where}: blob path {value!r} is not the content address of sha256 {sha256}")
    return value
