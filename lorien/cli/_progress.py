"""Progress of long work on stderr: a tqdm bar on a terminal, a line every few seconds otherwise, nothing with
``--quiet``.

The library reports progress through plain callbacks — the engine's ``create_patch``/``apply_patch``/
``verify_patch`` and ``inspect_repository`` call ``progress(done_bytes, total_bytes)``, ``publish`` calls
``PublishOptions.progress(label, done_bytes, total_bytes)`` naming what it is working on. :class:`Progress`
turns those calls into output for one command:

- stderr is a terminal: one bar per piece of work (label, bytes, rate), cleared when the next piece starts or
  the command ends;
- otherwise (a log file, a pipe, CI): ``COMMAND: LABEL: 45 % of 117.0 MiB``, at most one line every
  ``LORIEN_PROGRESS_INTERVAL`` seconds (default 5) per piece of work, so work shorter than that prints nothing;
- ``--quiet``: nothing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

from lorien.repo.errors import BadInputError
from lorien.repo.inspect import human_size

INTERVAL_VARIABLE = "LORIEN_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 5.0

ByteProgress = Callable[[int, int], None]


def _interval_from_environment() -> float:
    text = os.environ.get(INTERVAL_VARIABLE, "")
    try:
        interval = float(text) if text else DEFAULT_INTERVAL
    except ValueError:
        interval = -1.0
    if interval < 0:
        raise BadInputError(f"{INTERVAL_VARIABLE}={text!r}: give seconds between progress lines (0 or more)")
    return interval


class Progress:
    """One command's progress output; use as a context manager so the last bar is cleared at the end."""

    def __init__(
        self, command: str, *, quiet: bool = False, stream: TextIO | None = None, interval: float | None = None
    ) -> None:
        self.command = command
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.interval = _interval_from_environment() if interval is None else interval
        self.terminal = self.stream.isatty()
        self._label: str | None = None
        self._bar: tqdm | None = None
        self._last_line = 0.0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def bytes(self, label: str) -> ByteProgress | None:
        """A ``(done, total)`` callback for one piece of work, or None when nothing is shown (``--quiet``)."""
        if self.quiet:
            return None
        return lambda done, total: self.update(label, done, total)

    def update(self, label: str, done: int, total: int) -> None:
        """``done`` of ``total`` bytes of the work called ``label``; a new label ends the previous work."""
        if self.quiet:
            return
        if label != self._label:
            self.close()
            self._label, self._last_line = label, time.monotonic()
        if self.terminal:
            self._draw(label, done, total)
        elif time.monotonic() - self._last_line >= self.interval:
            self._last_line = time.monotonic()
            percent = f"{100 * done / total:.0f} % of {human_size(total)}" if total else f"{human_size(done)}"
            print(f"{self.command}: {label}: {percent}", file=self.stream, flush=True)

    def _draw(self, label: str, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = tqdm(
                total=total or None,
                desc=label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
                mininterval=min(self.interval, 0.1),  # tqdm's own pace, or faster when asked (tests)
            )
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """End the current piece of work (its bar disappears)."""
        if self._bar is not None:
            self._bar.close()
        self._bar, self._label = None, None
