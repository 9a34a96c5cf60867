"""The ``lorien`` command: one parser built from the command groups, and one exit code per cause of failure.

Each group module registers its commands, every command's arguments next to its handler: ``standalone``
(fingerprint, keygen, demo), ``publishing`` (publish, watch, nginx-config, gc), ``rollout`` (rollout status|halt|resume|set), ``fleet`` (fleet-report), ``patches`` (diff, apply,
verify-patch, patch-info), ``inspection`` (inspect), ``serving`` (serve), ``device`` (device), ``ctl`` (ctl).
Options that several commands take are defined once, in ``_options``; long work shows progress on stderr
through ``_progress``. :func:`main` parses, runs the handler, and turns what escapes it into one
``lorien COMMAND: error: …`` line on stderr and an exit code:

====  =====================================================================================================
exit  meaning
====  =====================================================================================================
0     success
1     verification found problems (``inspect`` findings, a digest or signature that does not match)
2     bad input: an argument, file or document that is not acceptable, a port already in use; also argparse's
      usage errors
3     busy: another process holds the repository's writer lock (its pid is named)
4     network: the server is unreachable, answers an HTTP error, is too slow or sends too much
5     local I/O: the file system refused (disk full, permission denied, read-only, a file where a directory
      should be); the line names the path and what the command was doing
130   interrupted (Ctrl-C)
141   stdout was closed early (``lorien inspect … --json | head``): the command stops quietly
====  =====================================================================================================

Codes 1–5 are the causes of :mod:`repo.errors`; an ``OSError`` that escapes a handler is wrapped as a
:class:`~repo.errors.LocalIOError`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import version

from lorien.cli import ctl, device, fleet, inspection, patches, publishing, rollout, serving, standalone, trust
from lorien.repo.errors import LocalIOError, LorienError
from lorien.repo.logs import stream_handler

EXIT_INTERRUPTED = 130
EXIT_STDOUT_CLOSED = 141  # 128 + SIGPIPE: what a shell reports for a writer stopped by a closed pipe

_GROUPS = (standalone, publishing, trust, rollout, fleet, patches, inspection, serving, device, ctl)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorien", description="Ship ML model updates to edge devices as small, verified delta patches."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    parser.add_argument("--version", action="version", version=f"lorien {version('lorien')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (see the table above)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, handlers=[stream_handler(sys.stderr)]
    )
    try:
        exit_code = args.handler(args)
        sys.stdout.flush()  # output still buffered meets a closed pipe here, inside the handling below
        return exit_code
    except BrokenPipeError:  # an OSError too, but not the file system's fault: the reader went away
        return _stdout_closed()
    except LorienError as error:
        return _failed(args.command, error)
    except OSError as error:
        return _failed(args.command, LocalIOError.wrap(error, args.doing))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _failed(command: str, error: LorienError) -> int:
    print(f"lorien {command}: error: {error}", file=sys.stderr)
    return error.exit_code


def _stdout_closed() -> int:
    """Stop without a traceback. Python flushes stdout again at exit and would complain about the closed pipe
    then, so stdout is pointed at /dev/null first (the recipe of the ``signal`` module's documentation)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_STDOUT_CLOSED
