"""Telling the world: logging (rotating file + stdout for journald) and best-effort callbacks.

Callbacks are POSTed from one background thread with short timeouts; a full queue drops the oldest news
rather than ever blocking an update.
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
