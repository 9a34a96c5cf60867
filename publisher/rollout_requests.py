"""A ``lorien rollout`` change as data, applied directly or handed to the ``lorien watch`` that holds the repository.

A watcher holds the repository's writer lock for its whole life, so ``lorien rollout --models MODELS`` cannot
write the manifest itself: it writes the request into ``MODELS/.lorien-rollout/<id>.json`` (atomically; the
directory is hidden, so the scanner and the watcher's file events ignore it) and waits for
``<id>.result.json``. The watcher looks at the directory every tick, applies each request through the same
``publisher.rollout.change_channel`` (signed with its keys, under the lock it already holds) and writes the
result. The requests live beside the models on purpose: whoever can write there can already publish any model,
while the repository directory (which a web server may share) gets no new way to make the publisher sign.

Data flow: :class:`RolloutRequest` (``edit()``: the pure change from ``publisher.channels``) → :func:`submit`
(client) → :func:`serve_requests` (watcher) → result ``{"ok", "sequence", "channel"}`` or ``{"ok": false,
"error", "exit_code"}`` → the client prints it or raises the error with its exit code.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorien.publisher.channels import checked_percent, halt, resume, roll_back, set_rollout
from lorien.repo.atomic import atomic_write_bytes
from lorien.repo.channels import CHANNEL_NAME, Channel, RolloutStep
from lorien.repo.errors import BadInputError, BusyError, LorienError
from lorien.repo.manifest import Manifest, format_timestamp, parse_timestamp
from lorien.repo.versions import version_name_problem

log = logging.getLogger(__name__)

REQUESTS_DIR = ".lorien-rollout"
ACTIONS = ("halt", "resume", "set")
MAX_REQUEST_BYTES = 64 * 1024


@dataclass(frozen=True)
class RolloutRequest:
    family: str
    channel: str
    action: str  # halt | resume | set
    roll_back: bool = False
    target: str | None = None
    percent: float | None = None
    steps: tuple[RolloutStep, ...] | None = None

    def check(self) -> None:
        """BadInputError for a request that names no valid change."""
        if self.action not in ACTIONS:
            raise BadInputError(f"rollout action {self.action!r}: expected one of {', '.join(ACTIONS)}")
        if not CHANNEL_NAME.fullmatch(self.channel):
            raise BadInputError(f"channel {self.channel!r}: 1-32 of a-z, 0-9, _ and -")
        if self.target is not None and (problem := version_name_problem(self.target)):
            raise BadInputError(f"--target {self.target!r}: {problem}")
        changes = self.target is not None or self.percent is not None or self.steps is not None
        if self.action == "set" and self.roll_back and changes:
            raise BadInputError(
                "--roll-back takes no --target, --percent or --step: it moves back to the previous target"
            )
        if self.action == "set" and not self.roll_back and not changes:
            raise BadInputError("nothing to set: give --target, --percent, --step or --roll-back")

    def edit(self) -> Callable[[Channel], Channel]:
        """The change to the channel (pure, ``publisher.channels``)."""
        self.check()
        if self.action == "halt":
            first: Callable[[Channel], Channel] = halt
        elif self.action == "resume":
            first = resume
        elif self.roll_back:
            first = lambda channel: channel  # noqa: E731 - set --roll-back: nothing else changes
        else:
            first = lambda channel: set_rollout(  # noqa: E731
                channel, target=self.target, percent=self.percent, steps=self.steps
            )
        return (lambda channel: roll_back(first(channel))) if self.roll_back else first

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "channel": self.channel,
            "action": self.action,
            "roll_back": self.roll_back,
            "target": self.target,
            "percent": self.percent,
            "steps": None if self.steps is None else [step.to_dict() for step in self.steps],
        }

    @classmethod
    def from_dict(cls, data: Any) -> RolloutRequest:
        """Strict: BadInputError for anything but what :meth:`to_dict` writes."""
        if not isinstance(data, dict) or set(data) != {
            "family", "channel", "action", "roll_back", "target", "percent", "steps"
        }:  # fmt: skip
            raise BadInputError("not a rollout request")
        steps = data["steps"]
        if steps is not None and not isinstance(steps, list):
            raise BadInputError("steps: expected a list")
        request = cls(
            family=str(data["family"]),
            channel=str(data["channel"]),
            action=str(data["action"]),
            roll_back=data["roll_back"] is True,
            target=None if data["target"] is None else str(data["target"]),
            percent=None if data["percent"] is None else checked_percent(data["percent"], "percent"),
            steps=None if steps is None else tuple(_step(step) for step in steps),
        )
        request.check()
        return request


def _step(data: Any) -> RolloutStep:
    if not isinstance(data, dict) or set(data) != {"at", "percent"}:
        raise BadInputError("a step is {at, percent}")
    try:
        at = format_timestamp(parse_timestamp(str(data["at"])))
    except ValueError as error:
        raise BadInputError(f"step: {error}") from None
    return RolloutStep(at, checked_percent(data["percent"], "step percent"))


def submit(models_dir: Path, request: RolloutRequest, timeout: float, poll: float = 0.1) -> dict[str, Any]:
    """Hand ``request`` to the watcher of ``models_dir`` and wait up to ``timeout`` seconds for its result.

    Raises:
        BadInputError: no models directory; or the watcher refused the request (its error, with its exit code).
        BusyError: no answer in time (no ``lorien watch`` on this models directory?); the request is withdrawn.
    """
    request.check()
    if not models_dir.is_dir():
        raise BadInputError(f"{models_dir}: models directory does not exist")
    spool = models_dir / REQUESTS_DIR
    spool.mkdir(exist_ok=True)
    name = f"{int(time.time())}-{secrets.token_hex(6)}"
    path, answer = spool / f"{name}.json", spool / f"{name}.result.json"
    atomic_write_bytes(path, json.dumps(request.to_dict()).encode())
    deadline = time.monotonic() + timeout
    while not answer.exists():
        if time.monotonic() >= deadline:
            path.unlink(missing_ok=True)
            if answer.exists():
                break  # answered just now
            raise BusyError(
                f"no `lorien watch` on {models_dir} took the request within {timeout:g} s; is one running there? "
                "(without a watcher, run `lorien rollout` without --models)"
            )
        time.sleep(poll)
    result = json.loads(answer.read_text(encoding="utf-8"))
    answer.unlink(missing_ok=True)
    if not result.get("ok"):
        error = LorienError(str(result.get("error")))
        error.exit_code = int(result.get("exit_code", 2))
        raise error
    return result


def serve_requests(models_dir: Path, apply: Callable[[RolloutRequest], Manifest]) -> int:
    """The watcher's side: apply every pending request with ``apply`` (``change_channel`` under the lock the
    watcher holds) and answer it; returns how many were answered. A result nobody collected within an hour is
    removed."""
    spool = models_dir / REQUESTS_DIR
    if not spool.is_dir():
        return 0
    answered = 0
    for path in sorted(spool.glob("*.json")):
        if path.name.endswith(".result.json"):
            if time.time() - path.stat().st_mtime > 3600:
                path.unlink(missing_ok=True)
            continue
        result = _answer(path, apply)
        atomic_write_bytes(
            path.with_name(path.name.removesuffix(".json") + ".result.json"), json.dumps(result).encode()
        )
        path.unlink(missing_ok=True)
        answered += 1
    return answered


def _answer(path: Path, apply: Callable[[RolloutRequest], Manifest]) -> dict[str, Any]:
    try:
        raw = path.read_bytes()[: MAX_REQUEST_BYTES + 1]
        if len(raw) > MAX_REQUEST_BYTES:
            raise BadInputError("request too large")
        try:
            data = json.loads(raw)
        except ValueError:
            raise BadInputError("request is not JSON") from None
        request = RolloutRequest.from_dict(data)
        manifest = apply(request)
    except LorienError as error:
        log.warning("rollout request %s refused: %s", path.name, error)
        return {"ok": False, "error": str(error), "exit_code": error.exit_code}
    except OSError as error:
        return {"ok": False, "error": f"{path}: {error}", "exit_code": 5}
    channel = manifest.channel(request.channel)
    log.info("rollout request %s: %s/%s now %s", path.name, request.family, request.channel, channel)
    return {
        "ok": True,
        "family": manifest.family,
        "sequence": manifest.sequence,
        "channel": channel.to_dict() if channel is not None else None,
    }
