"""``lorien nginx-config``: render ``nginx/*.j2`` (jinja2) into a prefix an unprivileged nginx can run from.

Output in ``PREFIX``: ``nginx.conf`` (complete), ``lorien-site.conf`` (the server block, also usable alone in a
system nginx), ``logs/`` and ``tmp/``. Values are checked before anything is written: an existing repository
directory, ``HOST:PORT`` with a numeric port, absolute paths without characters nginx would misread.
"""

from __future__ import annotations

import re
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from lorien.repo.atomic import atomic_write_bytes
from lorien.repo.errors import BadInputError

_SAFE_PATH = re.compile(r"[A-Za-z0-9_./@+-]+")


def _checked_path(path: Path, what: str) -> Path:
    path = path.resolve()
    if not _SAFE_PATH.fullmatch(str(path)):
        raise BadInputError(
            f"{what}: {path} contains characters nginx would misread (spaces, quotes, ;, $…); use a plain path"
        )
    return path


def _checked_listen(listen: str) -> str:
    match = re.fullmatch(r"(?:(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):)?(\d{1,5})", listen)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise BadInputError(f"--listen: {listen!r} is not HOST:PORT or PORT (e.g. 127.0.0.1:8080)")
    return listen


def write_nginx_config(
    repo: Path, listen: str, prefix: Path, server_name: str = "_", user: str | None = None
) -> Path:
    """``user``: the workers' user when nginx starts as root (default there: ``nobody``, which may not be able to
    read the repository); ignored by an unprivileged nginx."""
    if not repo.is_dir():
        raise BadInputError(f"--repo: {repo} is not a directory; publish a repository first")
    values = {
        "repo": _checked_path(repo, "--repo"),
        "prefix": _checked_path(prefix, "--prefix"),
        "listen": _checked_listen(listen),
        "server_name": server_name,
        "user": user,
    }
    if user is not None and not re.fullmatch(r"[a-z_][a-z0-9_-]*", user):
        raise BadInputError(f"--user: {user!r} is not a user name")
    values["access_log"] = values["prefix"] / "logs" / "access.log"
    environment = Environment(
        loader=PackageLoader("lorien.nginx", "."), undefined=StrictUndefined, keep_trailing_newline=True
    )
    for directory in ("logs", "tmp"):
        (values["prefix"] / directory).mkdir(parents=True, exist_ok=True)
    for template, output in (("lorien-site.conf.j2", "lorien-site.conf"), ("nginx.conf.j2", "nginx.conf")):
        text = environment.get_template(template).render(**values)
        atomic_write_bytes(values["prefix"] / output, text.encode())
    return values["prefix"] / "nginx.conf"
