"""Exclusive process locks: an ``flock`` on a lock file that holds the owner's pid.

One writer per repository (``REPO/.lock``, :func:`repository_lock`), one ``lorien device`` per state directory
(``device.startup``). The kernel drops the lock when the holder dies (even by SIGKILL), so a stale lock file
never blocks anyone. A second process fails fast with the holder's pid instead of waiting.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from lorien.repo.errors import BusyError, RepositoryLockedError
from lorien.repo.layout import LOCK_FILE


@contextlib.contextmanager
def exclusive_lock(path: Path, held_by: Callable[[str], BusyError]) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block; when another process holds
    it, raise ``held_by(its pid)`` at once."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise held_by(os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def repository_lock(repo_root: Path) -> Iterator[None]:
    repo_root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(
        repo_root / LOCK_FILE,
        lambda pid: RepositoryLockedError(
            f"{repo_root}: repository is being written by another lorien process (pid {pid}); "
            "wait for it to finish or stop it"
        ),
    ):
        yield
