"""What a running `lorien device` costs: start-up time, memory, and the time of one verified check.

Usage: ``python bench/device_footprint.py [--lorien PATH/TO/VENV/bin/lorien] [--runs 5] [--out FILE]``

With the given ``lorien`` executable (default: this checkout's), it publishes a signed three-version TFLite family
into a temporary directory, serves it with ``lorien serve``, and then, ``--runs`` times: starts ``lorien device``
(trusting the repository the way that version does — ``--trusted-root`` for TUF, ``--trusted-key`` for the old
``.sig`` scheme), measures the time until ``GET /api/v1.0/status`` answers, the process's RSS then, the time of
``POST /api/v1.0/check`` (the whole trust path: metadata fetched and verified, manifest parsed, model
fingerprinted, plan) cold (first) and warm (second), and the peak RSS (VmHWM) after both. Medians go to
``bench/results/device_footprint-<label>.json``. Run it for two checkouts to compare them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(url: str, timeout: float = 30) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            requests.get(url, timeout=1)
            return time.perf_counter() - started
        except requests.RequestException:
            time.sleep(0.01)
    raise RuntimeError(f"{url} did not answer")


def _memory(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def run(lorien: Path, runs: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="lorien-footprint-"))
    try:
        python = lorien.parent / "python"
        subprocess.run(
            [str(python), "-c", "from lorien.modelgen import write_family; import sys; "
             "write_family(__import__('pathlib').Path(sys.argv[1]), ['1.0.0', '1.1.0', '1.2.0'])",
             str(work / "models" / "cls")],
            check=True,
        )  # fmt: skip
        subprocess.run([str(lorien), "keygen", "--out", str(work / "keys")], check=True, capture_output=True)
        subprocess.run(
            [str(lorien), "publish", "--models", str(work / "models"), "--repo", str(work / "repo"),
             "--sign-key", str(work / "keys" / "lorien.key")],
            check=True, capture_output=True,
        )  # fmt: skip
        tuf = (work / "repo" / "metadata" / "1.root.json").exists()
        trust = (
            ["--trusted-root", str(work / "repo" / "metadata" / "1.root.json")]
            if tuf
            else ["--trusted-key", str(work / "keys" / "lorien.pub")]
        )
        serve_port = _free_port()
        server = subprocess.Popen(
            [str(lorien), "serve", str(work / "repo"), "--port", str(serve_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        samples: dict[str, list[float]] = {
            k: [] for k in ("start_s", "rss_start", "check_cold_s", "check_warm_s", "peak_rss")
        }
        try:
            _wait(f"http://127.0.0.1:{serve_port}/index.json")
            for attempt in range(runs):
                home = work / f"device-{attempt}"
                model = home / "model.tflite"
                home.mkdir()
                shutil.copy(work / "models" / "cls" / "1.0.0.tflite", model)
                port = _free_port()
                started = time.perf_counter()
                device = subprocess.Popen(
                    [str(lorien), "device", "--repo-url", f"http://127.0.0.1:{serve_port}/", "--family", "cls",
                     "--model-path", str(model), "--state-dir", str(home / "state"), "--port", str(port), *trust],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    base = f"http://127.0.0.1:{port}/api/v1.0/"
                    _wait(base + "status")
                    samples["start_s"].append(time.perf_counter() - started)
                    samples["rss_start"].append(_memory(device.pid)["VmRSS"])
                    token = (home / "state" / "api_token").read_text().strip()
                    headers = {"Authorization": f"Bearer {token}"}
                    for key in ("check_cold_s", "check_warm_s"):
                        began = time.perf_counter()
                        answer = requests.post(base + "check", headers=headers, timeout=60).json()
                        assert answer["code"] == 200, answer
                        samples[key].append(time.perf_counter() - began)
                    samples["peak_rss"].append(_memory(device.pid)["VmHWM"])
                finally:
                    device.terminate()
                    device.wait(10)
        finally:
            server.terminate()
            server.wait(10)
        return {"trust": "tuf" if tuf else "sig", "runs": runs} | {
            key: statistics.median(values) for key, values in samples.items()
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lorien",
        type=Path,
        default=Path(os.environ.get("VIRTUAL_ENV", HERE.parent / ".venv")) / "bin" / "lorien",
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--label", default="current")
    args = parser.parse_args()
    result = run(args.lorien, args.runs)
    out = HERE / "results" / f"device_footprint-{args.label}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
