"""Combine several :mod:`bench.run` result files into one per-pair comparison of a tool against its peers.

The tools of one pair are often measured in separate runs (lorien on the current head, the slow peers once, on
the same deterministic corpus). This reads those JSON files, merges them by pair name and prints a markdown
table: per pair the subject tool's patch size (default ``lorien``), each requested peer's size with
``subject ÷ peer``, the best of every peer (:data:`bench.run.ALL_PEERS`) and whether the subject is strictly
smaller than each tool named by ``--must-beat`` (issue 15 item 5: z4ai and HDiffPatch, the latter in both its
formats, ``hdiffpatch`` and ``hdiffpatch-lite``, each at its best compressor per pair). Below it: the pairs
where it is not, the pairs that could not be compared (a tool not run there, or the subject failed) and those
counted as ahead because a must-beat tool ran but made no patch (z4ai when old and new differ in size).

Data flow::

    result files (in the order given) → merge_pairs: pair name → {tool: record}; a later file's *ok* record
      replaces an earlier one, a failed record never hides an ok one; each pair keeps the new model's SHA-256
      of every file, and differing hashes are reported (e.g. the ``pt`` pairs' zip timestamps)
      → compare_pair per pair (sizes, ratios, the tools it does not beat) → render (markdown), --json (rows)

Usage::

    .venv/bin/python -m bench.compare bench/results/A.json bench/results/B.json \\
        [--subject lorien] [--peers z4ai,zipnn,hdiffpatch,hdiffpatch-lite]
        [--must-beat z4ai,hdiffpatch,hdiffpatch-lite] [--out table.md] [--json rows.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.corpus import parse_list, write_bytes_atomic
from bench.run import ALL_PEERS, TOOLS


@dataclass
class Merged:
    """One pair's records from every file: ``results`` (tool → record) and the new model's hashes seen."""

    name: str
    new_bytes: int
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # tool → file it came from
    new_sha256: set[str] = field(default_factory=set)


def load(path: Path) -> list[dict[str, Any]]:
    """The ``pairs`` of one :mod:`bench.run` result file (a clear error if it is not one)."""
    try:
        report = json.loads(path.read_text())
        pairs = report["pairs"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(
            f"{path}: not a bench.run result file ({error}); pass files written by bench.run"
        ) from None
    return list(pairs)


def merge_pairs(files: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]) -> dict[str, Merged]:
    """Pair name → every tool's record across ``files`` (label, pairs), in the order the pairs first appear."""
    merged: dict[str, Merged] = {}
    for label, pairs in files:
        for entry in pairs:
            pair = merged.setdefault(entry["name"], Merged(entry["name"], entry["new_bytes"]))
            pair.new_sha256.add(entry["new_sha256"])
            for tool, record in entry["results"].items():
                known = pair.results.get(tool)
                if known is None or record["status"] == "ok" or known["status"] != "ok":
                    pair.results[tool] = dict(record)
                    pair.sources[tool] = label
    return merged


def size_of(pair: Merged, tool: str) -> int | None:
    record = pair.results.get(tool)
    return record["patch_bytes"] if record is not None and record["status"] == "ok" else None


def status_of(pair: Merged, tool: str) -> str:
    record = pair.results.get(tool)
    return "not run" if record is None else record["status"]


def compare_pair(pair: Merged, subject: str, peers: Sequence[str], must_beat: Sequence[str]) -> dict[str, Any]:
    """Sizes, subject ÷ each peer, the best of all peers, and which ``must_beat`` tools the subject does not beat
    (``not_beaten``: its patch is as large or larger), which failed on the pair while the subject did not
    (``failed``: no patch to pick, so the subject counts as ahead) and which were not run or the subject itself
    failed (``unknown``)."""
    mine = size_of(pair, subject)
    sizes = {tool: size_of(pair, tool) for tool in dict.fromkeys([*peers, *must_beat])}
    everyone = [
        (size, tool) for tool in ALL_PEERS if tool != subject and (size := size_of(pair, tool)) is not None
    ]
    best = min(everyone) if everyone else None
    not_beaten, failed, unknown = [], [], []
    for tool in must_beat:
        if mine is None:
            unknown.append(f"{subject} {status_of(pair, subject)}")
        elif tool not in pair.results:
            unknown.append(f"{tool} not run")
        elif sizes[tool] is None:
            failed.append(f"{tool} {status_of(pair, tool)}")
        elif mine >= sizes[tool]:
            not_beaten.append({"tool": tool, "bytes": sizes[tool], "excess": mine - sizes[tool]})
    return {
        "pair": pair.name,
        "new_bytes": pair.new_bytes,
        "subject": subject,
        "subject_bytes": mine,
        "sizes": sizes,
        "ratios": {tool: _ratio(mine, size) for tool, size in sizes.items()},
        "best_peer": None if best is None else {"tool": best[1], "bytes": best[0]},
        "best_peer_ratio": None if best is None else _ratio(mine, best[0]),
        "not_beaten": not_beaten,
        "failed": failed,
        "unknown": unknown,
        "new_sha256_differs": len(pair.new_sha256) > 1,
    }


