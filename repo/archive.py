"""Safe extraction of a zip package (a TOPE ``update.zip``) into a bundle staging directory.

A package comes from an API client, so every entry is hostile until checked. Data flow:

    zip file → central directory read (``zipfile``) → every entry checked *before one byte is written*:
      name (repository path rules: no ``..``, absolute path, backslash, hidden or odd component), type (only
      regular files and directories: links, devices, FIFOs refused), encryption, duplicates (also by case and
      Unicode normalisation, and a file that is also a directory), count (``max_bundle_files``), declared total
      (``max_bundle_bytes`` and free space), compression ratio of large entries (``max_archive_ratio``)
    → each file streamed into ``staging/<path>`` (created exclusively, never through a link), counting bytes:
      more than declared, less than declared or a bad CRC is refused
    → files and directories fsynced; the ``BundleFile`` list (path, size, SHA-256, MD5) returned.

On any refusal or failure the staging directory is removed: nothing is left half-written.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from pathlib import Path

from lorien.repo.atomic import fsync_dir, require_space
from lorien.repo.bundle import BundleFile, check_unique, checked_bundle_path
from lorien.repo.errors import BadInputError, LocalIOError, PackageError
from lorien.repo.hashing import DigestAccumulator
from lorien.repo.limits import DEFAULT_LIMITS, Limits

CHUNK = 1 << 20
RATIO_FROM = 1 << 20  # entries smaller than this may compress as well as they like


def is_zip_package(name: str) -> bool:
    """A TOPE package is deployed as a bundle when its name ends in ``.zip`` (a ``.pt``/``.keras``/``.npz`` model
    is a zip file too, and stays a single-file model)."""
    return name.lower().endswith(".zip")


def _checked_entries(package: Path, archive: zipfile.ZipFile, limits: Limits) -> list[zipfile.ZipInfo]:
    entries = archive.infolist()
    if len(entries) > limits.max_bundle_files:
        raise PackageError(
            f"{package}: {len(entries)} entries, more than the {limits.max_bundle_files} a package may hold "
            "(limit max_bundle_files)"
        )
    files: list[zipfile.ZipInfo] = []
    total = 0
    for info in entries:
        where = f"{package}: entry {info.filename!r}"
        name = info.filename[:-1] if info.filename.endswith("/") else info.filename
        if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
            raise PackageError(f"{where} is an absolute path; a package may only hold relative paths")
        try:
            checked_bundle_path(name, where)
        except BadInputError as error:
            raise PackageError(str(error)) from None
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            label = "a symbolic link" if kind == stat.S_IFLNK else "a special file"
            raise PackageError(f"{where} is {label}; a package may only hold regular files")
        if info.flag_bits & 0x1:
            raise PackageError(f"{where} is encrypted; lorien cannot verify encrypted entries")
        if info.is_dir() or kind == stat.S_IFDIR:
            continue
        if info.file_size > limits.max_bundle_bytes:
            raise PackageError(f"{where} declares {info.file_size} bytes (limit max_bundle_bytes)")
        if info.file_size >= RATIO_FROM and info.file_size > limits.max_archive_ratio * max(info.compress_size, 1):
            raise PackageError(
                f"{where} expands {info.compress_size} compressed bytes to {info.file_size} (more than "
                f"{limits.max_archive_ratio}:1, limit max_archive_ratio): refused as a zip bomb"
            )
        total += info.file_size
        if total > limits.max_bundle_bytes:
            raise PackageError(f"{package}: entries declare more than {limits.max_bundle_bytes} bytes in all")
        files.append(info)
    if not files:
        raise PackageError(f"{package}: the package holds no files")
    try:
        check_unique([info.filename for info in files], str(package))
    except BadInputError as error:
        raise PackageError(str(error)) from None
    return files


def extract_package(package: Path, staging: Path, limits: Limits = DEFAULT_LIMITS) -> list[BundleFile]:
    """Extract ``package`` into the new directory ``staging``; the files' descriptions sorted by path.

    Raises:
        PackageError: the package is not a zip file, or is hostile (nothing is written then).
        LocalIOError: the disk is full or unwritable (``staging`` is removed).
    """
    package, staging = Path(package), Path(staging)
    try:
        archive = zipfile.ZipFile(package)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise PackageError(f"{package}: not a readable zip package ({error})") from None
    with archive:
        entries = _checked_entries(package, archive, limits)
        require_space(staging, sum(info.file_size for info in entries), f"the files of package {package.name}")
        try:
            staging.mkdir(parents=False, exist_ok=False)
        except OSError as error:
            raise LocalIOError.wrap(error, f"creating the staging directory {staging}") from None
        try:
            files = [_extract_one(package, archive, info, staging) for info in entries]
            _fsync_tree(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return sorted(files, key=lambda f: f.path)


def _extract_one(package: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, staging: Path) -> BundleFile:
    where = f"{package}: entry {info.filename!r}"
    target = staging / info.filename
    directory = staging
    accumulator = DigestAccumulator()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        for part in info.filename.split("/")[:-1]:
            directory = directory / part
            directory.mkdir(exist_ok=True)  # only ever plain directories: nothing here creates a link
        descriptor = os.open(target, flags, 0o644)
    except OSError as error:
        raise LocalIOError.wrap(error, f"writing {target}") from None
    with os.fdopen(descriptor, "wb") as output:
        try:
            with archive.open(info) as source:
                while chunk := source.read(CHUNK):
                    accumulator.update(chunk)
                    if accumulator.size > info.file_size:
                        raise PackageError(f"{where} holds more bytes than the {info.file_size} it declares")
                    output.write(chunk)
        except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError) as error:
            raise PackageError(
                f"{where} is damaged or does not match its declared size and CRC ({error})"
            ) from None
        except OSError as error:
            raise LocalIOError.wrap(error, f"writing {target}") from None
        output.flush()
        os.fsync(output.fileno())
    if accumulator.size != info.file_size:
        raise PackageError(f"{where} holds {accumulator.size} bytes, not the {info.file_size} it declares")
    digests = accumulator.result()
    return BundleFile(info.filename, digests.size, digests.sha256, digests.md5)


def _fsync_tree(root: Path) -> None:
    for directory, _subdirs, _files in os.walk(root):
        fsync_dir(Path(directory))
