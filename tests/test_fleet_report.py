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


def _stage_logs(in_stage: int, failing: int, outside: int = 5) -> list[str]:
    """``in_stage`` devices inside a 10 % stage of ``cls``/stable, of which ``failing`` fetched the patch from the
    start three times; ``outside`` devices out of the stage."""
    lines = []
    for index in range(in_stage):
        user_agent = agent(f"in-{index}", "1.1.0", rollout="in:3.17/10")
        lines += [combined(PATCH, 200, 1000, user_agent)] * (3 if index < failing else 1)
    for index in range(outside):
        lines.append(
            combined("/cls/manifest.json", 200, 900, agent(f"out-{index}", "1.1.0", rollout="out:50.1/10"))
        )
    return lines


def test_failing_rollouts_need_enough_devices_and_the_share() -> None:
    from lorien.publisher.fleet_report import failing_rollouts

    report = FleetReport()
    report.add_lines(_stage_logs(in_stage=30, failing=6))
    (decision,) = failing_rollouts(report, threshold=0.2, min_devices=20)
    assert (decision.family, decision.channel, decision.in_stage, decision.failing) == ("cls", "stable", 30, 6)
    assert failing_rollouts(report, threshold=0.25, min_devices=20) == []  # 20 % < 25 %
    assert failing_rollouts(report, threshold=0.2, min_devices=31) == []  # not enough devices in the stage yet
    healthy = FleetReport()
    healthy.add_lines(_stage_logs(in_stage=30, failing=0))
    assert failing_rollouts(healthy, threshold=0.01, min_devices=1) == []


def test_fleet_report_halt_above_halts_a_failing_rollout_through_the_signed_path(
    models_dir: Path, tmp_path: Path
) -> None:
    from lorien.repo.manifest import parse_manifest

    key = tmp_path / "publisher" / "lorien.key"
    assert run_lorien("keygen", "--out", tmp_path / "publisher").returncode == 0
    (models_dir / "classifier" / "channels.toml").write_text(
        '[stable]\ntarget = "1.2.0"\nprevious = "1.1.0"\nrollout = { percent = 10 }\n'
    )
    repo = tmp_path / "repo"
    assert run_lorien("publish", "--models", models_dir, "--repo", repo, "--sign-key", key).returncode == 0
    log = tmp_path / "access.log"
    log.write_text(
        "\n".join(line.replace("family=cls", "family=classifier") for line in _stage_logs(30, 9)) + "\n"
    )
    needs_repo = run_lorien("fleet-report", log, "--halt-above", "0.2")
    assert needs_repo.returncode == 2 and "--halt-above needs --repo" in needs_repo.stderr
    bad_share = run_lorien("fleet-report", log, "--halt-above", "20", "--repo", repo)
    assert bad_share.returncode == 2 and "a share in (0, 1]" in bad_share.stderr
    halted = run_lorien("fleet-report", log, "--halt-above", "0.2", "--repo", repo, "--sign-key", key)
    assert halted.returncode == 0, halted.stderr
    assert "halted classifier/stable: 9 of 30 devices in the stage keep re-downloading" in halted.stdout
    channel = parse_manifest((repo / "classifier" / "manifest.json").read_bytes()).channels["stable"]
    assert channel.rollout is not None and channel.rollout.halted and channel.target == "1.2.0"
    again = run_lorien("fleet-report", log, "--halt-above", "0.2", "--repo", repo, "--sign-key", key)
    assert again.returncode == 0 and "halted" not in again.stdout  # already halted: nothing rewritten
    verified = run_lorien("inspect", repo, "--verify", "--root", repo / "metadata" / "1.root.json")
    assert verified.returncode == 0, verified.stdout
