"""A real nginx serving a repository with the configuration ``lorien nginx-config`` writes (free port, own prefix
directory, access log readable by the tests); fails the test run when nginx is missing (``require``)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

from lorien.publisher.nginx_config import write_nginx_config
from tests.support.processes import require

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Nginx:
    def __init__(self, repo: Path, prefix: Path) -> None:
        require(Path(NGINX).exists(), "nginx is not installed (.ci/run installs it)")
        self.prefix = prefix
        # a probed free port can be taken before nginx binds it (another test worker, a client socket): try again
        for _attempt in range(5):
            self.port = _free_port()
            if self._started(repo):
                return
        raise RuntimeError(f"nginx could not bind a free port in 5 attempts: {self._output}")

    def _started(self, repo: Path) -> bool:
        user = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None  # CI runs as root
        config = write_nginx_config(repo, f"127.0.0.1:{self.port}", self.prefix, user=user)
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.prefix), "-c", str(config), "-g", "daemon off;"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.url = f"http://127.0.0.1:{self.port}/"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                if self.process.poll() is not None:
                    self._output = self.process.stdout.read()
                    if "Address already in use" in self._output:
                        return False
                    raise RuntimeError(f"nginx failed: {self._output}") from None
                time.sleep(0.05)
        raise RuntimeError("nginx did not start listening")

    def access_log(self) -> list[str]:
        return (self.prefix / "logs" / "access.log").read_text().splitlines()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
