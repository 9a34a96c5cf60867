"""Bundles: a version that is several files switched as one (model + external weights, labels, tokenizer, …).

Shared by the publisher (a version directory ``models/<family>/<version>/…``), the device (a staging directory
assembled file by file, a TOPE zip package) and the manifest parser. Data flow:

    directory or zip package → :func:`list_directory` / :mod:`repo.archive` → ``BundleFile`` per file
      (relative POSIX path checked like every repository path, size, SHA-256, MD5)
      → :func:`bundle_digest`: one SHA-256 over the sorted (path, size, sha256) list — the bundle's identity,
        the same whichever way the files arrived

Nothing here follows a symbolic link or accepts a special file: a bundle is plain files in plain directories.
"""

from __future__ import annotations

import hashlib
import os
import stat
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lorien.repo.errors import BadInputError, ManifestError
from lorien.repo.hashing import digest_file
from lorien.repo.layout import checked_relative_path
from lorien.repo.limits import DEFAULT_LIMITS, Limits

COMPLETE_MARKER = ".complete"  # watch mode: a version directory is complete once this file exists
DIGEST_DOMAIN = b"lorien-bundle-v1\n"


@dataclass(frozen=True)
class BundleFile:
    path: str  # relative POSIX path inside the bundle
    size: int
    sha256: str
    md5: str


def bundle_digest(files: Iterable[BundleFile]) -> str:
    """SHA-256 identifying a bundle's content: over ``path NUL size NUL sha256 LF`` of every file sorted by path."""
    digest = hashlib.sha256(DIGEST_DOMAIN)
    for entry in sorted(files, key=lambda f: f.path):
        digest.update(f"{entry.path}\0{entry.size}\0{entry.sha256}\n".encode())
    return digest.hexdigest()


def checked_bundle_path(value: str, where: str) -> str:
    """A file path inside a bundle: the repository path rules (``repo/layout.py``), else BadInputError."""
    try:
        return checked_relative_path(value, where)
    except ManifestError as error:
        raise BadInputError(str(error)) from None


def collision_key(path: str) -> str:
    """Two paths with the same key would be the same file on a case-insensitive or normalising file system."""
    return unicodedata.normalize("NFC", path).casefold()


def check_unique(paths: Iterable[str], where: str) -> None:
    """Refuse duplicate names (also by case or Unicode normalisation) and a file that is also a directory."""
    seen: dict[str, str] = {}
    for path in paths:
        key = collision_key(path)
        if key in seen:
            raise BadInputError(
                f"{where}: {path!r} and {seen[key]!r} name the same file (names may not differ only by case); "
                "rename one"
            )
        seen[key] = path
    for key, path in seen.items():
        parts = key.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in seen:
                raise BadInputError(f"{where}: {seen[prefix]!r} is a file and also a directory of {path!r}")


def list_directory(
    root: Path, limits: Limits = DEFAULT_LIMITS, *, skip: frozenset[str] = frozenset()
) -> list[str]:
    """Relative paths of every file under ``root``, sorted; refuses links, special files, bad names and too many
    files or bytes (``limits.max_bundle_files``, ``max_bundle_bytes``). Top-level names in ``skip`` are ignored
    (the ``.complete`` marker)."""
    found: list[str] = []
    total = 0
    stack = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as error:
            raise BadInputError(f"{directory}: cannot list the bundle directory: {error.strerror}") from None
        for entry in entries:
            relative = prefix + entry.name
            if entry.name.startswith("."):
                continue
            checked_bundle_path(relative, f"{root}")
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                raise BadInputError(f"{root}/{relative}: is a symbolic link; a bundle holds only plain files")
            if stat.S_ISDIR(mode):
                stack.append((Path(entry.path), relative + "/"))
            elif stat.S_ISREG(mode):
                found.append(relative)
                total += entry.stat(follow_symlinks=False).st_size
            else:
                raise BadInputError(f"{root}/{relative}: is not a regular file; a bundle holds only plain files")
            if len(found) > limits.max_bundle_files:
                raise BadInputError(
                    f"{root}: more than {limits.max_bundle_files} files in one bundle (limit max_bundle_files)"
                )
            if total > limits.max_bundle_bytes:
                raise BadInputError(
                    f"{root}: bundle holds more than {limits.max_bundle_bytes} bytes (limit max_bundle_bytes)"
                )
    if not found:
        raise BadInputError(f"{root}: the bundle directory holds no files")
    found.sort()
    check_unique(found, str(root))
    return found


def describe_directory(root: Path, limits: Limits = DEFAULT_LIMITS) -> list[BundleFile]:
    """``BundleFile`` of every file under ``root`` (hashed), sorted by path."""
    files = []
    for relative in list_directory(root, limits):
        digests = digest_file(root / relative)
        files.append(BundleFile(relative, digests.size, digests.sha256, digests.md5))
    return files
