"""Log lines for people and for journald, one rule for every lorien process (``device``, ``serve``, ``watch``
and the one-shot commands).

Under systemd — ``JOURNAL_STREAM`` is set when stdout/stderr go to the journal — a line carries no time of its
own (journald stamps every entry) and starts with the sd-daemon(3) priority prefix (``<3>`` error, ``<4>``
warning, ``<6>`` info, ``<7>`` debug), so ``journalctl -p warning`` shows warnings and worse; every line of a
multi-line record (a traceback) gets the prefix, since journald reads each line as an entry. Elsewhere a line
starts with its local time. :func:`logfmt` writes the ``key=value`` fields that stage changes carry.
"""

from __future__ import annotations

import logging
import os
import re
from typing import TextIO

TIMESTAMPED = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_UNTIMED = "%(levelname)s %(name)s: %(message)s"
_BARE_VALUE = re.compile(r"[^\s\"=\\]+")


def journal_priority(level: int) -> int:
    """The syslog priority of a logging level: 2 critical, 3 error, 4 warning, 6 info, 7 debug."""
    if level >= logging.CRITICAL:
        return 2
    if level >= logging.ERROR:
        return 3
    if level >= logging.WARNING:
        return 4
    return 6 if level >= logging.INFO else 7


class JournalFormatter(logging.Formatter):
    """``<N>LEVEL name: message`` on every line of the record: no time, the priority journald understands."""

    def __init__(self) -> None:
        super().__init__(_UNTIMED)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{journal_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def under_journald() -> bool:
    """Whether this process's output goes to the journal (systemd sets ``JOURNAL_STREAM`` for a service whose
    StandardOutput/StandardError is the journal, the default)."""
    return bool(os.environ.get("JOURNAL_STREAM"))


def stream_handler(stream: TextIO) -> logging.Handler:
    """A handler writing to ``stream`` in the journal's format under systemd, else in timestamped lines."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if under_journald() else logging.Formatter(TIMESTAMPED))
    return handler


def logfmt(**fields: object) -> str:
    """``key=value`` pairs in the order given; a value with spaces, quotes or ``=`` is double-quoted, and a
    missing one (None) is written ``-``."""
    parts = []
    for key, value in fields.items():
        text = "-" if value is None else str(value)
        if not _BARE_VALUE.fullmatch(text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)
