"""The updater's explicit states, the record of the operation in progress, and what ``heal`` does after a crash.

Everything here is persisted in ``state.json`` (atomic write at every transition, *before* the work it
announces). Stages, exactly as the updater moves between them (one operation at a time)::

    idle|failed ─update-latest─▶ checking ─▶ downloading ─▶ applying ─▶ deploying ─▶ idle     installed
                                    └─────▶ idle     up to date, or latest was rolled back here (periodic check)
    idle|failed ─download─▶ downloading ─▶ idle                                        TOPE package verified
    idle|failed ─install|rollback─▶ deploying ─▶ idle
    deploying ─health check fails, or an error once the model was replaced─▶ rolling_back ─▶ failed
    checking|downloading|applying|deploying ─error─▶ failed    model path untouched (a stopped service is
        restarted); install fails from deploying before its first phase (package changed, not signed, …),
        rollback from idle|failed before it deploys

  after a restart (``Updater.heal``, by HEAL_TABLE below):
    any busy stage without a recorded operation ─▶ idle
    rolling_back ─▶ rolling_back ─▶ failed
    deploying (with a phase) ─▶ deploying (health check again, or the deploy again) | rolling_back ─▶ failed
    downloading|applying|deploying (no phase yet), update-latest ─▶ downloading ─▶ applying ─▶ …
    downloading, TOPE download ─▶ idle ─▶ downloading ─▶ idle
    any other busy stage ─▶ failed

``deploying`` records a :class:`Phase` in the operation: stopping → backed_up → replaced → health (health again
after a restart; stopping again when the deploy is redone), so that a restart knows whether the model path can
hold the new model (only from ``replaced`` on) and can finish or roll back.
"""

from __future__ import annotations

import json
import logging
import threading
from copy import deepcopy
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from lorien.device.plan import Step
from lorien.repo.atomic import atomic_write_bytes
from lorien.repo.manifest import parse_timestamp, utc_now

log = logging.getLogger(__name__)

HISTORY = 20


class Stage(StrEnum):
    IDLE = "idle"
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    APPLYING = "applying"
    DEPLOYING = "deploying"
    ROLLING_BACK = "rolling_back"
    FAILED = "failed"


class Phase(StrEnum):
    """Where a deploy is, persisted before each step: the model path may have changed only from ``replaced`` on."""

    STOPPING = "stopping"
    BACKED_UP = "backed_up"
    REPLACED = "replaced"
    HEALTH = "health"


