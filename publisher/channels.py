"""A family's channels as the publisher sees them: ``<models>/<family>/channels.toml`` in, the manifest's
``channels`` field out, and the run-time changes ``lorien rollout`` makes to it.

``channels.toml`` names each channel's target and, optionally, how it rolls out::

    [stable]
    target = "1.2.0"

    [beta]
    target = "1.3.0"
    rollout = { percent = 1, start = "2026-12-01T02:00:00Z", steps = [
        { at = "2026-12-02T02:00:00Z", percent = 10 }, { at = "2026-12-04T02:00:00Z", percent = 100 } ] }

Data flow: :func:`read_channels_file` (strict TOML → :class:`~repo.channels.Channel` per name) →
:func:`merge_channels` with the manifest already published (a channel whose target did not change keeps its
published state — ``lorien rollout`` owns a running rollout — and a new target records the old one as
``previous``, or the old one's previous if its rollout was partial) → ``Manifest.channels``, written by the normal publish path, so it is signed like the rest of the
manifest. :func:`halt`, :func:`resume`, :func:`set_rollout` and :func:`roll_back` are the pure edits behind
``lorien rollout``. Nothing here writes files.
"""

from __future__ import annotations

import tomllib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lorien.repo.channels import (
    CHANNEL_NAME,
    MAX_CHANNELS,
    MAX_STEPS,
    Channel,
    Rollout,
    RolloutStep,
)
from lorien.repo.errors import BadInputError
from lorien.repo.manifest import Manifest, format_timestamp, parse_timestamp
from lorien.repo.versions import is_newer

CHANNELS_FILE = "channels.toml"


