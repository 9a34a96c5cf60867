"""Peak RSS of `lorien apply` on a large model (default 1 GiB), measured by the applying process itself.

``python -m bench.apply_memory [--size-mib 1024] [--work DIR]``: writes a random OLD of the given size and a NEW
with scattered edits and a 3 MiB insertion (so the patch holds copies, small zstd+reference segments and
segments shifted against 16 MiB reference windows), creates the patch, then runs ``lorien apply`` in a
subprocess that reports its own VmHWM (``ru_maxrss`` of a child would include the parent's pre-exec image).
Prints and appends a JSON line to ``results/apply-memory.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from lorien.repo.engine.lorien_engine import LorienEngine

RESULTS = Path(__file__).resolve().parent / "results"
MiB = 1 << 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.apply_memory")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lorien-apply-memory"))
    args = parser.parse_args(argv)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    old, new = work / "old.bin", work / "new.bin"
    size = args.size_mib * MiB
    with open(old, "wb") as out_old, open(new, "wb") as out_new:
        for start in range(0, size, 64 * MiB):
            block = bytearray(rng.integers(0, 256, min(64 * MiB, size - start), dtype=np.uint8).tobytes())
            out_old.write(block)
            for offset in range(0, len(block), 7 * MiB):  # scattered 4 KiB edits
                block[offset : offset + 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
            if start == size - 128 * MiB:
                block[:0] = rng.integers(0, 256, 3 * MiB, dtype=np.uint8).tobytes()  # an insertion near the end
            out_new.write(block)
    began = time.perf_counter()
    LorienEngine(level=3).create(old, new, work / "patch")
    create_seconds = time.perf_counter() - began
    report = "import re; print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    code = f"import sys; from lorien.cli import main; rc = main(sys.argv[1:]); {report}; sys.exit(rc)"
    began = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code, "apply", str(old), str(work / "patch"), "-o", str(work / "out.bin")],
        capture_output=True,
        text=True,
        check=True,
    )
    apply_seconds = time.perf_counter() - began
    record = {
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model_bytes": new.stat().st_size,
        "patch_bytes": (work / "patch").stat().st_size,
        "create_seconds_level3": round(create_seconds, 1),
        "apply_seconds": round(apply_seconds, 1),
        "apply_peak_rss_mib": round(int(result.stdout.split()[-1]) / 1024, 1),
        "sha256_verified_by_apply": True,  # lorien apply exits non-zero unless the target SHA-256 matches
    }
    print(json.dumps(record))
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "apply-memory.jsonl", "a") as log:
        log.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
