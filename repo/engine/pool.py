"""Parallel encoding of the create side's pieces (:mod:`repo.engine.planning`), results in plan order.

    pieces in plan order
      → small files: threads sharing the parent's read-only maps of old and new (no process start-up)
      → large files: a process pool; each worker maps old and new itself once, receives pieces by offset
        (a piece is a few integers), encodes one, drops the mapped pages it touched (so each worker's resident
        memory stays about one piece and its references) and returns the segment and payload
      → at most ``2 × workers`` results in flight, yielded in plan order

Both paths run the same deterministic ``encode``, so a patch is byte-identical whichever path made it.
"""

from __future__ import annotations

import mmap
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TypeVar

from lorien.repo.engine.planning import Piece

T = TypeVar("T")
R = TypeVar("R")
Encode = Callable[[Piece, memoryview, memoryview], R]
PROCESSES_FROM = 64 << 20  # new files from this size encode in processes (start-up ~0.3 s per worker)

_worker: tuple[Callable[[Piece, memoryview, memoryview], object], memoryview, memoryview] | None = None
_worker_maps = ExitStack()  # a worker's maps stay open for its lifetime: they serve every piece it gets


@contextmanager
def mapped(path: Path) -> Iterator[memoryview]:
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            yield memoryview(b"")
            return
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mapping)
        try:
            yield view
        finally:
            try:
                view.release()
                mapping.close()
            except BufferError:
                pass  # a slice is still referenced (e.g. by a traceback being raised): GC unmaps it later


def ordered_map(function: Callable[[T], R], items: Iterable[T], executor: Executor, workers: int) -> Iterator[R]:
    """Like ``executor.map`` but with at most ``2 * workers`` results held at once."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(executor.submit(function, item))
        if len(pending) >= 2 * workers:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def encode_all(
    encode: Encode[R],
    pieces: list[Piece],
    paths: tuple[Path, Path],
    views: tuple[memoryview, memoryview],
    workers: int,
    processes: bool,
) -> Iterator[R]:
    """``encode(piece, old, new)`` of every piece, in order; ``encode`` must pickle when ``processes``."""
    if not processes or workers < 2 or len(pieces) < 2:
        old, new = views
        with ThreadPoolExecutor(max_workers=workers) as threads:
            yield from ordered_map(lambda piece: encode(piece, old, new), pieces, threads, workers)
        return
    with ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(encode, *paths)) as pool:
        yield from ordered_map(_encode_in_worker, pieces, pool, workers)


def _start_worker(encode: Callable[[Piece, memoryview, memoryview], object], old: Path, new: Path) -> None:
    global _worker
    _worker = (encode, _worker_maps.enter_context(mapped(old)), _worker_maps.enter_context(mapped(new)))


def _encode_in_worker(piece: Piece) -> object:
    assert _worker is not None, "worker not started"
    encode, old, new = _worker
    try:
        return encode(piece, old, new)
    finally:
        for view in (old, new):
            if isinstance(view.obj, mmap.mmap):
                view.obj.madvise(mmap.MADV_DONTNEED)  # read-only file pages: dropped, re-read if needed again
