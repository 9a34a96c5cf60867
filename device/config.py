"""Device updater configuration: a TOML file (``tomllib``) plus command-line overrides, validated up front.

``load_config(path, overrides)`` → :class:`DeviceConfig` or :class:`~repo.errors.BadInputError` naming the key
and what to write instead. Checks that can only fail at run time (is the model directory writable?) are in
:func:`check_environment`, called at startup so a misconfigured device refuses to start instead of failing
mid-update.

Every config key is also a ``lorien device`` flag: :func:`config_flags` derives them from the dataclass fields
(each field's help is in its metadata), and :func:`overrides_from_flags` turns the parsed flags back into
``overrides`` keyed like the TOML file, so flag values pass the same checks.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Any, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from lorien.device.windows import Window
from lorien.repo.channels import CHANNEL_NAME, DEFAULT_CHANNEL
from lorien.repo.errors import BadInputError, LorienError
from lorien.repo.layout import family_name_problem
from lorien.repo.limits import DEFAULT_LIMITS, Limits
from lorien.repo.transport import DOWNLOAD_RETRY, RetryPolicy
from lorien.repo.tufmeta import ROOT, parse_metadata
from lorien.repo.versions import version_name_problem

log = logging.getLogger(__name__)

DEFAULT_PORT = 12315
DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def _flag_help(text: str, flag: str | None = None) -> dict[str, str]:
    """Field metadata for the ``lorien device`` flag of a config key: its help, and its name when it is not
    ``--`` + the key with dashes (``trusted_keys`` → ``--trusted-key``)."""
    return {"help": text, "flag": flag} if flag else {"help": text}


@dataclass(frozen=True)
class ServiceControl:
    """How to stop/start the program that uses the model: a systemd unit, or a command + pid file, or nothing."""

    unit: str | None = field(default=None, metadata=_flag_help("systemd unit to stop/start around a deploy"))
    command: list[str] | None = field(default=None, metadata=_flag_help("command to start the model's consumer"))
    pid_file: Path | None = field(default=None, metadata=_flag_help("its pid file (with --service-command)"))


@dataclass(frozen=True)
class RetrySettings:
    """How long a blob download keeps retrying: a time budget, not a number of attempts (``[retry]``)."""

    total_seconds: float = field(
        default=DOWNLOAD_RETRY.budget,  # type: ignore[assignment]  # set: the blob policy is a time budget
        metadata=_flag_help(
            "seconds of pauses a download may wait through before the update fails (default 3600)"
        ),
    )
    max_backoff: float = field(
        default=DOWNLOAD_RETRY.max_backoff, metadata=_flag_help("longest pause between attempts (default 60 s)")
    )
    first_backoff: float = field(
        default=DOWNLOAD_RETRY.backoff,
        metadata=_flag_help("first pause, doubling up to max_backoff (default 0.5 s)"),
    )

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(None, self.first_backoff, self.max_backoff, budget=self.total_seconds)


@dataclass(frozen=True)
class DeviceConfig:
    repo_url: str = field(metadata=_flag_help("base URL of the repository"))
    family: str = field(metadata=_flag_help("model family to follow"))
    model_path: Path = field(metadata=_flag_help("the model file the application loads"))
    state_dir: Path = field(metadata=_flag_help("tmp/, backups/, logs/ and state.json live here"))
    host: str = field(
        default="127.0.0.1", metadata=_flag_help("API address (default 127.0.0.1; others need api_token)")
    )
    port: int = field(default=DEFAULT_PORT, metadata=_flag_help("API port (default 12315; 0 picks a free one)"))
    api_token: str | None = field(
        default=None,
        metadata=_flag_help("bearer token required by every POST (default: generated into state_dir/api_token)"),
    )
    insecure_no_token: bool = field(
        default=False,
        metadata=_flag_help("no token at all (loopback only): any local process or web page could POST"),
    )
    check_interval: float = field(default=0.0, metadata=_flag_help("seconds; 0 = on request only"))
    service: ServiceControl = field(default_factory=ServiceControl)  # flags --service-unit, --service-command, …
    health_check: list[str] | None = field(
        default=None, metadata=_flag_help("command run after deploy; exit 0 = healthy")
    )
    health_check_litert: bool = field(
        default=False,
        metadata=_flag_help("also load the TFLite model with LiteRT after deploy (needs the litert extra)"),
    )
    health_timeout: float = field(default=60.0, metadata=_flag_help("seconds (default 60)"))
    callback_url: str | None = field(default=None, metadata=_flag_help("POST stage changes here (best effort)"))
    keep_backups: int = field(default=2, metadata=_flag_help("backups kept (default 2)"))
    stop_timeout: float = field(default=10.0, metadata=_flag_help("SIGTERM→SIGKILL seconds (default 10)"))
    trusted_root: Path | None = field(
        default=None,
        metadata=_flag_help(
            "the repository's initial TUF root.json (its metadata/1.root.json): every manifest and blob must be a "
            "target signed under it; key rotations are followed from there"
        ),
    )
    insecure_allow_unsigned: bool = field(
        default=False,
        metadata=_flag_help(
            "accept unsigned or badly signed manifests (anyone on the network path could install anything)"
        ),
    )
    device_id: str | None = field(
        default=None,
        metadata=_flag_help("this device's identity (default: generated once into state_dir/device_id)"),
    )
    channel: str = field(
        default=DEFAULT_CHANNEL, metadata=_flag_help("release channel to follow (default stable)")
    )
    pin: str | None = field(default=None, metadata=_flag_help("stay on this version (install it if absent)"))
    hold: bool = field(default=False, metadata=_flag_help("check but do not install anything"))
    download_window: str | None = field(
        default=None, metadata=_flag_help('local hours in which to download, e.g. "02:00-05:00" (default: any)')
    )
    deploy_window: str | None = field(
        default=None, metadata=_flag_help('local hours in which to deploy, e.g. "03:00-04:00" (default: any)')
    )
    max_download_rate: int = field(
        default=0, metadata=_flag_help("bytes per second a download may use (default 0: no cap)")
    )
    limits: Limits = field(default=DEFAULT_LIMITS, metadata={"flag": None})  # a table: device.toml only
    retry: RetrySettings = field(default_factory=RetrySettings)  # flags --retry-total-seconds, …

    @property
    def trusted_root_bytes(self) -> bytes | None:
        """The trusted root's bytes (checked to be a TUF root when the config was loaded)."""
        return None if self.trusted_root is None else self.trusted_root.read_bytes()

    @property
    def tuf_dir(self) -> Path:
        """Trusted TUF metadata python-tuf keeps between checks (rollback protection across restarts), one
        directory per repository URL (like the accepted-manifest records): another repository's versions never
        count against this one."""
        return self.state_dir / "tuf" / hashlib.sha256(self.repo_url.encode()).hexdigest()[:16]

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


