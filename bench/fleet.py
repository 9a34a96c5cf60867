"""Fleet simulation: N devices update at once from real nginx through a proxy that cuts connections.

``python -m bench.fleet [--devices 200] [--cut-share 0.2] [--seed 0] [--out bench/results]``;
``--scenario rollout`` runs the staged-rollout simulation instead (``bench/fleet_rollout.py``).

Data flow: a generated TFLite family (3 versions, 2 MB each) is published → real nginx serves it (config from
``lorien nginx-config``) → a fault-injecting TCP proxy in front cuts ``cut-share`` of the blob connections at
a random byte → N device updaters (``device.updater.Updater``, each with its own state directory and model
file, all in threads of this process) run check + download + apply + deploy concurrently → the report counts
converged and corrupted devices, bytes sent by nginx vs the ideal (each device's planned bytes), wall time,
per-device p50/p99, and nginx requests. "Bytes" are the response bytes (headers included) the devices received
for blobs, against the sum of each device's planned download (body bytes only). Results go to ``results/fleet-<UTC>.json`` and ``fleet-latest.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pwd
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.tcp_proxy import CuttingProxy
from lorien.device.config import load_config
from lorien.device.updater import Updater
from lorien.modelgen import DEFAULT_LAYERS, write_family
from lorien.publisher.nginx_config import write_nginx_config
from lorien.publisher.publish import PublishOptions, publish
from lorien.repo.signing import generate_keypair, load_signing_key

RESULTS = Path(__file__).resolve().parent / "results"


def random_cuts(share: float, seed: int) -> Callable[[bytes], int | None]:
    """A decider for the proxy: cut ``share`` of the blob connections after a random number of bytes."""
    rng = random.Random(seed)

    def decide(request_line: bytes) -> int | None:
        if b"/blobs/" in request_line and rng.random() < share:
            return rng.randint(1000, 120_000)  # patches here are ~150 KB, full files 2 MB
        return None

    return decide


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_nginx(repo: Path, work: Path) -> tuple[subprocess.Popen, int]:
    """Real nginx (config from ``lorien nginx-config``) serving ``repo`` on a free port; logs in work/nginx/logs."""
    port = _free_port()
    user = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None
    config = write_nginx_config(repo, f"127.0.0.1:{port}", work / "nginx", user=user)
    nginx = subprocess.Popen(
        [
            shutil.which("nginx") or "/usr/sbin/nginx",
            "-p",
            str(work / "nginx"),
            "-c",
            str(config),
            "-g",
            "daemon off;",
        ]
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return nginx, port


def run(devices: int, cut_share: float, seed: int, work: Path) -> dict:
    versions = write_family(
        work / "all" / "cls", ["1.0.0", "1.1.0", "1.2.0"], layer_sizes=DEFAULT_LAYERS, seed=seed
    )
    shutil.copytree(work / "all", work / "models")
    private_key, _public_key, _keyid = generate_keypair(work / "keys")
    signed = PublishOptions(sign_keys=(load_signing_key(private_key),))
    assert publish(work / "models", work / "repo", options=signed).ok
    digests = {hashlib.sha256(p.read_bytes()).hexdigest(): p.stem for p in versions}
    latest = hashlib.sha256(versions[-1].read_bytes()).hexdigest()

    nginx, port = start_nginx(work / "repo", work)
    proxy = CuttingProxy(port, decide=random_cuts(cut_share, seed))
    rng = random.Random(seed)
    updaters = []
    for index in range(devices):
        home = work / "devices" / f"d{index:04d}"
        home.mkdir(parents=True)
        start = rng.choice(["1.0.0", "1.1.0", "unknown"])
        model = home / "model.tflite"
        if start == "unknown":
            model.write_bytes(b"TFL3 local build" * 512)
        else:
            shutil.copy(work / "all" / "cls" / f"{start}.tflite", model)
        cfg = load_config(
            None,
            {
                "repo_url": proxy.url,
                "family": "cls",
                "model_path": str(model),
                "state_dir": str(home / "state"),
                "trusted_root": str(work / "repo" / "metadata" / "1.root.json"),
            },
        )
        for directory in (cfg.tmp_dir, cfg.backup_dir, cfg.log_dir):
            directory.mkdir(parents=True, exist_ok=True)
        updaters.append(Updater(cfg))
    ideal = sum(updater.check().download_bytes for updater in updaters)

    durations: dict[int, float] = {}
    started = time.monotonic()

    def one(index: int, updater: Updater) -> None:
        begin = time.monotonic()
        updater.update_latest()
        updater.wait()
        durations[index] = time.monotonic() - begin

    threads = [threading.Thread(target=one, args=(i, u)) for i, u in enumerate(updaters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started

    converged = corrupted = 0
    for updater in updaters:
        digest = hashlib.sha256(updater.config.model_path.read_bytes()).hexdigest()
        converged += digest == latest
        corrupted += digest not in digests and not updater.config.model_path.read_bytes().startswith(b"TFL3 local")
    nginx.terminate()
    nginx.wait(10)
    log = (work / "nginx" / "logs" / "access.log").read_text().splitlines()
    served = sum(int(line.split('" ', 1)[1].split()[1]) for line in log if "/blobs/" in line)
    times = sorted(durations.values())
    return {
        "devices": devices,
        "cut_share": cut_share,
        "seed": seed,
        "converged": converged,
        "converged_percent": round(100 * converged / devices, 2),
        "corrupted": corrupted,
        "bytes_delivered_for_blobs": proxy.delivered,
        "bytes_ideal": ideal,
        "bytes_ratio": round(proxy.delivered / ideal, 4),
        "bytes_nginx_sent_for_blobs": served,  # includes what was in flight when the proxy cut a connection
        "connections_cut": proxy.cut_connections,
        "proxy_connections": proxy.connections,
        "nginx_requests": len(log),
        "wall_seconds": round(wall, 2),
        "p50_seconds": round(statistics.median(times), 2),
        "p99_seconds": round(times[min(len(times) - 1, int(0.99 * len(times)))], 2),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }


def render(result: dict) -> str:
    return (
        "| devices | cut share | converged | corrupted | bytes vs ideal | wall | p50 / p99 per device | "
        "nginx requests | connections cut |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| {result['devices']} | {result['cut_share']:.0%} | {result['converged_percent']} % | {result['corrupted']} "
        f"| {result['bytes_ratio']:.3f}× ({result['bytes_delivered_for_blobs']:,} / {result['bytes_ideal']:,} B) "
        f"| {result['wall_seconds']} s | {result['p50_seconds']} / {result['p99_seconds']} s "
        f"| {result['nginx_requests']} | {result['connections_cut']} |\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--cut-share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--scenario",
        choices=("update", "rollout"),
        default="update",
        help="update: every device updates at once (default); rollout: a staged rollout (bench/fleet_rollout.py)",
    )
    args = parser.parse_args(argv)
    if args.scenario == "rollout":
        return _rollout(args)
    with tempfile.TemporaryDirectory(prefix="lorien-fleet-") as scratch:
        result = run(args.devices, args.cut_share, args.seed, Path(scratch))
    _write_results(args.out, "fleet", result, render)
    return 0 if result["converged"] == result["devices"] and result["corrupted"] == 0 else 1


def _write_results(out: Path, name: str, result: dict, render_markdown: Callable[[dict], str]) -> None:
    """``out/<name>-<UTC>.json`` (raw) and ``out/<name>-latest.md`` (table), which is also printed."""
    result["at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"{name}-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = render_markdown(result)
    (out / f"{name}-latest.md").write_text(markdown)
    print(markdown)


def _rollout(args: argparse.Namespace) -> int:
    from bench.fleet_rollout import render_rollout, run_rollout

    with tempfile.TemporaryDirectory(prefix="lorien-fleet-rollout-") as scratch:
        result = run_rollout(args.devices, args.cut_share, args.seed, Path(scratch), start_nginx, random_cuts)
    _write_results(args.out, "fleet-rollout", result, render_rollout)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
