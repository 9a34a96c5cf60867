"""Runs the real `lorien device` as a subprocess for integration and crash tests, and talks to its API with the
token a client finds in the state directory (``state_dir/api_token``, generated at the first start)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

ANNOUNCE = re.compile(r"API at (http://127\.0\.0\.1:\d+/api/v1\.0/)")
FROM_STATE_DIR = "state_dir/api_token"  # api(token=…) default: the generated token, as a local client reads it


def sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


class DeviceProcess:
    def __init__(
        self,
        state_root: Path,
        repo_url: str,
        model: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        family: str = "cls",
    ) -> None:
        self.state_dir = state_root / "state"
        self.model = model
        self.lines: list[str] = []
        command = [
            sys.executable,
            "-m",
            "lorien.cli",
            "device",
            "--repo-url",
            repo_url,
            "--family",
            family,
            "--model-path",
            str(model),
            "--state-dir",
            str(self.state_dir),
            "--port",
            "0",
            *extra,
        ]
        if "--trusted-root" not in extra:  # most integration tests use unsigned repositories on purpose
            command.append("--insecure-allow-unsigned")
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
        )
        self._announced = threading.Event()
        self.url = ""
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._announced.wait(30):
            self.stop()
            raise RuntimeError("lorien device did not start:\n" + "".join(self.lines))
        token_file = self.state_dir / "api_token"
        self.token = token_file.read_text().strip() if token_file.exists() else None

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            match = ANNOUNCE.search(line)
            if match and not self.url:
                self.url = match.group(1)
                self._announced.set()

    def api(self, method: str, path: str, token: str | None = FROM_STATE_DIR, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        token = self.token if token == FROM_STATE_DIR else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        kwargs.setdefault("timeout", 30)
        return requests.request(method, self.url + path, headers=headers, **kwargs)

    def status(self) -> dict[str, Any]:
        return self.api("GET", "status").json()["data"]

    def wait_until_done(self, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if not status["busy"] and status["stage"] in ("idle", "failed"):
                return status
            time.sleep(0.1)
        raise AssertionError("device did not finish in time:\n" + "".join(self.lines[-30:]))

    def wait_for_death(self, timeout: float = 60) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