_TABLES = {"service", "retry"}
_SIMPLE_KEYS = ({f.name for f in fields(DeviceConfig)} - _TABLES) | {
    "trusted_keys"
}  # old scheme: see _trusted_root


@dataclass(frozen=True)
class ConfigFlag:
    """A ``lorien device`` flag that sets one config key: ``--repo-url`` → ``repo_url``, ``--service-unit`` →
    ``service.unit``. The value goes through the same checks as the TOML value it replaces."""

    flag: str
    key: tuple[str, ...]  # the TOML key, with the table it sits in
    value_type: type  # what the flag's text becomes: str, int or float; bool = a switch
    repeatable: bool  # each use adds one item to a list (trusted_keys)
    help: str

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


def config_flags() -> tuple[ConfigFlag, ...]:
    """One flag per field of :class:`DeviceConfig` (and of a nested dataclass such as ``service``), in field
    order, so a new field gets its flag without touching the CLI; ``flag=None`` in a field's metadata keeps it
    TOML-only."""
    found = []
    for config_field, hint in _fields_with_hints(DeviceConfig):
        if "flag" in config_field.metadata and config_field.metadata["flag"] is None:
            continue
        if is_dataclass(hint):
            found += [
                _flag(nested, nested_hint, (config_field.name, nested.name))
                for nested, nested_hint in _fields_with_hints(hint)
            ]
        else:
            found.append(_flag(config_field, hint, (config_field.name,)))
    return tuple(found)


def overrides_from_flags(values: Mapping[str, Any]) -> dict[str, Any]:
    """Config overrides (for :func:`load_config`) from parsed flag values by ``dest``; None = not given."""
    overrides: dict[str, Any] = {}
    for flag in config_flags():
        value = values.get(flag.dest)
        if value is None:
            continue
        *tables, name = flag.key
        table = overrides
        for outer in tables:
            table = table.setdefault(outer, {})
        table[name] = value
    return overrides


def _fields_with_hints(cls: type) -> list[tuple[Field, Any]]:
    hints = get_type_hints(cls)
    return [(each, hints[each.name]) for each in fields(cls)]


def _flag(config_field: Field, hint: Any, key: tuple[str, ...]) -> ConfigFlag:
    if isinstance(hint, UnionType):  # X | None: the flag gives an X
        (hint,) = (arg for arg in get_args(hint) if arg is not type(None))
    kind = get_origin(hint) or hint
    return ConfigFlag(
        flag=config_field.metadata.get("flag") or "--" + "-".join(key).replace("_", "-"),
        key=key,
        # a path or a command is text in TOML too (a command string is split on whitespace)
        value_type=kind if kind in (bool, int, float) else str,
        repeatable=kind is tuple,
        help=config_field.metadata["help"],
    )


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
        if key == "retry" and isinstance(raw.get(key), dict):
            value = {**raw[key], **value}  # its keys are independent: a flag changes one, the file's others stay
        if value is not None:
            raw[key] = value
    return _build(raw, where)


