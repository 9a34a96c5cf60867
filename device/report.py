"""Telling the world: logging (rotating file + stdout for journald), best-effort callbacks, and the progress
that ``GET /progress`` shows.

:class:`Reporter` is where the pipeline announces news: a stage change is persisted in ``state.json`` first
(``enter``), then shown, logged and sent to the callback URL (``report``); download progress is only shown
(``show``). Callbacks are POSTed from one background thread with short timeouts; a full queue drops the oldest
news rather than ever blocking an update.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

import requests

from lorien.device.state import Stage, StateStore

log = logging.getLogger(__name__)


def setup_logging(log_dir: Path, verbose: bool = False) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):  # replace the CLI's stderr default: one line per event, twice at most
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    file_handler = RotatingFileHandler(log_dir / "device.log", maxBytes=1 << 20, backupCount=5)
    stream_handler = logging.StreamHandler(sys.stdout)
    for handler in (file_handler, stream_handler):
        handler.setFormatter(formatter)
        root.addHandler(handler)


class Callbacks:
    def __init__(self, url: str | None, timeout: float = 2.0) -> None:
        self.url = url
        self.timeout = timeout
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=100)
        if url:
            threading.Thread(target=self._run, name="callbacks", daemon=True).start()

    def send(self, event: dict[str, Any]) -> None:
        if not self.url:
            return
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()

    def _run(self) -> None:
        session = requests.Session()
        while True:
            event = self._queue.get()
            try:
                session.post(self.url, json=event, timeout=self.timeout)
            except requests.RequestException as error:
                log.debug("callback to %s failed: %s", self.url, error)


class Reporter:
    """The current ``{stage, progress, message, error}`` of one device, and the news about it."""

    def __init__(self, family: str, state: StateStore, callbacks: Callbacks) -> None:
        self._family = family
        self._state = state
        self._callbacks = callbacks
        self._current: dict[str, Any] = {"stage": state.stage(), "progress": 0, "message": "", "error": None}

    def current(self) -> dict[str, Any]:
        return dict(self._current)

    def show(self, stage: Stage, message: str, percent: float, error: str | None = None) -> None:
        self._current = {"stage": stage, "progress": round(percent, 1), "message": message, "error": error}

    def report(self, stage: Stage, message: str, percent: float, error: str | None = None) -> None:
        self.show(stage, message, percent, error)
        log.info("%s: %s", stage, message)
        self._callbacks.send({"family": self._family, **self._current})

    def enter(self, stage: Stage, message: str, percent: float = 0.0) -> None:
        """Persist ``stage`` (before the work it announces), then report it."""
        self._state.update(stage=stage)
        self.report(stage, message, percent)
