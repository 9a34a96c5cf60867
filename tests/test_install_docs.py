"""docs/install.md, run: every ```sh block whose first line is ``# doc-test: NAME`` is executed, in document order,
against a temporary root, so a documented step that would fail on a real machine fails here.

How a block is run (the convention docs/install.md states): ``sudo`` and ``sudo -u USER`` are dropped (the
test makes no users; ``deploy/install.sh`` skips users and ``chown`` under ``DESTDIR``),
``DESTDIR`` is the temporary root, ``deploy/`` means this source tree, and every ``/etc``, ``/opt``, ``/srv`` and
``/var`` path is moved into the root. Lines that need a live system are skipped, each for the reason in
:data:`SKIPPED`; every other line runs under ``sh -eu``. The device and the server are two machines (two
roots, :data:`MACHINE`); what a reader brings is provided first: the publisher's ``publisher.pub`` in the
device's working directory and Debian's ``/etc/nginx/conf.d`` on the server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lorien.repo.signing import generate_keypair, load_signing_key
from tests.support.processes import require
from tests.support.tuf_roots import signed_root

SOURCE = Path(__file__).resolve().parents[1]
INSTALL_DOC = SOURCE / "docs" / "install.md"
BLOCK = re.compile(r"^```sh\n# doc-test: ([\w-]+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
SUDO = re.compile(r"\bsudo(?: -u \w+)? ")
SYSTEM_PATH = re.compile(r"(?<![\w./-])/(etc|opt|srv|var)/")
# Command prefixes (after sudo is dropped) that are not run, and why.
SKIPPED = {
    "systemctl": "needs a running systemd; the units themselves are checked in tests/test_deploy.py",
    "nginx -t": "tests the system nginx; the written conf.d file is tested by real nginx below instead",
    "curl": "needs the device service running",
    "sudoedit": "interactive editor; the installed device.toml is checked below instead",
}
MACHINE = {"device": "device", "server": "server", "removing": "server"}  # block → the machine it runs on


def doc_blocks() -> list[tuple[str, list[str]]]:
    """(name, lines) of each ``# doc-test`` block of docs/install.md, in order."""
    return [(name, body.splitlines()) for name, body in BLOCK.findall(INSTALL_DOC.read_text())]


def staged(line: str, root: Path) -> str | None:
    """The line as it runs in the temporary root, or None when it is skipped."""
    line = SUDO.sub("", line)
    if not line.strip() or line.lstrip().startswith("#") or line.startswith(tuple(SKIPPED)):
        return None
    line = re.sub(r"(?<![\w./-])deploy/", f"{SOURCE}/deploy/", line)
    return SYSTEM_PATH.sub(lambda match: f"{root}/{match.group(1)}/", line)


def test_the_doc_marks_its_steps_and_every_skip_is_used() -> None:
    blocks = doc_blocks()
    assert [name for name, _ in blocks] == list(MACHINE)
    lines = [SUDO.sub("", line) for _, body in blocks for line in body]
    for prefix in SKIPPED:
        assert any(line.startswith(prefix) for line in lines), f"SKIPPED lists {prefix!r}, which no step uses"
    assert not any("keygen" in line for line in lines), "install.sh makes the key; keygen again fails"


def _run_block(name: str, body: list[str], root: Path) -> None:
    script = "\n".join(line for line in (staged(line, root) for line in body) if line is not None)
    result = subprocess.run(
        ["sh", "-euc", script],
        cwd=root.parent / "work",
        env={**os.environ, "DESTDIR": str(root)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"docs/install.md block {name!r} failed:\n{script}\n{result.stderr}"


def _nginx_accepts(site: Path, prefix: Path) -> None:
    """``nginx -t`` on the conf.d file inside ``http { }``, as Debian's nginx.conf includes it."""
    text = site.read_text()
    assert text.lstrip().startswith("log_format lorien ") and "server {" in text
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    require(Path(nginx).exists(), "nginx is not installed (.ci/run installs it)")
    prefix.mkdir()
    config = prefix / "nginx.conf"
    config.write_text(
        f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\nevents {{}}\nhttp {{ include {site}; }}\n"
    )
    result = subprocess.run([nginx, "-t", "-p", str(prefix), "-c", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_install_doc_steps_run_in_a_temporary_root(tmp_path: Path) -> None:
    roots = {machine: tmp_path / machine / "root" for machine in set(MACHINE.values())}
    for root in roots.values():
        (root.parent / "work").mkdir(parents=True)
    (roots["server"] / "etc" / "nginx" / "conf.d").mkdir(parents=True)  # the nginx package's directory
    private, _public, _keyid = generate_keypair(tmp_path / "publisher-keys", "publisher")
    root = signed_root(load_signing_key(private))
    (tmp_path / "device" / "work" / "root.json").write_bytes(root)  # copied from the server's repository
    for name, body in doc_blocks():
        _run_block(name, body, roots[MACHINE[name]])
        if name == "device":
            etc = roots["device"] / "etc" / "lorien"
            assert 'trusted_root = "/etc/lorien/root.json"' in (etc / "device.toml").read_text()
            assert (etc / "root.json").read_bytes() == root
        if name == "server":
            server = roots["server"]
            unit = (server / "etc" / "systemd" / "system" / "lorien-publisher.service").read_text()
            key = re.search(r"--sign-key (\S+)", unit)
            assert key and (server / key.group(1).lstrip("/")).stat().st_mode & 0o777 == 0o600
            _nginx_accepts(server / "etc" / "nginx" / "conf.d" / "lorien.conf", tmp_path / "nginx-test")
    server = roots["server"]
    assert not (server / "opt" / "lorien").exists() and not (server / "etc/nginx/conf.d/lorien.conf").exists()