class _Settings:
    """The raw TOML table (flags already merged in) with typed, range-checked readers; every error names the
    file and the key."""

    def __init__(self, raw: dict[str, Any], where: str) -> None:
        self.raw, self.where = raw, where

    def bad(self, key: str, why: str) -> BadInputError:
        return BadInputError(f"{self.where}: {key}: {why}")

    def text(self, key: str, default: str | None = None) -> str:
        value = self.raw.get(key, default)
        if not isinstance(value, str):
            raise self.bad(key, f"must be a string, not {type(value).__name__}")
        return value

    def number(self, key: str, default: float, minimum: float, maximum: float, integer: bool = False) -> Any:
        value = self.raw.get(key, default)
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not minimum <= value <= maximum:
            kind = "an integer" if integer else "a number"
            raise self.bad(key, f"must be {kind} from {minimum} to {maximum}, got {value!r}")
        return value

    def flag(self, key: str) -> bool:
        value = self.raw.get(key, False)
        if not isinstance(value, bool):
            raise self.bad(key, f"must be true or false, got {value!r}")
        return value

    def url(self, key: str, required: bool) -> str | None:
        value = self.raw.get(key)
        if value is None and not required:
            return None
        if (
            not isinstance(value, str)
            or urlsplit(value).scheme not in ("http", "https")
            or not urlsplit(value).netloc
        ):
            raise self.bad(key, f"must be an http:// or https:// URL, got {value!r}")
        return value


def _build(raw: dict[str, Any], where: str) -> DeviceConfig:
    settings = _Settings(raw, where)
    _check_keys(settings)
    repo_url = settings.url("repo_url", required=True) or ""
    family = settings.text("family")
    if problem := family_name_problem(family):
        raise settings.bad("family", problem)
    token, no_token, host = _api_access(settings)
    trusted_root = _trusted_root(raw, settings.bad)
    insecure = settings.flag("insecure_allow_unsigned")
    config = DeviceConfig(
        repo_url=repo_url if repo_url.endswith("/") else repo_url + "/",
        family=family,
        model_path=Path(settings.text("model_path")),
        state_dir=Path(settings.text("state_dir")),
        host=host,
        port=settings.number("port", DEFAULT_PORT, 0, 65535, integer=True),
        api_token=token,
        insecure_no_token=no_token,
        check_interval=float(settings.number("check_interval", 0, 0, 7 * 86400)),
        service=_service(raw.get("service"), settings.bad),
        health_check=_command(raw.get("health_check"), "health_check", settings.bad),
        health_check_litert=bool(raw.get("health_check_litert", False)),
        health_timeout=float(settings.number("health_timeout", 60, 1, 3600)),
        callback_url=settings.url("callback_url", required=False),
        keep_backups=settings.number("keep_backups", 2, 1, 100, integer=True),
        stop_timeout=float(settings.number("stop_timeout", 10, 0, 600)),
        trusted_root=trusted_root,
        insecure_allow_unsigned=insecure,
        device_id=_optional_text(settings, "device_id", DEVICE_ID, "letters, digits and . _ : -, at most 64"),
        channel=_optional_text(settings, "channel", CHANNEL_NAME, "a-z, 0-9, _ and -, at most 32")
        or DEFAULT_CHANNEL,
        pin=_pin(settings),
        hold=settings.flag("hold"),
        download_window=_window(settings, "download_window"),
        deploy_window=_window(settings, "deploy_window"),
        max_download_rate=_rate(settings, _limits(raw.get("limits"), settings.bad)),
        limits=_limits(raw.get("limits"), settings.bad),
        retry=_retry(raw.get("retry"), settings.bad),
    )
    if trusted_root is None and not insecure:  # checked last: other mistakes are reported first
        if raw.get("trusted_keys"):
            raise settings.bad(
                "trusted_keys",
                "is the old signature scheme, which lorien no longer verifies: install the repository's root.json "
                '(its metadata/1.root.json) and set trusted_root = "/etc/lorien/root.json" (docs/security.md, '
                "Migration)",
            )
        raise settings.bad(
            "trusted_root",
            'required: the repository\'s initial TUF root, e.g. trusted_root = "/etc/lorien/root.json" (copy the '
            "repository's metadata/1.root.json); or set insecure_allow_unsigned = true to accept unsigned "
            "repositories",
        )
    return config


