"""``lorien rollout``: steer a channel's staged rollout in a published repository — ``status``, ``halt``,
``resume``, ``set`` — by rewriting the family's manifest through the publisher's normal, signed write path
(:mod:`publisher.rollout`), or with ``--models`` by handing the change to the ``lorien watch`` that holds the
repository (:mod:`publisher.rollout_requests`). ``halt --roll-back`` (or ``set --roll-back``) moves the channel back to its previous
target and lets the devices that took the withdrawn one go back (docs/rollouts.md).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from lorien.cli._options import (
    Commands,
    add_command,
    add_json_option,
    add_max_patch_format_option,
    add_sign_key_option,
    load_sign_keys,
    max_patch_format,
)
from lorien.repo.errors import BadInputError

if TYPE_CHECKING:
    from lorien.publisher.rollout_requests import RolloutRequest
    from lorien.repo.channels import RolloutStep
    from lorien.repo.manifest import Manifest


def _print(manifest: Manifest, channel: str, as_json: bool) -> None:
    published = manifest.channel(channel)
    data = published.to_dict() if published is not None else None
    if as_json:
        print(
            json.dumps(
                {"family": manifest.family, "channel": channel, "sequence": manifest.sequence, **(data or {})}
            )
        )
        return
    if published is None:
        print(f"{manifest.family}/{channel}: not published")
        return
    now = datetime.now(UTC)
    rollout = published.rollout
    share = f"{published.percent_at(now):g} %" + (" (halted)" if rollout is not None and rollout.halted else "")
    print(f"{manifest.family}/{channel}  sequence {manifest.sequence}")
    print(f"  target       {published.target}  ({share} of devices now)")
    print(f"  previous     {published.previous or '-'}")
    if rollout is not None and rollout.steps:
        print("  steps        " + ", ".join(f"{step.percent:g} % at {step.at}" for step in rollout.steps))
    if published.rolled_back:
        print(f"  rolled back  {', '.join(published.rolled_back)}")


def _request(args: argparse.Namespace) -> RolloutRequest:
    from lorien.publisher.channels import checked_percent
    from lorien.publisher.rollout_requests import RolloutRequest

    percent = getattr(args, "percent", None)
    steps = getattr(args, "step", None)
    return RolloutRequest(
        family=args.family,
        channel=args.channel,
        action=args.action,
        roll_back=getattr(args, "roll_back", False),
        target=getattr(args, "target", None),
        percent=None if percent is None else checked_percent(percent, "--percent"),
        steps=None if steps is None else _steps(steps),
    )


def _change(args: argparse.Namespace) -> int:
    """halt, resume and set: directly under the writer lock, or through the watcher of ``--models``."""
    from lorien.publisher.options import PublishOptions
    from lorien.publisher.rollout import change_channel
    from lorien.publisher.rollout_requests import submit

    request = _request(args)
    request.check()
    if args.models is not None:
        result = submit(args.models, request, args.timeout)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{request.family}/{request.channel}: the watcher wrote sequence {result['sequence']}")
            print(f"  {json.dumps(result['channel'])}")
        return 0
    days = args.expires_days
    options = PublishOptions(
        sign_keys=load_sign_keys(args),
        expires_days=7.0 if days is None else days,
        max_patch_format=max_patch_format(args),
    )
    manifest = change_channel(
        args.repo, args.family, args.channel, request.edit(), options, keep_validity=days is None
    )
    _print(manifest, args.channel, args.json)
    return 0


def _status(args: argparse.Namespace) -> int:
    """show a channel's target, rollout share, steps and rolled-back versions"""
    from lorien.publisher.signed import SignedMetadataWriter

    manifest = SignedMetadataWriter(args.repo).read_manifest(args.family)
    if manifest is None:
        raise BadInputError(f"{args.repo}: family {args.family!r} is not published")
    _print(manifest, args.channel, args.json)
    return 0


def _halt(args: argparse.Namespace) -> int:
    """stop a rollout where it is: no further device takes the target (--roll-back: move the channel back and
    let devices that took the target go back)"""
    return _change(args)


def _resume(args: argparse.Namespace) -> int:
    """let a halted rollout go on"""
    return _change(args)


def _set(args: argparse.Namespace) -> int:
    """give a channel a new target and/or rollout share and steps (--roll-back: back to the previous target)"""
    return _change(args)


def _steps(values: list[str]) -> tuple[RolloutStep, ...]:
    from lorien.publisher.channels import checked_percent
    from lorien.repo.channels import RolloutStep
    from lorien.repo.manifest import format_timestamp, parse_timestamp

    steps = []
    for value in values:
        percent, _, at = value.partition("@")
        try:
            moment = format_timestamp(parse_timestamp(at))
        except ValueError as error:
            raise BadInputError(f"--step {value!r}: expected PERCENT@YYYY-MM-DDTHH:MM:SSZ ({error})") from None
        try:
            number = float(percent)
        except ValueError:
            raise BadInputError(f"--step {value!r}: {percent!r} is not a number") from None
        steps.append(RolloutStep(moment, checked_percent(number, f"--step {value!r}")))
    return tuple(sorted(steps, key=lambda step: step.at))


def register(commands: Commands) -> None:
    rollout = commands.add_parser(
        "rollout",
        help="steer a channel's staged rollout: status, halt, resume, set (docs/rollouts.md)",
        description="Change a published channel in place (signed, sequenced like a publish): halt or resume its "
        "rollout, set its target, share or steps, or roll it back to its previous target.",
    )
    actions = rollout.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, handler in (("status", _status), ("halt", _halt), ("resume", _resume), ("set", _set)):
        action = add_command(actions, name, handler, doing=f"changing the rollout ({name})")
        action.add_argument("family")
        action.add_argument("channel")
        action.add_argument("--repo", type=Path, required=True, help="repository directory")
        add_json_option(action)
        if name == "status":
            continue
        add_sign_key_option(action, "ed25519 private key the repository is signed with (as for publish)")
        action.add_argument(
            "--models",
            type=Path,
            help="hand the change to the `lorien watch` running on this models directory (it holds the repository "
            "and signs with its own keys); without it the change is written directly",
        )
        action.add_argument(
            "--timeout",
            type=float,
            default=60.0,
            help="with --models: seconds to wait for the watcher (default 60)",
        )
        action.add_argument(
            "--expires-days",
            dest="expires_days",
            type=float,
            default=None,
            help="the rewritten manifest expires this many days from now (0 = never; default: as long as the "
            "manifest it replaces was valid, i.e. what publish used)",
        )
        add_max_patch_format_option(action)
        if name in ("halt", "set"):
            action.add_argument(
                "--roll-back",
                dest="roll_back",
                action="store_true",
                help="move the channel back to its previous target; devices that took this one go back",
            )
        if name == "set":
            action.add_argument("--target", help="new target version (the current one becomes previous)")
            action.add_argument("--percent", type=float, help="share of the channel's devices, 0-100")
            action.add_argument(
                "--step",
                action="append",
                metavar="PERCENT@TIME",
                help="raise the share at a UTC time, e.g. 50@2026-12-03T02:00:00Z (repeatable; replaces the steps)",
            )
