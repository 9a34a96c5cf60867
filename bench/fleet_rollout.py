"""Staged-rollout simulation: ≥ 1 000 lightweight devices follow a channel through real nginx with injected faults.

``python -m bench.fleet --scenario rollout [--devices 1000] [--cut-share 0.2] [--seed 0] [--out bench/results]``

What a simulated device is: a device id, an installed version and the real decision and download code — each
check refreshes the repository's TUF metadata and reads the family manifest as a signed target with the
device's ``repo.trust.read_trusted`` (python-tuf's ngclient over lorien's transport, from the repository's
``1.root.json``), checks every planned blob is a signed target, runs ``device.rollout.decide`` and ``device.plan.cheapest_plan``, and downloads the planned
blobs with the device's resumable ``repo.download.Downloader`` (MD5 + SHA-256 verified, Range resumes), every
request carrying the device's User-Agent. It does not apply patches or deploy (the real ``Updater`` does that in
``python -m bench.fleet``): a device counts as moved once its blobs verified.

Scenario (one publisher, signed repository, nginx from ``lorien nginx-config``, a TCP proxy that cuts
``cut-share`` of blob connections at a random byte): every device starts on 1.1.0 (channel ``stable``).

1. ``channels.toml``: target 1.2.0 at 1 % → publish → every device checks;
2. ``lorien rollout set --percent 10`` (``publisher.rollout.change_channel``) → every device checks;
3. ``halt --roll-back`` at 10 % (which makes the 1.2.0→1.1.0 patch) → every device checks: those on 1.2.0 go
   back;
4. a fixed 1.3.0 in ``channels.toml`` at 1 % → publish → check; 10 % → check; 100 % → check.

Per step it reports devices on the target, the binomial expectation n·p and σ, bytes downloaded per moved
device, and the devices that installed the target although their bucket was outside the stage (must be 0). At
the end ``lorien fleet-report``'s parser reads nginx's access log and must see every device.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.tcp_proxy import CuttingProxy
from lorien.device.plan import Installed, cheapest_plan
from lorien.device.rollout import bucket, decide
from lorien.modelgen import write_family
from lorien.publisher.channels import halt, roll_back, set_rollout
from lorien.publisher.fleet_report import FleetReport
from lorien.publisher.publish import PublishOptions, publish
from lorien.publisher.rollout import change_channel
from lorien.repo.download import Downloader, DownloadPolicy, DownloadRequest
from lorien.repo.fetch import HttpFetcher
from lorien.repo.layout import manifest_path
from lorien.repo.limits import DEFAULT_LIMITS
from lorien.repo.manifest import Manifest, parse_manifest
from lorien.repo.signing import generate_keypair, load_signing_key
from lorien.repo.transport import HttpTransport, RetryPolicy
from lorien.repo.trust import TrustPolicy, read_trusted
from lorien.repo.tufmeta import HASH

FAMILY = "cls"
VERSIONS = ["1.1.0", "1.2.0", "1.3.0"]
RETRY = RetryPolicy(attempts=None, backoff=0.05, max_backoff=0.5, budget=120.0)


@dataclass
class SimDevice:
    id: str
    installed: str
    home: Path
    state: str = "unknown"
    history: list[str] = field(default_factory=list)

    def agent(self) -> str:
        return (
            f"lorien/bench (device={self.id}; family={FAMILY}; channel=stable; installed={self.installed}; "
            f"rollout={self.state})"
        )


def _transport(device: SimDevice) -> HttpTransport:
    transport = HttpTransport(DEFAULT_LIMITS)
    transport.identity = device.agent
    return transport


def _check(device: SimDevice, url: str, trust: TrustPolicy) -> tuple[str, int]:
    """One check + download; returns (what happened, bytes downloaded)."""
    fetcher = HttpFetcher(url, transport=_transport(device))
    document = read_trusted(fetcher, manifest_path(FAMILY), trust, device.home / "tuf")  # TUF, as a device does
    assert document.client is not None, "the bench repository is signed"
    manifest: Manifest = parse_manifest(document.data)
    decision = decide(manifest, device_id=device.id, installed=device.installed, now=datetime.now(UTC))
    device.state = decision.state + (
        f":{decision.bucket:.2f}/{decision.percent:g}" if decision.bucket is not None else ""
    )
    if decision.target is None or decision.target == device.installed:
        return "stayed", 0
    entry = manifest.version(device.installed)
    installed = Installed(device.installed, entry.sha256, entry.size, None)
    plan = cheapest_plan(manifest, installed, target=decision.target)
    for step in plan.steps:  # every blob a signed target of its size and SHA-256, as the device checks
        info = document.client.target(step.blob)
        assert info.length == step.size and info.hashes.get(HASH) == step.sha256, step.blob
    downloader = Downloader(policy=DownloadPolicy(retry=RETRY), transport=_transport(device))
    for step in plan.steps:
        part = device.home / f"{step.sha256}.part"
        downloader.fetch(DownloadRequest(fetcher.url(step.blob), part, step.size, step.md5, step.sha256))
        part.unlink()
    device.installed = decision.target
    device.history.append(decision.target)
    return "moved", plan.download_bytes


def _step(name: str, target: str, percent: float, devices: list[SimDevice], url: str, trust: TrustPolicy) -> dict:
    before = {device.id: device.installed for device in devices}
    totals = {"bytes": 0, "moved": 0}
    lock = threading.Lock()

    def one(device: SimDevice) -> None:
        outcome, size = _check(device, url, trust)
        with lock:
            totals["bytes"] += size
            totals["moved"] += outcome == "moved"

    with ThreadPoolExecutor(max_workers=24) as pool:
        list(pool.map(one, devices))
    n, p = len(devices), percent / 100
    on_target = sum(device.installed == target for device in devices)
    outside = [d.id for d in devices if d.installed == target and bucket(d.id, FAMILY, target) >= percent]
    expected, sigma = n * p, math.sqrt(n * p * (1 - p))
    return {
        "step": name,
        "target": target,
        "percent": percent,
        "devices_on_target": on_target,
        "expected": round(expected, 1),
        "sigma": round(sigma, 2),
        "z": round((on_target - expected) / sigma, 2) if sigma else 0.0,
        "within_3_sigma": abs(on_target - expected) <= 3 * sigma + 1e-9,
        "moved_this_step": totals["moved"],
        "changed_this_step": sum(before[d.id] != d.installed for d in devices),
        "bytes_this_step": totals["bytes"],
        "bytes_per_moved_device": round(totals["bytes"] / totals["moved"]) if totals["moved"] else 0,
        "installed_target_outside_stage": len(outside),
        "versions": {v: sum(d.installed == v for d in devices) for v in VERSIONS},
    }


def run_rollout(devices_count: int, cut_share: float, seed: int, work: Path, start_nginx, random_cuts) -> dict:
    """The scenario above; ``start_nginx(repo, work) -> (process, port)`` and ``random_cuts`` come from
    ``bench.fleet``."""
    write_family(work / "all" / FAMILY, ["1.0.0", *VERSIONS], seed=seed)
    models = work / "models" / FAMILY
    models.mkdir(parents=True)
    for version in VERSIONS[:2]:
        shutil.copy(work / "all" / FAMILY / f"{version}.tflite", models)
    channels = models / "channels.toml"
    channels.write_text('[stable]\ntarget = "1.2.0"\nprevious = "1.1.0"\nrollout = { percent = 1 }\n')
    private, _public, _ = generate_keypair(work / "keys")
    options = PublishOptions(sign_keys=(load_signing_key(private),))
    repo = work / "repo"
    assert publish(work / "models", repo, options=options).ok
    trust = TrustPolicy((repo / "metadata" / "1.root.json").read_bytes(), False, DEFAULT_LIMITS)

    nginx, port = start_nginx(repo, work)
    proxy = CuttingProxy(port, decide=random_cuts(cut_share, seed))
    devices = []
    for index in range(devices_count):
        home = work / "devices" / f"d{index:05d}"
        home.mkdir(parents=True)
        devices.append(SimDevice(hashlib.sha256(f"{seed}-{index}".encode()).hexdigest()[:16], "1.1.0", home))

    def change(edit) -> None:
        change_channel(repo, FAMILY, "stable", edit, PublishOptions(sign_keys=options.sign_keys))

    steps = [_step("1.2.0 at 1 %", "1.2.0", 1, devices, proxy.url, trust)]
    change(lambda channel: set_rollout(channel, percent=10))
    steps.append(_step("1.2.0 at 10 %", "1.2.0", 10, devices, proxy.url, trust))
    took_halted = [d for d in devices if d.installed == "1.2.0"]
    change(lambda channel: roll_back(halt(channel)))  # also makes the 1.2.0→1.1.0 patch for the way back
    rolled = _step("halt + roll-back", "1.2.0", 0, devices, proxy.url, trust)
    rolled["devices_went_back"] = sum(d.installed == "1.1.0" for d in took_halted)
    rolled["devices_that_took_the_halted_target"] = len(took_halted)
    steps.append(rolled)
    shutil.copy(work / "all" / FAMILY / "1.3.0.tflite", models)
    channels.write_text('[stable]\ntarget = "1.3.0"\nrollout = { percent = 1 }\n')
    assert publish(work / "models", repo, options=options).ok
    steps.append(_step("1.3.0 at 1 %", "1.3.0", 1, devices, proxy.url, trust))
    change(lambda channel: set_rollout(channel, percent=10))
    steps.append(_step("1.3.0 at 10 %", "1.3.0", 10, devices, proxy.url, trust))
    change(lambda channel: set_rollout(channel, percent=100))
    steps.append(_step("1.3.0 at 100 %", "1.3.0", 100, devices, proxy.url, trust))

    nginx.terminate()
    nginx.wait(10)
    report = FleetReport()
    report.add_lines((work / "nginx" / "logs" / "access.log").read_text().splitlines())
    (row,) = report.rows()
    early_overlap = len(
        {d.id for d in devices if bucket(d.id, FAMILY, "1.2.0") < 10}
        & {d.id for d in devices if bucket(d.id, FAMILY, "1.3.0") < 10}
    )
    return {
        "scenario": "rollout",
        "devices": devices_count,
        "cut_share": cut_share,
        "seed": seed,
        "steps": steps,
        "connections_cut": proxy.cut_connections,
        "proxy_connections": proxy.connections,
        "fleet_report": {"devices_seen": row.devices, "versions": row.versions, "bytes": row.bytes},
        "early_devices_shared_by_1.2.0_and_1.3.0_at_10_percent": early_overlap,
        "ok": all(step["installed_target_outside_stage"] == 0 for step in steps)
        and all(step["within_3_sigma"] for step in steps if 0 < step["percent"] < 100)
        and rolled["devices_went_back"] == rolled["devices_that_took_the_halted_target"]
        and steps[-1]["devices_on_target"] == devices_count
        and row.devices == devices_count,
    }


def render_rollout(result: dict) -> str:
    lines = [
        f"Staged rollout over {result['devices']} simulated devices through nginx, {result['cut_share']:.0%} of blob "
        f"connections cut ({result['connections_cut']} cuts); fleet-report saw {result['fleet_report']['devices_seen']} "
        "devices.\n",
        "| step | devices on target | expected (n·p ± σ) | z | moved this step | bytes / moved device | "
        "installed outside stage |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for step in result["steps"]:
        lines.append(
            f"| {step['step']} | {step['devices_on_target']} | {step['expected']} ± {step['sigma']} | {step['z']} "
            f"| {step['changed_this_step']} | {step['bytes_per_moved_device']:,} | "
            f"{step['installed_target_outside_stage']} |"
        )
    rolled = next(step for step in result["steps"] if step["step"] == "halt + roll-back")
    lines.append(
        f"\nRoll-back: {rolled['devices_went_back']} of {rolled['devices_that_took_the_halted_target']} devices that "
        "took the halted 1.2.0 went back to 1.1.0. Devices early in both the 1.2.0 and the 1.3.0 10 % stage: "
        f"{result['early_devices_shared_by_1.2.0_and_1.3.0_at_10_percent']} (independent buckets: ≈ 1 % of the "
        f"fleet). Overall: {'ok' if result['ok'] else 'FAILED'}.\n"
    )
    return "\n".join(lines)
