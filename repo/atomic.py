"""Atomic file writes: every file that someone else reads is replaced whole or not at all.

Recipe: write to a temporary file in the destination's directory, flush + fsync it, ``os.replace`` it over the
destination, then fsync the directory so the rename itself survives power loss. On any exception the temporary
file is removed and the destination is untouched. Temporary names start with ``.`` and contain ``.tmp-`` so
servers never publish them and cleaners can recognise them.

Large writes (blobs, patch results) first check that the destination's file system has room
(:func:`require_space`); a write that still fails — the disk filled meanwhile, a quota — becomes one
:class:`~repo.errors.LocalIOError` naming the path and the space needed (:func:`write_failure`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from lorien.repo.errors import LocalIOError

TEMP_MARKER = ".tmp-"


def fsync_dir(directory: Path) -> None:
    """Make a rename or creation inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_temp_name(name: str) -> bool:
    """True for names produced by :func:`atomic_writer` (leftovers of a killed writer)."""
    return name.startswith(".") and TEMP_MARKER in name


@contextlib.contextmanager
def atomic_writer(destination: Path | str, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Yield a binary file; on clean exit it atomically becomes ``destination``."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{destination.name}{TEMP_MARKER}", dir=destination.parent)
    temp_path = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_path, mode)
        os.replace(temp_path, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp_path.unlink()
        raise
    fsync_dir(destination.parent)


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on ``directory``'s file system (its nearest existing parent)."""
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return shutil.disk_usage(directory).free


def require_space(destination: Path | str, needed: int, what: str) -> None:
    """Refuse, before writing anything, a ``needed``-byte ``what`` that cannot fit beside ``destination``."""
    destination = Path(destination)
    free = free_bytes(destination.parent)
    if needed > free:
        error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(destination))
        raise LocalIOError.wrap(error, f"writing {what} ({needed} bytes needed, {free} free)")


def write_failure(error: OSError, destination: Path | str, what: str, needed: int | None = None) -> LocalIOError:
    """A failed write as one line naming ``destination`` (``write()`` errors carry no file name of their own)."""
    named = OSError(error.errno, error.strerror or str(error), error.filename or str(destination))
    space = f" ({needed} bytes needed)" if needed is not None else ""
    return LocalIOError.wrap(named, f"writing {what}{space}")


def atomic_write_bytes(destination: Path | str, data: bytes) -> None:
    with atomic_writer(destination) as handle:
        handle.write(data)


def canonical_json(document: Any) -> bytes:
    """The one JSON encoding we publish: sorted keys, 2-space indent, UTF-8, trailing newline.

    Deterministic bytes are what make "re-publishing with no change rewrites nothing" checkable.
    """
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_if_changed(destination: Path | str, data: bytes) -> bool:
    """Atomically write ``data`` unless the file already holds exactly these bytes. Returns True if written."""
    destination = Path(destination)
    try:
        if destination.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    atomic_write_bytes(destination, data)
    return True
