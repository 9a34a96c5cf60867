"""``lorien inspect``: read a repository (a directory or an http(s) URL) the way a device would and report it.

Data flow: :func:`~repo.fetch.open_repository` → :func:`~repo.inspect.inspect_repository` (index.json, every
manifest, with ``--key`` their signatures, with ``--verify`` every blob re-hashed) → text or JSON on stdout.
Findings end the command with exit 1; a repository whose index.json cannot be fetched at all (unreachable, an HTTP
error) is a network error that ``inspect_repository`` raises (exit 4); a directory that does not exist is bad
input (exit 2).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from urllib.parse import urlsplit

from lorien.cli._options import Commands, add_command, add_json_option, add_quiet_option, print_fields
from lorien.cli._progress import Progress
from lorien.repo.errors import BadInputError


def _inspect(args: argparse.Namespace) -> int:
    """show a repository (directory or http(s) URL)"""
    from lorien.repo.fetch import open_repository
    from lorien.repo.inspect import inspect_repository, render_text

    if not args.verbose:  # urllib3 warns at each retry; the error that ends the command says why it failed
        logging.getLogger("urllib3").setLevel(logging.ERROR)
    trusted_root = _read_root(args.root) if args.root else None
    if not urlsplit(args.repo).scheme and not Path(args.repo).is_dir():
        raise BadInputError(
            f"{args.repo}: repository directory does not exist (give a directory or an http(s) URL)"
        )
    fetcher = open_repository(args.repo)
    with Progress("inspect", quiet=args.quiet) as progress:  # NetworkError if index.json cannot be had:
        report = inspect_repository(fetcher, args.verify, trusted_root, progress.bytes("blobs re-hashed"))
    if args.json:
        print_fields(report.to_dict(), as_json=True)
    else:
        print(render_text(report, args.verify))
    return 0 if report.ok else 1


def _read_root(path: Path) -> bytes:
    from lorien.repo.tufmeta import ROOT, parse_metadata

    try:
        data = path.read_bytes()
    except OSError as error:
        raise BadInputError(f"--root {path}: cannot read: {error.strerror or error}") from None
    parse_metadata(data, f"--root {path}", ROOT)
    return data


def register(commands: Commands) -> None:
    command = add_command(commands, "inspect", _inspect, doing="inspecting the repository")
    command.add_argument("repo", help="repository directory or base URL")
    add_json_option(command)
    command.add_argument("--verify", action="store_true", help="re-hash every referenced blob")
    add_quiet_option(command)
    command.add_argument(
        "--root",
        type=Path,
        help="trusted TUF root.json (the one devices have): verify the repository's metadata from it (default: the "
        "repository's own metadata/1.root.json)",
    )
