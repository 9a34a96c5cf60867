"""The updater's bounded worker pool: one background operation and one manifest check at a time.

Everything that talks to the network runs in one of two slots: the operation slot (update-latest, TOPE
download and install, rollback, healing — each in its own background thread) and the check slot (``POST
/check``, which answers in the request's thread). A request for a busy slot gets :class:`~repo.errors.Busy`
(409) at once, never a queue, so hanging servers can hold at most one API thread, and ``GET /status`` /
``/progress`` (which take neither slot nor any lock held during a fetch) always answer.

When an operation ends — success, failure, rollback or refusal — ``tidy`` runs (the updater clears ``tmp/``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

from lorien.repo.errors import Busy, LorienError

log = logging.getLogger(__name__)


class Slots:
    def __init__(self, fail: Callable[[str], None], tidy: Callable[[], None]) -> None:
        """``fail(message)`` ends an operation that raised; ``tidy()`` runs after every operation."""
        self._fail = fail
        self._tidy = tidy
        self._operation = threading.Lock()
        self._check = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """An operation is running."""
        return self._operation.locked()

    def start(
        self,
        kind: str,
        work: Callable[[], None],
        busy: Callable[[], str],
        before: Callable[[], None] | None = None,
    ) -> None:
        """Run ``work`` in the background, or raise Busy with the message ``busy()``. ``before`` runs in the
        caller's thread once the slot is taken (the slot is given back if it raises)."""
        if not self._operation.acquire(blocking=False):
            raise Busy(busy())
        if before is not None:
            try:
                before()
            except BaseException:
                self._operation.release()
                raise

        def run() -> None:
            try:
                work()
            except LorienError as error:
                self._fail(str(error))
            except Exception as error:
                log.exception("operation %s crashed", kind)
                self._fail(f"internal error: {error}")
            finally:
                try:
                    self._tidy()
                finally:
                    self._operation.release()

        self._thread = threading.Thread(target=run, name=kind, daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the operation in progress (if any) to end."""
        if self._thread is not None:
            self._thread.join(timeout)

    @contextlib.contextmanager
    def check(self) -> Iterator[None]:
        """Hold the check slot, or raise Busy at once."""
        if not self._check.acquire(blocking=False):
            raise Busy("another check is running; try again when it finishes")
        try:
            yield
        finally:
            self._check.release()
