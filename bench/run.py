"""Benchmark runner: lorien's engine against bsdiff4, xdelta3, ``zstd --patch-from``, a full zstd download and
the peers of :mod:`bench.peers` (HDiffPatch in its standard and its HPatchLite format, each at its smallest
compressor per pair; z4ai, ZipNN, detools).

Usage: ``python -m bench.run [--corpus DIR] [--sizes small,medium,large] [--formats ...] [--scenarios ...]
[--tools lorien,bsdiff4,...,detools] [--timeout 900] [--out bench/results]``

Data flow::

    bench.corpus.generate (writes only the pairs that are missing or stale)
      → for every pair, for every tool: create step, then apply step, each its own subprocess
        (Popen, then os.wait4 for the exit status and the child's peak RSS; wall time with perf_counter;
        a timer kills the child's process group after --timeout seconds)
      → a create step's ``PATCH.notes`` (:func:`bench.peers.notes_path`; e.g. which compressor HDiffPatch's
        best was) is appended to the result's ``notes``
      → the applied output's SHA-256 must equal the new model's; a failure, timeout or mismatch is recorded
        with its status and the end of stderr, never dropped
      → bench/results/<UTC timestamp>.json (rewritten after every pair, so an interrupted run keeps what it
        measured), then bench/results/latest.json and latest.md (table + summary, also printed).

Each step's numbers include the tool's process start-up (e.g. the Python interpreter and imports for lorien and
bsdiff4), since a device pays that too; on small pairs start-up dominates the speed columns. Tools run one after
the other, never in parallel, so they do not compete for the CPU. MB means 10^6 bytes; RSS is in MiB.

Tool notes (see :func:`plan`): zstd gets ``--long=W`` with W = max(10, ceil(log2(max(old, new))) + 1), capped
at 31, on both sides (decompression refuses windows above 2^27 without ``--long=W`` or ``--memory``);
xdelta3 gets ``-B`` (source window), rounded up to a power of two ≥ the old size, on both sides when the old
file is larger than the 64 MiB default (``-B`` accepts at most 2 GiB): with the default window xdelta3 only
matches against a 64 MiB stretch of the source that slides along with the target, so moved data is missed
(a 140 MB file with its halves swapped: 140 MB patch in 46 s without ``-B``, 1.5 KB in 0.3 s with it).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import corpus
from bench.bound import zigzag_entropy_bytes
from bench.corpus import Pair, parse_list, sha256_file, write_bytes_atomic
from bench.peers import notes_path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
PEER_TOOLS = ("hdiffpatch", "hdiffpatch-lite", "z4ai", "zipnn", "detools")  # run through bench/peers.py
TOOLS = ("lorien", "bsdiff4", "xdelta3", "zstd-patch-from", "zstd-full", *PEER_TOOLS)
GENERIC_TOOLS = ("bsdiff4", "xdelta3", "zstd-patch-from", "zstd-full")
ALL_PEERS = (*GENERIC_TOOLS, *PEER_TOOLS)  # "best peer": the smallest patch of any tool a user could pick
XDELTA_DEFAULT_SOURCE_WINDOW = 64 << 20  # XD3_DEFAULT_SRCWINSZ (`xdelta3 config`)
XDELTA_MAX_SOURCE_WINDOW = 1 << 31  # "xdelta3: -B: maximum value: 2147483648"
SLACK_BYTES = 1024  # "lorien <= best generic + 1 KiB" criterion
DENSE_TARGET_RATIO = 0.80
CREATE_TARGET_MBPS = 5.0
APPLY_TARGET_MBPS = 100.0
STDERR_TAIL = 2000


# --------------------------------------------------------------------------- measuring one subprocess


@dataclass
class Measured:
    status: str  # "ok", "error" (non-zero exit or could not start) or "timeout"
    seconds: float
    peak_rss_mib: float | None
    exit_code: int | None
    stderr: str


PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
_subreaper = False


def _become_subreaper() -> None:
    """Adopt orphaned descendants, so a tool started by a short-lived ``sh`` becomes our child (Linux)."""
    global _subreaper
    if _subreaper:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(error)}")
    _subreaper = True


def _read_line(fd: int) -> bytes:
    data = b""
    while not data.endswith(b"\n") and (chunk := os.read(fd, 64)):
        data += chunk
    return data


def run_measured(argv: Sequence[str], timeout: float, cwd: Path = REPO_ROOT) -> Measured:
    """:func:`_run_measured_once`, again when ``sh`` reaped a very short-lived tool before it could be adopted
    (a rare race: the tool finished before ``sh`` exited, so its status never reached us)."""
    for _ in range(3):
        try:
            return _run_measured_once(argv, timeout, cwd)
        except ChildProcessError:
            continue
    return Measured("error", 0.0, None, None, "lost the tool's exit status three times (reaped by sh)")


def _run_measured_once(argv: Sequence[str], timeout: float, cwd: Path = REPO_ROOT) -> Measured:
    """Run ``argv``; wall time, peak RSS (``ru_maxrss`` of ``os.wait4``, KiB on Linux) and outcome.

    Why the detour through ``sh``: Linux carries a process's RSS high-water mark across ``exec``, so a tool
    forked (or vforked/posix_spawned) straight from this Python process would report at least *our* peak
    RSS — tens of MiB after importing numpy, gigabytes after generating the large corpus. So ``sh`` (small,
    and its RSS is what a forked child starts from) starts the tool in the background, prints its pid and
    exits; this process is a child subreaper, adopts the tool and reaps it with ``os.wait4`` itself. The
    wall time includes ``sh``'s start-up (about a millisecond).

    The tool runs in a new session (process group); after ``timeout`` seconds the whole group gets SIGKILL.
    The tool is first waited for with ``WNOWAIT`` (it stays a zombie, so the group id cannot be reused while
    the timer may still fire), then reaped with ``wait4`` to read its resource usage.
    """
    _become_subreaper()
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        pid_read, pid_write = os.pipe()
        script = f'"$@" {pid_write}>&- & echo $! >&{pid_write}'
        start = time.perf_counter()
        try:
            launcher = subprocess.Popen(
                ["/bin/sh", "-c", script, "sh", *argv],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                pass_fds=(pid_write,),
                start_new_session=True,
            )
        except OSError as error:
            os.close(pid_read)
            return Measured("error", 0.0, None, None, f"cannot start /bin/sh: {error}")
        finally:
            os.close(pid_write)
        group = launcher.pid  # session and process group id of sh and the tool
        try:
            line = _read_line(pid_read)
        finally:
            os.close(pid_read)
            launcher.wait()
        if launcher.returncode != 0 or not line.strip().isdigit():
            return Measured("error", 0.0, None, launcher.returncode, f"/bin/sh could not start {argv[0]}")
        pid = int(line)
        lock = threading.Lock()
        state = {"exited": False, "killed": False}

        def kill() -> None:
            with lock:
                if not state["exited"]:
                    state["killed"] = True
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(group, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.daemon = True
        timer.start()
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            elapsed = time.perf_counter() - start
            with lock:
                state["exited"] = True
            timer.cancel()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)  # stray grandchildren; the zombie tool keeps the group id taken
            _, status, usage = os.wait4(pid, 0)
        except ChildProcessError:
            timer.cancel()
            raise
        except BaseException:  # e.g. Ctrl-C: do not leave the tool running
            timer.cancel()
            kill()
            with contextlib.suppress(ChildProcessError):
                os.wait4(pid, 0)
            raise
        with contextlib.suppress(ChildProcessError):  # reap adopted grandchildren that already died
            while os.waitpid(-group, os.WNOHANG)[0]:
                pass
        exit_code = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        text = stderr.read().decode("utf-8", "replace")[-STDERR_TAIL:]
        if state["killed"]:
            result = "timeout"
            text = f"killed after {timeout:g} s\n{text}".strip()
        else:
            result = "ok" if exit_code == 0 else "error"
        return Measured(result, elapsed, usage.ru_maxrss / 1024, exit_code, text)


# --------------------------------------------------------------------------- what each tool runs


@dataclass(frozen=True)
class Plan:
    create: list[str]
    apply: list[str]
    notes: str = ""


def zstd_window_log(old_bytes: int, new_bytes: int) -> int:
    largest = max(old_bytes, new_bytes, 2)
    return min(31, max(10, (largest - 1).bit_length() + 1))  # (n - 1).bit_length() == ceil(log2(n))


def xdelta_source_window(old_bytes: int) -> int | None:
    """``-B`` value when the old file does not fit xdelta3's default source window, else None."""
    if old_bytes <= XDELTA_DEFAULT_SOURCE_WINDOW:
        return None
    return min(XDELTA_MAX_SOURCE_WINDOW, 1 << (old_bytes - 1).bit_length())


