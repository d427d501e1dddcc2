"""Turning SIGTERM/SIGINT into a stop request.

As PID 1 in a container the kernel ignores signals that have no handler, so
both roles install these explicitly; the loops poll the event.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from types import FrameType

log = logging.getLogger("launcher")


def install_stop_handlers(stop: threading.Event) -> None:
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()  # first: a failing log line below must not keep the stop from being seen
        # The signal may interrupt this thread inside a write to stderr; logging then fails with
        # "reentrant call" (seen when SIGTERM arrived during a log line), which must not escape.
        with contextlib.suppress(RuntimeError):
            log.info("received %s", signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