def read_channels_file(path: Path) -> dict[str, Channel] | None:
    """The channels ``path`` declares (None when there is no such file); BadInputError naming the key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInputError(f"{path}: cannot read: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise BadInputError(f"{path}: not valid TOML: {error}") from None
    if len(raw) > MAX_CHANNELS:
        raise BadInputError(f"{path}: {len(raw)} channels exceed the limit of {MAX_CHANNELS}")
    channels = {}
    for name, table in raw.items():
        where = f"{path}: [{name}]"
        if not CHANNEL_NAME.fullmatch(name):
            raise BadInputError(f"{where}: a channel name is 1-32 of a-z, 0-9, _ and - (e.g. [stable], [beta])")
        if not isinstance(table, dict):
            raise BadInputError(f'{where}: must be a table, e.g. [{name}] target = "1.2.0"')
        unknown = sorted(set(table) - {"target", "previous", "rollout"})
        if unknown:
            raise BadInputError(f"{where}: unknown key {unknown[0]!r} (known: target, previous, rollout)")
        target, previous = table.get("target"), table.get("previous")
        if not isinstance(target, str) or (previous is not None and not isinstance(previous, str)):
            raise BadInputError(f'{where}: target (and previous, if given) must be version names, e.g. "1.2.0"')
        rollout = _rollout(table["rollout"], f"{where} rollout") if "rollout" in table else None
        channels[name] = Channel(target=target, previous=previous, rollout=rollout)
    return channels


def _time(value: Any, where: str) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise BadInputError(f"{where}: give a time zone (e.g. 2026-12-01T02:00:00Z)")
        return format_timestamp(value)
    try:
        return format_timestamp(parse_timestamp(str(value)))
    except ValueError as error:
        raise BadInputError(f"{where}: {error}") from None


def checked_percent(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise BadInputError(f"{where}: a percentage must be a number from 0 to 100, got {value!r}")
    return round(float(value), 2)


def _rollout(value: Any, where: str) -> Rollout:
    if not isinstance(value, dict):
        raise BadInputError(f"{where}: must be a table, e.g. rollout = {{ percent = 10 }}")
    unknown = sorted(set(value) - {"percent", "start", "steps"})
    if unknown:
        raise BadInputError(f"{where}: unknown key {unknown[0]!r} (known: percent, start, steps)")
    steps = value.get("steps", [])
    if not isinstance(steps, list) or len(steps) > MAX_STEPS:
        raise BadInputError(f"{where}.steps: must be a list of at most {MAX_STEPS} {{ at = …, percent = … }}")
    parsed = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or set(step) != {"at", "percent"}:
            raise BadInputError(f"{where}.steps[{i}]: must be {{ at = 2026-12-02T02:00:00Z, percent = 10 }}")
        parsed.append(
            RolloutStep(_time(step["at"], f"{where}.steps[{i}].at"), checked_percent(step["percent"], where))
        )
    parsed.sort(key=lambda step: step.at)
    return Rollout(
        percent=checked_percent(value.get("percent", 0), f"{where}.percent"),
        start=_time(value["start"], f"{where}.start") if "start" in value else None,
        steps=tuple(parsed),
    )


def merge_channels(
    declared: dict[str, Channel] | None, previous: Manifest | None, versions: set[str], where: str
) -> tuple[dict[str, Channel] | None, list[str]]:
    """The manifest's channels from what ``channels.toml`` declares and what was published before; plus notes.

    A channel whose target is unchanged keeps its published state (rollout progress, halt, rolled-back list):
    ``lorien rollout`` steers a running rollout. A new target records the old one as ``previous`` (unless the
    file names one). A target the channel rolled back is not taken up again from the file (the note says how).
    ``rolled_back`` keeps only versions still published. BadInputError: a version that is not published."""
    if declared is None:
        return None, []
    notes: list[str] = []
    merged = {}
    for name, channel in declared.items():
        for version in channel.versions():
            if version not in versions:
                raise BadInputError(
                    f"{where}: [{name}] names version {version!r}, which is not in the models directory"
                )
        old = previous.channel(name) if previous is not None else None
        if old is not None and channel.target in old.rolled_back:
            notes.append(
                f"{where}: [{name}] target {channel.target} was rolled back; the channel stays on {old.target} "
                f"(`lorien rollout set … --target {channel.target}` takes it up again)"
            )
            channel = old
        elif old is not None and old.target == channel.target:
            channel = replace(old, previous=channel.previous or old.previous)
        else:
            before = (
                settled_target(old) if old is not None else (previous.latest if previous is not None else None)
            )
            if channel.previous is None and before is not None and is_newer(channel.target, before):
                channel = replace(channel, previous=before)
            if old is not None:
                channel = replace(channel, rolled_back=old.rolled_back)
        kept = tuple(v for v in channel.rolled_back if v in versions)
        previous_kept = channel.previous if channel.previous in versions else None
        merged[name] = replace(channel, rolled_back=kept, previous=previous_kept)
    return merged, notes


# --- the edits behind ``lorien rollout`` ----------------------------------------------------------------------


def settled_target(channel: Channel, now: datetime | None = None) -> str | None:
    """What the channel's devices run once the current rollout stops where it is: its target if the rollout is
    complete, else its previous target (a halted or partial rollout must not become the next one's fallback)."""
    rollout = channel.rollout
    if rollout is None or (not rollout.halted and rollout.complete_at(now or datetime.now(UTC))):
        return channel.target
    return channel.previous


def _rollout_of(channel: Channel) -> Rollout:
    return channel.rollout or Rollout(percent=100.0)


def halt(channel: Channel, now: datetime | None = None) -> Channel:
    """Freeze the rollout at the share it has reached: no further device takes the target."""
    now = now or datetime.now(UTC)
    rollout = _rollout_of(channel)
    return replace(channel, rollout=replace(rollout, percent=rollout.percent_at(now), halted=True))


def resume(channel: Channel) -> Channel:
    """Let a halted rollout go on (its remaining steps apply again)."""
    return replace(channel, rollout=replace(_rollout_of(channel), halted=False))


def set_rollout(
    channel: Channel,
    *,
    target: str | None = None,
    percent: float | None = None,
    steps: tuple[RolloutStep, ...] | None = None,
    now: datetime | None = None,
) -> Channel:
    """A new target (the old one becomes ``previous`` — its own previous if its rollout was partial; a
    rolled-back target is taken up again), and/or a new
    share or steps for the running rollout. A new target without ``percent`` starts at 100 %."""
    now = now or datetime.now(UTC)
    if target is not None and target != channel.target:
        settled = settled_target(channel, now)
        channel = Channel(
            target=target,
            previous=settled if settled is not None and is_newer(target, settled) else channel.previous,
            rollout=Rollout(percent=100.0) if percent is None else None,
            rolled_back=tuple(v for v in channel.rolled_back if v != target),
        )
    elif target is not None:
        channel = replace(channel, rolled_back=tuple(v for v in channel.rolled_back if v != target))
    if percent is not None or steps is not None:
        rollout = _rollout_of(channel)
        rollout = replace(
            rollout,
            percent=rollout.percent if percent is None else percent,
            steps=rollout.steps if steps is None else steps,
            start=rollout.start if rollout.start is not None else format_timestamp(now),
        )
        channel = replace(channel, rollout=rollout)
    if channel.rollout is not None and channel.rollout.percent >= 100 and not channel.rollout.steps:
        channel = replace(channel, rollout=None)
    return channel


def roll_back(channel: Channel) -> Channel:
    """Move the channel back to its previous target; devices that took the withdrawn target go back too."""
    if channel.previous is None:
        raise BadInputError(
            f"channel target {channel.target} has no previous target to roll back to; use `lorien rollout set "
            "--target VERSION` to name one"
        )
    return Channel(
        target=channel.previous,
        previous=None,
        rollout=None,
        rolled_back=tuple(dict.fromkeys((*channel.rolled_back, channel.target))),
    )
