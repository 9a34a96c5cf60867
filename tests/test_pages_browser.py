"""The published HTML pages in a real headless Chromium: at 1280 px nothing overflows sideways, every download link
is inside the viewport, the bytes chart is drawn.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: requests on fd 3, replies
and events on fd 4, each a JSON message ended by a NUL byte), so no driver, no port and no Python package is
needed — only Debian's ``chromium``, which ``.ci/run`` installs. The JavaScript runs in the real page as
published; a screenshot of each page is left in the test's temporary directory for people to look at.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lorien.modelgen import write_family
from lorien.publisher.html import render_family_page, render_root_page
from lorien.publisher.publish import PublishOptions, publish
from lorien.repo.manifest import parse_index, parse_manifest
from lorien.repo.signing import generate_keypair, load_signing_key
from tests.support.processes import SMALL_LAYERS, require

WIDTH, HEIGHT = 1280, 900
LONG_VERSIONS = ["2.0.0-rc.1+build.20261201.0123456789abcdef", "2.0.0-rc.2+build.20261202.fedcba9876543210"]

# Runs in the page: sizes the tests assert on (getBoundingClientRect is in CSS pixels of the viewport).
LAYOUT = """(() => {
  const box = (el) => {
    const r = el.getBoundingClientRect();
    return {left: r.left, right: r.right, width: r.width};
  };
  return {
    innerWidth: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    wrappers: [...document.querySelectorAll('div.table')].map((d) => [d.scrollWidth, d.clientWidth]),
    downloads: [...document.querySelectorAll('a.download')].map((a) => ({
      text: a.textContent, download: a.getAttribute('download'), ...box(a)})),
    patchBars: [...document.querySelectorAll('svg.chart rect.patch')].map(box),
    fullBars: [...document.querySelectorAll('svg.chart rect.full')].map(box),
    signers: document.querySelector('.signers')?.textContent ?? null,
  };
})()"""


def _above_4(fd: int) -> int:
    """The same pipe end as a descriptor above 4, so moving it to 3 or 4 in the child cannot clobber another."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """One headless Chromium, one page, DevTools requests over the pipe."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_browser_read, self._to_browser = map(_above_4, os.pipe())
        self._from_browser, from_browser_write = map(_above_4, os.pipe())
        # The protocol pipe must be fds 3 and 4 in Chromium: let bash move ours there (dash takes single-digit
        # fds only).
        moves = f"3<&{to_browser_read} 4>&{from_browser_write} {to_browser_read}<&- {from_browser_write}>&-"
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" {moves}', executable, "--headless=new", "--no-sandbox",
             "--disable-gpu", "--remote-debugging-pipe", f"--user-data-dir={profile}",
             f"--window-size={WIDTH},{HEIGHT}", "--no-first-run", "--hide-scrollbars", "about:blank"],
            pass_fds=(to_browser_read, from_browser_write),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer, self._next_id, self.events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call(
            "Emulation.setDeviceMetricsOverride", session=True, width=WIDTH, height=HEIGHT, deviceScaleFactor=1,
            mobile=False,
        )  # fmt: skip

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            if not select.select([self._from_browser], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("Chromium did not answer over the DevTools pipe")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium closed the DevTools pipe (exit {self.process.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = False, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        request: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            request["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(request).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            message = self._message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def open(self, url: str, timeout: float = 30) -> None:
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + timeout
        while not any(event.get("method") == "Page.loadEventFired" for event in self.events):
            self.events.append(self._message(deadline))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"]["value"]

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"]))

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):  # killed below if it does not exit
            self.call("Browser.close", timeout=10)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    require(executable is not None, "Chromium not installed (apt-get install chromium)")
    assert executable is not None
    started = Browser(executable, tmp_path / "chromium-profile")
    yield started
    started.close()


@pytest.fixture
def signed_repo(models_dir: Path, tmp_path: Path) -> Path:
    """The classifier family plus one with long version names (the old layout overflowed on either), signed."""
    write_family(models_dir / "long-version-names", LONG_VERSIONS, layer_sizes=SMALL_LAYERS, seed=4)
    key, _public, _keyid = generate_keypair(tmp_path / "keys")
    repo = tmp_path / "repo"
    report = publish(models_dir, repo, options=PublishOptions(sign_keys=(load_signing_key(key),)))
    assert report.ok, report.all_problems()
    # Rendered again with the repository root, so the pages also show the TUF roles and the targets keys.
    manifests = [
        parse_manifest((repo / f / "manifest.json").read_bytes(), f) for f in ("classifier", "long-version-names")
    ]
    for manifest in manifests:
        (repo / manifest.family / "index.html").write_text(render_family_page(manifest, repo))
    index = parse_index((repo / "index.json").read_bytes())
    (repo / "index.html").write_text(render_root_page(index, manifests, repo))
    return repo


@pytest.mark.slow
@pytest.mark.parametrize("family", ["classifier", "long-version-names"])
def test_family_page_fits_1280_px_with_downloads_visible_and_a_chart(
    browser: Browser, signed_repo: Path, family: str, tmp_path: Path
) -> None:
    manifest = parse_manifest((signed_repo / family / "manifest.json").read_bytes(), family)
    browser.open((signed_repo / family / "index.html").as_uri())
    layout = browser.evaluate(LAYOUT)
    browser.screenshot(tmp_path / f"{family}.png")
    assert layout["innerWidth"] == WIDTH
    assert layout["scrollWidth"] <= WIDTH, f"page scrolls sideways: {layout['scrollWidth']} px"
    for scroll_width, client_width in layout["wrappers"]:
        assert scroll_width <= client_width, "a table is wider than the page and is cut"
    downloads = layout["downloads"]
    assert len(downloads) == len(manifest.versions) + len(manifest.patches)
    for link in downloads:
        assert link["download"] and link["width"] > 0 and link["left"] >= 0 and link["right"] <= WIDTH, link
    assert len(layout["patchBars"]) == len(layout["fullBars"]) == len(manifest.patches) > 0
    for full, patch in zip(layout["fullBars"], layout["patchBars"], strict=True):
        assert 0 < patch["width"] < full["width"] and full["right"] <= WIDTH
    root = json.loads((signed_repo / "metadata" / "root.json").read_text())["signed"]
    assert root["roles"]["targets"]["keyids"][0][:12] in layout["signers"]


@pytest.mark.slow
def test_root_page_fits_1280_px(browser: Browser, signed_repo: Path, tmp_path: Path) -> None:
    browser.open((signed_repo / "index.html").as_uri())
    layout = browser.evaluate(LAYOUT)
    browser.screenshot(tmp_path / "root.png")
    assert layout["scrollWidth"] <= WIDTH
    for scroll_width, client_width in layout["wrappers"]:
        assert scroll_width <= client_width
