"""Full downloads: how small a whole model gets on its own, per float model of the bench corpus (issue 15, 3).

A device with no usable old version downloads the whole model; lorien serves it compressed on its own
(``repo.engine.full``: a patch from an empty source). Per model (the *new* file of each float pair:
``dense`` → float32, ``fp16-dense`` → float16, ``bf16-dense`` → bfloat16), every tool's output as a share of
the raw size:

- ``lorien``: ``compress_model`` (in-process; create and decode time measured, decode verified by SHA-256);
- ``zipnn``: ``python -m bench.peers create zipnn …`` with the main dtype as hint (its own process: it loads
  torch), then its decompression checked byte for byte (zipnn 0.5.4 crashes on a file that is not whole
  elements, e.g. an odd-length ONNX file in float16: then it is measured on the file zero-padded to whole
  elements, marked "padded");
- ``zstd-19``: the whole file, zstd level 19 (what ``zstd -19`` writes);
- ``bytegroup-zstd``: the whole file split into byte planes of the main dtype's width, one zstd-19 frame
  (the anchor's "simple byte grouping + zstd").

Target: lorien ≤ zipnn on every model. Writes ``results/full-download-<UTC timestamp>.json`` and prints a
markdown table::

    .venv/bin/python -m bench.full_download --sizes small,medium
    .venv/bin/python -m bench.full_download --sizes huge --formats tflite,safetensors,gguf --tools lorien,zipnn

``--tools`` picks the comparisons (lorien always runs): zstd -19 runs at a few MB/s on one core, so on the
1 GiB models the two zstd columns alone take most of an hour; a tool not run is "–" in the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from bench import corpus
from bench.corpus import parse_list, sha256_file, write_bytes_atomic
from bench.run import BENCH_DIR, environment, main_dtype
from lorien.repo.engine.full import compress_model, decompress_model

FLOAT_SCENARIOS = ("dense", "fp16-dense", "bf16-dense")
TOOLS = ("lorien", "zipnn", "zstd-19", "bytegroup-zstd")
WIDTH = {"float32": 4, "float16": 2, "bfloat16": 2}


def bytegroup_zstd(data: bytes, width: int) -> int:
    """Size of the whole file as ``width`` byte planes (a tail of < width bytes appended) in one zstd-19 frame."""
    whole = len(data) // width * width
    planes = np.frombuffer(data, np.uint8, whole).reshape(-1, width).T.tobytes() + data[whole:]
    return len(zstandard.ZstdCompressor(level=19).compress(planes))


def zipnn_size(model: Path, dtype: str, work: Path, timeout: float) -> tuple[int | None, str]:
    """zipnn's compressed size, or None and why (its round trip is checked too)."""
    packed, unpacked = work / "zipnn.bin", work / "zipnn.out"
    python = sys.executable
    for argv in (
        [python, "-m", "bench.peers", "create", "zipnn", str(model), str(model), str(packed), dtype],
        [python, "-m", "bench.peers", "apply", "zipnn", str(model), str(packed), str(unpacked)],
    ):
        try:
            done = subprocess.run(argv, capture_output=True, timeout=timeout, cwd=BENCH_DIR.parent)
        except subprocess.TimeoutExpired:
            return None, f"timeout after {timeout:.0f} s"
        if done.returncode != 0:
            return None, f"exit {done.returncode}: {done.stderr.decode(errors='replace').strip()[-200:]}"
    if unpacked.read_bytes() != model.read_bytes():
        return None, "round trip differs"
    return packed.stat().st_size, ""


