"""A Supervisor over any command standing in for mpirun (no rank of it is local), for unit tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from launcher.observability import LeaderMetrics
from launcher.outcome import Outcome
from launcher.plan import LaunchPlan, MpiFlavor, Rank
from launcher.supervisor import Supervisor, SupervisorOptions


def plan_running(*argv: str) -> LaunchPlan:
    ranks = (Rank(0, "p0", "a0", 0, ("x",)), Rank(1, "p1", "a1", 0, ("x",)))
    return LaunchPlan(MpiFlavor(5, 0), ("p0:1", "p1:1"), ranks, argv, {"LAUNCHER_LAUNCH_ID": "unit-supervisor"}, (),
                      "/tmp/launcher-unit-supervisor.hosts")


class NeverReady:
    def __call__(self) -> bool:
        return False

    def close(self) -> None:
        pass


def supervise(group_changed: Callable[[], Outcome | None], argv: tuple[str, ...],
              stop: threading.Event | None = None) -> tuple[Outcome, float]:
    options = SupervisorOptions(startup_timeout_s=30, stop_grace_s=1, local_ranks=0, group_settle_s=1.0)
    metrics = LeaderMetrics()
    supervisor = Supervisor(plan_running(*argv), options, lambda: metrics, NeverReady(), stop or threading.Event(),
                            group_changed=group_changed)
    begun = time.monotonic()
    return supervisor.run(), time.monotonic() - begun
