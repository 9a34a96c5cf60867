"""GB-scale publishing and applying: create and apply a patch of a large synthetic model pair, with wall time,
MB/s and the peak memory of the whole process tree (the create side's worker processes included).

``python -m bench.gb_scale [--size-gib 1] [--work DIR] [--keep]``:

    old: a safetensors file of float16 tensors (64 MiB each, normal weights ×0.02), written tensor by tensor
      → new: every weight of every tensor multiplied by (1 + N(0, 1e-3)), a dense low-learning-rate fine-tune
        (in float16 that is a change of about one ulp), written the same way: neither file is ever in memory
      → ``repo.engine.create_patch`` (what the publisher calls: engine ``lorien``, default level, one worker
        per core) in a child process; the parent samples /proc every 0.25 s: the sum of RSS and of PSS over
        the child and all its descendants, and the largest single-process VmHWM
      → ``repo.engine.apply_patch`` (what the device calls, in-process) in a child process, sampled the same way
      → the applied output's SHA-256 compared with the new file's; files deleted unless ``--keep``

Writes ``results/gb-scale-<UTC timestamp>.json`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lorien.repo.hashing import sha256_file

RESULTS = Path(__file__).resolve().parent / "results"
MiB = 1 << 20
GiB = 1 << 30
TENSOR = 64 * MiB  # bytes per tensor
STEP = 8 * MiB  # bytes generated at a time
SAMPLE = 0.25  # seconds between memory samples
CREATE = (
    "import sys; from lorien.repo.engine import create_patch; create_patch(sys.argv[1], sys.argv[2], sys.argv[3])"
)
APPLY = (
    "import sys; from lorien.repo.engine import apply_patch; apply_patch(sys.argv[1], sys.argv[2], sys.argv[3])"
)


def write_pair(old: Path, new: Path, size: int, seed: int = 3, relative: float = 1e-3) -> None:
    """A float16 safetensors pair of ``size`` bytes of tensor data, generated ``STEP`` bytes at a time."""
    count = max(1, size // TENSOR)
    elements = TENSOR // 2
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    for index in range(count):
        begin = index * TENSOR
        header[f"model.layers.{index}.weight"] = {
            "dtype": "F16",
            "shape": [elements // 4096, 4096],
            "data_offsets": [begin, begin + TENSOR],
        }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    rng = np.random.default_rng(seed)
    with open(old, "wb") as before, open(new, "wb") as after:
        for handle in (before, after):
            handle.write(struct.pack("<Q", len(text)) + text)
        for _ in range(count * (TENSOR // STEP)):
            weights = rng.standard_normal(STEP // 2, dtype=np.float32) * np.float32(0.02)
            before.write(weights.astype(np.float16).tobytes())
            weights *= 1 + rng.standard_normal(len(weights), dtype=np.float32) * np.float32(relative)
            after.write(weights.astype(np.float16).tobytes())


def _tree(root: int) -> list[int]:
    """``root`` and its descendants, from each thread's ``children`` list (cheap: no scan of all of /proc)."""
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                queue.extend(int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except OSError:
            continue  # exited meanwhile
    return found


def _kib(path: str, field: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_sampled(code: str, *args: Path) -> dict[str, float]:
    """Run ``python -c code args`` and sample its process tree's memory until it exits."""
    began = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code, *map(str, args)])
    rss = pss = hwm = processes = 0
    while child.poll() is None:
        pids = _tree(child.pid)
        rss = max(rss, sum(_kib(f"/proc/{pid}/status", "VmRSS") for pid in pids))
        pss = max(pss, sum(_kib(f"/proc/{pid}/smaps_rollup", "Pss") for pid in pids))
        hwm = max([hwm, *(_kib(f"/proc/{pid}/status", "VmHWM") for pid in pids)])
        processes = max(processes, len(pids))
        time.sleep(SAMPLE)
    seconds = time.perf_counter() - began
    if child.returncode:
        raise SystemExit(f"{code!r} failed with exit code {child.returncode}")
    return {
        "seconds": round(seconds, 1),
        "peak_tree_rss_mib": round(rss / 1024, 1),
        "peak_tree_pss_mib": round(pss / 1024, 1),
        "peak_process_hwm_mib": round(hwm / 1024, 1),
        "processes": processes,
    }


def measure(size: int, work: Path, keep: bool) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    old, new, patch, out = (work / name for name in ("old.safetensors", "new.safetensors", "patch", "out"))
    try:
        began = time.perf_counter()
        write_pair(old, new, size)
        generate = time.perf_counter() - began
        model = new.stat().st_size
        create = run_sampled(CREATE, old, new, patch)
        apply = run_sampled(APPLY, old, patch, out)
        matches = sha256_file(out) == sha256_file(new)
        return {
            "model_bytes": model,
            "patch_bytes": patch.stat().st_size,
            "patch_ratio": round(patch.stat().st_size / model, 4),
            "generate_seconds": round(generate, 1),
            "cpus": os.cpu_count(),
            "create": {**create, "mb_s": round(model / 1e6 / create["seconds"], 1)},
            "apply": {**apply, "mb_s": round(model / 1e6 / apply["seconds"], 1)},
            "output_sha256_matches": matches,
        }
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gb_scale")
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lorien-gb-scale"))
    parser.add_argument("--keep", action="store_true", help="keep the pair, patch and output")
    args = parser.parse_args(argv)
    row = measure(int(args.size_gib * GiB), args.work, args.keep)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"gb-scale-{stamp}.json").write_text(json.dumps({"at": stamp, "run": row}, indent=1) + "\n")
    print(json.dumps(row, indent=1))
    return 0 if row["output_sha256_matches"] else 1


if __name__ == "__main__":
    sys.exit(main())
