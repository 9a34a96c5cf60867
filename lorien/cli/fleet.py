"""``lorien fleet-report``: the fleet's versions, rollout progress, bytes and failing devices per family and
channel, from nginx or CloudFront access logs (:mod:`publisher.fleet_report`; devices name themselves in their
User-Agent)."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
from pathlib import Path

from lorien.cli._options import Commands, add_command, add_json_option
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
    if args.json:
        print(
            json.dumps({"requests": report.requests, "rows": [dataclasses.asdict(row) for row in rows]}, indent=2)
        )
    elif rows:
        print(render_table(rows))
    else:
        print(f"no lorien device requests in {len(args.logs)} log(s) ({report.other_lines} other lines)")
    return 0


def register(commands: Commands) -> None:
    command = add_command(commands, "fleet-report", _fleet_report, doing="reading access logs")
    command.add_argument("logs", nargs="+", type=Path, metavar="ACCESS_LOG", help="access log files (.gz too)")
    command.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="a device that fetched one blob from the start this many times keeps re-downloading (default 3)",
    )
    add_json_option(command)
