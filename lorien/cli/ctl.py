"""``lorien ctl``: drive a running ``lorien device`` over its HTTP API — status, check, update, rollback,
history, progress — instead of curl.

Where the device is: ``--config device.toml`` gives its host and port, and its token (``api_token``, else the
token the device generated into ``<state_dir>/api_token``); without ``--config`` or ``--url``,
``/etc/lorien/device.toml`` when it exists, else ``http://127.0.0.1:12315``. ``--url``, ``--token`` and
``--token-file`` win over the file. Reads (status, history, progress) need no token; the others POST with it.

Output is for people, or JSON with ``--json``. ``update --wait`` and ``rollback --wait`` follow the operation
(as ``progress --follow`` does: a bar on a terminal, one line per change otherwise) and end by its result. The
exit code says what happened, by the causes of :mod:`repo.errors`:

====  =====================================================================================================
exit  outcome
====  =====================================================================================================
0     done: the request was answered; a followed update installed (or the device was up to date)
1     the update or rollback failed or was rolled back; the device refused the manifest (422)
2     bad input: a flag or the config file; the token is missing or wrong (401); refused as foreign (403)
3     busy: another operation or check runs on the device (409)
4     unreachable: no device API at that address; or the device cannot reach its repository (502)
====  =====================================================================================================

``pin VERSION``, ``unpin``, ``hold`` and ``release`` set the device's run-time pin and hold (docs/rollouts.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import requests

from lorien.cli._options import Commands, add_command, add_json_option, print_fields
from lorien.repo.errors import BadInputError, Busy, LorienError, NetworkError, UpdateFailed, VerificationError

DEFAULT_CONFIG = Path("/etc/lorien/device.toml")  # where deploy/install.sh puts it
DEFAULT_URL = "http://127.0.0.1:12315"
PREFIX = "/api/v1.0"  # device.api.PREFIX, not imported: the client needs neither Bottle nor waitress
POLL = 0.25  # seconds between two looks at a running operation
TIMEOUT = (5, 30)  # seconds to connect, to read the answer
CHECK_TIMEOUT = (5, 600)  # a check reads the manifest and its signature, each retried within its own bounds


# ------------------------------------------------------------------------------------------ the device


@dataclass(frozen=True)
class Device:
    """A device API: its base URL and where the token for POSTs comes from (read only when needed)."""

    url: str
    token: str | None = None
    token_file: Path | None = None
    token_from: str = "--token"  # where ``token`` came from, for the message when the device refuses it

    def get(self, path: str) -> Any:
        return self._request("GET", path, TIMEOUT)[1]

    def post(
        self, path: str, timeout: tuple[int, int] = TIMEOUT, body: dict[str, Any] | None = None
    ) -> tuple[str, Any]:
        return self._request("POST", path, timeout, body)

    def _request(
        self, method: str, path: str, timeout: tuple[int, int], body: dict[str, Any] | None = None
    ) -> tuple[str, Any]:
        """The envelope's ``(msg, data)``, or the error of its cause."""
        url = f"{self.url}{PREFIX}{path}"
        headers = {}
        if method == "POST" and (token := self._token()):
            headers["Authorization"] = f"Bearer {token}"
        with requests.Session() as session:
            session.trust_env = False  # a local API: no proxy from the environment, no .netrc credentials
            try:
                answer = session.request(method, url, headers=headers, timeout=timeout, json=body)
            except requests.RequestException as error:
                raise NetworkError(
                    f"device unreachable at {self.url} ({type(error).__name__}); is `lorien device` running "
                    "there? (--url, or --config with the device's configuration)"
                ) from None
        try:
            envelope = json.loads(answer.content)
            message, data = str(envelope["msg"]), envelope["data"]
        except (ValueError, KeyError, TypeError):
            raise NetworkError(f"{url} answered HTTP {answer.status_code}, not a lorien device API") from None
        if answer.status_code != 200:
            raise _refusal(answer.status_code, message, self._token_source())
        return message, data

    def _token(self) -> str | None:
        if self.token or self.token_file is None:
            return self.token
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise BadInputError(
                f"{self.token_file}: no API token there (the device writes it at its first start); pass --token"
            ) from None
        except OSError as error:
            raise BadInputError(
                f"{self.token_file}: cannot read the API token ({error.strerror}); run as the device's user, "
                "or pass --token"
            ) from None
        if not token:
            raise BadInputError(f"{self.token_file}: the token file is empty")
        return token

    def _token_source(self) -> str | None:
        return self.token_from if self.token else str(self.token_file) if self.token_file else None


