"""Update windows: the local hours in which a device may download, and may deploy (``"02:00-05:00"``; a window
may cross midnight, ``"22:00-04:00"``). Pure: a window and a local time in, an answer out.

``Window.parse`` checks the text (BadInputError naming the key via the config); ``contains`` says whether a
moment is inside; ``next_opening`` when the window opens next (for ``/progress``: "opens at 02:00, in 3 h 10
min"). Start equal to end means the whole day.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta

_WINDOW = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])")


@dataclass(frozen=True)
class Window:
    start: time
    end: time  # exclusive; an end of 24:00 is kept as 00:00 (then the window ends at midnight)
    text: str

    @classmethod
    def parse(cls, text: str) -> Window:
        """``"HH:MM-HH:MM"`` (local time, 24 h; ``24:00`` allowed as an end) → Window; ValueError otherwise."""
        match = _WINDOW.fullmatch(text.strip())
        if match is None:
            raise ValueError(f'{text!r} is not a window like "02:00-05:00" (local time, may cross midnight)')
        h1, m1, h2, m2 = (int(part) for part in match.groups())
        if h2 == 24 and m2 != 0:
            raise ValueError(f"{text!r}: 24:00 is the latest end")
        return cls(time(h1, m1), time(0, 0) if h2 == 24 else time(h2, m2), text.strip())

    def contains(self, moment: datetime) -> bool:
        now = moment.time()
        if self.start == self.end:
            return True
        if self.start < self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end  # crosses midnight

    def next_opening(self, moment: datetime) -> datetime:
        """``moment`` itself when inside, else the next instant the window starts (same time zone)."""
        if self.contains(moment):
            return moment
        opening = moment.replace(hour=self.start.hour, minute=self.start.minute, second=0, microsecond=0)
        return opening if opening > moment else opening + timedelta(days=1)

    def waiting_message(self, what: str, moment: datetime) -> str:
        opening = self.next_opening(moment)
        minutes = max(1, round((opening - moment).total_seconds() / 60))
        wait = f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
        return f"waiting for the {what} window {self.text} (opens at {opening:%H:%M} local time, in {wait})"
