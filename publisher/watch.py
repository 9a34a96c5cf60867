"""``lorien watch``: publish model files as they land in the models directory, safely.

Data flow::

    watchdog (inotify) events ─▶ pending files {path: size, mtime, last change, arrived by rename?}
        │  a file is *complete* when it arrived by rename, or its size and mtime have not changed for
        │  ``settle`` seconds; deletions only mark the repository dirty
        ▼
    quiet period (``QUIET`` s without events) ─▶ one publish of everything complete (lenient scan: a bad file
        is reported once and skipped; files still pending are excluded) ─▶ one log line per new version
        ─▶ ``--after-publish`` command ─▶ garbage collection of blobs unreferenced for ``--grace`` seconds

Every tick it also applies the ``lorien rollout --models`` requests waiting in ``MODELS/.lorien-rollout/``
(``publisher.rollout_requests``): a rollout change needs the writer lock this process holds.

The watcher holds the repository's writer lock for its whole life, so a second watcher or publisher fails fast
naming its pid. SIGTERM/SIGINT stop it after the current publish. Every write is the publisher's atomic,
ordered write, so a crash at any instant and a restart converge to the same repository.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from lorien.publisher.gc import collect_garbage
from lorien.publisher.publish import PublishOptions, PublishReport, RepositoryWriter, publish
from lorien.publisher.rollout import change_channel
from lorien.publisher.rollout_requests import RolloutRequest, serve_requests
from lorien.publisher.scan import is_ignored
from lorien.repo.engine import DEFAULT_ENGINE
from lorien.repo.errors import BadInputError, LorienError
from lorien.repo.lock import repository_lock
from lorien.repo.manifest import Manifest

log = logging.getLogger(__name__)

QUIET = 0.5  # seconds without events before a publish: a burst of files becomes one publish
HOLD_LIMIT = 30.0  # ...but a file still being written does not hold back the others for longer than this
TICK = 0.25  # how often the loop re-checks settling files and the stop flag


@dataclass
class Pending:
    signature: tuple[int, int] | None  # (size, mtime_ns) at the last look
    changed_at: float
    renamed: bool = False
    first_seen: float = 0.0


@dataclass
class WatchSettings:
    models: Path
    repo: Path
    options: PublishOptions = field(default_factory=lambda: PublishOptions(lenient=True))
    engine: str = DEFAULT_ENGINE
    settle: float = 2.0
    grace: float = 3600.0
    after_publish: str | None = None
    json_events: bool = False  # stdout: one JSON object per event (PublishReport.events) instead of text lines


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


class _Events(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.event_type == "moved":
            self.watcher.note(Path(os.fsdecode(event.src_path)), removed=True)
            self.watcher.note(Path(os.fsdecode(event.dest_path)), renamed=True)
        elif event.event_type == "deleted":
            self.watcher.note(Path(os.fsdecode(event.src_path)), removed=True)
        elif not event.is_directory:
            self.watcher.note(Path(os.fsdecode(event.src_path)))


class Watcher:
    def __init__(
        self, settings: WatchSettings, on_publish: Callable[[PublishReport | None, float], None] | None = None
    ) -> None:
        """``on_publish(report, seconds)`` hears of every publish that ends (report None: it failed)."""
        if not settings.models.is_dir():
            raise BadInputError(f"{settings.models}: models directory does not exist")
        settings.options.check()
        if settings.repo.is_dir():  # fail at startup, not on every publish
            RepositoryWriter(settings.repo, settings.engine, settings.options).check_signing_mode()
        self.settings = settings
        self.pending: dict[Path, Pending] = {}
        self.dirty = False
        self.last_event = 0.0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.publishes = 0
        self._reported: set[str] = set()  # problems already printed: each is reported once
        self._on_publish = on_publish or (lambda report, seconds: None)

    # ------------------------------------------------------------------ events (watchdog's thread)

    def _is_model_path(self, path: Path) -> bool:
        try:
            relative = path.relative_to(self.settings.models)
        except ValueError:
            return False
        return len(relative.parts) == 2 and not any(is_ignored(part) for part in relative.parts)

    def note(self, path: Path, renamed: bool = False, removed: bool = False) -> None:
        if not self._is_model_path(path):
            return
        now = time.monotonic()
        with self.lock:
            self.last_event = now
            if removed:
                self.pending.pop(path, None)
                self.dirty = True  # a withdrawn version (or a rename away) changes the manifest
                return
            entry = self.pending.get(path)
            if entry is None:
                self.pending[path] = Pending(_signature(path), now, renamed, now)
            else:
                entry.signature, entry.changed_at = _signature(path), now
                entry.renamed = entry.renamed or renamed

    # ------------------------------------------------------------------ main loop

    def stop(self, *_: object) -> None:
        self.stopping.set()

    def run(self) -> int:
        settings = self.settings
        with repository_lock(settings.repo):
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
            observer = Observer()
            observer.schedule(_Events(self), str(settings.models), recursive=True)
            observer.start()
            log.info(
                "watching %s → %s (settle %.1f s, grace %.0f s)",
                settings.models,
                settings.repo,
                settings.settle,
                settings.grace,
            )
            try:
                self._hold_recent_files()
                self._publish("startup")
                next_gc = time.monotonic() + min(60.0, max(settings.grace / 4, 1.0))
                next_refresh = time.monotonic() + self._refresh_period()
                while not self.stopping.wait(TICK):
                    self._rollout_requests()
                    if self._ready_to_publish():
                        self._publish("change")
                    if time.monotonic() >= next_refresh:
                        self._refresh()
                        next_refresh = time.monotonic() + self._refresh_period()
                    if time.monotonic() >= next_gc:
                        self._gc()
                        next_gc = time.monotonic() + min(60.0, max(settings.grace / 4, 1.0))
            finally:
                observer.stop()
                observer.join(timeout=5)
        log.info("stopped after %d publishes", self.publishes)
        return 0

    def _hold_recent_files(self) -> None:
        """At startup, files modified within the settle interval may still be being written (e.g. a copy that
        was running when the watcher restarted): they settle like new arrivals before being published."""
        now_wall, now = time.time(), time.monotonic()
        for path in self.settings.models.glob("*/*"):
            if not self._is_model_path(path):
                continue
            try:
                modified = path.stat().st_mtime
            except OSError:
                continue
            if now_wall - modified < self.settings.settle:
                with self.lock:
                    self.pending[path] = Pending(_signature(path), now, False, now)

    def _ready_to_publish(self) -> bool:
        """Promote settled files; True when something is complete and the burst has gone quiet."""
        now = time.monotonic()
        with self.lock:
            for path, entry in list(self.pending.items()):
                signature = _signature(path)
                if signature is None:
                    del self.pending[path]  # vanished before it settled
                    self.dirty = True
                    continue
                if signature != entry.signature:
                    entry.signature, entry.changed_at = signature, now
                    continue
                if entry.renamed or now - entry.changed_at >= self.settings.settle:
                    del self.pending[path]
                    self.dirty = True
            if self.pending and now - min(e.first_seen for e in self.pending.values()) < HOLD_LIMIT:
                return False  # more of this burst is still arriving: one publish for all of it
            return self.dirty and now - self.last_event >= QUIET

    def _publish(self, why: str) -> None:
        settings = self.settings
        with self.lock:
            self.dirty = False
            exclude = frozenset(self.pending)
        started = time.monotonic()
        try:
            report = publish(
                settings.models,
                settings.repo,
                engine=settings.engine,
                options=settings.options,
                exclude=exclude,
                locked=True,
            )
        except Exception as error:
            log.error("publish (%s) failed: %s; will retry", why, error)
            self._on_publish(None, time.monotonic() - started)
            with self.lock:
                self.dirty = True
            return
        seconds = time.monotonic() - started
        self.publishes += 1
        self._on_publish(report, seconds)
        self._log_report(report, seconds)
        if any(f.manifest_written for f in report.families) or report.index_written:
            self._after_publish()
        self._gc()

    def _rollout_requests(self) -> None:
        """Apply the ``lorien rollout --models`` requests waiting beside the models (publisher.rollout_requests)."""
        settings = self.settings
        options = settings.options

        def apply(request: RolloutRequest) -> Manifest:
            own = PublishOptions(keep=options.keep, sign_keys=options.sign_keys, expires_days=options.expires_days)
            edit = request.edit()
            return change_channel(settings.repo, request.family, request.channel, edit, own, locked=True)

        if serve_requests(settings.models, apply):
            self._after_publish()

    def _refresh_period(self) -> float:
        """How often to look for metadata near expiry: an eighth of the shortest validity period — the manifests'
        and, with keys, the TUF timestamp's (1 s to 1 h) — so each is renewed when half its validity is left,
        long before devices would refuse it."""
        options = self.settings.options
        periods = [] if options.validity is None else [options.validity.total_seconds()]
        if options.sign_keys:
            periods.append(options.expiry.of("timestamp") * 86400)
        return 3600.0 if not periods else min(3600.0, max(1.0, min(periods) / 8))

    def _refresh(self) -> None:
        if self.settings.options.validity is None and not self.settings.options.sign_keys:
            return
        try:
            writer = RepositoryWriter(self.settings.repo, self.settings.engine, self.settings.options)
            refreshed, index_written, _problems = writer.renew_and_index()
        except (LorienError, OSError) as error:
            log.error("renewing manifest expiry failed: %s; will retry", error)
            return
        for family in refreshed:
            self._say(
                {"event": "renewed", "family": family}, f"renewed family={family} (expiry, sequence or signature)"
            )
        if writer.tuf_written:
            roles = ",".join(writer.tuf_written)
            self._say({"event": "renewed", "roles": writer.tuf_written}, f"renewed TUF metadata roles={roles}")
        if refreshed or index_written:
            self._after_publish()

    def _say(self, event: dict[str, object], line: str) -> None:
        """One event on stdout: as JSON with ``--json``, else as ``line``."""
        print(json.dumps(event) if self.settings.json_events else line, flush=True)

    def _log_report(self, report: PublishReport, seconds: float) -> None:
        if self.settings.json_events:
            self._print_events(report)
            return
        for family in report.families:
            for version in family.new_versions:
                made = [stats for source, target, stats in family.patches_created if version in (source, target)]
                sizes = ", ".join(f"{stats.patch_size} B" for stats in made) or "none"
                print(
                    f"published family={family.family} version={version} patches={len(made)} "
                    f"patch_bytes=[{sizes}] seconds={seconds:.2f}",
                    flush=True,
                )
            for version in family.withdrawn:
                print(f"withdrew family={family.family} version={version}", flush=True)
            for source, target, stats in family.patches_rejected:
                print(
                    f"rejected patch family={family.family} {source}->{target} {stats.patch_size} B "
                    f"(> {self.settings.options.max_patch_ratio} x full); devices take the full model",
                    flush=True,
                )
        for problem in report.all_problems() + report.skipped:
            if problem not in self._reported:
                self._reported.add(problem)
                print(f"skipped: {problem}", flush=True)

    def _print_events(self, report: PublishReport) -> None:
        """``--json``: what changed; a problem once; no ``unchanged`` families or unwritten index."""
        for event in report.events():
            message = event.get("message")
            if event["event"] == "unchanged" or (event["event"] == "index" and not event["written"]):
                continue
            if isinstance(message, str):
                if message in self._reported:
                    continue
                self._reported.add(message)
            print(json.dumps(event), flush=True)

    def _after_publish(self) -> None:
        command = self.settings.after_publish
        if not command:
            return
        env = {**os.environ, "LORIEN_REPO": str(self.settings.repo)}
        result = subprocess.run(command, shell=True, env=env, check=False)
        if result.returncode:
            log.error("--after-publish exited %d", result.returncode)

    def _gc(self) -> None:
        try:
            report = collect_garbage(self.settings.repo, self.settings.grace)
        except (LorienError, OSError) as error:  # e.g. disk full writing .gc.json: keep watching, retry later
            log.error("garbage collection failed: %s", error)
            return
        for blob in report.removed:
            self._say({"event": "gc", "removed": blob}, f"gc removed={blob}")
