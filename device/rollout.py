"""Which version this device should run: the verified manifest, the device's identity, channel, pin and hold, its
installed version and a clock in — a :class:`Decision` out. No I/O (like ``device.trusted``): the updater
passes what it read and acts on the answer.

Rules, the first that applies decides::

    pin = "1.2.0"            → the pinned version (installed if absent; may be older: the operator asked)
    manifest has no channels → latest, as before channels existed (the downgrade rule applies as always)
    channel not published    → "stable": latest; any other channel: stay where it is
    bucket < rollout percent → the channel's target
    otherwise                → the channel's previous target (none: stay where it is)

A device's bucket is ``sha256(device_id, family, target)`` mapped onto [0, 100) in steps of 0.01, so one device
keeps its bucket while a rollout's percentage grows, and each target picks different early devices. Moving to
an older version than the installed one happens only when the channel lists the installed version in
``rolled_back`` (the publisher withdrew it), when the manifest has ``allow_downgrade``, or by pin; otherwise the
device stays. ``hold`` decides as usual
but says not to install.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from lorien.repo.channels import DEFAULT_CHANNEL
from lorien.repo.manifest import Manifest
from lorien.repo.versions import is_newer

BUCKETS = 10_000  # 0.01 % resolution


def bucket(device_id: str, family: str, target: str) -> float:
    """This device's place in [0, 100) for a rollout of ``target``: stable for a device and a target,
    independent between targets."""
    digest = hashlib.sha256(f"{device_id}\0{family}\0{target}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") % BUCKETS) / 100


@dataclass(frozen=True)
class Decision:
    """``target``: the version to run (None: stay on the installed one). ``downgrade``: the publisher (rolled
    back) or the operator (pin) authorised going to an older version. ``install``: False while held.
    ``state``: the rollout state the User-Agent and reports carry (``in``, ``out``, ``pinned``, ``none``, …)."""

    target: str | None
    reason: str
    state: str
    bucket: float | None = None
    percent: float | None = None
    downgrade: bool = False
    install: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    manifest: Manifest,
    *,
    device_id: str,
    channel: str = DEFAULT_CHANNEL,
    installed: str | None,
    now: datetime,
    pin: str | None = None,
    hold: bool = False,
) -> Decision:
    decision = _decide(manifest, device_id, channel, installed, now, pin)
    if hold:
        what = f"would install {decision.target}" if decision.target and decision.target != installed else "idle"
        return Decision(
            decision.target,
            f"held by the operator ({what})",
            "held",
            decision.bucket,
            decision.percent,
            decision.downgrade,
            install=False,
        )
    return decision


def _decide(
    manifest: Manifest, device_id: str, channel: str, installed: str | None, now: datetime, pin: str | None
) -> Decision:
    if pin is not None:
        known = any(entry.version == pin for entry in manifest.versions)
        if not known:
            return Decision(None, f"pinned to {pin}, which the manifest does not list; staying", "pinned")
        return Decision(pin, f"pinned to {pin}", "pinned", downgrade=True)
    if not manifest.channels:
        return Decision(manifest.latest, "no channels: following latest", "none")
    published = manifest.channel(channel)
    if published is None:
        if channel == DEFAULT_CHANNEL:
            return Decision(manifest.latest, f"channel {channel} not published: following latest", "none")
        return Decision(None, f"channel {channel!r} is not published in this manifest; staying", "unknown-channel")
    place = bucket(device_id, manifest.family, published.target)
    percent = published.percent_at(now)
    halted = published.rollout is not None and published.rollout.halted
    if place < percent:
        target, state, why = published.target, "in", f"in the rollout of {published.target}"
    else:
        target, state = published.previous, "halted" if halted else "out"
        why = f"outside the rollout of {published.target} ({place:.2f} ≥ {percent:g} %)"
        if target is None:
            why += "; no previous target: staying"
    downgrade = installed is not None and installed in published.rolled_back
    allowed = downgrade or manifest.allow_downgrade  # the publisher's flag keeps its meaning with channels
    if target is not None and installed is not None and not allowed and is_newer(installed, target):
        return Decision(
            None, f"{why}; installed {installed} is newer than {target}: staying", state, place, percent
        )
    if downgrade:
        why += f"; {installed} was rolled back by the publisher"
    return Decision(target, why, state, place, percent, downgrade)
