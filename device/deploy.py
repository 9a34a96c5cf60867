"""Putting a verified model file in place, with a backup, a health check and rollback.

Every phase is persisted in the operation (``state.json``) before its work, so ``Updater.heal`` knows after a
crash whether the model path holds the old or the new model. Crash points (``repo.testhooks``) in brackets::

    free space in the model and backup directories ─▶ phase stopping: stop the service
      ─▶ copy the current model to backups/<counter>-<time>-<sha>.model (a backup with the same SHA-256 is
         renumbered instead: backups are never duplicated) ─▶ phase backed_up [after-backup]
      ─▶ os.replace the candidate onto the model path (EXDEV: copy it next to the model first), fsync the directory
      ─▶ phase replaced [after-replace] ─▶ start the service ─▶ phase health [health-check] ─▶ health check
      ─▶ healthy: record the installed version, prune backups → idle
      ─▶ unhealthy (or an error after the replace): rolling_back: stop, restore the backup, start, prune → failed

Pruning keeps the newest ``keep_backups`` backups and drops any with the SHA-256 of the model in place (it is no
way back). ``tmp/`` is cleared by the updater when the operation ends (``clear_tmp``).

The model path only ever changes by ``os.replace`` of a complete, verified file, so it always holds a complete
old or new model.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from lorien.device import service
from lorien.device.config import DeviceConfig
from lorien.device.report import Reporter
from lorien.device.state import Heal, OnDisk, Operation, Phase, Stage, StateStore
from lorien.repo.atomic import atomic_writer, fsync_dir
from lorien.repo.errors import LorienError, UpdateFailed
from lorien.repo.hashing import iter_file, sha256_file
from lorien.repo.manifest import utc_now
from lorien.repo.testhooks import crash_point

log = logging.getLogger(__name__)

SPACE_MARGIN = 1 << 20
KNOWN_VERSIONS = 50  # sha256 → version of models installed here, so a rollback knows which version it restores


class Deployer:
    """Deploys, health-checks and rolls back the model of one device (``config.model_path``)."""

    def __init__(self, config: DeviceConfig, state: StateStore, reporter: Reporter) -> None:
        self.config = config
        self._state = state
        self._reporter = reporter

    def stage_copy(self, source: Path, name: str) -> Path:
        """A complete copy of ``source`` in ``tmp/`` (the candidate to deploy, never the source itself)."""
        staged = self.config.tmp_dir / name
        _copy_atomically(source, staged)
        return staged

    def deploy(self, candidate: Path, version: str | None, target_sha256: str) -> None:
        config = self.config
        self._reporter.enter(Stage.DEPLOYING, f"deploying {version}")
        size = candidate.stat().st_size
        current_size = config.model_path.stat().st_size if config.model_path.exists() else 0
        _require_space(config.model_path.parent, size, "the model directory")
        _require_space(config.backup_dir, current_size, "the backup directory")
        previous_sha = sha256_file(config.model_path) if config.model_path.exists() else None
        self._state.update_op(
            phase=Phase.STOPPING,
            previous_sha256=previous_sha,
            candidate=str(candidate),
            target=version,
            target_sha256=target_sha256,
        )
        if (stopped := service.stop_service(config)) != service.NO_SERVICE:  # "none" is said once, at the start
            log.info("service: %s", stopped)
        backup = self._back_up(previous_sha) if previous_sha is not None else None
        self._state.update_op(phase=Phase.BACKED_UP, backup=str(backup) if backup else None)
        crash_point("after-backup")
        _replace(candidate, config.model_path)
        self._state.update_op(phase=Phase.REPLACED)
        crash_point("after-replace")
        self.start_and_check(version)

    def _back_up(self, sha256: str) -> Path:
        """The model in place as the newest backup: a backup with the same content is renumbered, not copied."""
        backups = self.backups()
        counter = max((_backup_order(path)[1] for path in backups), default=0) + 1
        backup = self.config.backup_dir / f"{counter:08d}-{time.strftime('%Y%m%dT%H%M%S')}-{sha256[:16]}.model"
        twin = next((path for path in backups if _holds(path, sha256)), None)
        if twin is not None:
            os.replace(twin, backup)
            fsync_dir(backup.parent)
        else:
            _copy_atomically(self.config.model_path, backup)
        return backup

    def start_and_check(self, version: str | None) -> None:
        """Start the service on the new model and health-check it: keep it, or roll back."""
        log.info("service: %s", service.start_service(self.config))
        operation = self._state.operation()
        attempts = (operation.health_attempts if operation else 0) + 1
        self._state.update_op(phase=Phase.HEALTH, health_attempts=attempts)
        configured = self.config.health_check or self.config.health_check_litert
        self._reporter.report(
            Stage.DEPLOYING, "running the health check" if configured else "no health check configured", 90.0
        )
        crash_point("health-check")
        healthy, why = service.health_check(self.config)
        if not healthy:
            log.error("health check failed after deploying %s: %s; rolling back", version, why)
            self.roll_back(f"health check failed: {why}")
            return
        self.prune_backups()
        self._record_installed(version)
        self._state.finish(True, f"installed {version}: {why}", version)
        self._reporter.report(Stage.IDLE, f"installed {version}", 100.0)

    def roll_back(self, reason: str) -> None:
        """Restore the backup taken by this deploy (if any), restart the service, and end as failed."""
        operation = self._state.operation()
        backup = operation.backup if operation else None
        self._reporter.enter(Stage.ROLLING_BACK, f"restoring the previous model ({reason})", 95.0)
        service.stop_service(self.config)
        if backup and Path(backup).exists():
            self._restore(Path(backup))
        else:
            log.error("no backup to restore; the new model stays in place")
        log.info("service: %s", service.start_service(self.config))
        self.prune_backups()
        target = operation.target if operation else None
        if operation and operation.target_sha256:  # remembered so periodic checks do not deploy it again and again
            rejected = dict(self._state.get("rejected_targets") or {})
            rejected[operation.target_sha256] = {"version": target, "reason": reason, "at": utc_now()}
            self._state.update(rejected_targets=dict(list(rejected.items())[-KNOWN_VERSIONS:]))
        self._state.finish(False, f"rolled back: {reason}", target, stage=Stage.FAILED)
        self._reporter.report(Stage.FAILED, "rolled back to the previous model", 100.0, error=reason)

    def _restore(self, backup: Path) -> None:
        """Put ``backup`` back at the model path (a copy: the backup stays a backup)."""
        _replace(self.stage_copy(backup, "rollback.model"), self.config.model_path)

    def installed_digest(self) -> str | None:
        """What identifies the model in place: the model file's SHA-256."""
        return sha256_file(self.config.model_path) if self.config.model_path.exists() else None

    def abort(self, message: str) -> str | None:
        """After an error mid-deploy, put the old model (and its service) back. Returns what the failure says,
        or None when a rollback already ended the operation."""
        operation = self._state.operation()
        phase = operation.phase if operation else None
        if self._state.stage() != Stage.DEPLOYING or phase is None:
            return message
        if phase in (Phase.REPLACED, Phase.HEALTH):
            try:
                self.roll_back(f"deploy failed: {message}")
                return None
            except Exception as error:
                return f"{message}; rollback failed too: {error}"
        try:  # the model was not replaced: restart the service that was stopped for it
            service.start_service(self.config)
        except LorienError as error:
            return f"{message}; restarting the service failed too: {error}"
        return message

    def resumption(self, action: Heal, operation: Operation) -> tuple[Callable[[], None], str]:
        """The work that finishes or undoes a deploy or rollback a crash interrupted (``Updater.heal``), and
        what to log about it."""
        target, target_sha256 = operation.target, operation.target_sha256 or ""
        return {
            Heal.RESUME_ROLLBACK: (
                lambda: self.roll_back("interrupted rollback resumed after restart"),
                "resuming an interrupted rollback",
            ),
            Heal.RECHECK: (
                lambda: self.start_and_check(target),
                "new model in place: starting the service and re-running the health check",
            ),
            Heal.ROLL_BACK_SUSPECT: (  # the device died during every health check: the new model is the suspect
                lambda: self.roll_back("the device restarted during every health check"),
                "new model in place but every health check was interrupted: rolling back",
            ),
            Heal.REDEPLOY: (
                lambda: self.deploy(Path(operation.candidate or ""), target, target_sha256),
                "old model still in place: deploying again",
            ),
            Heal.ROLL_BACK_UNKNOWN: (
                lambda: self.roll_back("deploy interrupted in an unknown state"),
                "unknown model state after a crash: restoring the backup",
            ),
        }[action]

    def on_disk(self, operation: Operation) -> OnDisk:
        """What the model path holds now, compared with the deploy ``operation`` (hashes the model)."""
        model = self.config.model_path
        current = sha256_file(model) if model.exists() else None
        new, old = current == operation.target_sha256, current == operation.previous_sha256
        return OnDisk.SAME if new and old else OnDisk.NEW if new else OnDisk.OLD if old else OnDisk.OTHER

    def backups(self) -> list[Path]:
        """Backups oldest first, by the counter in their names (not by clock: device clocks jump)."""
        return sorted(self.config.backup_dir.glob("*.model"), key=_backup_order)

    def prune_backups(self) -> None:
        """Keep the newest ``keep_backups`` backups, none with the content of the model in place."""
        model = self.config.model_path
        current = sha256_file(model) if model.exists() else None
        kept = 0
        for backup in reversed(self.backups()):
            if kept < self.config.keep_backups and not (current and _holds(backup, current)):
                kept += 1
            else:
                backup.unlink(missing_ok=True)

    def _record_installed(self, version: str | None) -> None:
        digest = self.installed_digest()
        known = dict(self._state.get("known_versions") or {})
        if version is not None:
            known.pop(digest, None)
            known[digest] = version
        known = dict(list(known.items())[-KNOWN_VERSIONS:])
        rejected = dict(self._state.get("rejected_targets") or {})
        rejected.pop(digest, None)  # it works now (e.g. a fixed health check): periodic checks may take it
        installed = {"version": version, "sha256": digest}
        self._state.update(installed=installed, known_versions=known, rejected_targets=rejected)

    def clear_tmp(self, keep: Callable[[str], bool]) -> None:
        """Delete every file in ``tmp/`` whose name ``keep`` does not accept."""
        for leftover in self.config.tmp_dir.iterdir():
            if leftover.is_file() and not keep(leftover.name):
                leftover.unlink(missing_ok=True)


