"""Hang detection: an inference sent to rank 0 every interval while serving, with a deadline.

A rank stuck in a collective (an NCCL hang, a dead peer link) keeps every process alive, so process
checks see nothing while every request waits forever. A canary that gets no answer within its deadline
``misses`` times in a row ends the launch (exit 82), so the group is recreated. Only silence counts:
an error answer proves the server still answers, and a canary that names a wrong model must not
recreate healthy groups. The deadline is shorter than the interval, so canaries never overlap and a
wedge is caught within interval x misses + deadline.
"""

from __future__ import annotations

import logging
import threading
import time

from .config import CanaryConfig
from .inference import send

log = logging.getLogger("launcher.canary")


class Canary:
    def __init__(self, port: int, config: CanaryConfig) -> None:
        self.port, self.config = port, config
        self.missed = 0  # in a row
        self.last_miss = ""
        self._answers_told: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="canary", daemon=True)

    def start(self) -> Canary:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()

    def wedged(self) -> str | None:
        """Why the world looks wedged (enough canaries in a row got no answer), else None."""
        if self.missed < self.config.misses:
            return None
        return (f"rank 0 answered none of {self.missed} canary inferences of {self.config.model} within "
                f"{self.config.deadline_s:g}s (last: {self.last_miss}): a rank is stuck, the group must be "
                "restarted")

    def _run(self) -> None:
        next_at = time.monotonic() + self.config.interval_s
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.config.interval_s  # a fixed rate, whatever the last canary waited
            why = self._ask()
            if why is None:
                self.missed = 0
                continue
            self.missed += 1
            self.last_miss = why
            log.warning("canary %d/%d got no answer: %s", self.missed, self.config.misses, why)

    def _ask(self) -> str | None:
        """None when rank 0 answered (whatever it answered), else why not."""
        import http.client

        try:
            status, text = send("127.0.0.1", self.port, self.config.model, self.config.inputs,
                                self.config.deadline_s)
        except TimeoutError:
            return f"no answer within {self.config.deadline_s:g}s"
        except (OSError, http.client.HTTPException) as exc:
            return f"{type(exc).__name__}: {exc}"
        if status != 200 and status not in self._answers_told:
            self._answers_told.add(status)  # once per status: it repeats every interval
            log.warning("the canary's request is refused (%d: %s); it still proves rank 0 answers, but "
                        "check --canary-model/--canary-inputs", status, text[:200].decode(errors="replace"))
        return None
