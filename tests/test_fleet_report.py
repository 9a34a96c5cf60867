"""``lorien fleet-report`` on synthetic access logs in the three formats it reads: devices, versions, rollout
states, bytes, patch vs full downloads and devices that keep re-downloading, per family and channel."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from urllib.parse import quote

from lorien.publisher.fleet_report import CLOUDFRONT_FIELDS, FleetReport, parse_line
from tests.support.processes import run_lorien

PATCH = "/blobs/sha256/ab/" + "a" * 64 + ".patch"
FULL = "/blobs/sha256/cd/" + "c" * 64 + ".tflite"


def agent(device: str, installed: str, channel: str = "stable", rollout: str = "in:3.17/10") -> str:
    return (
        f"lorien/0.1.0 (device={device}; family=cls; channel={channel}; installed={installed}; rollout={rollout})"
    )


def combined(path: str, status: int, size: int, user_agent: str) -> str:
    return f'10.0.0.7 - - [02/Dec/2026:02:00:00 +0000] "GET {path} HTTP/1.1" {status} {size} "-" "{user_agent}"'


def lorien_format(path: str, status: int, size: int, user_agent: str) -> str:
    return (
        f'10.0.0.7 [2026-12-02T02:00:00+00:00] "GET {path} HTTP/1.1" {status} {size} range="-" if_range="-" '
        f'rt=0.004 "{user_agent}"'
    )


def cloudfront(path: str, status: int, size: int, user_agent: str) -> str:
    columns = ["2026-12-02", "02:00:00", "FRA56-C1", str(size), "10.0.0.7", "GET", "d1.cloudfront.net", path]
    columns += [str(status), "-", quote(user_agent), "-"]
    return "\t".join(columns)


def test_each_format_yields_the_device_request() -> None:
    for render in (combined, lorien_format, cloudfront):
        request = parse_line(render(PATCH, 200, 1234, agent("pump-1", "1.1.0")))
        assert request is not None, render
        assert (request.device, request.family, request.channel, request.installed) == (
            "pump-1",
            "cls",
            "stable",
            "1.1.0",
        )
        assert request.patch and request.bytes == 1234 and request.status == 200
    assert parse_line(combined(PATCH, 200, 5, "curl/8.5.0")) is None  # not a device
    assert parse_line("garbage") is None


def test_the_table_counts_devices_versions_bytes_downloads_and_failing_devices() -> None:
    lines = ["#Version: 1.0", "#Fields: " + " ".join(CLOUDFRONT_FIELDS)]
    lines += [cloudfront("/cls/manifest.json", 200, 900, agent("a", "1.0.0"))]
    lines += [cloudfront(PATCH, 200, 1000, agent("a", "1.0.0"))]
    lines += [cloudfront("/cls/manifest.json", 200, 900, agent("a", "1.1.0"))]  # a reports its new version
    lines += [cloudfront(FULL, 200, 5000, agent("b", "none", rollout="out:70.00/10"))]
    lines += [cloudfront(FULL, 206, 3000, agent("b", "none", rollout="out:70.00/10"))]  # a resume
    lines += [cloudfront(PATCH, 200, 1000, agent("c", "1.0.0"))] * 3  # fetched from the start three times
    lines += [cloudfront(PATCH, 200, 1000, agent("d", "1.0.0", channel="beta", rollout="none"))]
    report = FleetReport(repeat=3)
    report.add_lines(lines)
    beta, stable = report.rows()
    assert (stable.family, stable.channel, stable.devices) == ("cls", "stable", 3)
    assert stable.versions == {"1.0.0": 1, "1.1.0": 1, "none": 1}
    assert stable.rollout == {"in": 2, "out": 1}
    assert stable.bytes == 1000 + 5000 + 3000 + 3 * 1000  # blobs only; the manifest is not counted
    assert (stable.patch_downloads, stable.full_downloads) == (4, 1)
    assert stable.redownloading == ("c",)
    assert (beta.channel, beta.devices, beta.redownloading) == ("beta", 1, ())


def test_command_reads_plain_and_gzip_logs(tmp_path: Path) -> None:
    plain = tmp_path / "access.log"
    plain.write_text("\n".join([combined(PATCH, 200, 10, agent("a", "1.0.0")), "not a request"]) + "\n")
    packed = tmp_path / "access.log.1.gz"
    with gzip.open(packed, "wt") as sink:
        sink.write(lorien_format(FULL, 200, 20, agent("b", "1.1.0")) + "\n")
    done = run_lorien("fleet-report", plain, packed, "--json")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["rows"]
    assert (row["devices"], row["bytes"], row["patch_downloads"], row["full_downloads"]) == (2, 30, 1, 1)
    table = run_lorien("fleet-report", plain)
    assert table.returncode == 0 and "cls" in table.stdout and "stable" in table.stdout
    missing = run_lorien("fleet-report", tmp_path / "absent.log")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