def _require_space(directory: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed + SPACE_MARGIN:
        raise UpdateFailed(
            f"not enough free space in {what} ({directory}): {free} bytes free, {needed + SPACE_MARGIN} needed"
        )


def _backup_order(path: Path) -> tuple[int, int, str]:
    """Sort key: numbered backups (``00000012-…``) by number, after any older clock-named ones."""
    match = re.match(r"(\d{8})-", path.name)
    return (1, int(match.group(1)), path.name) if match else (0, 0, path.name)


def _holds(backup: Path, sha256: str) -> bool:
    """Whether ``backup`` has this content: its name carries the SHA-256's first 16 digits, confirmed by hashing."""
    return backup.name.endswith(f"-{sha256[:16]}.model") and sha256_file(backup) == sha256


def _copy_atomically(source: Path, destination: Path) -> None:
    with atomic_writer(destination) as sink:
        for chunk in iter_file(source):
            sink.write(chunk)


def _replace(candidate: Path, model_path: Path) -> None:
    """Put ``candidate`` at ``model_path`` by one rename in the model's directory (copying it there first when
    the two are on different file systems), then fsync the directory. The candidate's data is fsynced first:
    downloads are only flushed, and a rename of unsynced data can surface as a truncated file after power loss."""
    with open(candidate, "rb") as handle:
        os.fsync(handle.fileno())
    try:
        os.replace(candidate, model_path)
    except OSError as error:
        if error.errno != 18:  # EXDEV
            raise
        staged = model_path.with_name(f".{model_path.name}.incoming")
        _copy_atomically(candidate, staged)
        os.replace(staged, model_path)
        candidate.unlink(missing_ok=True)
    fsync_dir(model_path.parent)