def _ratio(mine: int | None, theirs: int | None) -> float | None:
    return None if mine is None or theirs is None else round(mine / max(theirs, 1), 4)


def _cell(size: int | None, pair: Merged | None = None, tool: str = "") -> str:
    if size is not None:
        return f"{size:,}"
    return status_of(pair, tool) if pair is not None and tool in pair.results else "–"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def render(
    rows: Sequence[Mapping[str, Any]], merged: Mapping[str, Merged], peers: Sequence[str], must_beat: Sequence[str]
) -> str:
    """The markdown table and, below it, the pairs the subject does not beat and the ones not compared."""
    subject = rows[0]["subject"] if rows else "lorien"
    header = ["pair", subject]
    for tool in peers:
        header += [tool, f"÷ {tool}"]
    header += ["best peer", "÷ best peer", f"< {' and '.join(must_beat)}"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 2) + "---|"]
    for row in rows:
        pair = merged[row["pair"]]
        cells = [
            row["pair"] + (" †" if row["new_sha256_differs"] else ""),
            _cell(row["subject_bytes"], pair, subject),
        ]
        for tool in peers:
            cells += [_cell(row["sizes"][tool], pair, tool), _num(row["ratios"][tool])]
        best = row["best_peer"]
        cells += [
            "–" if best is None else f"{best['bytes']:,} ({best['tool']})",
            _num(row["best_peer_ratio"]),
            "?" if row["unknown"] else ("**no**" if row["not_beaten"] else "yes"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    missed = [row for row in rows if row["not_beaten"]]
    unknown = [row for row in rows if row["unknown"]]
    compared = len(rows) - len(unknown)
    lines += [
        "",
        f"- {subject} strictly smaller than {' and '.join(must_beat)}: {compared - len(missed)} of {compared} "
        f"compared pairs" + (f" ({len(unknown)} not comparable)." if unknown else "."),
    ]
    for row in missed:
        parts = ", ".join(
            f"{miss['tool']} {miss['bytes']:,} B (+{miss['excess']:,} B)" for miss in row["not_beaten"]
        )
        lines.append(f"  - {row['pair']}: {subject} {row['subject_bytes']:,} B vs {parts}")
    for row in unknown:
        lines.append(f"  - not compared: {row['pair']} ({'; '.join(row['unknown'])})")
    failed = [
        f"{row['pair']} ({'; '.join(row['failed'])})" for row in rows if row["failed"] and not row["unknown"]
    ]
    if failed:
        lines.append(
            f"- Counted as ahead because the peer made no patch ({len(failed)}): " + ", ".join(failed) + "."
        )
    if any(row["new_sha256_differs"] for row in rows):
        lines.append(
            "- †: the new model's SHA-256 differs between the result files (same pair name, other bytes)."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="bench.run result JSON files (later ok records win)")
    parser.add_argument("--subject", choices=TOOLS, default="lorien", help="the tool compared (default lorien)")
    parser.add_argument(
        "--peers",
        type=lambda s: parse_list(s, TOOLS, "tool"),
        default=["z4ai", "zipnn", "hdiffpatch", "hdiffpatch-lite"],
        help="tools shown with subject ÷ tool (default z4ai,zipnn,hdiffpatch,hdiffpatch-lite)",
    )
    parser.add_argument(
        "--must-beat",
        type=lambda s: parse_list(s, TOOLS, "tool"),
        default=["z4ai", "hdiffpatch", "hdiffpatch-lite"],
        help="the subject must be strictly smaller than each (default z4ai,hdiffpatch,hdiffpatch-lite: issue 15 "
        "item 5)",
    )
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    merged = merge_pairs([(str(path), load(path)) for path in args.files])
    rows = [compare_pair(pair, args.subject, args.peers, args.must_beat) for pair in merged.values()]
    markdown = render(rows, merged, args.peers, args.must_beat)
    if args.out:
        write_bytes_atomic(args.out, markdown.encode())
    if args.json:
        sources = {name: pair.sources for name, pair in merged.items()}
        data = {"files": [str(path) for path in args.files], "rows": rows, "sources": sources}
        write_bytes_atomic(args.json, (json.dumps(data, indent=2) + "\n").encode())
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