def _refusal(status: int, message: str, token_source: str | None) -> LorienError:
    """The error for a device's answer other than 200, by cause (see the exit codes above)."""
    if status == 401 and token_source is None:
        return BadInputError(f"{message}; no token given: pass --token, --token-file or --config")
    if status == 401:
        return BadInputError(f"the device refused the token from {token_source}: {message}")
    if status == 403:
        return BadInputError(message)
    if status == 409:
        return Busy(f"device busy: {message}")
    if status == 422:
        return VerificationError(message)
    if status == 502:
        return NetworkError(f"the device cannot reach its repository: {message}")
    if 400 <= status < 500:
        return BadInputError(f"HTTP {status}: {message}")
    return NetworkError(f"the device answered HTTP {status}: {message}")


def _device(args: argparse.Namespace) -> Device:
    """The device the flags name: ``--url``/``--token``/``--token-file`` over ``--config`` (or the default
    config file, when neither ``--config`` nor ``--url`` is given and it exists)."""
    config_path = args.config
    if config_path is None and args.url is None and DEFAULT_CONFIG.is_file():
        config_path = DEFAULT_CONFIG
    url, token, token_file, token_from = args.url, args.token, args.token_file, "--token"
    if config_path is not None:
        from lorien.device.config import load_config
        from lorien.device.startup import TOKEN_FILE

        config = load_config(config_path)
        url = url or _config_url(config.host, config.port, config_path)
        if token is None and token_file is None and not config.insecure_no_token:
            token, token_file = config.api_token, config.state_dir / TOKEN_FILE
            token_from = f"api_token in {config_path}"
    return Device(_base_url(url or DEFAULT_URL), token, token_file, token_from)