def _check_keys(settings: _Settings) -> None:
    """No unknown option, and every required one present."""
    unknown = sorted(set(settings.raw) - _SIMPLE_KEYS - _TABLES)
    if unknown:
        known = ", ".join(sorted(_SIMPLE_KEYS | _TABLES))
        raise settings.bad(unknown[0], f"unknown option (known: {known})")
    for key in ("repo_url", "family", "model_path", "state_dir"):
        if key not in settings.raw or settings.raw[key] in ("", None):
            raise settings.bad(key, 'required (e.g. repo_url = "https://models.example.com/repo/")')


def _optional_text(settings: _Settings, key: str, pattern: re.Pattern[str], form: str) -> str | None:
    value = settings.raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise settings.bad(key, f"must be {form} characters, got {value!r}")
    return value


def _window(settings: _Settings, key: str) -> str | None:
    value = settings.raw.get(key)
    if value is None:
        return None
    try:
        return Window.parse(value).text if isinstance(value, str) else Window.parse(repr(value)).text
    except ValueError as error:
        raise settings.bad(key, str(error)) from None


MIN_CAP = 4096  # bytes/s: a 64 KiB read then takes at most 16 s, well inside the stall and rate limits


def _rate(settings: _Settings, limits: Limits) -> int:
    rate = settings.number("max_download_rate", 0, 0, 1 << 40, integer=True)
    floor = max(MIN_CAP, limits.min_rate)  # below the minimum rate the slow-retrieval guard would cut it
    if rate and rate < floor:
        raise settings.bad("max_download_rate", f"must be 0 (no cap) or at least {floor} bytes/s, got {rate}")
    return rate


def _pin(settings: _Settings) -> str | None:
    value = settings.raw.get("pin")
    if value is None:
        return None
    problem = version_name_problem(value) if isinstance(value, str) else "is not text"
    if problem:
        raise settings.bad("pin", f'must be a version name like "1.2.0": {value!r} {problem}')
    return value


def _api_access(settings: _Settings) -> tuple[str | None, bool, str]:
    """(api_token, insecure_no_token, host): an open API is only allowed on loopback."""
    token = settings.raw.get("api_token")
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise settings.bad("api_token", "must be a string of at least 8 characters")
    host = settings.text("host", "127.0.0.1")
    if not token and not _is_loopback(host):
        raise settings.bad(
            "host", f"binding to {host} (not loopback) needs api_token; refusing to expose an open API"
        )
    no_token = settings.flag("insecure_no_token")
    return token or None, no_token and not token, host


def _trusted_root(raw: dict[str, Any], bad) -> Path | None:
    """The configured TUF root file, checked to be one. ``trusted_keys`` (the old scheme) is ignored beside it,
    so a device upgraded with a root.json added to its config switches over without other edits."""
    value = raw.get("trusted_root")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad("trusted_root", 'must be the path of a root.json, e.g. "/etc/lorien/root.json"')
    path = Path(value)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise bad("trusted_root", f"{path}: cannot read: {error.strerror or error}") from None
    try:
        parse_metadata(data, str(path), ROOT)
    except LorienError as error:
        raise bad("trusted_root", str(error)) from None
    if raw.get("trusted_keys"):
        log.warning("%s: trusted_keys is ignored (old signature scheme); trusted_root is used", path)
    return path


def _limits(value: Any, bad) -> Limits:
    if value is None:
        return DEFAULT_LIMITS
    if not isinstance(value, dict):
        raise bad("limits", "must be a table, e.g. limits = {max_chain_length = 8, min_rate = 256}")
    try:
        return DEFAULT_LIMITS.with_overrides(value, "limits")
    except ValueError as error:
        raise bad("limits", str(error)) from None


def _retry(value: Any, bad) -> RetrySettings:
    if value is None:
        return RetrySettings()
    if not isinstance(value, dict):
        raise bad("retry", "must be a table, e.g. retry = {total_seconds = 3600, max_backoff = 60}")
    known = {each.name: each.default for each in fields(RetrySettings)}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise bad(f"retry.{unknown[0]}", f"unknown option (known: {', '.join(known)})")
    ranges = {"total_seconds": (0, 7 * 86400), "max_backoff": (0.01, 3600), "first_backoff": (0.01, 3600)}
    numbers = {}
    for name, default in known.items():
        number, (low, high) = value.get(name, default), ranges[name]
        if isinstance(number, bool) or not isinstance(number, int | float) or not low <= number <= high:
            raise bad(f"retry.{name}", f"must be a number of seconds from {low} to {high}, got {number!r}")
        numbers[name] = float(number)
    if numbers["first_backoff"] > numbers["max_backoff"]:
        raise bad("retry.first_backoff", f"must not exceed retry.max_backoff ({numbers['max_backoff']:g})")
    return RetrySettings(**numbers)


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