def main_dtype(path: Path) -> str:
    """The dtype holding most of a model file's tensor bytes (the hint for tools that take one)."""
    from lorien.repo.engine.formats import find_tensors

    totals: dict[str, int] = {}
    for region in find_tensors(path.read_bytes())[1]:
        totals[region.dtype] = totals.get(region.dtype, 0) + region.length
    return max(totals, key=lambda dtype: totals[dtype]) if totals else "bytes"


def plan(tool: str, old: Path, new: Path, patch: Path, out: Path, old_bytes: int, new_bytes: int) -> Plan:
    python = sys.executable
    if tool in PEER_TOOLS:
        dtype = main_dtype(new)
        return Plan(
            [python, "-m", "bench.peers", "create", tool, str(old), str(new), str(patch), dtype],
            [python, "-m", "bench.peers", "apply", tool, str(old), str(patch), str(out)],
            f"dtype hint {dtype}" if tool in ("z4ai", "zipnn") else "",
        )
    if tool == "lorien":
        return Plan(
            [python, "-m", "lorien.cli", "diff", str(old), str(new), "-o", str(patch)],
            [python, "-m", "lorien.cli", "apply", str(old), str(patch), "-o", str(out)],
        )
    if tool == "bsdiff4":
        return Plan(
            [
                python,
                "-c",
                "import bsdiff4, sys; bsdiff4.file_diff(*sys.argv[1:])",
                str(old),
                str(new),
                str(patch),
            ],
            [
                python,
                "-c",
                "import bsdiff4, sys; bsdiff4.file_patch(*sys.argv[1:])",
                str(old),
                str(out),
                str(patch),
            ],
        )
    if tool == "xdelta3":
        window = xdelta_source_window(old_bytes)
        extra = ["-B", str(window)] if window else []
        return Plan(
            ["xdelta3", "-9", "-e", "-f", *extra, "-s", str(old), str(new), str(patch)],
            ["xdelta3", "-d", "-f", *extra, "-s", str(old), str(patch), str(out)],
            f"-B {window}" if window else "",
        )
    w = zstd_window_log(old_bytes, new_bytes)
    if tool == "zstd-patch-from":
        return Plan(
            ["zstd", "-19", f"--long={w}", f"--patch-from={old}", str(new), "-o", str(patch), "-f", "-q"],
            ["zstd", "-d", f"--long={w}", f"--patch-from={old}", str(patch), "-o", str(out), "-f", "-q"],
            f"--long={w}",
        )
    if tool == "zstd-full":
        return Plan(
            ["zstd", "-19", f"--long={w}", str(new), "-o", str(patch), "-f", "-q"],
            ["zstd", "-d", f"--long={w}", str(patch), "-o", str(out), "-f", "-q"],
            f"--long={w}",
        )
    raise ValueError(f"unknown tool {tool!r}")


