"""Measure every tool on a directory of real pairs listed in its ``pairs.json`` (``bench.corpus.Pair`` records).

The real-file benchmarks (``bench.real_torch``: files written by torch; ``bench.public_releases``: models shipped
in public package releases) make such a directory in a step of their own, then call :func:`run`: each pair goes
through ``bench.run.bench_pair`` (every tool in separate processes, outputs verified by SHA-256), the report is
rewritten after every pair to ``<out>/<prefix>-<UTC timestamp>.json``, and the markdown table is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def add_run_command(actions: Any, default_tools: str) -> argparse.ArgumentParser:
    """The ``run`` sub-command of a real-pairs benchmark (``actions``: its ``add_subparsers()``)."""
    measured = actions.add_parser("run", help="measure every tool on the pairs")
    measured.add_argument("--corpus", type=Path, required=True)
    measured.add_argument("--tools", default=default_tools)
    measured.add_argument("--timeout", type=float, default=900.0)
    measured.add_argument("--only", default="", help="only the pairs whose name contains this")
    measured.add_argument("--out", type=Path, default=RESULTS)
    return measured


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace, prefix: str) -> int:
    """Carry out ``run`` as parsed by :func:`add_run_command`; an unknown tool is a usage error."""
    from bench.run import TOOLS  # here, not at import: ``make`` runs under a Python that may lack lorien

    tools = [tool for tool in args.tools.split(",") if tool]
    unknown = [tool for tool in tools if tool not in TOOLS]
    if unknown:
        parser.error(f"unknown tool(s) {', '.join(unknown)}; known: {', '.join(TOOLS)}")
    run(args.corpus, tools, args.timeout, args.out, prefix, args.only)
    return 0


def _write(path: Path, report: dict[str, Any]) -> None:
    from bench.corpus import write_bytes_atomic

    write_bytes_atomic(path, (json.dumps(report, indent=2) + "\n").encode())


def run(corpus_dir: Path, tools: list[str], timeout: float, out: Path, prefix: str, only: str = "") -> Path:
    """Every tool on every pair of ``corpus_dir/pairs.json`` whose name contains ``only``; returns the JSON path.
    The index's keys other than ``pairs`` (how the files were made) are kept in the report's settings."""
    from bench.corpus import Pair
    from bench.run import bench_pair, environment, render_markdown

    index = json.loads((corpus_dir / "pairs.json").read_text())
    pairs = [Pair.from_dict(item, corpus_dir) for item in index["pairs"] if only in item["name"]]
    if not pairs:
        raise SystemExit(f"{corpus_dir / 'pairs.json'}: no pair's name contains {only!r}")
    started = dt.datetime.now(dt.UTC)
    made = {key: value for key, value in index.items() if key != "pairs"}
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "finished": None,
        "settings": {
            "corpus": str(corpus_dir.resolve()),
            **made,
            "tools": tools,
            "timeout": timeout,
            "argv": sys.argv,
        },
        "environment": environment(),
        "pairs": [],
    }
    work = Path(tempfile.mkdtemp(prefix=".work-", dir=corpus_dir))  # one per run: runs may overlap
    out.mkdir(parents=True, exist_ok=True)
    result = out / f"{prefix}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    try:
        for pair in pairs:
            report["pairs"].append(bench_pair(pair, tools, work, timeout, lambda m: print(m, flush=True)))
            _write(result, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    _write(result, report)
    print(render_markdown(report), end="")
    return result
