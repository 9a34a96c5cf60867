"""``lorien fleet-report``: the fleet's versions, rollout progress, bytes and failing devices per family and
channel, from nginx or CloudFront access logs (:mod:`publisher.fleet_report`; devices name themselves in their
User-Agent)."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
from pathlib import Path

from lorien.cli._options import Commands, add_command, add_json_option, add_sign_key_option
from lorien.repo.errors import BadInputError


def _fleet_report(args: argparse.Namespace) -> int:
    """count the fleet from access logs (nginx combined, lorien's nginx format, CloudFront; .gz too): devices,
    versions, rollout states, bytes, patch vs full downloads and devices that keep re-downloading, per family
    and channel"""
    from lorien.publisher.fleet_report import FleetReport, render_table

    if args.repeat < 2:
        raise BadInputError(f"--repeat must be at least 2, got {args.repeat}")
    report = FleetReport(repeat=args.repeat)
    for path in args.logs:
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rt", encoding="utf-8", errors="replace") as lines:
                report.add_lines(lines)
        except FileNotFoundError:
            raise BadInputError(f"{path}: access log does not exist") from None
        except (gzip.BadGzipFile, EOFError) as error:
            raise BadInputError(f"{path}: not a readable gzip file: {error}") from None
    rows = report.rows()
    halted = _halt_failing(args, report) if args.halt_above is not None else []
    if args.json:
        print(
            json.dumps(
                {
                    "requests": report.requests,
                    "rows": [dataclasses.asdict(row) for row in rows],
                    "halted": [dataclasses.asdict(decision) for decision in halted],
                },
                indent=2,
            )
        )
    elif rows:
        print(render_table(rows))
    else:
        print(f"no lorien device requests in {len(args.logs)} log(s) ({report.other_lines} other lines)")
    for decision in halted if not args.json else ():
        print(
            f"halted {decision.family}/{decision.channel}: {decision.failing} of {decision.in_stage} devices in the "
            f"stage keep re-downloading ({decision.share:.0%} ≥ {args.halt_above:.0%})"
        )
    return 0


def _halt_failing(args: argparse.Namespace, report) -> list:
    """--halt-above: halt each rollout the logs say is failing, through the same signed path as `lorien rollout
    halt` (under the writer lock, or handed to the watcher of --models)."""
    from lorien.cli._options import load_sign_keys
    from lorien.publisher.channels import halt
    from lorien.publisher.fleet_report import failing_rollouts
    from lorien.publisher.options import PublishOptions
    from lorien.publisher.rollout import change_channel
    from lorien.publisher.rollout_requests import RolloutRequest, submit
    from lorien.publisher.signed import SignedMetadataWriter

    if not 0 < args.halt_above <= 1:
        raise BadInputError(f"--halt-above must be a share in (0, 1], got {args.halt_above}")
    if args.repo is None:
        raise BadInputError("--halt-above needs --repo (the repository whose rollouts to halt)")
    halted = []
    for decision in failing_rollouts(report, args.halt_above, args.min_devices):
        manifest = SignedMetadataWriter(args.repo).read_manifest(decision.family)
        channel = manifest.channel(decision.channel) if manifest is not None else None
        if channel is None or channel.rollout is None or channel.rollout.halted:
            continue  # no running rollout there (already halted, finished, or not published here)
        if args.models is not None:
            submit(args.models, RolloutRequest(decision.family, decision.channel, "halt"), args.timeout)
        else:
            options = PublishOptions(sign_keys=load_sign_keys(args))
            change_channel(args.repo, decision.family, decision.channel, halt, options, keep_validity=True)
        halted.append(decision)
    return halted


def register(commands: Commands) -> None:
    command = add_command(commands, "fleet-report", _fleet_report, doing="reading access logs")
    command.add_argument("logs", nargs="+", type=Path, metavar="ACCESS_LOG", help="access log files (.gz too)")
    command.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="a device that fetched one blob from the start this many times keeps re-downloading (default 3)",
    )
    command.add_argument(
        "--halt-above",
        type=float,
        metavar="SHARE",
        help="automatic halt: halt every running rollout where at least this share (0-1) of the devices inside the "
        "stage keep re-downloading (needs --repo; signed like `lorien rollout halt`)",
    )
    command.add_argument(
        "--min-devices",
        type=int,
        default=20,
        help="with --halt-above: decide only once this many devices reported being inside the stage (default 20)",
    )
    command.add_argument("--repo", type=Path, help="with --halt-above: the repository")
    command.add_argument("--models", type=Path, help="with --halt-above: hand the halt to the watcher of this dir")
    command.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the watcher (--models)")
    add_sign_key_option(command, "with --halt-above: the keys that sign the halted manifest (as for publish)")
    add_json_option(command)