# --------------------------------------------------------------------------- one pair, one tool


def _remove(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def bench_tool(tool: str, pair: Pair, new_sha256: str, work: Path, timeout: float) -> dict[str, Any]:
    """Create + apply + verify; a dict with status ("ok", "create-error", "create-timeout", "apply-error",
    "apply-timeout", "mismatch"), sizes, seconds, peak RSS and the commands."""
    patch, out = work / f"{pair.name}.{tool}.patch", work / f"{pair.name}.{tool}.out"
    notes = notes_path(patch)  # written by some tools' create step (bench.peers), read below
    _remove(patch, out, notes)
    steps = plan(tool, pair.old, pair.new, patch, out, pair.old_bytes, pair.new_bytes)
    record: dict[str, Any] = {
        "tool": tool,
        "status": None,
        "patch_bytes": None,
        "create_s": None,
        "create_rss_mib": None,
        "apply_s": None,
        "apply_rss_mib": None,
        "error": None,
        "notes": steps.notes,
        "create_cmd": shlex.join(steps.create),
        "apply_cmd": shlex.join(steps.apply),
    }
    try:
        if not _measured_step("create", steps.create, patch, "patch file", timeout, record):
            return record
        record["patch_bytes"] = patch.stat().st_size
        if notes.is_file():
            record["notes"] = "; ".join(filter(None, [record["notes"], notes.read_text().strip()]))
        if not _measured_step("apply", steps.apply, out, "output file", timeout, record):
            return record
        got = sha256_file(out)
        if got != new_sha256:
            record.update(status="mismatch", error=f"output sha256 {got} != new model's {new_sha256}")
            return record
        record["status"] = "ok"
        return record
    finally:
        _remove(patch, out, notes)


def _measured_step(
    stage: str, command: list[str], output: Path, what: str, timeout: float, record: dict[str, Any]
) -> bool:
    """Run one stage ("create" or "apply") measured into ``record`` (``<stage>_s``, ``<stage>_rss_mib``); True
    when it succeeded and wrote ``output``, else the record gets ``<stage>-timeout``/``-error`` and the error."""
    run = run_measured(command, timeout)
    record.update({f"{stage}_s": run.seconds, f"{stage}_rss_mib": run.peak_rss_mib})
    if run.status == "ok" and output.is_file():
        return True
    status = f"{stage}-timeout" if run.status == "timeout" else f"{stage}-error"
    record.update(status=status, error=run.stderr or f"no {what} written")
    return False


def bench_pair(pair: Pair, tools: Sequence[str], work: Path, timeout: float, log: Callable[[str], None]) -> dict:
    new_sha256 = sha256_file(pair.new)
    entry = {
        "name": pair.name,
        "format": pair.format,
        "size": pair.size,
        "scenario": pair.scenario,
        "old_bytes": pair.old_bytes,
        "new_bytes": pair.new_bytes,
        "new_sha256": new_sha256,
        "results": {},
    }
    log(f"{pair.name}: old {pair.old_bytes:,} B, new {pair.new_bytes:,} B")
    for tool in tools:
        record = bench_tool(tool, pair, new_sha256, work, timeout)
        entry["results"][tool] = record
        times = " ".join(
            f"{step} {record[f'{step}_s']:.2f}s/{record[f'{step}_rss_mib']:.0f}MiB"
            for step in ("create", "apply")
            if record[f"{step}_s"] is not None and record[f"{step}_rss_mib"] is not None
        )
        size = f"{record['patch_bytes']:,} B" if record["patch_bytes"] is not None else "-"
        log(f"  {tool:<16} {record['status']:<14} {size:>16}  {times}")
        if record["status"] != "ok":
            log("    " + (record["error"] or "").strip().replace("\n", "\n    "))
    best = best_generic(entry)
    entry["best_generic"] = {"tool": best[0], "patch_bytes": best[1]} if best else None
    entry["lorien_ratio"] = ratio(entry)
    peer = best_peer(entry)
    entry["best_peer"] = {"tool": peer[0], "patch_bytes": peer[1]} if peer else None
    entry["lorien_peer_ratio"] = peer_ratio(entry)
    if pair.scenario in corpus.REDUCED:
        entry["entropy_bound_bytes"] = zigzag_entropy_bytes(pair.old, pair.new)
    return entry


# --------------------------------------------------------------------------- environment


def _first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        return f"unavailable ({error})"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else f"unknown (exit {done.returncode})"


def _git_changes() -> str:
    """``git status --porcelain`` of the checkout (tracked files only): empty when clean or unknown."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


def _version_number(line: str) -> str:
    match = re.search(r"\d+\.\d+(\.\d+)?", line)
    return match.group(0) if match else line


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, Any]:
    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    commit = _first_line(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _git_changes()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model,
            "memory_gib": round(memory / 2**30, 1),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "tools": {
            "lorien": f"{_package_version('lorien')} (git {commit}{', modified' if dirty.strip() else ''})",
            "bsdiff4": _package_version("bsdiff4"),
            "xdelta3": _version_number(_first_line(["xdelta3", "-V"])),
            "zstd": _version_number(_first_line(["zstd", "--version"])),
            "numpy": _package_version("numpy"),
            "zstandard": _package_version("zstandard"),
            # the peers of bench/peers.py ("not installed" when the bench extra is missing)
            **{name: _package_version(name) for name in ("hdiffpatch", "z4ai", "zipnn", "detools", "torch")},
        },
    }


# --------------------------------------------------------------------------- report


def _ok(entry: Mapping[str, Any], tool: str) -> dict[str, Any] | None:
    record = entry["results"].get(tool)
    return record if record is not None and record["status"] == "ok" else None


def best_generic(entry: Mapping[str, Any]) -> tuple[str, int] | None:
    sizes = [(record["patch_bytes"], tool) for tool in GENERIC_TOOLS if (record := _ok(entry, tool))]
    if not sizes:
        return None
    size, tool = min(sizes)
    return tool, size


def best_peer(entry: Mapping[str, Any]) -> tuple[str, int] | None:
    sizes = [(record["patch_bytes"], tool) for tool in ALL_PEERS if (record := _ok(entry, tool))]
    return (min(sizes)[1], min(sizes)[0]) if sizes else None


def peer_ratio(entry: Mapping[str, Any]) -> float | None:
    lorien, best = _ok(entry, "lorien"), best_peer(entry)
    return None if lorien is None or best is None else lorien["patch_bytes"] / max(best[1], 1)


def ratio(entry: Mapping[str, Any]) -> float | None:
    lorien, best = _ok(entry, "lorien"), best_generic(entry)
    if lorien is None or best is None:
        return None
    return lorien["patch_bytes"] / max(best[1], 1)


def _mbps(entry: Mapping[str, Any], step: str) -> float | None:
    lorien = _ok(entry, "lorien")
    if lorien is None or not lorien[f"{step}_s"]:
        return None
    return entry["new_bytes"] / 1e6 / lorien[f"{step}_s"]


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _spread(values: list[tuple[float, str]], unit: str) -> str:
    ordered = sorted(values)
    median = statistics.median(value for value, _ in ordered)
    return (
        f"min {ordered[0][0]:.1f} {unit} ({ordered[0][1]}), median {median:.1f}, "
        f"max {ordered[-1][0]:.1f} ({ordered[-1][1]})"
    )


def render_markdown(report: Mapping[str, Any]) -> str:
    tools = report["settings"]["tools"]
    env = report["environment"]
    lines = [
        f"# lorien benchmark — {report['started']}",
        "",
        f"{env['machine']['cpu_model']}, {env['machine']['cpu_count']} CPUs, {env['machine']['memory_gib']} GiB, "
        f"Python {env['machine']['python']}; "
        + ", ".join(f"{name} {version}" for name, version in env["tools"].items())
        + f". Timeout {report['settings']['timeout']:g} s per step. Bytes are patch sizes; the smallest generic "
        "patch is in bold. MB = 10^6 bytes, RSS = peak resident set of the apply process in MiB; speeds count "
        "the new model's size and include process start-up.",
        "",
    ]
    header = ["format", "size", "scenario", "new size", *tools, "lorien / best generic", "lorien / best peer"]
    header += ["entropy bound", "lorien / bound"]
    header += ["create MB/s", "apply MB/s"]
    header.append("apply RSS MiB")
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    entries = report["pairs"]
    for entry in entries:
        best = best_generic(entry)
        cells = [entry["format"], entry["size"], entry["scenario"], _human(entry["new_bytes"])]
        for tool in tools:
            record = entry["results"].get(tool)
            if record is None:
                cells.append("–")
            elif record["status"] != "ok":
                cells.append(record["status"])
            elif best is not None and tool == best[0]:
                cells.append(f"**{record['patch_bytes']:,}**")
            else:
                cells.append(f"{record['patch_bytes']:,}")
        lorien = _ok(entry, "lorien")
        bound = entry.get("entropy_bound_bytes")
        cells += [
            _fmt(ratio(entry), ".3f"),
            _fmt(peer_ratio(entry), ".3f"),
            _fmt(bound, ",.0f"),
            _fmt(lorien["patch_bytes"] / bound if lorien and bound else None, ".3f"),
            _fmt(_mbps(entry, "create"), ".1f"),
            _fmt(_mbps(entry, "apply"), ".1f"),
            _fmt(lorien["apply_rss_mib"] if lorien else None, ".0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *summary_lines(entries)]
    return "\n".join(lines) + "\n"


def summary_lines(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    ratios = [(r, entry["name"]) for entry in entries if (r := ratio(entry)) is not None]
    if ratios:
        worst, best = max(ratios), min(ratios)
        lines.append(
            f"- Ratio lorien / best generic tool over {len(ratios)} pairs: worst {worst[0]:.3f} ({worst[1]}), "
            f"best {best[0]:.3f} ({best[1]})."
        )
    else:
        lines.append("- Ratio lorien / best generic tool: no pair where both lorien and a generic tool succeeded.")
    comparable = [entry for entry in entries if ratio(entry) is not None]
    misses = []
    for entry in comparable:
        lorien, (tool, size) = _ok(entry, "lorien"), best_generic(entry)
        excess = lorien["patch_bytes"] - size
        if excess > SLACK_BYTES:
            misses.append(f"{entry['name']} (+{excess:,} B over {tool})")
    lines.append(
        f"- lorien ≤ best generic + {SLACK_BYTES} B: {len(comparable) - len(misses)} of {len(comparable)} pairs"
        + (f"; missed by: {', '.join(misses)}." if misses else ".")
    )
    dense = [entry for entry in entries if entry["scenario"] == "dense"]
    if dense:
        parts = []
        for entry in dense:
            value = ratio(entry)
            mark = "n/a" if value is None else ("meets" if value <= DENSE_TARGET_RATIO else "misses")
            parts.append(f"{entry['name']} {_fmt(value, '.3f')} ({mark})")
        lines.append(f"- Dense fine-tune ratio (target ≤ {DENSE_TARGET_RATIO:.2f}): " + "; ".join(parts) + ".")
    large = [entry for entry in entries if entry["size"] == "large"]
    if large:
        for step, target in (("create", CREATE_TARGET_MBPS), ("apply", APPLY_TARGET_MBPS)):
            speeds = [(speed, entry["name"]) for entry in large if (speed := _mbps(entry, step)) is not None]
            if speeds:
                meeting = sum(speed >= target for speed, _ in speeds)
                lines.append(
                    f"- Large pairs, lorien {step} speed (target ≥ {target:g} MB/s): {_spread(speeds, 'MB/s')}; "
                    f"{meeting} of {len(speeds)} pairs meet it."
                )
        rss = [(record["apply_rss_mib"], entry["name"]) for entry in large if (record := _ok(entry, "lorien"))]
        if rss:
            lines.append(f"- Large pairs, lorien apply peak RSS: {_spread(rss, 'MiB')}.")
    else:
        lines.append("- Large pairs: none in this run (speed targets: create ≥ 5 MB/s, apply ≥ 100 MB/s).")
    failures = [
        f"{entry['name']} {tool}: {record['status']}"
        for entry in entries
        for tool, record in entry["results"].items()
        if record["status"] != "ok"
    ]
    lines.append(f"- Failures ({len(failures)}): " + ("; ".join(failures) + "." if failures else "none."))
    return lines


# --------------------------------------------------------------------------- main


def _write_json(path: Path, data: Any) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=BENCH_DIR / "corpus", help="corpus directory")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    sizes = tuple(corpus.SIZES)
    parser.add_argument(
        "--sizes",
        type=lambda s: parse_list(s, sizes, "size"),
        default=list(corpus.DEFAULT_SIZES),
        help=f"comma-separated, from {','.join(sizes)} (default {','.join(corpus.DEFAULT_SIZES)})",
    )
    parser.add_argument(
        "--formats", type=lambda s: parse_list(s, corpus.FORMATS, "format"), default=list(corpus.FORMATS)
    )
    parser.add_argument(
        "--scenarios", type=lambda s: parse_list(s, corpus.SCENARIOS, "scenario"), default=list(corpus.SCENARIOS)
    )
    parser.add_argument("--tools", type=lambda s: parse_list(s, TOOLS, "tool"), default=list(TOOLS))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per create or apply step")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="results directory")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, flush=True)

    pairs = corpus.generate(args.corpus, args.seed, args.sizes, args.formats, args.scenarios, log=log)
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "finished": None,
        "settings": {
            "corpus": str(args.corpus.resolve()),
            "seed": args.seed,
            "generator_version": corpus.GENERATOR_VERSION,
            "sizes": args.sizes,
            "formats": args.formats,
            "scenarios": args.scenarios,
            "tools": args.tools,
            "timeout": args.timeout,
            "argv": sys.argv,
        },
        "environment": environment(),
        "pairs": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    run_file = args.out / f"{stamp}.json"
    # a directory of this run's own: two runs on one corpus (e.g. small and medium at once) must not delete
    # each other's patches
    work = Path(tempfile.mkdtemp(prefix=f".work-{stamp}-", dir=args.corpus.resolve()))
    log(f"{len(pairs)} pairs × {len(args.tools)} tools; raw results → {run_file}")
    try:
        for pair in pairs:
            report["pairs"].append(bench_pair(pair, args.tools, work, args.timeout, log))
            _write_json(run_file, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    _write_json(run_file, report)
    _write_json(args.out / "latest.json", report)
    markdown = render_markdown(report)
    write_bytes_atomic(args.out / "latest.md", markdown.encode())
    print()
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
