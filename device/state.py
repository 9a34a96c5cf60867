"""The updater's explicit states and their persistence in ``state.json`` (atomic write at every transition).

Stages (Mender/RAUC style, one operation at a time)::

    idle → checking → downloading → applying → deploying → idle (success)
                                                  └→ rolling_back → idle (failed, old model restored)
    any stage → failed (nothing deployed; the model path was never touched)

``deploying`` records a ``phase`` (stopping → backed_up → replaced → started → health) so that a restart after a
crash knows whether the model path holds the old or the new model and can finish or roll back.
"""

from __future__ import annotations

import json
import logging
import threading
from copy import deepcopy
from pathlib import Path
from typing import Any

from lorien.repo.atomic import atomic_write_bytes
from lorien.repo.manifest import utc_now

log = logging.getLogger(__name__)

IDLE, CHECKING, DOWNLOADING, APPLYING, DEPLOYING, ROLLING_BACK, FAILED = (
    "idle",
    "checking",
    "downloading",
    "applying",
    "deploying",
    "rolling_back",
    "failed",
)
BUSY_STAGES = {CHECKING, DOWNLOADING, APPLYING, DEPLOYING, ROLLING_BACK}
HISTORY = 20


def _empty() -> dict[str, Any]:
    return {
        "stage": IDLE,
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

    def update(self, **changes: Any) -> None:
        """Apply changes and persist atomically before returning."""
        with self._lock:
            self._data.update(deepcopy(changes))
            atomic_write_bytes(self.path, (json.dumps(self._data, indent=2, sort_keys=True) + "\n").encode())

    def update_op(self, **changes: Any) -> None:
        with self._lock:
            op = deepcopy(self._data.get("op") or {})
            op.update(changes)
            self.update(op=op)

    def finish(self, ok: bool, message: str, version: str | None, stage: str = IDLE) -> None:
        result = {"ok": ok, "message": message, "version": version, "at": utc_now()}
        with self._lock:
            op = self._data.get("op") or {}
            history = [{**result, "kind": op.get("kind")}, *(self._data.get("history") or [])][:HISTORY]
            self.update(stage=stage, op=None, last_result=result, history=history)
