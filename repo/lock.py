"""One writer per repository: an exclusive ``flock`` on ``REPO/.lock`` that holds the owner's pid.

The kernel drops the lock when the holder dies (even by SIGKILL), so a stale lock file never blocks anyone.
A second writer fails fast with the holder's pid instead of waiting.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from lorien.repo.errors import RepositoryLockedError
from lorien.repo.layout import LOCK_FILE


@contextlib.contextmanager
def repository_lock(repo_root: Path) -> Iterator[None]:
    repo_root.mkdir(parents=True, exist_ok=True)
    path = repo_root / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RepositoryLockedError(
                f"{repo_root}: repository is being written by another lorien process (pid {holder}); "
                "wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
