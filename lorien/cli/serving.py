"""``lorien serve``: a repository over HTTP (waitress + Bottle), with the Mallorn seed endpoints.

The handler loads the ``--sign-key`` files (so ``POST /create-patch`` can re-sign what it changes) and hands
everything to :func:`~publisher.serve.serve`, which runs until interrupted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lorien.cli._options import Commands, add_command, add_sign_key_option, listen_failure, load_sign_keys


def _serve(args: argparse.Namespace) -> int:
    """serve a repository over HTTP (waitress) with the Mallorn seed endpoints"""
    from lorien.publisher.serve import serve

    keys = load_sign_keys(args)
    try:
        serve(args.repo, host=args.host, port=args.port, admin_token=args.admin_token, sign_keys=keys)
    except OSError as error:
        raise listen_failure(error, args.host, args.port) or error from None
    return 0


def register(commands: Commands) -> None:
    command = add_command(commands, "serve", _serve, doing="serving the repository")
    command.add_argument("repo", type=Path, help="repository directory (what lorien publish wrote)")
    command.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    command.add_argument(
        "--port",
        type=int,
        default=8000,
        help="port to listen on (default 8000; 0 picks a free port, printed at start)",
    )
    command.add_argument("--admin-token", default=None, help="enables POST /create-patch for this bearer token")
    add_sign_key_option(
        command,
        "publisher key: POST /create-patch re-signs the manifest it changes (required for a signed repository)",
    )
