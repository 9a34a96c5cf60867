"""``lorien fleet-report``: what the fleet runs, from ordinary access logs — no server of our own.

Every lorien device names itself in its User-Agent (``lorien/0.1.0 (device=…; family=…; channel=…;
installed=…; rollout=…)``, see docs/rollouts.md). This module reads access-log lines, keeps the requests whose
User-Agent is a lorien device's, and sums them up per family and channel.

Data flow: :func:`parse_line` (one line in any of the formats below → a :class:`Request`, or None for a line
that is not a request or not from a lorien device) → :class:`FleetReport.add` (per device: the last installed
version and rollout state seen; per family/channel: bytes, patch and full downloads; per device and blob: how
often it was fetched from byte 0) → :meth:`FleetReport.rows`. Formats, detected per line:

* nginx ``combined`` (also Apache's): ``ip - user [time] "GET /path HTTP/1.1" status bytes "referer" "agent"``;
* lorien's own nginx format (``lorien nginx-config``): ``ip [time] "request" status bytes range="…" if_range="…"
  rt=… "agent"``;
* Amazon CloudFront standard logs: tab-separated, columns named by the ``#Fields:`` line (the documented
  default order when there is none), the User-Agent URL-encoded.

A device "keeps re-downloading" when it fetched one blob from the start (HTTP 200, not a 206 resume) at least
``repeat`` times: a device whose update keeps failing after the download.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

from lorien.repo.layout import BLOB_DIR, PATCH_EXTENSION

_COMBINED = re.compile(r'(\S+) \S+ \S+ \[[^\]]*\] "([^"]*)" (\d{3}) (\d+|-) "[^"]*" "([^"]*)"')
_LORIEN = re.compile(r'(\S+) \[[^\]]*\] "([^"]*)" (\d{3}) (\d+|-) range="[^"]*" if_range="[^"]*" rt=\S* "([^"]*)"')
_AGENT = re.compile(r"lorien/(\S+) \(([^)]*)\)")
CLOUDFRONT_FIELDS = [
    "date",
    "time",
    "x-edge-location",
    "sc-bytes",
    "c-ip",
    "cs-method",
    "cs(Host)",
    "cs-uri-stem",
    "sc-status",
    "cs(Referer)",
    "cs(User-Agent)",
    "cs-uri-query",
]
DEFAULT_REPEAT = 3


@dataclass(frozen=True)
class Request:
    path: str
    status: int
    bytes: int
    device: str
    family: str
    channel: str
    installed: str
    rollout: str

    @property
    def blob(self) -> bool:
        return f"/{BLOB_DIR}/" in f"/{self.path.lstrip('/')}"

    @property
    def patch(self) -> bool:
        return self.blob and self.path.endswith(f".{PATCH_EXTENSION}")


def _agent_fields(agent: str) -> dict[str, str] | None:
    match = _AGENT.search(agent)
    if match is None:
        return None
    fields = {}
    for part in match.group(2).split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields[key] = value
    return fields if "device" in fields and "family" in fields else None


def _request(path: str, status: str, size: str, agent: str) -> Request | None:
    fields = _agent_fields(agent)
    if fields is None or not status.isdigit():
        return None
    return Request(
        path=path.split("?", 1)[0],
        status=int(status),
        bytes=int(size) if size.isdigit() else 0,
        device=fields["device"],
        family=fields["family"],
        channel=fields.get("channel", "stable"),
        installed=fields.get("installed", "none"),
        rollout=fields.get("rollout", "unknown"),
    )


class LineParser:
    """Parses lines of one log after another; remembers a CloudFront ``#Fields:`` header for the lines after it."""

    def __init__(self) -> None:
        self.cloudfront_fields = CLOUDFRONT_FIELDS

    def parse(self, line: str) -> Request | None:
        line = line.rstrip("\r\n")
        if line.startswith("#Fields:"):
            self.cloudfront_fields = line.removeprefix("#Fields:").split()
            return None
        if not line or line.startswith("#"):
            return None
        if "\t" in line:
            return self._cloudfront(line.split("\t"))
        for pattern in (_LORIEN, _COMBINED):
            match = pattern.match(line)
            if match:
                _ip, request, status, size, agent = match.groups()
                parts = request.split()
                return _request(parts[1], status, size, agent) if len(parts) >= 2 else None
        return None

    def _cloudfront(self, columns: list[str]) -> Request | None:
        row = dict(zip(self.cloudfront_fields, columns, strict=False))
        if not {"cs-uri-stem", "sc-status", "sc-bytes", "cs(User-Agent)"} <= set(row):
            return None
        agent = unquote(unquote(row["cs(User-Agent)"]))  # CloudFront encodes it, some fields twice
        return _request(row["cs-uri-stem"], row["sc-status"], row["sc-bytes"], agent)


