"""The worker agent: idle until MPI starts ranks in this pod, then watch them.

States: waiting (no rank seen yet) -> ranked (MPI daemons and ranks running
here) -> lost (a rank or its daemon died). On loss the agent ends every rank
and daemon left in the pod (an mpirun abort leaves them orphaned) and turns
unhealthy, so the liveness probe restarts the pod and LeaderWorkerSet
recreates the whole group. It never leaves "lost" by itself.

Only processes of this pod count: those sharing the agent's UTS namespace
(in a container that is every process; in tests each pod sandbox has its own).
"""

from __future__ import annotations

import logging
import os
import threading

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge

from . import procs
from .observability import PREFIX, WORKER_STATES, PhaseTracker, build_info

log = logging.getLogger("launcher.worker")

DAEMON_NAMES = ("orted", "prted")
RANK_ENV_KEYS = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK")


def _namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/uts")
    except OSError:
        return None


class WorkerAgent:
    def __init__(self, interval_s: float = 1.0, kill_grace_s: float = 3.0) -> None:
        self.interval_s = interval_s
        self.kill_grace_s = kill_grace_s
        self.registry = CollectorRegistry()
        build_info(self.registry, "worker")
        self.states = PhaseTracker(self.registry, WORKER_STATES, name="worker_state")
        self.ranks_gauge = Gauge(f"{PREFIX}_worker_ranks", "MPI ranks running in this pod", registry=self.registry)
        self.daemons_gauge = Gauge(f"{PREFIX}_worker_daemons", "MPI daemons running in this pod",
                                   registry=self.registry)
        self.losses = Counter(f"{PREFIX}_worker_rank_losses", "Times the pod's ranks were lost",
                              registry=self.registry)
        self._namespace = _namespace("self")
        self._known: dict[tuple[int, float], tuple[str, int]] = {}
        self.ranks: dict[int, psutil.Process] = {}
        self.daemons: dict[int, psutil.Process] = {}
        self.lost_reason = ""

    @property
    def state(self) -> str:
        return self.states.current

    def _identify(self, proc: psutil.Process) -> tuple[str, int]:
        """("daemon" | "rank-env" | "", parent pid), cached per process."""
        key = (proc.pid, proc.create_time())
        info = self._known.get(key)
        if info is None:
            kind = ""
            if _namespace(proc.pid) == self._namespace:
                if proc.name() in DAEMON_NAMES:
                    kind = "daemon"
                elif any(k in proc.environ() for k in RANK_ENV_KEYS):
                    kind = "rank-env"
            info = self._known[key] = (kind, proc.ppid())
        return info

    def snapshot(self) -> tuple[dict[int, psutil.Process], dict[int, psutil.Process]]:
        """(daemons, ranks) of this pod; a rank is the topmost process carrying MPI's rank variables."""
        me = os.getpid()
        daemons: dict[int, psutil.Process] = {}
        carriers: dict[int, tuple[psutil.Process, int]] = {}
        alive: set[tuple[int, float]] = set()
        for proc in psutil.process_iter():
            if proc.pid == me:
                continue
            try:
                kind, parent = self._identify(proc)
                alive.add((proc.pid, proc.create_time()))
            except (psutil.Error, OSError):
                continue
            if kind == "daemon":
                daemons[proc.pid] = proc
            elif kind == "rank-env":
                carriers[proc.pid] = (proc, parent)
        self._known = {k: v for k, v in self._known.items() if k in alive}
        ranks = {pid: proc for pid, (proc, parent) in carriers.items() if parent not in carriers}
        return daemons, ranks

    def observe(self) -> None:
        """One look at the pod's processes; moves the state machine."""
        if self.state == "lost":
            return
        daemons, ranks = self.snapshot()
        if self.state == "waiting" and ranks:
            self.states.enter("ranked")
            log.info("ranked: %d ranks under %d daemons in this pod", len(ranks), len(daemons))
        elif self.state == "ranked":
            gone_ranks = [pid for pid in self.ranks if pid not in ranks]
            gone_daemons = [pid for pid in self.daemons if pid not in daemons]
            if gone_ranks or gone_daemons:
                self._lose(f"{len(gone_ranks)} ranks and {len(gone_daemons)} MPI daemons ended")
                return
        self.daemons, self.ranks = daemons, ranks
        self.ranks_gauge.set(len(ranks))
        self.daemons_gauge.set(len(daemons))

    def _lose(self, reason: str) -> None:
        self.lost_reason = reason
        self.losses.inc()
        self.states.enter("lost")
        daemons, _ = self.snapshot()
        leftovers = list(daemons.values()) + self._rank_processes()
        if leftovers:
            log.warning("lost: %s; ending %d leftover MPI processes", reason, len(leftovers))
            procs.terminate(leftovers, self.kill_grace_s)
        else:
            log.warning("lost: %s", reason)
        self.ranks_gauge.set(0)
        self.daemons_gauge.set(0)

    def _rank_processes(self) -> list[psutil.Process]:
        """Every process of this pod carrying MPI's rank variables (ranks and their children)."""
        found = []
        for proc in psutil.process_iter():
            try:
                if self._identify(proc)[0] == "rank-env":
                    found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found

    def live(self) -> tuple[bool, str]:
        if self.state == "lost":
            return False, f"lost: {self.lost_reason}; restart the pod so the group is recreated"
        return True, self.state

    def ready(self) -> tuple[bool, str]:
        return self.live()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.observe()
            stop.wait(self.interval_s)
