"""device.state without a device: the operation record reads today's ``op`` objects, the heal table's rows, and
the history entry an operation leaves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorien.device.state import (
    HEAL_TABLE,
    Heal,
    Kind,
    OnDisk,
    Operation,
    Phase,
    Situation,
    Stage,
    StateStore,
    heal_action,
)


def test_an_operation_reads_and_writes_the_op_object_of_state_json() -> None:
    op = {
        "kind": "update-latest",
        "target": "1.1.0",
        "target_sha256": "a" * 64,
        "steps": [
            {
                "kind": "full",
                "blob": "blobs/x",
                "size": 4,
                "md5": "b" * 32,
                "sha256": "c" * 64,
                "target": "1.1.0",
                "target_sha256": "a" * 64,
                "source": None,
                "source_sha256": None,
                "engine": None,
                "id": "",
            }
        ],
        "previous": {"version": "1.0.0", "sha256": "d" * 64, "size": 4, "short_id": None},
        "candidate": "/tmp/x.model",
        "phase": "backed_up",
        "previous_sha256": "d" * 64,
        "backup": None,
        "health_attempts": 1,
    }
    operation = Operation.from_dict(op)
    assert operation.kind is Kind.UPDATE_LATEST and operation.phase is Phase.BACKED_UP
    assert operation.steps is not None and operation.steps[0].target == "1.1.0"
    assert json.loads(json.dumps(operation.to_dict())) == {
        key: value for key, value in op.items() if value is not None
    }
    assert Operation.from_dict({"kind": "download", "target": "2"}).to_dict() == {
        "kind": "download",
        "target": "2",
        "health_attempts": 0,
    }


def _situation(
    stage: Stage, kind: Kind | None = Kind.UPDATE_LATEST, phase: Phase | None = None, **more
) -> Situation:
    values = {"on_disk": OnDisk.UNCHECKED, "candidate": False, "health_retries_left": True, **more}
    return Situation(stage, kind, phase, **values)


@pytest.mark.parametrize(
    ("situation", "action"),
    [
        (_situation(Stage.IDLE, Kind.INSTALL), Heal.NOTHING),
        (_situation(Stage.FAILED), Heal.NOTHING),
        (_situation(Stage.DOWNLOADING, None), Heal.RESET),
        (_situation(Stage.ROLLING_BACK, Kind.ROLLBACK, Phase.HEALTH), Heal.RESUME_ROLLBACK),
        (_situation(Stage.DEPLOYING, phase=Phase.REPLACED, on_disk=OnDisk.NEW), Heal.RECHECK),
        (_situation(Stage.DEPLOYING, phase=Phase.HEALTH, on_disk=OnDisk.SAME), Heal.RECHECK),
        (
            _situation(Stage.DEPLOYING, phase=Phase.HEALTH, on_disk=OnDisk.NEW, health_retries_left=False),
            Heal.ROLL_BACK_SUSPECT,
        ),
        (_situation(Stage.DEPLOYING, phase=Phase.STOPPING, on_disk=OnDisk.OLD, candidate=True), Heal.REDEPLOY),
        (_situation(Stage.DEPLOYING, phase=Phase.BACKED_UP, on_disk=OnDisk.SAME, candidate=True), Heal.REDEPLOY),
        (_situation(Stage.DEPLOYING, phase=Phase.BACKED_UP, on_disk=OnDisk.OLD), Heal.ROLL_BACK_UNKNOWN),
        (_situation(Stage.DEPLOYING, phase=Phase.STOPPING, on_disk=OnDisk.NEW), Heal.ROLL_BACK_UNKNOWN),
        (_situation(Stage.DEPLOYING, phase=Phase.REPLACED, on_disk=OnDisk.OTHER), Heal.ROLL_BACK_UNKNOWN),
        (_situation(Stage.DEPLOYING, Kind.INSTALL, Phase.HEALTH, on_disk=OnDisk.NEW), Heal.RECHECK),
        (_situation(Stage.DEPLOYING), Heal.RESUME_UPDATE),
        (_situation(Stage.APPLYING), Heal.RESUME_UPDATE),
        (_situation(Stage.DOWNLOADING), Heal.RESUME_UPDATE),
        (_situation(Stage.DOWNLOADING, Kind.DOWNLOAD), Heal.RESTART_DOWNLOAD),
        (_situation(Stage.CHECKING), Heal.GIVE_UP),
        (_situation(Stage.DEPLOYING, Kind.INSTALL), Heal.GIVE_UP),
        (_situation(Stage.DEPLOYING, Kind.ROLLBACK), Heal.GIVE_UP),
    ],
)
def test_heal_takes_the_first_matching_row(situation: Situation, action: Heal) -> None:
    assert heal_action(situation) is action


def test_every_heal_row_can_be_reached() -> None:
    reachable = {
        heal_action(Situation(stage, kind, phase, on_disk, candidate, retries))
        for stage in Stage
        for kind in (*Kind, None)
        for phase in (*Phase, None)
        for on_disk in OnDisk
        for candidate in (True, False)
        for retries in (True, False)
    }
    assert reachable == {row[-1] for row in HEAL_TABLE} == set(Heal)


def test_history_entries_record_the_operation_and_old_entries_stay_readable(tmp_path: Path) -> None:
    old_entry = {"ok": True, "message": "installed 1.0.0: ok", "version": "1.0.0", "at": "2026-01-01T00:00:00Z"}
    (tmp_path / "state.json").write_text(json.dumps({"history": [{**old_entry, "kind": "install"}]}))
    store = StateStore(tmp_path / "state.json")
    record = {"started_at": "2000-01-01T00:00:00Z", "from_version": "1.0.0", "download_bytes": 10, "full_size": 99}
    store.begin(Operation(Kind.UPDATE_LATEST, target="1.1.0", **record), stage=Stage.DEPLOYING)
    store.update(stage=Stage.ROLLING_BACK)
    store.finish(False, "rolled back: health check failed", "1.1.0", stage=Stage.FAILED)
    store.finish(False, "manifest refused", None, stage=Stage.FAILED)  # no operation was begun
    refused, rolled_back, old = store.get("history")
    assert rolled_back["result"] == "rolled back" and rolled_back["kind"] == "update-latest"
    assert {key: rolled_back[key] for key in record} == record and rolled_back["duration"] > 0
    assert refused["result"] == "failed" and refused["kind"] is None and refused["duration"] is None
    assert old == {**old_entry, "kind": "install"} and store.get("last_result")["message"] == "manifest refused"
    store.begin(Operation(Kind.ROLLBACK, started_at="edited by hand"))
    store.finish(True, "installed 1.0.0", "1.0.0")  # an unreadable start does not keep the operation open
    assert store.get("history")[0]["duration"] is None and store.get("op") is None