def parse_line(line: str) -> Request | None:
    """One line of nginx combined, lorien's nginx format or CloudFront (default fields) → a device request."""
    return LineParser().parse(line)


@dataclass
class _Group:
    devices: set[str] = field(default_factory=set)
    bytes: int = 0
    patch_downloads: int = 0
    full_downloads: int = 0


@dataclass(frozen=True)
class Row:
    family: str
    channel: str
    devices: int
    versions: dict[str, int]  # installed version → devices (the last one each device reported)
    rollout: dict[str, int]  # rollout state (in, out, held, …) → devices
    bytes: int
    patch_downloads: int
    full_downloads: int
    redownloading: tuple[str, ...]  # device ids


class FleetReport:
    def __init__(self, repeat: int = DEFAULT_REPEAT) -> None:
        self.repeat = repeat
        self.requests = 0
        self.other_lines = 0
        self._groups: dict[tuple[str, str], _Group] = defaultdict(_Group)
        self._last: dict[tuple[str, str], Request] = {}  # (family, device) → its latest request
        self._from_start: Counter[tuple[str, str, str, str]] = Counter()  # (family, channel, device, blob) → 200s

    def add_lines(self, lines: Iterable[str]) -> None:
        parser = LineParser()
        for line in lines:
            request = parser.parse(line)
            if request is None:
                self.other_lines += 1
            else:
                self.add(request)

    def add(self, request: Request) -> None:
        self.requests += 1
        group = self._groups[(request.family, request.channel)]
        group.devices.add(request.device)
        self._last[(request.family, request.device)] = request
        if not request.blob or request.status not in (200, 206):
            return
        group.bytes += request.bytes
        if request.status == 200:
            if request.patch:
                group.patch_downloads += 1
            else:
                group.full_downloads += 1
            self._from_start[(request.family, request.channel, request.device, request.path)] += 1

    def rows(self) -> list[Row]:
        rows = []
        for (family, channel), group in sorted(self._groups.items()):
            last = [self._last[(family, device)] for device in sorted(group.devices)]
            last = [request for request in last if request.channel == channel]
            failing = sorted(
                {
                    device
                    for (fam, chan, device, _blob), count in self._from_start.items()
                    if fam == family and chan == channel and count >= self.repeat
                }
            )
            rows.append(
                Row(
                    family=family,
                    channel=channel,
                    devices=len(group.devices),
                    versions=dict(sorted(Counter(request.installed for request in last).items())),
                    rollout=dict(sorted(Counter(request.rollout.split(":")[0] for request in last).items())),
                    bytes=group.bytes,
                    patch_downloads=group.patch_downloads,
                    full_downloads=group.full_downloads,
                    redownloading=tuple(failing),
                )
            )
        return rows


def render_table(rows: list[Row]) -> str:
    """A plain-text table, one line per family/channel."""
    header = ("family", "channel", "devices", "versions", "rollout", "bytes", "patch", "full", "re-downloading")
    lines = [header]
    for row in rows:
        lines.append(
            (
                row.family,
                row.channel,
                str(row.devices),
                ", ".join(f"{version}: {count}" for version, count in row.versions.items()),
                ", ".join(f"{state}: {count}" for state, count in row.rollout.items()),
                str(row.bytes),
                str(row.patch_downloads),
                str(row.full_downloads),
                ", ".join(row.redownloading) or "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
    )


@dataclass(frozen=True)
class HaltDecision:
    """A rollout the logs say is failing: of the devices inside its stage, this many keep re-downloading."""

    family: str
    channel: str
    in_stage: int
    failing: int

    @property
    def share(self) -> float:
        return self.failing / self.in_stage if self.in_stage else 0.0


def failing_rollouts(report: FleetReport, threshold: float, min_devices: int) -> list[HaltDecision]:
    """Channels whose rollout should halt: at least ``min_devices`` devices last reported being inside the stage
    (``rollout=in``), and at least ``threshold`` of them keep re-downloading. Pure: logs in, decisions out."""
    decisions = []
    for row in report.rows():
        inside = {
            device
            for (family, device), request in report._last.items()
            if family == row.family and request.channel == row.channel and request.rollout.split(":")[0] == "in"
        }
        failing = inside & set(row.redownloading)
        if len(inside) >= min_devices and inside and len(failing) / len(inside) >= threshold:
            decisions.append(HaltDecision(row.family, row.channel, len(inside), len(failing)))
    return decisions
