"""Apply speed on the device path: in-process ``apply_patch`` MB/s beside ``zstd -d --patch-from`` on one pair.

``python -m bench.apply_speed [--sizes-mib 6,100,1024] [--work DIR]``, per size:

    old: a safetensors file of float32 tensors (2 MiB each, normal weights)
      → new: every 8th tensor densely nudged (relative 1e-3, a partial fine-tune), 0.1 % of the others'
        weights changed (so the patch holds DIFF/XOR residual segments, sparse segments and copies)
      → lorien patch (engine level 3: apply speed does not depend on the create level) and
        ``zstd -3 --long=31 --patch-from`` of the same pair
      → each applied in a child process that times only the apply call and reports its own VmHWM:
        ``repo.engine.apply_patch`` (what ``device/steps.py`` calls in-process) and ``zstd -d --patch-from``
        (wall time of the process), outputs checked by SHA-256

Prints a table and writes ``results/apply-speed-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lorien.repo.engine.lorien_engine import LorienEngine
from lorien.repo.hashing import sha256_file

RESULTS = Path(__file__).resolve().parent / "results"
MiB = 1 << 20
TENSOR = 2 * MiB
APPLY_IN_PROCESS = """
import re, sys, time
from lorien.repo.engine import apply_patch
began = time.perf_counter()
apply_patch(sys.argv[1], sys.argv[2], sys.argv[3])
seconds = time.perf_counter() - began
print(seconds, re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
"""


def write_pair(old: Path, new: Path, size: int, seed: int = 11) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    before: dict[str, np.ndarray] = {}
    after: dict[str, np.ndarray] = {}
    for index in range(max(1, size // TENSOR)):
        weights = (rng.standard_normal(TENSOR // 4) * 0.02).astype(np.float32)
        changed = weights.copy()
        if index % 8 == 0:
            changed *= 1 + rng.standard_normal(len(weights)).astype(np.float32) * 1e-3
        else:
            picked = rng.choice(len(weights), len(weights) // 1000, replace=False)
            changed[picked] += rng.standard_normal(len(picked)).astype(np.float32) * 1e-3
        before[f"t{index:04d}"], after[f"t{index:04d}"] = weights, changed
    save_file(before, str(old))
    save_file(after, str(new))


def measure(size_mib: int, work: Path) -> dict[str, Any]:
    old, new, patch, zpatch = (work / name for name in ("old", "new", "lorien.patch", "zstd.patch"))
    write_pair(old, new, size_mib * MiB)
    began = time.perf_counter()
    LorienEngine(level=3).create(old, new, patch)
    create_seconds = time.perf_counter() - began
    subprocess.run(
        ["zstd", "-3", "--long=31", "-q", "-f", f"--patch-from={old}", str(new), "-o", str(zpatch)], check=True
    )
    expected = sha256_file(new)
    run = subprocess.run(
        [sys.executable, "-c", APPLY_IN_PROCESS, str(old), str(patch), str(work / "out")],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds, rss_kib = run.stdout.split()
    assert sha256_file(work / "out") == expected
    began = time.perf_counter()
    zstd = ["zstd", "-d", "--long=31", "-q", "-f", f"--patch-from={old}", str(zpatch), "-o", str(work / "zout")]
    subprocess.run(zstd, check=True)
    zstd_seconds = time.perf_counter() - began
    assert sha256_file(work / "zout") == expected
    model = new.stat().st_size
    return {
        "model_bytes": model,
        "lorien_patch_bytes": patch.stat().st_size,
        "lorien_create_seconds_level3": round(create_seconds, 1),
        "lorien_apply_seconds": round(float(seconds), 2),
        "lorien_apply_mb_s": round(model / 1e6 / float(seconds), 1),
        "lorien_apply_peak_rss_mib": round(int(rss_kib) / 1024, 1),
        "zstd_patch_bytes": zpatch.stat().st_size,
        "zstd_apply_seconds": round(zstd_seconds, 2),
        "zstd_apply_mb_s": round(model / 1e6 / zstd_seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.apply_speed")
    parser.add_argument("--sizes-mib", default="6,100,1024")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lorien-apply-speed"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in (int(text) for text in args.sizes_mib.split(",")):
        rows.append(measure(size, args.work))
        print(json.dumps(rows[-1]), flush=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"apply-speed-{stamp}.json").write_text(json.dumps({"at": stamp, "runs": rows}, indent=1) + "\n")
    print("| model | lorien patch | lorien apply MB/s | apply RSS MiB | zstd patch | zstd -d --patch-from MB/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['model_bytes'] / 1e6:,.1f} MB | {row['lorien_patch_bytes']:,} | {row['lorien_apply_mb_s']} | "
            f"{row['lorien_apply_peak_rss_mib']} | {row['zstd_patch_bytes']:,} | {row['zstd_apply_mb_s']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
