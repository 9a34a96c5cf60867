"""A family's release channels and their staged rollouts: the optional ``channels`` field of a family manifest.

A channel (``stable``, ``beta``, …) names the version devices following it should run (``target``), the one it
replaces (``previous``: where devices outside a partial rollout stay or go) and the versions withdrawn from it
(``rolled_back``: devices running one of them may go back — the only downgrade a publisher authorises). A
:class:`Rollout` limits the target to a share of the devices: ``percent`` from ``start`` on, raised by
``steps`` at given instants unless ``halted``. The manifest parser (``repo.manifest``) builds these objects
strictly and bounded; the publisher (``publisher.channels``) writes them; the device (``device.rollout``)
decides from them. Nothing here does I/O.

Times are the manifest's UTC timestamps (``2026-01-31T12:00:00Z``); percentages are numbers from 0 to 100 with
at most two decimals (a device's bucket has the same resolution).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

CHANNEL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
DEFAULT_CHANNEL = "stable"
MAX_CHANNELS = 16
MAX_STEPS = 32
MAX_ROLLED_BACK = 64


def percent_number(value: float) -> float | int:
    """A percentage as it is written: an integer when it is whole, else rounded to two decimals."""
    rounded = round(float(value), 2)
    return int(rounded) if rounded == int(rounded) else rounded


def _stamp(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@dataclass(frozen=True)
class RolloutStep:
    at: str  # UTC timestamp
    percent: float

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "percent": percent_number(self.percent)}


@dataclass(frozen=True)
class Rollout:
    """``percent`` of the devices from ``start`` on (None: already started); each step raises the share at its
    instant; a halted rollout stays at ``percent`` whatever its steps say."""

    percent: float
    start: str | None = None
    steps: tuple[RolloutStep, ...] = ()
    halted: bool = False

    def percent_at(self, now: datetime) -> float:
        """The share of devices the target is for at ``now``."""
        now = _stamp(now)
        if self.start is not None and now < _parse_time(self.start):
            return 0.0
        share = float(self.percent)
        if not self.halted:
            for step in self.steps:
                if _parse_time(step.at) <= now:
                    share = max(share, float(step.percent))
        return min(100.0, share)

    def complete_at(self, now: datetime) -> bool:
        return self.percent_at(now) >= 100.0

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"percent": percent_number(self.percent)}
        if self.start is not None:
            data["start"] = self.start
        if self.steps:
            data["steps"] = [step.to_dict() for step in self.steps]
        if self.halted:
            data["halted"] = True
        return data


@dataclass(frozen=True)
class Channel:
    target: str
    previous: str | None = None
    rollout: Rollout | None = None  # None: every device of the channel
    rolled_back: tuple[str, ...] = field(default=())

    def percent_at(self, now: datetime) -> float:
        return 100.0 if self.rollout is None else self.rollout.percent_at(now)

    def versions(self) -> tuple[str, ...]:
        """Every version the channel refers to (each must be listed in the manifest)."""
        named = (self.target, *([self.previous] if self.previous else []), *self.rolled_back)
        return tuple(named)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"target": self.target}
        if self.previous is not None:
            data["previous"] = self.previous
        if self.rollout is not None:
            data["rollout"] = self.rollout.to_dict()
        if self.rolled_back:
            data["rolled_back"] = list(self.rolled_back)
        return data


def channels_to_dict(channels: dict[str, Channel]) -> dict[str, Any]:
    return {name: channels[name].to_dict() for name in sorted(channels)}
