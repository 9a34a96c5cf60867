"""Telling the world: logging (rotating file + stdout for journald), best-effort callbacks, and the progress
that ``GET /progress`` shows.

:class:`Reporter` is where the pipeline announces news: a stage change is persisted in ``state.json`` first
(``enter``), then shown, logged and sent to the callback URL (``report``); download progress is only shown
(``show``). A stage change is logged as ``family=cls version=1.2.0 stage=deploying msg="…"`` (``failed`` as a
warning), and each report tells ``on_stage`` (the metrics) which stage it left. Callbacks are POSTed from one background thread with short timeouts; a full queue drops the oldest
news rather than ever blocking an update. Progress is an integer percent (floored: 100 only when done).

``GET /progress`` is TOPE's document (:meth:`Reporter.tope_progress`): TOPE's stage names (``idle``,
``downloading``, ``installing``, ``toInstall``, ``success``, ``failed``), so that a TOPE GUI can tell "finished"
from "never started"; lorien's own stage and the last finished operation ride along as extra keys. Callbacks and
``/status`` keep lorien's stages (docs/compatibility.md).
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import sys
import threading
from collections.abc import Callable
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

import requests

from lorien.device.state import Kind, Stage, StateStore
from lorien.repo.logs import TIMESTAMPED, logfmt, stream_handler

log = logging.getLogger(__name__)


def setup_logging(log_dir: Path, verbose: bool = False) -> None:
    """``logs/device.log`` (rotated, timestamped) and stdout (journald's format under systemd: ``repo.logs``)."""
    root = logging.getLogger()
    for handler in list(root.handlers):  # replace the CLI's stderr default: one line per event, twice at most
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    file_handler = RotatingFileHandler(log_dir / "device.log", maxBytes=1 << 20, backupCount=5)
    file_handler.setFormatter(logging.Formatter(TIMESTAMPED))
    root.addHandler(file_handler)
    root.addHandler(stream_handler(sys.stdout))


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


# lorien's stages as TOPE's /progress names them; a finished operation is told apart by tope_progress
TOPE_STAGES: dict[Stage, str] = {
    Stage.IDLE: "idle",
    Stage.CHECKING: "downloading",  # TOPE has no check: it is the start of the download
    Stage.DOWNLOADING: "downloading",
    Stage.APPLYING: "installing",  # building the new model from patches: TOPE's unpacking of a package
    Stage.DEPLOYING: "installing",
    Stage.ROLLING_BACK: "installing",  # TOPE rolls back inside "installing", then ends "failed"
    Stage.FAILED: "failed",
}


def percent_int(percent: float) -> int:
    """TOPE's integer percent: floored, so 100 means done, and clamped to 0..100."""
    return min(100, max(0, math.floor(percent)))


class Reporter:
    """The current ``{stage, progress, message, error}`` of one device, and the news about it."""

    def __init__(
        self,
        family: str,
        state: StateStore,
        callbacks: Callbacks,
        on_stage: Callable[[Stage, Stage], None] | None = None,
        identity: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """``on_stage(before, after)`` hears of every stage reported (the device's metrics); ``identity()``'s
        fields (device, channel, installed version, rollout state) ride along in every callback."""
        self._identity = identity
        self._family = family
        self._state = state
        self._callbacks = callbacks
        self._on_stage = on_stage
        self._current: dict[str, Any] = {}
        self.resync()

    def resync(self) -> None:
        """Show what ``state.json`` says (at startup, and after ``heal`` changed the stage without news)."""
        last = self._state.get("last_result")
        self._current = {"stage": self._state.stage(), "progress": 0, "message": "ready", "error": None}
        if last and self._state.stage() in (Stage.IDLE, Stage.FAILED):
            ok = bool(last.get("ok"))
            error = None if ok else last.get("message")
            self._current.update(progress=100 if ok else 0, message=last.get("message") or "", error=error)

    def current(self) -> dict[str, Any]:
        return dict(self._current)

    def tope_progress(self) -> dict[str, Any]:
        """``GET /progress``: TOPE's ``{stage, progress, message, error}`` plus ``lorien_stage`` and
        ``last_result`` (the last finished operation: ``{ok, kind, version, message, at}``, or null). Between
        operations the stage is that operation's end (``toInstall`` after a download, ``success``, ``failed``),
        ``idle`` only when none ever finished: a check with nothing to do does not change it."""
        view = self.current()
        last = next((entry for entry in self._state.get("history") or [] if entry.get("kind")), None)
        stage = TOPE_STAGES[Stage(view["stage"])]
        if stage == "idle" and last is None:
            view["progress"] = 0
        elif stage == "idle" and last["ok"]:
            stage, view["progress"] = ("toInstall" if last["kind"] == Kind.DOWNLOAD else "success"), 100
        elif stage == "idle":
            stage, view["progress"], view["error"] = "failed", 0, last["message"]
        return {**view, "stage": stage, "lorien_stage": view["stage"], "last_result": last}

    def show(self, stage: Stage, message: str, percent: float, error: str | None = None) -> None:
        self._current = {"stage": stage, "progress": percent_int(percent), "message": message, "error": error}

    def report(self, stage: Stage, message: str, percent: float, error: str | None = None) -> None:
        """Show, log (``family=… version=… stage=… msg=…``; a failure as a warning) and send the news."""
        before = Stage(self._current["stage"])
        self.show(stage, message, percent, error)
        fields = {"family": self._family, "version": self._version(stage), "stage": stage, "msg": message}
        level = logging.WARNING if stage == Stage.FAILED else logging.INFO
        log.log(level, "%s", logfmt(**fields, **({"error": error} if error else {})))
        if self._on_stage is not None:
            self._on_stage(before, stage)
        identity = self._identity() if self._identity is not None else {}
        self._callbacks.send({**identity, "family": self._family, **self._current})

    def _version(self, stage: Stage) -> str | None:
        """The version the news is about: the operation's target, or once it ended the version it was about."""
        operation = self._state.get("op")
        if operation:
            return operation.get("target")
        last = self._state.get("last_result") if stage in (Stage.IDLE, Stage.FAILED) else None
        return last.get("version") if last else None

    def enter(self, stage: Stage, message: str, percent: float = 0.0) -> None:
        """Persist ``stage`` (before the work it announces), then report it."""
        self._state.update(stage=stage)
        self.report(stage, message, percent)
