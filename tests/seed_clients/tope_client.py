"""A client of the TOPE device updater, written only from its public reference.

Source of the shapes: TOPE's README (``/work/shared/seeds/tope-updater-README.md``: the three endpoints, the
request bodies, the envelope ``{"code", "msg", "data": {"stage", "progress", "message", "error"}}`` with an
integer ``progress``) and its API contract (``specs/001-updater-core/contracts/updater-api.yaml`` in
cuihuir/tope_updater: stage values ``idle``, ``downloading``, ``verifying``, ``toInstall``, ``installing``,
``rebooting``, ``success``, ``failed``; ``progress`` an integer 0..100; ``error`` a string when failed, else
null; ``toInstall`` once a download is verified, ``success`` once an install is done; the ``code`` of the body
says how a command went: 200, 400, 404, 409, 410, 500).

Strict: every field must be present with that type and range, or :class:`ShapeError`; extra keys are allowed,
as a TOPE GUI ignores them. A command's answer is judged by its body's ``code``, as TOPE's clients do (TOPE
always answers HTTP 200; lorien also sets the HTTP status, which this client does not rely on).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import requests

from tests.seed_clients.mallorn_client import ShapeError, parse

STAGES = ("idle", "downloading", "verifying", "toInstall", "installing", "rebooting", "success", "failed")
TERMINAL = ("toInstall", "success", "failed")


@dataclass
class Progress:  # data of GET /progress
    stage: str
    progress: int
    message: str
    error: Optional[str]  # noqa: UP045 — spelled as the reference's models

    def check(self) -> Progress:
        if self.stage not in STAGES:
            raise ShapeError(f"data.stage: {self.stage!r} is not a TOPE stage {STAGES}")
        if not 0 <= self.progress <= 100:
            raise ShapeError(f"data.progress: {self.progress} is outside 0..100")
        if self.stage == "failed" and not self.error:
            raise ShapeError("data.error: a failed stage must say why")
        return self


@dataclass
class Envelope:
    code: int
    msg: str


@dataclass
class Answer:
    """A command's answer: the body's ``code`` and ``msg`` (``data`` an object or null)."""

    code: int
    msg: str
    data: dict[str, Any] | None


class TopeClient:
    """What the device-api or an ota-gui written against TOPE's README does."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30) -> None:
        self.base_url, self.timeout = base_url.rstrip("/"), timeout
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _envelope(self, response: requests.Response) -> tuple[Envelope, Any]:
        body = response.json()
        envelope = parse(Envelope, body, "body")
        if "data" in body and body["data"] is not None and not isinstance(body["data"], dict):
            raise ShapeError(f"body.data: expected an object or null, got {body['data']!r}")
        return envelope, body.get("data")

    def _command(self, path: str, body: Any) -> Answer:
        response = requests.post(
            f"{self.base_url}/api/v1.0/{path}", json=body, headers=self.headers, timeout=self.timeout
        )
        envelope, data = self._envelope(response)
        return Answer(envelope.code, envelope.msg, data)

    def download(self, version: str, url: str, name: str, size: int, md5: str) -> Answer:
        body = {"version": version, "package_url": url, "package_name": name, "package_size": size,
                "package_md5": md5}  # fmt: skip
        return self._command("download", body)

    def update(self, version: str) -> Answer:
        return self._command("update", {"version": version})

    def post_raw(self, path: str, body: Any) -> Answer:
        return self._command(path, body)

    def progress(self) -> Progress:
        envelope, data = self._envelope(requests.get(f"{self.base_url}/api/v1.0/progress", timeout=self.timeout))
        if envelope.code not in (200, 500):  # the contract: 500 while the stage is "failed"
            raise ShapeError(f"/progress: code {envelope.code} is neither 200 nor 500")
        return parse(Progress, data, "data").check()

    def poll(self, until: tuple[str, ...] = TERMINAL, timeout: float = 60) -> list[Progress]:
        """Poll ``/progress`` as TOPE's ota-gui does (every 500 ms; faster here) until a stage in ``until``;
        every answer seen, the last one in ``until``."""
        seen: list[Progress] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen.append(self.progress())
            if seen[-1].stage in until:
                return seen
            time.sleep(0.05)
        raise AssertionError(f"no stage in {until} within {timeout} s: {seen[-5:]}")