def bench_model(pair: corpus.Pair, work: Path, timeout: float, tools: Sequence[str] = TOOLS) -> dict[str, Any]:
    model = pair.new
    data = model.read_bytes()
    dtype = main_dtype(model)
    blob, out = work / "model.compressed", work / "model.out"
    started = time.perf_counter()
    stats = compress_model(model, blob)
    create_s = time.perf_counter() - started
    started = time.perf_counter()
    result = decompress_model(blob, out)
    decode_s = time.perf_counter() - started
    if result.target_sha256 != pair.new_sha256 or sha256_file(out) != pair.new_sha256:
        raise SystemExit(f"{pair.name}: lorien's round trip differs")
    zipnn, zipnn_error = zipnn_size(model, dtype, work, timeout) if "zipnn" in tools else (None, "not run")
    padded = False
    if zipnn is None and "zipnn" in tools and len(data) % WIDTH.get(dtype, 1):
        # zipnn 0.5.4 crashes (double free) on a file that is not whole elements (an ONNX protobuf can be odd):
        # measured on the file padded with zero bytes instead, which can only favour it
        even = work / f"padded{model.suffix}"
        even.write_bytes(data + bytes(-len(data) % WIDTH[dtype]))
        zipnn, why = zipnn_size(even, dtype, work, timeout)
        padded, zipnn_error = zipnn is not None, f"{zipnn_error}; zero-padded to whole elements: {why or 'ok'}"
    sizes = {
        "lorien": stats.patch_size,
        "zipnn": zipnn,
        "zstd-19": len(zstandard.ZstdCompressor(level=19).compress(data)) if "zstd-19" in tools else None,
        "bytegroup-zstd": bytegroup_zstd(data, WIDTH.get(dtype, 1)) if "bytegroup-zstd" in tools else None,
    }
    return {
        "model": pair.name,
        "format": pair.format,
        "size": pair.size,
        "dtype": dtype,
        "raw": len(data),
        "sizes": sizes,
        "ratios": {tool: (None if size is None else round(size / len(data), 4)) for tool, size in sizes.items()},
        "zipnn_error": zipnn_error,
        "zipnn_padded": padded,
        "lorien_create_s": round(create_s, 3),
        "lorien_decode_s": round(decode_s, 3),
        "lorien_decode_mbps": round(len(data) / decode_s / 1e6, 1),
    }


def verdict(entry: dict[str, Any]) -> str:
    zipnn, lorien = entry["sizes"]["zipnn"], entry["sizes"]["lorien"]
    if zipnn is None:
        return "zipnn not run" if entry["zipnn_error"] == "not run" else "zipnn failed"
    if lorien <= zipnn:
        return f"met ({100 * (lorien / zipnn - 1):+.2f} %)"
    return f"**missed** by {lorien - zipnn:,} B ({100 * (lorien / zipnn - 1):+.2f} %)"


def render(entries: list[dict[str, Any]]) -> str:
    lines = [
        "| model | dtype | raw | lorien | zipnn | zstd -19 | byte groups + zstd | lorien / zipnn | ≤ zipnn |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e in entries:
        r = {tool: ("–" if value is None else f"{value:.4f}") for tool, value in e["ratios"].items()}
        zipnn = r["zipnn"] + (" (padded)" if e["zipnn_padded"] else "")
        relative = f"{e['sizes']['lorien'] / e['sizes']['zipnn']:.4f}" if e["sizes"]["zipnn"] else "–"
        lines.append(
            f"| {e['model']} | {e['dtype']} | {e['raw']:,} | {r['lorien']} | {zipnn} | {r['zstd-19']} | "
            f"{r['bytegroup-zstd']} | {relative} | {verdict(e)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.full_download", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=BENCH_DIR / "corpus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", type=lambda s: parse_list(s, tuple(corpus.SIZES), "size"), default=["small"])
    parser.add_argument(
        "--formats", type=lambda s: parse_list(s, corpus.FORMATS, "format"), default=list(corpus.FORMATS)
    )
    parser.add_argument(
        "--scenarios",
        type=lambda s: parse_list(s, FLOAT_SCENARIOS, "float scenario"),
        default=list(FLOAT_SCENARIOS),
    )
    parser.add_argument(
        "--tools",
        type=lambda s: parse_list(s, TOOLS, "tool"),
        default=list(TOOLS),
        help=f"comma-separated, from {','.join(TOOLS)} (default all; lorien always runs)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per zipnn step")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    pairs = corpus.generate(args.corpus, args.seed, args.sizes, args.formats, args.scenarios, log=print)
    started = dt.datetime.now(dt.UTC)
    entries = []
    with tempfile.TemporaryDirectory(prefix="lorien-full-") as directory:
        for pair in pairs:
            entries.append(bench_model(pair, Path(directory), args.timeout, args.tools))
            print(f"{pair.name}: {entries[-1]['ratios']} {verdict(entries[-1])}", flush=True)
    report = {
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": {
            "sizes": args.sizes,
            "formats": args.formats,
            "scenarios": args.scenarios,
            "tools": args.tools,
            "seed": args.seed,
        },
        "environment": environment(),
        "models": entries,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"full-download-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    write_bytes_atomic(path, (json.dumps(report, indent=2) + "\n").encode())
    print(f"\n{render(entries)}\nraw results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
