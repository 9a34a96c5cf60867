"""The command line as an operator meets it, through the real command: ``--version``, help for every option,
one-line refusals (a port in use, a missing repository directory), ``publish --json``/``--max-patch-ratio``,
``gc --dry-run`` and its summary line, and what ``publish``/``watch`` say about a withdrawn version."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from lorien.cli import build_parser
from tests.support.processes import run_lorien


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_version_comes_from_the_package_metadata() -> None:
    result = run_lorien("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"lorien {version('lorien')}"


def _commands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_option_of_every_command_has_help() -> None:
    parser = build_parser()
    commands = dict(_commands(parser))
    assert {"publish", "watch", "gc", "inspect", "diff", "apply", "serve", "device"} <= set(commands)
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, command in [("lorien", parser), *commands.items()]
        for action in command._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []


def test_inspect_of_a_missing_directory_is_bad_input(tmp_path: Path) -> None:
    result = run_lorien("inspect", tmp_path / "nothing")
    assert result.returncode == 2 and result.stdout == ""
    assert "nothing: repository directory does not exist" in _one_line(result.stderr)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_serve_on_a_port_in_use_names_the_port(busy_port: int, tmp_path: Path) -> None:
    result = run_lorien("serve", tmp_path, "--port", busy_port, timeout=60)
    assert result.returncode == 2
    assert f"lorien serve: error: port {busy_port} on 127.0.0.1 is already in use" in _one_line(result.stderr)


def test_device_on_a_port_in_use_names_the_port(busy_port: int, tmp_path: Path) -> None:
    model = tmp_path / "model.tflite"
    model.write_bytes(b"TFL3 model" * 100)
    flags = ["--repo-url", "http://127.0.0.1:9/", "--family", "cls", "--model-path", model]
    flags += ["--state-dir", tmp_path / "state", "--insecure-allow-unsigned", "--check-interval", "0"]
    result = run_lorien("device", *flags, "--port", busy_port, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"port {busy_port} on 127.0.0.1 is already in use" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_publish_json_events_and_withdrawal(models_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = run_lorien("publish", "--models", models_dir, "--repo", repo, "--json")
    assert first.returncode == 0, first.stderr
    events = _events(first.stdout)
    published = next(event for event in events if event["event"] == "published")
    assert published["family"] == "classifier" and published["latest"] == "1.2.0"
    assert published["new_versions"] == ["1.0.0", "1.1.0", "1.2.0"]
    assert {(p["source"], p["target"]) for p in published["patches"]} == {("1.0.0", "1.2.0"), ("1.1.0", "1.2.0")}
    assert all(p["size"] > 0 and 0 < p["percent_of_full"] < 100 for p in published["patches"])
    assert events[-1] == {"event": "index", "written": True}

    (models_dir / "classifier" / "1.0.0.tflite").unlink()
    text = run_lorien("publish", "--models", models_dir, "--repo", repo)
    assert text.returncode == 0 and "classifier: withdrew 1.0.0" in text.stdout.splitlines()
    (models_dir / "classifier" / "1.1.0.tflite").unlink()
    again = _events(run_lorien("publish", "--models", models_dir, "--repo", repo, "--json").stdout)
    assert {"event": "withdrawn", "family": "classifier", "version": "1.1.0"} in again


@pytest.mark.slow
def test_publish_max_patch_ratio(models_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = run_lorien("publish", "--models", models_dir, "--repo", repo, "--max-patch-ratio", "0.0001")
    assert result.returncode == 0, result.stderr
    assert "classifier: no patch 1.1.0→1.2.0:" in result.stdout and "new patches" not in result.stdout
    assert json.loads((repo / "classifier" / "manifest.json").read_text())["patches"] == []
    refused = run_lorien("publish", "--models", models_dir, "--repo", repo, "--max-patch-ratio", "11")
    assert refused.returncode == 2 and "--max-patch-ratio must be in (0, 10]" in _one_line(refused.stderr)


@pytest.mark.slow
def test_gc_dry_run_removes_nothing_and_says_so(published: Path, models_dir: Path) -> None:
    quiet = run_lorien("gc", published)
    assert quiet.returncode == 0
    assert quiet.stdout.splitlines() == [
        "gc: nothing to remove (6 blobs referenced, 0 waiting for the grace period)"  # + the compressed model
    ]
    (models_dir / "classifier" / "1.0.0.tflite").unlink()
    assert run_lorien("publish", "--models", models_dir, "--repo", published).returncode == 0
    blobs = sorted(path for path in (published / "blobs").rglob("*") if path.is_file())
    dry = run_lorien("gc", published, "--grace", "0", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count("would remove blobs/") == 2, dry.stdout
    assert dry.stdout.splitlines()[-1].startswith("gc: would remove 2 blobs (4 blobs referenced")
    assert sorted(path for path in (published / "blobs").rglob("*") if path.is_file()) == blobs
    assert not (published / ".gc.json").exists()
    real = run_lorien("gc", published, "--grace", "0")
    assert real.stdout.count("removed blobs/") == 2 and real.stdout.splitlines()[-1].startswith("gc: removed 2")


def _watch_until(
    models: Path, repo: Path, *extra: str, ready: str, change: Callable[[], None], until: str
) -> list[str]:
    """``lorien watch``'s stdout lines up to the first with ``until``; ``change`` runs after the first with
    ``ready``. The watcher is killed after a minute, which ends the loop (then the test fails)."""
    command = [sys.executable, "-m", "lorien.cli", "watch", "--models", str(models), "--repo", str(repo), *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = threading.Timer(60, process.kill)
    deadline.start()
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.strip())
            if ready in line and not any(ready in earlier for earlier in lines[:-1]):
                change()
            if until in line:
                return lines
        raise AssertionError(f"watch ended without {until!r}: {lines}")
    finally:
        deadline.cancel()
        process.terminate()
        process.wait(20)


@pytest.mark.slow
def test_watch_says_what_a_withdrawal_did(models_dir: Path, tmp_path: Path) -> None:
    lines = _watch_until(
        models_dir,
        tmp_path / "repo",
        ready="version=1.2.0",
        change=(models_dir / "classifier" / "1.0.0.tflite").unlink,
        until="withdrew",
    )
    assert lines[-1] == "withdrew family=classifier version=1.0.0", lines


@pytest.mark.slow
def test_watch_json_prints_one_object_per_event(models_dir: Path, tmp_path: Path) -> None:
    lines = _watch_until(
        models_dir,
        tmp_path / "repo",
        "--json",
        ready='"published"',  # (a startup publish may find the fixture's files too fresh: then just an index)
        change=(models_dir / "classifier" / "1.0.0.tflite").unlink,
        until='"withdrawn"',
    )
    events = [json.loads(line) for line in lines]
    published = next(event for event in events if event["event"] == "published")
    assert published["new_versions"] == ["1.0.0", "1.1.0", "1.2.0"] and len(published["patches"]) == 2
    assert {event["event"] for event in events} == {"published", "index", "withdrawn"}
    assert events[-1] == {"event": "withdrawn", "family": "classifier", "version": "1.0.0"}
