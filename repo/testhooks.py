"""Test hook shared by publisher and device: die by SIGKILL at a named point, to test crash safety for real.

``LORIEN_TEST_CRASH_AT=<name>`` makes :func:`crash_point` with that name kill the current process with SIGKILL
(no cleanup, no finally blocks, exactly like a power cut for the files involved). Unset, it does nothing.
"""

from __future__ import annotations

import os
import signal

ENV = "LORIEN_TEST_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
