"""What one ``lorien device`` process owns while it runs: its state directory, its API token and its identity.

* The state directory is locked (``state_dir/.lock``, an exclusive ``flock`` holding the pid, kept for the
  process lifetime): a second device started on the same state directory would resume the same ``.part`` files
  and deploy over the first one's work, so it fails at once naming the holder (``BusyError``, exit 3).
* Every POST needs a bearer token. Without ``api_token`` in the config, one is generated at the first start into
  ``state_dir/api_token`` (mode 0600, written atomically) and reused on later starts; local clients read it from
  there. ``insecure_no_token = true`` (loopback only) turns the token off, for TOPE clients that cannot send one.
* The device's identity (``device_id``, which places it in staged rollouts and names it in its User-Agent) is the
  configured one, else generated once (random, 128 bits) into ``state_dir/device_id`` atomically and kept.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

from lorien.device.config import DEVICE_ID, DeviceConfig
from lorien.repo.atomic import atomic_writer
from lorien.repo.errors import BusyError
from lorien.repo.lock import exclusive_lock

TOKEN_FILE = "api_token"
DEVICE_ID_FILE = "device_id"
LOCK_FILE = ".lock"


@contextlib.contextmanager
def state_dir_lock(config: DeviceConfig) -> Iterator[None]:
    """Hold ``config.state_dir`` for the ``with`` block, or raise BusyError naming the pid that holds it."""
    with exclusive_lock(
        config.state_dir / LOCK_FILE,
        lambda pid: BusyError(
            f"{config.state_dir}: state directory is in use by another lorien device (pid {pid}); stop it, "
            "or give this device its own state_dir"
        ),
    ):
        yield


def api_token(config: DeviceConfig) -> tuple[str | None, str]:
    """The token the API requires and where it comes from (for the start-up line): the configured one, none
    (``insecure_no_token``), or the one in ``state_dir/api_token`` (generated now if missing)."""
    if config.api_token:
        return config.api_token, "API token: api_token from the configuration"
    if config.insecure_no_token:
        return None, "API token: none (insecure_no_token = true): any local process or web page may POST"
    path = config.state_dir / TOKEN_FILE
    token = _read_token(path)
    if token is None:
        token = secrets.token_hex(32)  # hex: never starts with "-", so `--token VALUE` always parses
        with atomic_writer(path, mode=0o600) as sink:
            sink.write(f"{token}\n".encode())
    return token, f"API token in {path} (send Authorization: Bearer <its content>)"


def _read_token(path: Path) -> str | None:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return token if len(token) >= 8 else None


def device_identity(config: DeviceConfig) -> str:
    """``config.device_id``, or the one in ``state_dir/device_id`` (generated now if missing or unreadable)."""
    if config.device_id:
        return config.device_id
    path = config.state_dir / DEVICE_ID_FILE
    try:
        stored = path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        stored = ""
    if DEVICE_ID.fullmatch(stored):
        return stored
    identity = secrets.token_hex(16)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as sink:
        sink.write(f"{identity}\n".encode())
    return identity
