"""On-demand benchmark: files of a format lorien does not parse whose bytes moved (issue 15, "Keep").

Raw float16 or float32 weights behind a short header, densely fine-tuned (noise relative to |w|, as
``bench.corpus``'s ``dense``), with an edit that moves the data where no structure says so: a header grown or
shrunk by a few bytes, a few bytes inserted or removed inside the data, or a 100 KB block inserted in the middle
(farther than the shift scan reaches). For each pair, in one run: lorien as it is, lorien with the shift scan
off (``shift_scan.MIN_LENGTH`` out of reach: what the planner did before it), bsdiff4 and
``zstd -19 --long --patch-from``; every lorien patch is applied and compared byte for byte.

    .venv/bin/python -m bench.shifted_generic --out bench/results [--elements 3000000]

Writes ``shifted-generic-<UTC time>.json`` (raw numbers) and ``.md`` (the table, ratios to bsdiff4).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import bsdiff4
import numpy as np

from lorien.repo.engine import apply_patch, create_patch, shift_scan

HEADER = b"HEADERv1"

Edit = Callable[[bytes], bytes]
EDITS: dict[str, Edit] = {
    "header-grown-1": lambda data: HEADER + b"x" + data,
    "header-shrunk-5": lambda data: b"HDR" + data,
    "inserted-12-mid": lambda data: HEADER + data[: len(data) // 2] + b"INSERTED-123" + data[len(data) // 2 :],
    "removed-6-third": lambda data: HEADER + data[: len(data) // 3] + data[len(data) // 3 + 6 :],
    "inserted-100k-mid": lambda data: (
        HEADER + data[: len(data) // 2] + np.random.default_rng(7).bytes(100_000) + data[len(data) // 2 :]
    ),
}


def _dense(elements: int, dtype: type) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(15)
    weights = rng.standard_normal(elements, dtype=np.float32) * np.float32(0.05)
    tuned = weights * (np.float32(1) + rng.standard_normal(elements, dtype=np.float32) * np.float32(1e-3))
    return weights.astype(dtype).tobytes(), tuned.astype(dtype).tobytes()


def _lorien(directory: Path, scan: bool) -> tuple[int, float]:
    kept = shift_scan.MIN_LENGTH
    shift_scan.MIN_LENGTH = kept if scan else 1 << 62
    try:
        started = time.perf_counter()
        size = create_patch(directory / "old", directory / "new", directory / "patch").patch_size
        seconds = time.perf_counter() - started
    finally:
        shift_scan.MIN_LENGTH = kept
    apply_patch(directory / "old", directory / "patch", directory / "out")
    if (directory / "out").read_bytes() != (directory / "new").read_bytes():
        raise SystemExit(f"lorien's patch did not reproduce the new file in {directory}")
    return size, seconds


def _zstd(directory: Path) -> int:
    subprocess.run(
        [
            "zstd",
            "-q",
            "-f",
            "-19",
            "--long=27",
            f"--patch-from={directory / 'old'}",
            str(directory / "new"),
            "-o",
            str(directory / "z"),
        ],
        check=True,
    )
    return (directory / "z").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--elements", type=int, default=3_000_000)
    args = parser.parse_args()
    rows = []
    for dtype in (np.float16, np.float32):
        weights, tuned = _dense(args.elements, dtype)
        for name, edit in EDITS.items():
            with tempfile.TemporaryDirectory() as temporary:
                directory = Path(temporary)
                old, new = HEADER + weights, edit(tuned)
                (directory / "old").write_bytes(old)
                (directory / "new").write_bytes(new)
                scanned, scanned_s = _lorien(directory, scan=True)
                unscanned, unscanned_s = _lorien(directory, scan=False)
                row = {
                    "pair": f"{np.dtype(dtype).name}-{name}",
                    "new_bytes": len(new),
                    "lorien": scanned,
                    "lorien_create_s": round(scanned_s, 2),
                    "lorien_without_scan": unscanned,
                    "lorien_without_scan_create_s": round(unscanned_s, 2),
                    "bsdiff4": len(bsdiff4.diff(old, new)),
                    "zstd_patch_from": _zstd(directory),
                }
                rows.append(row)
                print(json.dumps(row))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"shifted-generic-{stamp}.json").write_text(
        json.dumps({"elements": args.elements, "rows": rows}, indent=1)
    )
    lines = [
        "| pair | new | lorien | without the scan | bsdiff4 | zstd --patch-from | lorien ÷ bsdiff4 | before ÷ bsdiff4 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['pair']} | {row['new_bytes']:,} | {row['lorien']:,} | {row['lorien_without_scan']:,} | "
            f"{row['bsdiff4']:,} | {row['zstd_patch_from']:,} | {row['lorien'] / row['bsdiff4']:.3f} | "
            f"{row['lorien_without_scan'] / row['bsdiff4']:.3f} |"
        )
    (args.out / f"shifted-generic-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
