"""The ``lorien`` command: one parser built from the command groups, and one exit code per cause of failure.

Each group module registers its commands, every command's arguments next to its handler: ``standalone``
(fingerprint, keygen, demo), ``publishing`` (publish, watch, nginx-config, gc), ``patches`` (diff, apply,
verify-patch, patch-info), ``inspection`` (inspect), ``serving`` (serve), ``device`` (device). Options that
several commands take are defined once, in ``_options``. :func:`main` parses, runs the handler, and turns a
:class:`~repo.errors.LorienError` into one ``lorien COMMAND: error: …`` line on stderr and its exit code.

Exit codes: 0 success; 1 verification found problems (``inspect --verify``, integrity); 2 bad input (also
argparse's usage errors); 3 repository locked by another writer.
"""

from __future__ import annotations

import argparse
import logging
import sys

from lorien.cli import device, inspection, patches, publishing, serving, standalone
from lorien.repo.errors import LorienError

EXIT_INTERRUPTED = 130

_GROUPS = (standalone, publishing, patches, inspection, serving, device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorien", description="Ship ML model updates to edge devices as small, verified delta patches."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (see the table above)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.handler(args)
    except LorienError as error:
        print(f"lorien {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