class Kind(StrEnum):
    UPDATE_LATEST = "update-latest"
    DOWNLOAD = "download"
    INSTALL = "install"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Operation:
    """The operation in progress, persisted as the ``op`` object of ``state.json`` (unset fields are left out)."""

    kind: Kind
    target: str | None = None  # version name (None: unknown, e.g. a manual rollback to an unnamed model)
    target_sha256: str | None = None
    steps: tuple[Step, ...] | None = None  # update-latest: the plan's downloads
    previous: dict[str, Any] | None = None  # update-latest: the installed model when planned (plan.Installed)
    candidate: str | None = None  # the verified file to deploy
    phase: Phase | None = None  # deploying only
    previous_sha256: str | None = None  # the model path's content before the deploy
    backup: str | None = None
    health_attempts: int = 0
    # what the history entry records when the operation ends (``StateStore.finish``); absent in older files
    started_at: str | None = None  # UTC timestamp of the request that started it
    from_version: str | None = None  # the installed version when it started
    download_bytes: int | None = None  # what it downloads: the plan's patches or full file, a TOPE package
    full_size: int | None = None  # the full model's size, for comparison

    def to_dict(self) -> dict[str, Any]:
        data = {field.name: getattr(self, field.name) for field in fields(self)}
        if self.steps is not None:
            data["steps"] = [step.to_dict() for step in self.steps]
        return {key: value for key, value in data.items() if value is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Operation:
        known = {field.name for field in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["kind"] = Kind(values["kind"])
        if values.get("steps") is not None:
            values["steps"] = tuple(Step.from_dict(step) for step in values["steps"])
        if values.get("phase") is not None:
            values["phase"] = Phase(values["phase"])
        return cls(**values)


# ------------------------------------------------------------------------------------------ healing


class OnDisk(StrEnum):
    """What the model path holds during an interrupted deploy (compared by SHA-256)."""

    NEW = "new"  # the deploy's target
    OLD = "old"  # what was there before the deploy
    SAME = "new=old"  # both: the target has the same bytes as the previous model (e.g. a rollback to a twin)
    OTHER = "other"
    UNCHECKED = "-"  # not hashed: only a deploy with a phase needs it


class Heal(StrEnum):
    """What ``heal`` does (``Updater.heal`` runs it)."""

    NOTHING = "nothing"
    RESET = "reset"  # stage back to idle: the crash came before the operation was recorded
    RESUME_ROLLBACK = "resume-rollback"
    RECHECK = "recheck"  # start the service (unless running) and run the health check again
    ROLL_BACK_SUSPECT = "roll-back-suspect"  # the device died during every health check: the model is the suspect
    REDEPLOY = "redeploy"  # the deploy again from its start, with the same candidate
    ROLL_BACK_UNKNOWN = "roll-back-unknown"  # restore the backup
    RESUME_UPDATE = "resume-update"  # download (resuming .part files), apply, deploy
    RESTART_DOWNLOAD = "restart-download"  # the TOPE package download again (resuming its .part)
    GIVE_UP = "give-up"  # the operation ends as failed; the model path was not touched


@dataclass(frozen=True)
class Situation:
    """What ``heal`` looks at after a restart."""

    stage: Stage
    kind: Kind | None  # None: no operation recorded
    phase: Phase | None
    on_disk: OnDisk
    candidate: bool  # the verified file to deploy is still there
    health_retries_left: bool


ANY = "*"
_IDLE, _DEPLOYING, _ROLLING_BACK = (Stage.IDLE, Stage.FAILED), (Stage.DEPLOYING,), (Stage.ROLLING_BACK,)
_RESUMABLE, _DOWNLOADING = (Stage.DOWNLOADING, Stage.APPLYING, Stage.DEPLOYING), (Stage.DOWNLOADING,)
_NO_OP, _UPDATE, _TOPE = (None,), (Kind.UPDATE_LATEST,), (Kind.DOWNLOAD,)  # _TOPE: a package download
_PHASED, _REPLACED = tuple(Phase), (Phase.REPLACED, Phase.HEALTH)
_NEW, _OLD = (OnDisk.NEW, OnDisk.SAME), (OnDisk.OLD, OnDisk.SAME)
_YES, _NO = (True,), (False,)

# First matching row wins; ANY matches every value. docs/device.md prints the same table.
# fmt: off
HEAL_TABLE: tuple[tuple[Any, Any, Any, Any, Any, Any, Heal], ...] = (
    # stage, operation kind, deploy phase, model on disk, candidate present, health retries left → action
    (_IDLE,          ANY,     ANY,       ANY,   ANY,   ANY,   Heal.NOTHING),
    (ANY,            _NO_OP,  ANY,       ANY,   ANY,   ANY,   Heal.RESET),
    (_ROLLING_BACK,  ANY,     ANY,       ANY,   ANY,   ANY,   Heal.RESUME_ROLLBACK),
    (_DEPLOYING,     ANY,     _REPLACED, _NEW,  ANY,   _YES,  Heal.RECHECK),
    (_DEPLOYING,     ANY,     _REPLACED, _NEW,  ANY,   _NO,   Heal.ROLL_BACK_SUSPECT),
    (_DEPLOYING,     ANY,     _PHASED,   _OLD,  _YES,  ANY,   Heal.REDEPLOY),
    (_DEPLOYING,     ANY,     _PHASED,   ANY,   ANY,   ANY,   Heal.ROLL_BACK_UNKNOWN),
    (_RESUMABLE,     _UPDATE, ANY,       ANY,   ANY,   ANY,   Heal.RESUME_UPDATE),
    (_DOWNLOADING,   _TOPE,   ANY,       ANY,   ANY,   ANY,   Heal.RESTART_DOWNLOAD),
    (ANY,            ANY,     ANY,       ANY,   ANY,   ANY,   Heal.GIVE_UP),
)
# fmt: on


def heal_action(situation: Situation) -> Heal:
    """The first row of :data:`HEAL_TABLE` that matches ``situation``."""
    values = (
        situation.stage,
        situation.kind,
        situation.phase,
        situation.on_disk,
        situation.candidate,
        situation.health_retries_left,
    )
    for *columns, action in HEAL_TABLE:
        if all(column == ANY or value in column for column, value in zip(columns, values, strict=True)):
            return action
    raise AssertionError("HEAL_TABLE ends with a row that matches everything")


# ------------------------------------------------------------------------------------------ persistence


def _empty() -> dict[str, Any]:
    return {
        "stage": Stage.IDLE,
        "op": None,
        "package": None,
        "installed": None,
        "last_result": None,
        "history": [],
        "highest_sequence": 0,
        "accepted_manifest": None,  # sequence, sha256, expires, signing key of the last manifest accepted
        "accepted_manifests": {},  # "<repo_url>#<family>" → that record: rollback protection per repository
        "known_versions": {},  # sha256 → version of models installed here (a manual rollback knows its version)
        "rejected_targets": {},  # sha256 → {version, reason, at} of models deployed here and rolled back
        "control": {},  # the operator's run-time pin and hold (device.rollout), set through the API
        "rollout": None,  # the last rollout decision (device.rollout.Decision), for /status and the User-Agent
    }


class StateStore:
    """Thread-safe in-memory state mirrored to ``state.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._data = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return _empty()
        except (OSError, ValueError) as error:
            # atomic writes mean this is not a torn write; keep the evidence and start clean
            broken = self.path.with_name(self.path.name + ".broken")
            log.error("state file %s unreadable (%s); moved to %s", self.path, error, broken)
            self.path.replace(broken)
            return _empty()
        state = _empty()
        if isinstance(data, dict):
            state.update({key: data[key] for key in state if key in data})
        return state

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return deepcopy(self._data)

    def get(self, key: str) -> Any:
        with self._lock:
            return deepcopy(self._data.get(key))

    def stage(self) -> Stage:
        return Stage(self.get("stage"))

    def operation(self) -> Operation | None:
        op = self.get("op")
        return Operation.from_dict(op) if op else None

    def update(self, **changes: Any) -> None:
        """Apply changes and persist atomically before returning."""
        with self._lock:
            self._data.update(deepcopy(changes))
            atomic_write_bytes(self.path, (json.dumps(self._data, indent=2, sort_keys=True) + "\n").encode())

    def begin(self, operation: Operation, **changes: Any) -> None:
        self.update(op=operation.to_dict(), **changes)

    def update_op(self, **changes: Any) -> None:
        """Change fields of the operation in progress (``Operation`` field names)."""
        with self._lock:
            operation = self.operation()
            assert operation is not None, "update_op without an operation in progress"
            self.begin(replace(operation, **changes))

    def finish(
        self,
        ok: bool,
        message: str,
        version: str | None,
        stage: Stage = Stage.IDLE,
        record: Operation | None = None,
    ) -> None:
        """End the operation in progress: ``stage``, ``last_result``, and a new first ``history`` entry (newest
        first, at most HISTORY): ``{ok, result, message, kind, from_version, version, started_at, at, duration,
        download_bytes, full_size}``. ``result`` is ``ok``, ``failed`` or ``rolled back`` (the operation ends
        from ``rolling_back``); ``kind`` is None when no operation was recorded (an update-latest up to date or
        refused at its check, an install or rollback that failed before its deploy). ``started_at``,
        ``from_version``, ``download_bytes`` and ``full_size`` come from the operation, else from ``record`` (one
        planned but never begun), else None; entries written before these fields existed lack them."""
        at = utc_now()
        result = {"ok": ok, "message": message, "version": version, "at": at}
        with self._lock:
            op = self._data.get("op") or {}
            outcome = "ok" if ok else "rolled back" if self._data.get("stage") == Stage.ROLLING_BACK else "failed"
            recorded = op or (record.to_dict() if record else {})
            details = {key: recorded.get(key) for key in _RECORDED}  # None: unknown
            entry = {**result, "kind": op.get("kind"), "result": outcome, **details}
            entry["duration"] = _seconds(details.get("started_at"), at)
            history = [entry, *(self._data.get("history") or [])][:HISTORY]
            self.update(stage=stage, op=None, last_result=result, history=history)


_RECORDED = ("started_at", "from_version", "download_bytes", "full_size")


def _seconds(started_at: str | None, ended_at: str) -> int | None:
    """Whole seconds from ``started_at`` to ``ended_at``; None when unknown, unreadable or negative (a clock set
    back): an operation must end whatever its record says."""
    try:
        seconds = (parse_timestamp(ended_at) - parse_timestamp(started_at or "")).total_seconds()
    except ValueError:
        return None
    return int(seconds) if seconds >= 0 else None
