"""What the command groups share: registering a command with its handler, the options several commands take
(``--json``, ``--engine``, ``--sign-key``), and the two ways several commands print a result (a ``key value``
table or JSON, and problems on stderr), each defined once here.

A group module calls :func:`add_command` for each of its commands — the handler's docstring is the command's
help — and adds that command's own arguments right after; ``main`` later calls the handler stored on the parsed
arguments.
"""

from __future__ import annotations

import argparse
import errno
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from lorien.repo.engine import DEFAULT_ENGINE, available_engines
from lorien.repo.errors import BadInputError

if TYPE_CHECKING:
    from lorien.repo.signing import SigningKey

Handler = Callable[[argparse.Namespace], int]
Commands = argparse._SubParsersAction  # what ArgumentParser.add_subparsers returns


def add_command(
    commands: Commands, name: str, handler: Handler, help_text: str | None = None, *, doing: str
) -> argparse.ArgumentParser:
    """A subcommand whose parsed arguments carry ``handler`` and ``doing``: what the command is doing, for the
    one-line message when the file system refuses it (``"making the patch"``). Its help is ``help_text``, or
    else the handler's docstring."""
    help_text = help_text or inspect.getdoc(handler)
    command = commands.add_parser(name, help=help_text, description=help_text)
    command.set_defaults(handler=handler, doing=doing)
    return command


def add_json_option(command: argparse.ArgumentParser, help_text: str = "print JSON") -> None:
    command.add_argument("--json", action="store_true", help=help_text)


def add_quiet_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars (terminal) or progress lines (log) on stderr"
    )


def add_max_patch_ratio_option(command: argparse.ArgumentParser, default: float | None) -> None:
    what = "keep every patch" if default is None else str(default)
    command.add_argument(
        "--max-patch-ratio",
        dest="max_patch_ratio",
        type=float,
        default=default,
        help=f"do not publish a patch larger than this share of the full model, in (0, 10] (default: {what})",
    )


MAX_PATCH_FORMAT_ENV = "LORIEN_MAX_PATCH_FORMAT"


def add_max_patch_format_option(command: argparse.ArgumentParser) -> None:
    """``--max-patch-format N``, by default ``$LORIEN_MAX_PATCH_FORMAT`` (so a systemd unit or a shell profile
    sets it once for publish, watch and rollout alike), else no cap."""
    from lorien.repo.engine.container import FORMAT_VERSION

    command.add_argument(
        "--max-patch-format",
        dest="max_patch_format",
        type=int,
        default=None,
        metavar="N",
        help=f"make patches and compressed models that devices reading lorien patch format versions 1..N can "
        f"apply (1 to {FORMAT_VERSION}; a device of an older release reads fewer, docs/patch-format.md); default "
        f"${MAX_PATCH_FORMAT_ENV}, else {FORMAT_VERSION} (this release's newest)",
    )


def max_patch_format(args: argparse.Namespace) -> int | None:
    """``--max-patch-format``, else ``$LORIEN_MAX_PATCH_FORMAT``, checked; None: no cap."""
    from lorien.repo.engine.container import checked_max_version

    if args.max_patch_format is not None:
        return checked_max_version(args.max_patch_format, "--max-patch-format")
    text = os.environ.get(MAX_PATCH_FORMAT_ENV, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise BadInputError(
            f"${MAX_PATCH_FORMAT_ENV}={text[:40]!r} is not a patch format version (a whole number); "
            "fix or unset it"
        ) from None
    return checked_max_version(value, f"${MAX_PATCH_FORMAT_ENV}")


def listen_failure(error: OSError, host: str, port: int) -> BadInputError | None:
    """The one-line refusal for a server that cannot listen on ``host:port`` (in use, or not this machine's
    address), or None for any other ``OSError``."""
    if error.errno == errno.EADDRINUSE:
        return BadInputError(
            f"port {port} on {host} is already in use; stop what listens there or pick another port"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return BadInputError(f"cannot listen on {host}:{port}: {host} is not an address of this machine")
    return None


def add_engine_option(command: argparse.ArgumentParser) -> None:
    """``--engine``, listing the engines of the registry that work here; an unknown name is refused by the
    registry itself, with the same one-line message the library gives."""
    command.add_argument(
        "--engine",
        default=DEFAULT_ENGINE,
        help=f"patch engine: {' | '.join(available_engines())} (default {DEFAULT_ENGINE})",
    )


def add_sign_key_option(command: argparse.ArgumentParser, help_text: str) -> None:
    command.add_argument("--sign-key", dest="sign_key", type=Path, action="append", help=help_text)


def load_sign_keys(args: argparse.Namespace) -> tuple[SigningKey, ...]:
    """The ``--sign-key`` files, loaded (each a one-line error if unreadable or not a private key)."""
    from lorien.repo.signing import load_signing_key

    return tuple(load_signing_key(path) for path in args.sign_key or ())


def print_fields(fields: Mapping[str, object], as_json: bool) -> None:
    """With ``--json`` one JSON object, else one ``key value`` line per field (keys in a 14-wide column)."""
    if as_json:
        print(json.dumps(fields, indent=2))
        return
    for key, value in fields.items():
        print(f"{key:<14} {value}")


def print_problems(problems: Iterable[str], note: str = "") -> None:
    """One ``error: …`` line on stderr per problem a command found (``note`` is appended to each)."""
    for problem in problems:
        print(f"error: {problem}{note}", file=sys.stderr)
