"""Device updater configuration: a TOML file (``tomllib``) plus command-line overrides, validated up front.

``load_config(path, overrides)`` → :class:`DeviceConfig` or :class:`~repo.errors.BadInputError` naming the key
and what to write instead. Checks that can only fail at run time (is the model directory writable?) are in
:func:`check_environment`, called at startup so a misconfigured device refuses to start instead of failing
mid-update.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lorien.repo.errors import BadInputError, LorienError
from lorien.repo.layout import family_name_problem
from lorien.repo.limits import DEFAULT_LIMITS, Limits
from lorien.repo.signing import TrustedKey, load_trusted_key

DEFAULT_PORT = 12315


@dataclass(frozen=True)
class ServiceControl:
    """How to stop/start the program that uses the model: a systemd unit, or a command + pid file, or nothing."""

    unit: str | None = None
    command: list[str] | None = None
    pid_file: Path | None = None

    @property
    def configured(self) -> bool:
        return bool(self.unit or self.command)


@dataclass(frozen=True)
class DeviceConfig:
    repo_url: str
    family: str
    model_path: Path
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_token: str | None = None
    check_interval: float = 0.0  # seconds; 0 = only on request
    service: ServiceControl = field(default_factory=ServiceControl)
    health_check: list[str] | None = None  # command; exit 0 = healthy
    health_check_litert: bool = False  # built-in: load the TFLite model with LiteRT
    health_timeout: float = 60.0
    callback_url: str | None = None
    keep_backups: int = 2
    stop_timeout: float = 10.0  # SIGTERM → SIGKILL grace period
    trusted_keys: tuple[TrustedKey, ...] = ()  # publisher public keys; a manifest must be signed by one of them
    insecure_allow_unsigned: bool = False  # use unsigned / badly signed metadata anyway (logged loudly)
    limits: Limits = DEFAULT_LIMITS

    @property
    def tmp_dir(self) -> Path:
        return self.state_dir / "tmp"

    @property
    def backup_dir(self) -> Path:
        return self.state_dir / "backups"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"


_SIMPLE_KEYS = {f.name for f in fields(DeviceConfig)} - {"service"}


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> DeviceConfig:
    """Read ``path`` (optional) and apply ``overrides`` (flag values; None means "not given")."""
    raw: dict[str, Any] = {}
    where = "command line"
    if path is not None:
        where = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BadInputError(f"{path}: config file does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise BadInputError(f"{path}: cannot read config: {error}") from None
        except tomllib.TOMLDecodeError as error:
            raise BadInputError(f"{path}: not valid TOML: {error}") from None
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    return _build(raw, where)


def _build(raw: dict[str, Any], where: str) -> DeviceConfig:
    def bad(key: str, why: str) -> BadInputError:
        return BadInputError(f"{where}: {key}: {why}")

    unknown = sorted(set(raw) - _SIMPLE_KEYS - {"service"})
    if unknown:
        raise bad(unknown[0], f"unknown option (known: {', '.join(sorted(_SIMPLE_KEYS | {'service'}))})")
    for key in ("repo_url", "family", "model_path", "state_dir"):
        if key not in raw or raw[key] in ("", None):
            raise bad(key, 'required (e.g. repo_url = "https://models.example.com/repo/")')

    def text(key: str) -> str:
        if not isinstance(raw[key], str):
            raise bad(key, f"must be a string, not {type(raw[key]).__name__}")
        return raw[key]

    def number(key: str, default: float, minimum: float, maximum: float, integer: bool = False) -> Any:
        value = raw.get(key, default)
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not minimum <= value <= maximum:
            kind = "an integer" if integer else "a number"
            raise bad(key, f"must be {kind} from {minimum} to {maximum}, got {value!r}")
        return value

    repo_url = text("repo_url")
    if urlsplit(repo_url).scheme not in ("http", "https") or not urlsplit(repo_url).netloc:
        raise bad("repo_url", f"must be an http:// or https:// URL, got {repo_url!r}")
    family = text("family")
    if problem := family_name_problem(family):
        raise bad("family", problem)
    callback_url = raw.get("callback_url")
    if callback_url is not None and (
        not isinstance(callback_url, str) or urlsplit(callback_url).scheme not in ("http", "https")
    ):
        raise bad("callback_url", f"must be an http:// or https:// URL, got {callback_url!r}")
    token = raw.get("api_token")
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise bad("api_token", "must be a string of at least 8 characters")
    host = text("host") if "host" in raw else "127.0.0.1"
    keys = _trusted_keys(raw.get("trusted_keys"), bad)
    insecure = raw.get("insecure_allow_unsigned", False)
    if not isinstance(insecure, bool):
        raise bad("insecure_allow_unsigned", f"must be true or false, got {insecure!r}")
    if not token and not _is_loopback(host):
        raise bad("host", f"binding to {host} (not loopback) needs api_token; refusing to expose an open API")
    config = DeviceConfig(
        repo_url=repo_url if repo_url.endswith("/") else repo_url + "/",
        family=family,
        model_path=Path(text("model_path")),
        state_dir=Path(text("state_dir")),
        host=host,
        port=number("port", DEFAULT_PORT, 0, 65535, integer=True),
        api_token=token or None,
        check_interval=float(number("check_interval", 0, 0, 7 * 86400)),
        service=_service(raw.get("service"), bad),
        health_check=_command(raw.get("health_check"), "health_check", bad),
        health_check_litert=bool(raw.get("health_check_litert", False)),
        health_timeout=float(number("health_timeout", 60, 1, 3600)),
        callback_url=callback_url,
        keep_backups=number("keep_backups", 2, 1, 100, integer=True),
        stop_timeout=float(number("stop_timeout", 10, 0, 600)),
        trusted_keys=keys,
        insecure_allow_unsigned=insecure,
        limits=_limits(raw.get("limits"), bad),
    )
    if not keys and not insecure:  # checked last: other mistakes are reported first
        raise bad(
            "trusted_keys",
            'required: the publisher\'s public key file(s), e.g. trusted_keys = ["/etc/lorien/publisher.pub"] '
            "(made by `lorien keygen`); or set insecure_allow_unsigned = true to accept unsigned repositories",
        )
    return config


def _trusted_keys(value: Any, bad) -> tuple[TrustedKey, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise bad("trusted_keys", 'must be a list of public key files, e.g. ["/etc/lorien/publisher.pub"]')
    keys = []
    for item in value:
        try:
            keys.append(load_trusted_key(Path(item)))
        except LorienError as error:
            raise bad("trusted_keys", str(error)) from None
    return tuple(keys)


def _limits(value: Any, bad) -> Limits:
    if value is None:
        return DEFAULT_LIMITS
    if not isinstance(value, dict):
        raise bad("limits", "must be a table, e.g. limits = {max_chain_length = 8, min_rate = 256}")
    try:
        return DEFAULT_LIMITS.with_overrides(value, "limits")
    except ValueError as error:
        raise bad("limits", str(error)) from None


def _command(value: Any, key: str, bad) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not value or not all(isinstance(part, str) and part for part in value):
        raise bad(key, 'must be a command: a string or a list of strings, e.g. ["/usr/bin/check", "--quick"]')
    return value


def _service(value: Any, bad) -> ServiceControl:
    if value is None:
        return ServiceControl()
    if isinstance(value, str):
        return ServiceControl(unit=value)
    if not isinstance(value, dict):
        raise bad("service", 'must be a systemd unit name or a table {command = [...], pid_file = "..."}')
    unknown = sorted(set(value) - {"unit", "command", "pid_file"})
    if unknown:
        raise bad(f"service.{unknown[0]}", "unknown option (known: unit, command, pid_file)")
    if "unit" in value:
        if not isinstance(value["unit"], str) or not value["unit"]:
            raise bad("service.unit", "must be a systemd unit name")
        return ServiceControl(unit=value["unit"])
    command = _command(value.get("command"), "service.command", bad)
    pid_file = value.get("pid_file")
    if command is None or not isinstance(pid_file, str):
        raise bad("service", 'needs either unit = "name.service" or command = [...] with pid_file = "..."')
    return ServiceControl(command=command, pid_file=Path(pid_file))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_environment(config: DeviceConfig) -> None:
    """Refuse to start when the model cannot be replaced atomically or state cannot be kept."""
    model_dir = config.model_path.parent
    if not model_dir.is_dir():
        raise BadInputError(f"model_path: directory {model_dir} does not exist; create it or fix model_path")
    if not os.access(model_dir, os.W_OK | os.X_OK):
        raise BadInputError(
            f"model_path: directory {model_dir} is not writable by this user; the model "
            "is replaced by renaming a file into it"
        )
    for directory in (config.state_dir, config.tmp_dir, config.backup_dir, config.log_dir):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BadInputError(f"state_dir: cannot create {directory}: {error.strerror}") from None
        if not os.access(directory, os.W_OK):
            raise BadInputError(f"state_dir: {directory} is not writable by this user")