def _config_url(host: str, port: int, path: Path) -> str:
    if port == 0:
        raise BadInputError(
            f"{path}: port = 0 (the device picks a free port at each start); pass --url with the port it printed"
        )
    if host in ("", "0.0.0.0"):  # a wildcard: this machine answers on loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _base_url(url: str) -> str:
    """``http://host:port``, also from the API address the device prints (``…/api/v1.0/``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadInputError(f"--url {url!r}: must be an http:// address, e.g. {DEFAULT_URL}")
    return f"{parts.scheme}://{parts.netloc}"


# ------------------------------------------------------------------------------------------ showing


def _size(count: int | None) -> str:
    if count is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def _result(entry: dict[str, Any]) -> str:
    """``ok``, ``failed`` or ``rolled back`` (entries written before ``result`` existed: from ``ok``)."""
    if "result" in entry:
        return entry["result"]
    if entry.get("ok"):
        return "ok"
    return "rolled back" if entry.get("message", "").startswith("rolled back") else "failed"


def _history_line(entry: dict[str, Any]) -> str:
    """One finished operation; a field an older device did not record shows as ``-``."""
    versions = f"{entry.get('from_version') or '-'} → {entry.get('version') or '-'}"
    duration = "-" if entry.get("duration") is None else f"{entry['duration']} s"
    downloaded = "-"
    if entry.get("download_bytes") is not None:
        downloaded = f"{_size(entry['download_bytes'])} of {_size(entry.get('full_size'))}"
    kind = entry.get("kind") or "-"  # it ended before an operation was recorded (e.g. already up to date)
    return (
        f"{entry.get('at', '-'):<20}  {kind:<13}  {versions:<17}  {_result(entry):<11}  {duration:>6}  "
        f"{downloaded:<20}  {entry.get('message', '')}"
    )


class ProgressLines:
    """``/progress`` as it changes: on a terminal one line rewritten in place (a bar), else one line per change;
    with ``--json`` one JSON object per change; ``quiet``: nothing."""

    def __init__(self, out: TextIO, as_json: bool, quiet: bool = False) -> None:
        self._out, self._as_json, self._quiet = out, as_json, quiet
        self._live = out.isatty() and not as_json
        self._last: tuple[Any, ...] | None = None

    def show(self, progress: dict[str, Any]) -> None:
        key = tuple(progress.get(name) for name in ("lorien_stage", "progress", "message", "error", "busy"))
        if self._quiet or key == self._last:
            return
        self._last = key
        if self._as_json:
            print(json.dumps(progress), file=self._out, flush=True)
            return
        stage, percent, message, error, busy = key
        if busy and stage in ("idle", "failed"):  # started, not yet in its first stage: that is the last one's end
            stage, percent, message, error = "starting", 0, "", None
        detail = f"{percent:>3}%  {message}" + (f"  (error: {error})" if error else "")
        if not self._live:
            print(f"{stage:<12} {detail}", file=self._out, flush=True)
            return
        line = f"{stage:<12} [{'#' * (percent * 20 // 100):<20}] {detail}"
        width = shutil.get_terminal_size().columns - 1
        print(f"\r{line[:width]:<{width}}", end="", file=self._out, flush=True)

    def close(self) -> None:
        if self._live and self._last is not None:
            print(file=self._out, flush=True)


def _follow(device: Device, lines: ProgressLines) -> bool:
    """Show the operation in progress until it ends; whether one was running (``busy`` in ``/status``, added to
    each ``/progress`` document shown)."""
    running = False
    try:
        while True:
            busy = device.get("/status")["busy"]
            lines.show({**device.get("/progress"), "busy": busy})
            if not busy:
                return running
            running = True
            time.sleep(POLL)
    finally:
        lines.close()


def _ended(device: Device, as_json: bool, indent: int | None = 2) -> int:
    """Print the history entry the operation that just ended left: exit 0 when it succeeded, else UpdateFailed
    (exit 1). ``indent=None``: the JSON on one line, after the one-line progress objects of ``--follow``."""
    history = device.get("/status")["history"]
    if not history:
        raise UpdateFailed("the operation left no history entry")
    entry = history[0]
    print(json.dumps(entry, indent=indent) if as_json else _history_line(entry))
    if not entry.get("ok"):
        raise UpdateFailed(f"{entry.get('kind') or 'the operation'} failed: {entry.get('message', '')}")
    return 0


# ------------------------------------------------------------------------------------------ commands


def _status(args: argparse.Namespace) -> int:
    """installed version, stage, last result, backups, trust, channel and rollout decision of the device"""
    status = _device(args).get("/status")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    sha = status.get("installed_sha256")
    last = status.get("last_result")
    trust = status.get("trust") or {}
    root = trust.get("trusted_root")
    tuf = trust.get("tuf") or {}
    verified = f"; last verified: root v{tuf['root_version']}, targets v{tuf['targets_version']}" if tuf else ""
    fields = {
        "family": status.get("family"),
        "installed": f"{status.get('installed_version') or 'unknown version'} (sha256 {sha[:16] if sha else '-'})",
        "model": status.get("model_path"),
        "stage": f"{status.get('stage')}{' (busy)' if status.get('busy') else ''}",
        "last result": f"{_result(last)}: {last.get('message')} ({last.get('at')})" if last else "-",
        "backups": len(status.get("backups") or []),
        "trust": f"TUF, initial root {root}{verified}" if root else "none: unsigned manifests accepted (insecure)",
        "sequence": trust.get("highest_sequence"),
    }
    if (trust.get("last_refusal") or {}).get("message"):
        fields["refused"] = trust["last_refusal"]["message"]
    rollout = status.get("rollout") or {}
    if rollout:
        decision = rollout.get("decision") or {}
        controls = [
            f"pinned to {rollout['pin']}" if rollout.get("pin") else "",
            "held" if rollout.get("hold") else "",
        ]
        fields["channel"] = f"{rollout.get('channel')} (device {rollout.get('device_id')})"
        fields["rollout"] = decision.get("reason") or "not checked yet"
        if any(controls):
            fields["operator"] = ", ".join(control for control in controls if control)
    print_fields(fields, as_json=False)
    return 0


def _check(args: argparse.Namespace) -> int:
    """read and verify the manifest now: the latest version and the cheapest way there"""
    plan = _device(args).post("/check", CHECK_TIMEOUT)[1]
    if args.json:
        print(json.dumps(plan, indent=2))
        return 0
    installed = plan["installed"].get("version") or "unknown version"
    if plan["up_to_date"]:
        print_fields({"installed": installed, "latest": plan["latest"], "plan": "up to date"}, as_json=False)
        return 0
    route = ", ".join(
        f"patch {step['source']} → {step['target']}" if step["kind"] == "patch" else f"full {step['target']}"
        for step in plan["steps"]
    )
    download = f"{_size(plan['download_bytes'])} of {_size(plan['full_size'])} ({plan['saving_percent']}% saved)"
    print_fields(
        {"installed": installed, "latest": plan["latest"], "plan": route, "download": download}, as_json=False
    )
    return 0


def _pin(args: argparse.Namespace) -> int:
    """pin the device to a version: it installs it if absent (also an older one) and stays on it"""
    return _control(args, {"pin": args.version})


def _unpin(args: argparse.Namespace) -> int:
    """remove the pin (also one from device.toml, until the state directory is reset): the device follows its channel"""
    return _control(args, {"pin": None})


def _hold(args: argparse.Namespace) -> int:
    """hold the device: it keeps checking but installs nothing until released"""
    return _control(args, {"hold": True})


def _release(args: argparse.Namespace) -> int:
    """release a run-time hold"""
    return _control(args, {"hold": False})


def _control(args: argparse.Namespace, body: dict[str, Any]) -> int:
    data = _device(args).post("/control", body=body)[1]
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_fields(
            {"pin": data.get("pin") or "none", "hold": "yes" if data.get("hold") else "no"}, as_json=False
        )
    return 0


def _operation(path: str) -> Callable[[argparse.Namespace], int]:
    """The handler that POSTs ``path`` (an operation the device runs in the background) and, with ``--wait``,
    follows it to its end."""

    def start(args: argparse.Namespace) -> int:
        device = _device(args)
        message, data = device.post(path, body={"now": True} if getattr(args, "now", False) else None)
        if args.wait:
            _follow(device, ProgressLines(sys.stdout, args.json, quiet=args.json))
            return _ended(device, args.json)
        if args.json:
            print(json.dumps({"msg": message, "data": data}, indent=2))
        else:
            print(f"{message}; `lorien ctl progress --follow` shows it, `lorien ctl history` how it ended")
        return 0

    return start


def _history(args: argparse.Namespace) -> int:
    """the last operations, newest first: from → to, result, duration, bytes downloaded of the full size"""
    history = _device(args).get("/status")["history"]
    if args.json:
        print(json.dumps(history, indent=2))
        return 0
    if not history:
        print("no operation has finished on this device")
        return 0
    print(f"{'at':<20}  {'kind':<13}  {'from → to':<17}  {'result':<11}  {'took':>6}  {'downloaded':<20}  message")
    for entry in history:
        print(_history_line(entry))
    return 0


def _progress(args: argparse.Namespace) -> int:
    """the operation in progress; with --follow until it ends (exit 1 if it fails)"""
    device = _device(args)
    lines = ProgressLines(sys.stdout, args.json)
    if args.follow:
        return _ended(device, args.json, indent=None) if _follow(device, lines) else 0
    progress = device.get("/progress")
    if args.json:
        print(json.dumps(progress, indent=2))
    else:
        lines.show(progress)
        lines.close()
    return 0


def register(commands: Commands) -> None:
    ctl = commands.add_parser(
        "ctl",
        help="drive a running `lorien device`: status, check, update, rollback, history, progress, pin, hold",
        description="Drive a running `lorien device` over its HTTP API; the device's address and token come from "
        "--config (its device.toml) or --url and --token. Exit codes: 0 done, 1 the update failed or was rolled "
        "back, 2 bad input or token, 3 busy, 4 device unreachable. pin/unpin/hold/release: docs/rollouts.md.",
    )
    actions = ctl.add_subparsers(dest="action", required=True, metavar="ACTION")
    in_background = "in the background (--wait: follow it to its end, exit 1 if it fails)"
    for name, handler, help_text in (
        ("status", _status, None),
        ("check", _check, None),
        ("update", _operation("/update-latest"), f"update to the manifest's latest version {in_background}"),
        ("rollback", _operation("/rollback"), f"put the newest backup back {in_background}"),
        ("history", _history, None),
        ("progress", _progress, None),
        ("pin", _pin, None),
        ("unpin", _unpin, None),
        ("hold", _hold, None),
        ("release", _release, None),
    ):
        action = add_command(actions, name, handler, help_text, doing="talking to the device")
        _add_device_options(action)
        if name in ("update", "rollback"):
            action.add_argument(
                "--wait", action="store_true", help="follow it until it ends (Ctrl-C stops following)"
            )
        if name == "update":
            action.add_argument(
                "--now",
                action="store_true",
                help="ignore the device's download and deploy windows (also releases an update waiting for one)",
            )
        if name == "pin":
            action.add_argument("version", help="the version to install and stay on")
        if name == "progress":
            action.add_argument("--follow", action="store_true", help="until the operation ends")


def _add_device_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--config", type=Path, help=f"the device's device.toml: host, port, token (default {DEFAULT_CONFIG})"
    )
    command.add_argument("--url", help=f"the device API (default {DEFAULT_URL})")
    token = command.add_mutually_exclusive_group()
    token.add_argument("--token", help="the API token (default: from --config)")
    token.add_argument("--token-file", type=Path, help="a file holding the API token, e.g. STATE_DIR/api_token")
    add_json_option(command)
