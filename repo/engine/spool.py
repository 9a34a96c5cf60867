"""A temporary file beside a patch being created that holds the encoded pieces' payloads until the container
is written, so the create side's memory does not grow with the patch.

    encoded pieces in plan order → :meth:`PayloadSpool.add` appends each payload to a hidden temporary file in
      the output's directory (named like :func:`repo.atomic.atomic_writer`'s, so servers and cleaners treat
      a leftover as temporary) and keeps only the segment (a few integers)
      → the container writer copies the spooled bytes, in order, after the header and table
      → the file is removed on close, on success or on any error

The container is byte-identical to one written from payloads held in memory: the spool holds the same bytes
in the same order.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from lorien.repo.atomic import TEMP_MARKER

COPY_BUFFER = 4 << 20


class PayloadSpool:
    """Payloads appended in order to a temporary file in ``directory``; use as a context manager."""

    def __init__(self, output: Path) -> None:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{output.name}{TEMP_MARKER}payloads-", dir=output.parent)
        self.path = Path(name)
        self._handle: BinaryIO = os.fdopen(fd, "w+b")
        self.size = 0

    def add(self, payload: bytes) -> None:
        self._handle.write(payload)
        self.size += len(payload)

    def copy_to(self, sink: BinaryIO) -> None:
        """Write every spooled payload, in the order added, to ``sink``."""
        self._handle.flush()
        self._handle.seek(0)
        shutil.copyfileobj(self._handle, sink, COPY_BUFFER)

    def close(self) -> None:
        self._handle.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> PayloadSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
